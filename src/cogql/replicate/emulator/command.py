"""`cogql replicate serve`: the emulator in the foreground until SIGINT or SIGTERM.

The two `export` lines go to stdout as soon as the API listens (a script can `eval` them, or a
test can read them to know the address); progress goes to stderr. The Cog servers boot in the
background: a prediction made before its model is ready stays `starting`, as on a cold boot,
and a model whose setup fails is reported here and fails its predictions with the cause.
"""

from __future__ import annotations

import shlex
import signal
import threading
from collections.abc import Callable

from ..cog.cogserver import CogServerError
from .server import ReplicateEmulator

Echo = Callable[[str], None]


def _report_ready(emu: ReplicateEmulator, err: Echo) -> None:
    for ref, server in list(emu.servers.items()):
        try:
            seconds = server.wait_ready(emu.ready_timeout)
        except CogServerError as e:
            err(f"{ref}: the Cog server is not usable; its predictions will fail:\n{e}")
            continue
        err(f"{ref}: ready in {seconds:.1f} s (Cog server {server.address}, log {server.log_path})")


def serve(emu: ReplicateEmulator, out: Echo, err: Echo) -> None:
    """Start `emu`, print what clients need, and serve until interrupted."""
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        emu.start()
        for name, value in emu.env.items():
            out(f"export {name}={shlex.quote(value)}")
        for entry in emu.entries:
            err(f"model {entry.ref}  version {entry.version_id}  ({entry.project})")
        err(f"Replicate's API on {emu.base_url}/v1 (latency {emu.latency:g} s); Ctrl-C stops")
        if not emu.isolate:
            err("warning: the Cog servers listen on loopback ports any local user can reach")
        threading.Thread(target=_report_ready, args=(emu, err), daemon=True).start()
        stop.wait()
        err("stopping")
    finally:
        emu.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
