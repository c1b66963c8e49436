"""SCORE variants after a cached shared prompt (enforce_eager)."""
import sys, time, traceback
from vllm import LLM, SamplingParams

def show(tag, fn):
    try:
        t = time.perf_counter(); q = fn(); dt = time.perf_counter() - t
        pl = q.prompt_logprobs
        print(f"RESULT {tag}: {dt:.3f}s n_prompt={len(q.prompt_token_ids)} cached={q.num_cached_tokens} "
              f"n_logprobs={None if pl is None else len(pl)} nones={None if pl is None else sum(d is None for d in pl)} "
              f"tail={None if pl is None else [[(k, round(v.logprob, 3)) for k, v in d.items()] if d else d for d in pl[-2:]]}", flush=True)
    except Exception as e:
        print(f"RESULT {tag}: FAILED {type(e).__name__}: {e}".splitlines()[0][:300], flush=True)

def main():
    llm = LLM(model=sys.argv[1], dtype="float32", gpu_memory_utilization=0.15, max_model_len=2048,
              enable_prefix_caching=True, enforce_eager=True, seed=0)
    shared = "Here is a long shared prompt about cities and countries. " * 12 + "The capital of France is"
    llm.generate([shared], SamplingParams(max_tokens=1))
    g = lambda opt, **kw: (lambda: llm.generate([shared + opt], SamplingParams(max_tokens=1, temperature=0.0, **kw))[0])
    show("default prompt_logprobs=0 ' Paris'", g(" Paris", prompt_logprobs=0))
    show("skip=False detokenize=False ' Paris'", g(" Paris", prompt_logprobs=0, skip_reading_prefix_cache=False, detokenize=False))
    show("skip=False detokenize=False ' Lyon'", g(" Lyon", prompt_logprobs=0, skip_reading_prefix_cache=False, detokenize=False))
    n = len(llm.get_tokenizer()(shared)["input_ids"])
    show("prompt_logprob_start", g(" Paris", prompt_logprobs=0, prompt_logprob_start=n - 1))
    show("prompt_logprob_token_ids", g(" Paris", prompt_logprob_token_ids=[[7042, 38034]], prompt_logprob_start=n - 1))
    # generation after a cached prefix: the cache is used
    show("generate after cached prefix", g(" Paris", logprobs=1))

if __name__ == "__main__":
    main()
