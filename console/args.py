"""Command-line arguments typed by the method's schema.

``key=value`` is converted to the type the schema declares for ``key`` (integer,
number, boolean, array as comma-separated items, object as JSON); ``key:=JSON`` passes
raw JSON. Errors name the argument, what was expected and what exists.
"""

from __future__ import annotations

import json
from typing import Any

from hostbus.schema import MethodSpec

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


class ArgumentError(ValueError):
    pass


def _types(prop: dict[str, Any]) -> list[str]:
    if "enum" in prop:
        kinds = {type(v).__name__ for v in prop["enum"]}
        return ["string"] if kinds == {"str"} else ["any"]
    t = prop.get("type", "any")
    return t if isinstance(t, list) else [t]


def convert(key: str, raw: str, prop: dict[str, Any]) -> Any:
    types = _types(prop)
    if "null" in types and raw == "null":
        return None
    if "string" in types:
        return raw
    for kind in types:
        try:
            if kind == "integer":
                return int(raw)
            if kind == "number":
                return float(raw) if any(c in raw for c in ".eE") else int(raw)
            if kind == "boolean":
                if raw.lower() in _TRUE:
                    return True
                if raw.lower() in _FALSE:
                    return False
                raise ValueError(raw)
            if kind == "array":
                if raw.startswith("["):
                    return json.loads(raw)
                item = prop.get("items", {})
                return [convert(key, part.strip(), item) for part in raw.split(",") if part]
            if kind in ("object", "any"):
                return json.loads(raw)
        except (ValueError, json.JSONDecodeError):
            continue
    expected = " or ".join(t for t in types if t != "null")
    raise ArgumentError(f"{key}={raw!r}: expected {expected}")


def parse_pairs(pairs: tuple[str, ...] | list[str], spec: MethodSpec | None) -> dict[str, Any]:
    props = (spec.args.get("properties", {}) if spec else {})
    args: dict[str, Any] = {}
    given: dict[str, str] = {}  # key -> the pair that gave it
    for pair in pairs:
        key = pair.split("=", 1)[0].removesuffix(":")
        if key in given:  # the last one would win in silence
            raise ArgumentError(f"{key} is given twice ({given[key]} and {pair}); give it "
                                "once (a list is key:='[...]')")
        given[key] = pair
        if ":=" in pair and ("=" not in pair or pair.index(":=") < pair.index("=")):
            key, raw = pair.split(":=", 1)
            try:
                args[key] = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise ArgumentError(f"{key}:={raw!r} is not valid JSON: {exc}") from None
            continue
        if "=" not in pair:
            raise ArgumentError(f"{pair!r}: arguments are key=value (or key:=JSON)")
        key, raw = pair.split("=", 1)
        if spec is not None and key not in props:
            import difflib

            known = ", ".join(sorted(props)) or "none"
            meant = difflib.get_close_matches(key, list(props), n=1)
            raise ArgumentError(f"{spec.name} has no argument {key!r}"
                                + (f"; did you mean {meant[0]}?" if meant else "")
                                + f" (arguments: {known})")
        args[key] = convert(key, raw, props.get(key, {})) if spec is not None else raw
    return args


def parse_where(pairs: tuple[str, ...] | list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ArgumentError(f"--where {pair!r}: expected NAME=VALUE")
        out[key] = value
    return out


def describe_type(prop: dict[str, Any]) -> str:
    if "enum" in prop:
        return "|".join(str(v) for v in prop["enum"])
    types = [t for t in _types(prop) if t != "null"]
    text = "/".join(types)
    if "minimum" in prop or "maximum" in prop:
        text += f" {prop.get('minimum', '')}..{prop.get('maximum', '')}"
    if "maxLength" in prop:
        text += f" (max {prop['maxLength']} chars)"
    return text


def method_help(agent: str, spec: MethodSpec) -> str:
    """Help text for one method, made from its schema."""
    lines = [f"{agent}.{spec.name}" + ("  [DANGEROUS: asks for confirmation]"
                                       if spec.dangerous else ""), "", spec.description, ""]
    props = spec.args.get("properties", {})
    required = set(spec.args.get("required", []))
    if props:
        lines.append("Arguments (key=value):")
        width = max(len(k) for k in props)
        for key, prop in props.items():
            bits = [describe_type(prop)]
            if key in required:
                bits.append("required")
            elif "default" in prop:
                bits.append(f"default {json.dumps(prop['default'])}")
            lines.append(f"  {key:<{width}}  {', '.join(bits)}")
            if prop.get("description"):
                lines.append(f"  {'':<{width}}  {prop['description']}")
    else:
        lines.append("Arguments: none")
    for example in spec.examples[:2]:
        pairs = " ".join(f"{k}={v if not isinstance(v, dict | list) else json.dumps(v)}"
                         for k, v in example.get("args", {}).items())
        lines += ["", f"Example: hostbus call {agent}.{spec.name} {pairs} -H HOST".rstrip()]
    return "\n".join(lines)
