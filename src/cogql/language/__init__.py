"""The query language: LMQL source in, a compiled query out. Offers the runtime
`compile_query` (source text -> `CompiledQuery`: prompt program, holes, clauses), the hole and
interpolation records it refers to, and the errors that point at a line and column.

Names load on first use; importing the package imports none of its modules."""

import typing as _typing

__all__ = [
    "CompiledQuery",
    "Hole",
    "HoleTypeError",
    "Interpolation",
    "QueryCompileError",
    "QueryFileError",
    "QuerySyntaxError",
    "compile_query",
    "read_query_source",
]

if _typing.TYPE_CHECKING:
    from .compiler import CompiledQuery, compile_query
    from .errors import HoleTypeError, QueryCompileError, QuerySyntaxError
    from .qstrings import Hole, Interpolation
    from .source_file import QueryFileError, read_query_source
else:
    from .._lazy import lazy_exports as _lazy_exports

    __getattr__ = _lazy_exports(
        __name__,
        {
            ".compiler": ("CompiledQuery", "compile_query"),
            ".errors": ("HoleTypeError", "QueryCompileError", "QuerySyntaxError"),
            ".qstrings": ("Hole", "Interpolation"),
            ".source_file": ("QueryFileError", "read_query_source"),
        },
    )
