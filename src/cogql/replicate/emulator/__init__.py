"""Replicate's HTTP API on loopback, in front of the real Cog server of each built project.

`ReplicateEmulator` (server.py) is the entry point; `cogql replicate serve` runs one until
interrupted. Modules: catalog (projects → models, versions, deployments), validate (inputs
against the schema), store (predictions and their event logs), sse (Replicate's event stream),
backend (the Cog server adapter: health, restarts, retries), body (request bodies: size cap,
JSON checks), routes (the HTTP API), auth and errors (tokens, problem JSON), faults.
"""

from ... import extras as _extras

_extras.require("deploy", "cogql.replicate.emulator")  # before starlette's ImportError, a clear one

from .errors import APIError  # noqa: E402
from .server import EmulatorError, PortInUseError, ReplicateEmulator  # noqa: E402

__all__ = ["APIError", "EmulatorError", "PortInUseError", "ReplicateEmulator"]
