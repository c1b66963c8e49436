"""The `replicate:` transport: LMTP ops as predictions of an LMTP Cog model on Replicate.

A prediction's one input, `ops_batch_json`, holds `[[TYPE, payload], ...]`; its output streams
one `TOKEN {...}` / `MSG {...}` line per event (reference: lmtp-and-replicate-tunnel.md §2.3).
That is LMQL's protocol, so LMQL-built models work unchanged; cogql-built ones also advertise
extensions in MODEL_INFO, which the client then uses (stop strings and grammars server-side).

Every prediction is a queued, billed round trip, so this transport spends as few as it can:

- ops sent within `batch_window` seconds of each other share one prediction (all options of a
  `distribution` clause arrive together; concurrent branches of `sample(n=...)` usually do);
- the version lookup happens once per process, and one HTTP session serves each event loop;
- MODEL_INFO answers are remembered per model version (in memory and on disk), so only the
  first query against a version pays a prediction for them;
- batches without a GENERATE are created with `Prefer: wait`, so their answer comes back with
  the create, without opening a stream;
- a prediction whose ops the client no longer reads is canceled at once.

Nothing waits forever and nothing runs twice: creates are retried on 429/5xx only where no
duplicate can result (api.py); a dropped event stream is resumed with Last-Event-ID,
or, failing that, the prediction is polled; a prediction that is silent for `idle_timeout`
seconds is canceled; an `error` event, a failed prediction or one that ends without answering
all its ops fails those ops with a message that names the prediction.
"""

from .api import (
    ReplicateAPIError,
    ReplicateConfigError,
    ReplicatePredictionError,
    ReplicateTarget,
    ReplicateTransportError,
)
from .endpoint import api_token_from, base_url_from, parse_endpoint
from .transport import ReplicateTransport, forget_lookups

__all__ = [
    "ReplicateAPIError",
    "ReplicateConfigError",
    "ReplicatePredictionError",
    "ReplicateTarget",
    "ReplicateTransport",
    "ReplicateTransportError",
    "api_token_from",
    "base_url_from",
    "forget_lookups",
    "parse_endpoint",
]
