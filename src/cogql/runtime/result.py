"""LMQLResult: what a query returns when it has no `return` statement (LMQL's shape)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class LMQLResult:
    prompt: str
    variables: dict[str, Any] = field(default_factory=dict)
    distribution_variable: str | None = None
    distribution_values: list[str] | None = None

    def __getitem__(self, key: str) -> Any:
        return self.variables[key]

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "variables": {k: _plain(v) for k, v in self.variables.items()},
            "distribution_variable": self.distribution_variable,
            "distribution_values": self.distribution_values,
        }


def _plain(value: Any) -> Any:
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value
