"""Runs a Cog server where no other program can reach it, and lets its owner in by a socket file.

Cog's server (coglet) listens on TCP and checks no credentials, and any local user can connect
to a loopback port. Started by `unshare --user --map-root-user --net` (cogserver.py), this
script runs in a network namespace of its own: it brings that namespace's loopback up, starts
the Cog server there (its port exists only inside; so do the abstract sockets coglet talks to
its worker on), and forwards each connection of a Unix socket, mode 0600 in a 0700 folder, to
it. Only the user who started it (and root) can open that file.

Standard library only, and run with `python -I` by path: the Cog server's folder holds a
vendored cogql, which must not shadow or be shadowed by this one.

    python -I cogbridge.py --check                        # exit 0 where namespaces work
    python -I cogbridge.py SOCKET_PATH -- COMMAND...      # COMMAND gets PORT in its env
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal
import socket
import struct
import sys

SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
CHUNK = 1 << 16


def loopback_up() -> None:
    """A new network namespace's `lo` is down: connecting to 127.0.0.1 fails until it is up."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        request = struct.pack("16sH22x", b"lo", 0)
        flags = struct.unpack("16sH", fcntl.ioctl(s, SIOCGIFFLAGS, request)[:18])[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", flags | IFF_UP))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> bool:
    """Copy until end of file (then half-close `sink`): True; a broken connection: False."""
    try:
        while data := await source.read(CHUNK):
            sink.write(data)
            await sink.drain()
        if sink.can_write_eof():
            sink.write_eof()
        return True
    except OSError:
        return False


async def forward(port: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:  # the Cog server is not listening yet: the caller sees a closed connection
        writer.close()
        return
    up = asyncio.ensure_future(pipe(reader, upstream_writer))
    down = asyncio.ensure_future(pipe(upstream_reader, writer))
    try:
        done, _ = await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        if all(task.result() for task in done):
            await asyncio.wait({up, down})
    finally:
        for w in (upstream_writer, writer):
            w.close()
        for task in (up, down):
            task.cancel()


async def bridge(socket_path: str, command: list[str]) -> int:
    port = free_port()
    child = await asyncio.create_subprocess_exec(*command, env={**os.environ, "PORT": str(port)})
    loop = asyncio.get_running_loop()

    def pass_on(sig: signal.Signals) -> None:
        if child.returncode is None:
            child.send_signal(sig)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, pass_on, sig)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(socket_path)
    old_umask = os.umask(0o177)
    try:
        server = await asyncio.start_unix_server(lambda r, w: forward(port, r, w), path=socket_path)
    finally:
        os.umask(old_umask)
    os.chmod(socket_path, 0o600)
    async with server:
        return await child.wait()


def main(argv: list[str]) -> int:
    loopback_up()
    if argv == ["--check"]:
        return 0
    if len(argv) < 3 or argv[1] != "--":
        print("usage: cogbridge.py SOCKET_PATH -- COMMAND...", file=sys.stderr)
        return 2
    code = asyncio.run(bridge(argv[0], argv[2:]))
    if code < 0:  # died of a signal: so does the bridge, so its parent sees the same
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
