"""An ASGI app served by uvicorn from a thread with its own event loop, on a socket bound
first (a busy port is known before anything else starts): how the Replicate emulator and the
playground run beside the code that started them. uvicorn is imported by the caller's extra
(`deploy`, `playground`); this module names it only when a server starts."""

from __future__ import annotations

import asyncio
import errno
import socket
import threading
import time
from typing import Any

__all__ = ["ServedInThread", "listening_socket", "why_not_listening"]


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket listening on host:port (0: a free port); the OSError as it came otherwise."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen()
    except OSError:
        sock.close()
        raise
    return sock


def why_not_listening(host: str, port: int, error: OSError) -> str:
    """The user's words for a failed `listening_socket`."""
    if error.errno == errno.EADDRINUSE:
        return f"port {port} on {host} is in use; pass --port N or stop the process that holds it"
    return f"cannot listen on {host}:{port}: {error.strerror or error}"


class ServedInThread:
    """`app` on `sock` until `stop`. `start` returns once uvicorn listens, or False (with
    `failure`, if it raised) when it died or did not start within `timeout` seconds."""

    def __init__(self, app: Any, sock: socket.socket, *, name: str, **config: Any) -> None:
        import uvicorn

        config.setdefault("log_level", "warning")
        config.setdefault("access_log", False)
        self.server = uvicorn.Server(uvicorn.Config(app, **config))
        self.loop: asyncio.AbstractEventLoop | None = None
        self.failure: BaseException | None = None
        self._sock = sock
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self, timeout: float) -> bool:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def wait(self) -> None:
        """Until the server ends (it ends on `stop`)."""
        while self._thread.is_alive():
            self._thread.join(0.5)

    def stop(self, timeout: float = 15) -> None:
        self.server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout=timeout)

    def _run(self) -> None:
        self.loop = asyncio.new_event_loop()
        try:
            self.loop.run_until_complete(self.server.serve(sockets=[self._sock]))
        except BaseException as e:
            self.failure = e
        finally:
            self._sock.close()
            self.loop.close()
