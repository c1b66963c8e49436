"""Where clauses, per hole: offers the runtime `compile_hole` (a hole's constraints -> a
`HoleSpec`: the grammar, stops and token limits the model side enforces, plus the Python
predicates checked on the client) and the errors a constraint can raise.

Names load on first use; importing the package imports none of its modules."""

import typing as _typing

__all__ = [
    "ConstraintError",
    "HoleSpec",
    "HoleText",
    "Predicate",
    "compile_hole",
]

if _typing.TYPE_CHECKING:
    from .compile import compile_hole
    from .holespec import HoleSpec
    from .values import ConstraintError, HoleText, Predicate
else:
    from .._lazy import lazy_exports as _lazy_exports

    __getattr__ = _lazy_exports(
        __name__,
        {
            ".compile": ("compile_hole",),
            ".holespec": ("HoleSpec",),
            ".values": ("ConstraintError", "HoleText", "Predicate"),
        },
    )
