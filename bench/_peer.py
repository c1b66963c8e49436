"""Run a query with LMQL 0.7.3 (the peer venv) and print its timings as JSON.

Usage: ~/.cache/lmql-peer/venv/bin/python bench/_peer.py QUERY_FILE MODEL_DIR REPEATS
Runs inside LMQL's own environment; cogql is not importable there.
"""

import json
import sys
import time
from pathlib import Path

import lmql

path, model_dir, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3])
source = Path(path).read_text(encoding="utf-8")
model = lmql.model(f"local:{model_dir}", cuda=False)
times, result = [], None
for _ in range(repeats):
    start = time.perf_counter()
    result = lmql.run_sync(source, model=model)
    times.append(time.perf_counter() - start)
result = result[0] if isinstance(result, list) else result
print(json.dumps({"times": times, "variables": {k: str(v) for k, v in result.variables.items()}}))
