"""What the benchmarks share: timing, the LMQL peer, and plain-transformers forward steps."""

from __future__ import annotations

import json
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import DynamicCache

ROOT = Path(__file__).resolve().parent.parent
PEER_PY = Path.home() / ".cache/lmql-peer/venv/bin/python"
PEER_MODEL = Path.home() / ".cache/lmql-peer/smollm2-hf"


def median_time(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    out, times = None, []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def side_by_side(
    first: Callable[[], Any], second: Callable[[], Any], repeats: int
) -> tuple[float, float]:
    """Medians of alternating runs (after one warm-up each), so that drift in the machine's
    speed lands on both sides."""
    first(), second()
    a, b = [], []
    for _ in range(repeats):
        a.append(median_time(first, 1)[0])
        b.append(median_time(second, 1)[0])
    return statistics.median(a), statistics.median(b)


def peer_installed() -> bool:
    return PEER_PY.exists() and PEER_MODEL.exists()


def peer_warm(query: Path, repeats: int) -> dict[str, Any]:
    """LMQL 0.7.3 on `query` in its own venv: one warm-up run, then the median of `repeats`."""
    script = str(ROOT / "bench" / "_peer.py")
    out = subprocess.run([str(PEER_PY), script, str(query), str(PEER_MODEL), str(repeats + 1)],
                         check=True, capture_output=True, text=True)  # fmt: skip
    data = json.loads(out.stdout.strip().splitlines()[-1])
    data["warm"] = statistics.median(data["times"][1:])
    return data


def build_project(folder: Path, name: str, model: Path, dest_prefix: str | None = None) -> Path:
    """`cogql replicate build` of one model, [models.NAME] with gpu = false, into `folder`;
    returns the project folder."""
    from cogql.replicate.deploy.build import build
    from cogql.replicate.deploy.config import load_config

    prefix = f'dest_prefix = "{dest_prefix}"\n' if dest_prefix else ""
    config = folder / "config.toml"
    config.write_text(f'{prefix}[models.{name}]\nlocal.path = "{model}"\ngpu = false\n')
    [result] = build(load_config(config), folder / "work", progress=False)
    return result.folder


def step(model: torch.nn.Module, cache: DynamicCache, ids: list[int]) -> torch.Tensor:
    """Feed `ids` onto `cache` with `model` (keys/values cast to its precision); last logits."""
    for layer in cache.layers:
        if layer.keys is not None and layer.keys.dtype != model.dtype:
            layer.keys, layer.values = layer.keys.to(model.dtype), layer.values.to(model.dtype)
    out = model(
        input_ids=torch.tensor([ids]), past_key_values=cache, use_cache=True, logits_to_keep=1
    )
    return out.logits[0, -1]
