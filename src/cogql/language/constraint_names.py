"""The functions a where clause may call without defining them (LMQL's constraint names).

The one list: the compiler keeps these names out of a query's inputs, and constraints/ gives
them their meaning. Both spellings are LMQL's (upper case, and lower case where LMQL has one).
"""

from __future__ import annotations

STOP_FUNCTIONS = frozenset({"STOPS_AT", "STOPS_BEFORE", "stops_at", "stops_before"})
POSTPROCESSORS = frozenset({"ESCAPED", "escaped", "ERASE", "erase"})
VALUE_FUNCTIONS = frozenset({"TOKENS", "WORDS", "SENTENCES", "INT", "REGEX", "STARTS_WITH"})
CONSTRAINT_FUNCTIONS = STOP_FUNCTIONS | POSTPROCESSORS | VALUE_FUNCTIONS

__all__ = ["CONSTRAINT_FUNCTIONS", "POSTPROCESSORS", "STOP_FUNCTIONS", "VALUE_FUNCTIONS"]
