"""`cogql playground`: a page on loopback to edit a query, run it and watch it run.

The page (static/, plain HTML, CSS and JS, every asset served from here) talks to a
starlette app (server.py) over one websocket: it sends a query to run, and gets the query's
events (runtime/events.py, with details: tokens, alternatives, search tree) as JSON (wire.py).
One running query per page (session.py); Stop cancels its task and so its model calls. Every
request needs the session's random token, and browser requests must come from the page's own
origin (access.py): a query is a program, and the playground runs it as the user.
"""

# its modules need the `playground` extra (server.py) or the CLI; nothing is re-exported here
__all__: list[str] = []
