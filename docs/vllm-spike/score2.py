"""Are prompt logprobs at cached positions garbage when skip_reading_prefix_cache=False? + decode speed."""
import os, sys, time
from vllm import LLM, SamplingParams

def main():
    llm = LLM(model=sys.argv[1], dtype="float32", gpu_memory_utilization=0.15, max_model_len=2048,
              enable_prefix_caching=True, enforce_eager=True, seed=0)
    shared = "Here is a long shared prompt about cities and countries. " * 12 + "The capital of France is Paris"
    full = llm.generate([shared], SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False))[0]
    part = llm.generate([shared], SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False, skip_reading_prefix_cache=False))[0]
    c = part.num_cached_tokens
    diff = [i for i, (a, b) in enumerate(zip(full.prompt_logprobs, part.prompt_logprobs)) if a != b and (a is None or b is None or
            any(abs(a[k].logprob - b.get(k, a[k]).logprob) > 1e-4 or k not in b for k in a))]
    print(f"RESULT cached={c} positions differing: {len(diff)} first={diff[:3]} last={diff[-3:]} sample={part.prompt_logprobs[diff[0]] if diff else None}")
    sp = SamplingParams(temperature=0.0, max_tokens=64, ignore_eos=True)
    llm.generate(["Hello"], sp)
    for n in (1, 4, 16):
        t = time.perf_counter(); outs = llm.generate([f"Story {i}: once upon a time" for i in range(n)], sp, use_tqdm=False); dt = time.perf_counter() - t
        print(f"RESULT reserved={os.environ.get('VLLM_CPU_NUM_OF_RESERVED_CPU')} streams={n}: {sum(len(o.outputs[0].token_ids) for o in outs) / dt:.1f} tok/s ({dt:.2f}s)", flush=True)

if __name__ == "__main__":
    main()
