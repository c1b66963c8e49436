"""The model field's suggestions; what is typed there is read as `cogql run --model` reads it
(runtime/model.py `typed_model`)."""

from __future__ import annotations

SUGGESTED = ("default", "random", "local:/path/to/model", "ws://127.0.0.1:8080",
             "replicate:owner/name")  # fmt: skip
