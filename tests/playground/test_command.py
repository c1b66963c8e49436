"""`cogql playground FILE` as a user starts it: it prints the URL with its token, serves the
file in the editor, and Ctrl-C stops it."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

SENTIMENT = Path(__file__).resolve().parents[2] / "examples" / "sentiment.lmql"


@pytest.mark.slow  # a subprocess
def test_the_command_serves_the_file_until_ctrl_c() -> None:
    command = [sys.executable, "-m", "cogql", "playground", str(SENTIMENT), "--no-browser"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        line = ""
        deadline = time.monotonic() + 60
        while "http://" not in line and time.monotonic() < deadline:
            line = proc.stderr.readline()
        found = re.search(r"http://127\.0\.0\.1:\d+/\?token=[\w-]+", line)
        assert found, line
        page = httpx.get(found.group(0), timeout=30)
        assert page.status_code == 200 and "Hiking in the mountains" in page.text
        assert httpx.get(found.group(0).split("?")[0], timeout=30).status_code == 403
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from cogql.cli import main

    done = CliRunner().invoke(main, ["playground", str(tmp_path / "nope.lmql"), "--no-browser"])
    assert done.exit_code == 2 and "cannot read" in done.output


def test_a_busy_port_is_named_with_what_to_do() -> None:
    import socket

    from click.testing import CliRunner

    from cogql.cli import main

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        done = CliRunner().invoke(main, ["playground", "--port", str(port), "--no-browser"])
    assert done.exit_code == 1
    assert f"port {port} on 127.0.0.1 is in use; pass --port N" in done.output
