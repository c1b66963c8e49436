"""`cogql playground [FILE]`: serve the page, open it in the browser, run until Ctrl-C."""

from __future__ import annotations

import webbrowser

import click

from ..extras import require


@click.command()
@click.argument("file", required=False, type=click.Path(allow_dash=True))
@click.option("--model", "model_name", default="", metavar="MODEL",
              help="The model field at first: a name cogql.model takes, local:PATH, an LMTP "
                   "server (ws://host:port) or replicate:OWNER/NAME.")  # fmt: skip
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to listen on (anything but loopback lets others run programs "
                   "as you, given the token).")  # fmt: skip
@click.option("--port", default=0, type=click.IntRange(0, 65535),
              help="Port to listen on (default: a free one).")  # fmt: skip
@click.option("--no-browser", is_flag=True, help="Print the URL only; open no browser.")
def playground(file: str | None, model_name: str, host: str, port: int, no_browser: bool) -> None:
    """Edit and run a query in the browser, and watch it run: the prompt as it streams, each
    token's alternatives, every model call, the decoder's search tree.

    FILE fills the editor at first. The page is served on loopback with a random token in its
    URL; every request needs it. A query is a program: the playground runs it as you.
    """
    from ..cli import _read_query, fail, note

    require("playground", "cogql playground")
    from .server import Playground, PlaygroundError

    source = _read_query(file) if file else ""
    try:
        server = Playground(source, model=model_name, host=host, port=port).start()
    except PlaygroundError as e:
        fail(str(e))
    note(f"cogql playground: {server.url}")
    note("(the token in the URL is this session's; Ctrl-C stops the playground)")
    if not no_browser:
        try:
            webbrowser.open(server.url)
        except webbrowser.Error:
            note("no browser to open here: open the URL above")
    try:
        server.wait()
    except KeyboardInterrupt:
        note("stopping")
    finally:
        server.stop()
