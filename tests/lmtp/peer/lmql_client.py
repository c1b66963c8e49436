"""Runs inside LMQL 0.7.3's own venv (cogql is not importable there): run a query file with
LMQL's client against each LMTP endpoint given, print one JSON line per endpoint.

Usage: PEER_PYTHON tests/lmtp/peer/lmql_client.py QUERY_FILE MODEL_DIR ENDPOINT [ENDPOINT ...]
The model name is MODEL_DIR, so that `lmql serve-model MODEL_DIR` serves it (an LMQL server
loads whatever model a client names) and cogql's server, which ignores the name, does too.
"""

import json
import sys
import time

import lmql

query_file, model_dir, *endpoints = sys.argv[1:]
with open(query_file, encoding="utf-8") as f:
    source = f.read()
for endpoint in endpoints:
    model = lmql.model(model_dir, endpoint=endpoint, tokenizer=model_dir)
    start = time.perf_counter()
    result = lmql.run_sync(source, model=model)
    result = result[0] if isinstance(result, list) else result
    seconds = time.perf_counter() - start
    out = {"endpoint": endpoint, "seconds": seconds, "prompt": result.prompt,
           "variables": result.variables}  # fmt: skip
    print(json.dumps(out), flush=True)
