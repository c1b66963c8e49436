"""The text/event-stream format (server-sent events), as Replicate and Cog's server send it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SSEEvent:
    event: str
    data: str
    id: str | None


class SSEDecoder:
    """The text/event-stream format: fields until a blank line, `data` lines joined by newlines,
    one optional space after the colon, comments ignored, the last id remembered."""

    def __init__(self) -> None:
        self.event = ""
        self.data: list[str] = []
        self.last_id: str | None = None
        self._has_fields = False

    def feed(self, line: str) -> SSEEvent | None:
        if not line:
            if not self._has_fields:
                return None
            event = SSEEvent(self.event or "message", "\n".join(self.data), self.last_id)
            self.event, self.data, self._has_fields = "", [], False
            return event
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            self.event = value
        elif name == "data":
            self.data.append(value)
        elif name == "id" and "\0" not in value:
            self.last_id = value
        else:
            return None
        self._has_fields = True
        return None
