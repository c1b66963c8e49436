"""Input validation against a version's Input schema, before a prediction exists.

Replicate validates inputs at the API and answers 422 with a readable reason
(`input.FIELD: ...`), so a bad input never costs a prediction; the Cog server's own 422 has
another shape. The checks are the ones Cog's schemas use: required, type, minimum/maximum,
minLength/maxLength, pattern, and enums (as `allOf` references or inline). Unknown keys are
dropped, as Cog drops them.
"""

from __future__ import annotations

import re
from typing import Any

from .errors import InvalidInput

_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list,),
    "object": (dict,),
}
_JSON_NAMES = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    list: "array",
    dict: "object",
    type(None): "null",
}


def _resolve(prop: dict[str, Any], schemas: dict[str, Any]) -> dict[str, Any]:
    """Merge `allOf` / `$ref` parts (Cog writes enums as a referenced schema)."""
    merged = {k: v for k, v in prop.items() if k not in ("allOf", "$ref")}
    parts = list(prop.get("allOf", []))
    if "$ref" in prop:
        parts.append({"$ref": prop["$ref"]})
    for part in parts:
        ref = part.get("$ref", "")
        target = schemas.get(ref.rsplit("/", 1)[-1], {}) if ref else part
        merged = {**_resolve(target, schemas), **merged}
    return merged


def _type_ok(value: Any, kind: str) -> bool:
    if kind in ("integer", "number") and isinstance(value, bool):
        return False
    if kind == "integer" and isinstance(value, float):
        return value.is_integer()
    return isinstance(value, _TYPES.get(kind, (object,)))


def _check(name: str, value: Any, prop: dict[str, Any]) -> None:
    where = f"input.{name}"
    kind = prop.get("type")
    if kind and not _type_ok(value, kind):
        given = _JSON_NAMES.get(type(value), type(value).__name__)
        raise InvalidInput(f"{where}: Invalid type. Expected: {kind}, given: {given}")
    if "enum" in prop and value not in prop["enum"]:
        allowed = ", ".join(repr(v) for v in prop["enum"])
        raise InvalidInput(f"{where}: must be one of the following: {allowed}")
    if "minimum" in prop and value < prop["minimum"]:
        raise InvalidInput(f"{where}: Must be greater than or equal to {prop['minimum']}")
    if "maximum" in prop and value > prop["maximum"]:
        raise InvalidInput(f"{where}: Must be less than or equal to {prop['maximum']}")
    if isinstance(value, str):
        if "minLength" in prop and len(value) < prop["minLength"]:
            raise InvalidInput(f"{where}: String length must be at least {prop['minLength']}")
        if "maxLength" in prop and len(value) > prop["maxLength"]:
            raise InvalidInput(f"{where}: String length must be at most {prop['maxLength']}")
        if "pattern" in prop and not re.search(prop["pattern"], value):
            raise InvalidInput(f"{where}: Does not match pattern '{prop['pattern']}'")


def validate_input(value: Any, schema: dict[str, Any]) -> dict[str, Any]:
    """The input with unknown keys dropped; raises InvalidInput (422) with the first reason."""
    if value is None:
        value = {}
    if not isinstance(value, dict):
        given = _JSON_NAMES.get(type(value), type(value).__name__)
        raise InvalidInput(f"input: Invalid type. Expected: object, given: {given}")
    schemas = schema.get("components", {}).get("schemas", {})
    spec = schemas.get("Input", {})
    props: dict[str, Any] = spec.get("properties", {})
    for name in spec.get("required", []):
        if name not in value:
            raise InvalidInput(f"input: {name} is required")
    for name, item in value.items():
        if name in props:
            _check(name, item, _resolve(props[name], schemas))
    return {k: v for k, v in value.items() if k in props}
