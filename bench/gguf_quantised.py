"""Benchmark: a GGUF file on llama.cpp (run as it is, quantised) against cogql's engine on the
same file converted to float32 (the embedded model's path), side by side in one run.

Each engine runs in a process of its own (peak RSS is a process's), one after the other:

  (a) start-up: from nothing to an engine that has answered its first op,
  (b) examples/sentiment.lmql warm (median of --repeats runs after one warm-up),
  (c) the process's peak RSS (ru_maxrss) once the query has run,
  (d) what the model takes on disk: the GGUF, or the converted float32 folder.

Usage: python bench/gguf_quantised.py [--model FILE.gguf] [--repeats 5]
(not bench/gguf.py: a script's folder comes first on sys.path, where it would hide the `gguf`
package that reads the file)
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _common import ROOT

QUERY = ROOT / "examples" / "sentiment.lmql"
ENGINES = ("llama.cpp", "cogql")


def measure(model: str, engine: str, repeats: int) -> dict[str, float | str]:
    """In this process: (a), (b), (c) and (d) for one engine."""
    import cogql
    from cogql.engine.models import gguf_file, resolve_model_path
    from cogql.lmtp.messages import Generate
    from cogql.lmtp.transports.inprocess import local_engine

    began = time.perf_counter()
    opened = local_engine(model, engine=engine)
    _first_op(opened, Generate)
    startup = time.perf_counter() - began
    source = QUERY.read_text(encoding="utf-8")
    query_model = cogql.model(f"local:{model}", engine=engine)
    result = cogql.run_sync(source, model=query_model)  # warm-up
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        cogql.run_sync(source, model=query_model)
        times.append(time.perf_counter() - began)
    on_disk = gguf_file(model) if engine == "llama.cpp" else resolve_model_path(model)
    return {
        "describe": opened.describe(),
        "startup_s": startup,
        "query_s": statistics.median(times),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "disk_mib": _size(on_disk) / 2**20,
        "classification": str(result["CLASSIFICATION"]),
    }


def _first_op(engine: object, generate: type) -> None:
    import queue

    events: queue.SimpleQueue[object] = queue.SimpleQueue()
    tok = engine.tokenizer  # type: ignore[attr-defined]
    engine.submit([generate(0, "m", tok.encode("Hello"), max_tokens=2)], events.put)  # type: ignore[attr-defined]
    while getattr(events.get(timeout=600), "finish_reason", "error") is None:
        pass


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None, help="a .gguf file (default: the embedded one)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--child", choices=ENGINES, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.model is None:
        from cogql.engine.models import embedded_gguf

        args.model = str(embedded_gguf())
    if args.child:
        print(json.dumps(measure(args.model, args.child, args.repeats)))
        return
    figures = {}
    for engine in ENGINES:
        out = subprocess.run(
            [sys.executable, __file__, "--model", args.model, "--repeats", str(args.repeats),
             "--child", engine],
            capture_output=True, text=True, timeout=1800,
        )  # fmt: skip
        if out.returncode != 0:
            sys.exit(f"the {engine} run failed:\n{out.stderr}")
        figures[engine] = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{engine}: {figures[engine]['describe']}", flush=True)
    print(f"\n{'figure':<40}" + "".join(f"{e:>12}" for e in ENGINES) + f"{'ratio':>10}")
    rows = [
        ("(a) start-up, s", "startup_s"),
        ("(b) sentiment query warm, s", "query_s"),
        ("(c) peak RSS, MiB", "peak_rss_mib"),
        ("(d) model on disk, MiB", "disk_mib"),
    ]
    for label, key in rows:
        values = [float(figures[e][key]) for e in ENGINES]
        print(
            f"{label:<40}"
            + "".join(f"{v:12.2f}" for v in values)
            + f"{values[0] / values[1]:10.2f}"
        )
    print(
        "    CLASSIFICATION: "
        + ", ".join(f"{e} {figures[e]['classification']!r}" for e in ENGINES)
        + f"; ratio = llama.cpp / cogql; {args.repeats} warm runs each"
    )


if __name__ == "__main__":
    main()
