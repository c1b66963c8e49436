"""vLLM 0.32 AsyncLLM on SmolLM2: start-up, streamed greedy tokens (DELTA) with top-5 logprobs, abort."""
import asyncio, os, sys, time
from vllm import SamplingParams
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams
from vllm.v1.engine.async_llm import AsyncLLM

async def main(model: str) -> None:
    args = AsyncEngineArgs(model=model, dtype="float32", gpu_memory_utilization=0.15,
                           max_model_len=2048, enable_prefix_caching=True, seed=0,
                           structured_outputs_config={"backend": "guidance"},
                           logprobs_mode="processed_logprobs")
    t = time.perf_counter(); engine = AsyncLLM.from_engine_args(args)
    print(f"RESULT async start {time.perf_counter() - t:.1f}s", flush=True)
    try:
        sp = SamplingParams(temperature=0.0, max_tokens=32, logprobs=5, output_kind=RequestOutputKind.DELTA)
        t = time.perf_counter(); n = 0; first = None
        async for out in engine.generate({"prompt_token_ids": [1, 9690, 28, 253, 1135, 314]}, sp, "r1"):
            c = out.outputs[0]
            for tid, lp in zip(c.token_ids, c.logprobs or []):
                n += 1; first = first or (time.perf_counter() - t)
                if n <= 2: print("RESULT   delta", tid, sorted(((round(v.logprob, 3), v.decoded_token) for v in lp.values()), reverse=True))
        print(f"RESULT async stream: {n} tokens in {time.perf_counter() - t:.2f}s (first after {first:.3f}s) finish={c.finish_reason}")
        # abort mid-stream
        sp2 = SamplingParams(temperature=0.8, seed=1, max_tokens=200, output_kind=RequestOutputKind.DELTA)
        got = 0
        async for out in engine.generate("Once upon a time", sp2, "r2"):
            got += len(out.outputs[0].token_ids)
            if got >= 5:
                await engine.abort("r2"); break
        print(f"RESULT abort after {got} tokens ok")
        g = SamplingParams(temperature=0.0, max_tokens=8,
                           structured_outputs=StructuredOutputsParams(grammar='start: ("yes" | "no") "!"'),
                           stop=["!"], min_tokens=1, logit_bias={28: -5.0})
        async for out in engine.generate("Is the sky blue? Answer:", g, "r3"):
            pass
        print(f"RESULT grammar+stop+min_tokens+logit_bias: {out.outputs[0].text!r} finish={out.outputs[0].finish_reason} stop_reason={out.outputs[0].stop_reason}")
    finally:
        engine.shutdown()

if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
