"""Checks for text that comes from outside cogql: config values, and names read from files (the
shard names of an index, the paths of a manifest). A hostile model folder or an edited manifest
must not make a build read or write anywhere but where the user said, and a config value must
not be able to add lines to a generated file."""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from pathlib import Path

MAX_NAME = 255  # characters in a relative name read from a file (one path component's limit)
_LINE_BREAKING = ("Cc", "Zl", "Zp")  # control characters, and the line/paragraph separators


def control_character(text: str) -> str | None:
    """The first control or line-breaking character in `text`, as U+XXXX, or None."""
    for char in text:
        if unicodedata.category(char) in _LINE_BREAKING:
            return f"U+{ord(char):04X}"
    return None


def relative_name_problem(name: object) -> str | None:
    """Why `name` is not a plain relative path below a folder (posix, no '..'); None if it is."""
    if not isinstance(name, str):
        return f"is not a string but {type(name).__name__}"
    if not name:
        return "is empty"
    if len(name) > MAX_NAME:
        return f"is {len(name)} characters long (at most {MAX_NAME})"
    char = control_character(name)
    if char:
        return f"contains the control character {char}"
    if "\\" in name:
        return "contains a backslash"
    if name.startswith("/"):
        return "is an absolute path"
    parts = name.split("/")
    if ".." in parts:
        return "climbs out of its folder with '..'"
    if any(part in ("", ".") for part in parts):
        return "has an empty or '.' path component"
    return None


def inside(path: Path, roots: Iterable[Path]) -> bool:
    """Is `path` (resolved, links followed) one of `roots` or below one? Roots are resolved."""
    return any(path == root or path.is_relative_to(root) for root in roots)
