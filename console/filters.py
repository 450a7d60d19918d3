"""One filter grammar for host facts (``--where``) and object fields (``query --filter``).

    role=web                  equal (as text; numbers compare as numbers: cpus=02)
    os=lin*                   a glob (* ? [...])
    role!=web                 not equal (also true where the key is missing)
    kernel=~^6\\.1            a regular expression (search); !~ for "does not match"
    cpus>=4  load<2.5         numeric comparison: < <= > >=
    role=web and not env=prod     and, or, not, parentheses; terms side by side
    (role=web or role=db) cpus>4  are joined by and; repeated options too

Values with spaces or parentheses are quoted: ``name='my app'``. Filters an agent can
evaluate itself (exact equality; globs for objects) are also sent to it, so fewer
answers travel; the whole filter is always evaluated here as well.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from console.args import ArgumentError

_OPS = ("=~", "!~", "!=", "<=", ">=", "==", "=", "<", ">")
_OP_CHARS = set("=!<>~")
_KEY = re.compile(r"[A-Za-z0-9_.\-]+\Z")
_GLOB = set("*?[")


def as_text(value: Any) -> str:
    """How values compare as text, as agents compare them: booleans true/false, None
    empty."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


@dataclass
class Term:
    """KEY OP VALUE."""

    key: str
    op: str
    value: str
    regex: re.Pattern[str] | None = None

    def __post_init__(self) -> None:
        if self.op in ("=~", "!~"):
            self.regex = re.compile(self.value)
        if self.op in ("<", "<=", ">", ">=") and _number(self.value) is None:
            raise ArgumentError(f"{self}: {self.op} compares numbers; {self.value!r} is not one")

    def __str__(self) -> str:
        return f"{self.key}{self.op}{self.value}"

    def matches(self, record: Mapping[str, Any]) -> bool:
        present = self.key in record
        have = as_text(record.get(self.key))
        if self.op in ("=", "=="):
            return present and self._equal(have)
        if self.op == "!=":
            return not (present and self._equal(have))
        if self.regex is not None:
            found = present and self.regex.search(have) is not None
            return found if self.op == "=~" else not found
        number, wanted = _number(have), float(self.value)
        if not present or number is None:
            return False
        return {"<": number < wanted, "<=": number <= wanted, ">": number > wanted,
                ">=": number >= wanted}[self.op]

    def _equal(self, have: str) -> bool:
        if _GLOB & set(self.value):
            return fnmatch.fnmatchcase(have, self.value)
        a, b = _number(have), _number(self.value)
        return a == b if a is not None and b is not None else have == self.value


@dataclass
class Not:
    inner: Node

    def matches(self, record: Mapping[str, Any]) -> bool:
        return not self.inner.matches(record)


@dataclass
class All:
    parts: tuple[Node, ...]

    def matches(self, record: Mapping[str, Any]) -> bool:
        return all(p.matches(record) for p in self.parts)


@dataclass
class Any_:
    parts: tuple[Node, ...]

    def matches(self, record: Mapping[str, Any]) -> bool:
        return any(p.matches(record) for p in self.parts)


Node = Term | Not | All | Any_


@dataclass(frozen=True)
class Filter:
    """A parsed filter: ``matches(record)``; what may also be sent to agents."""

    root: Node | None
    text: str

    def matches(self, record: Mapping[str, Any]) -> bool:
        return self.root is None or self.root.matches(record)

    def __bool__(self) -> bool:
        return self.root is not None

    def keys(self) -> set[str]:
        found: set[str] = set()

        def walk(node: Node) -> None:
            if isinstance(node, Term):
                found.add(node.key)
            elif isinstance(node, Not):
                walk(node.inner)
            else:
                for part in node.parts:
                    walk(part)

        if self.root is not None:
            walk(self.root)
        return found

    def exact(self, globs: bool) -> dict[str, str]:
        """The top-level ``KEY=VALUE`` terms every match must satisfy, as the agents'
        own filters take them (text equality; with ``globs``, globs too). Numbers are
        left out: agents compare them as text (02 is not 2)."""
        parts = self.root.parts if isinstance(self.root, All) else (self.root,)
        out: dict[str, str] = {}
        for part in parts:
            if isinstance(part, Term) and part.op in ("=", "==") and part.key not in out \
                    and _number(part.value) is None and (globs or not _GLOB & set(part.value)):
                out[part.key] = part.value
        return out


    def sent_whole(self, globs: bool) -> bool:
        """Whether ``exact(globs)`` is the whole filter (agents then filter it all)."""
        parts = self.root.parts if isinstance(self.root, All) else (self.root,)
        return self.root is None or len(self.exact(globs)) == len(parts)


def parse(texts: Iterable[str], option: str = "--where") -> Filter:
    """Each text is one expression; several are joined by and. Raises ArgumentError
    naming the option, the expression and what was expected."""
    texts = list(texts)
    nodes = [_Parser(text, option).parse() for text in texts]
    root: Node | None = None if not nodes else nodes[0] if len(nodes) == 1 else _all(nodes)
    return Filter(root, " and ".join(texts))


def _all(parts: list[Node]) -> All:
    """``and`` of ``parts``, nested ands flattened (their terms are top-level too)."""
    flat: list[Node] = []
    for part in parts:
        flat.extend(part.parts if isinstance(part, All) else (part,))
    return All(tuple(flat))


def check_keys(flt: Filter, known: Iterable[str], what: str, option: str) -> None:
    """Refuse keys a record can never have (an object class's fields)."""
    known = list(known)
    unknown = sorted(flt.keys() - set(known))
    if unknown:
        raise ArgumentError(f"{option}: {what} has no field {unknown[0]!r}; fields: "
                            f"{', '.join(known)}")


# ------------------------------------------------------------------------ parser
def _tokens(text: str, option: str) -> list[tuple[str, str]]:
    """(kind, text): "(" ")" "word" "op" "value"."""
    out: list[tuple[str, str]] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch.isspace():
            i += 1
        elif ch in "()":
            out.append((ch, ch))
            i += 1
        elif ch == "!" and i + 1 < n and text[i + 1] not in "=~":
            out.append(("word", "not"))  # !env=prod, as in other tools
            i += 1
        elif ch in _OP_CHARS:
            op = next((o for o in _OPS if text.startswith(o, i)), None)
            if op is None:
                raise ArgumentError(f"{option} {text!r}: unknown operator at {text[i:]!r}; "
                                    f"use one of {' '.join(_OPS)}")
            out.append(("op", op))
            i += len(op)
            if i < n and text[i] in _OP_CHARS:
                raise ArgumentError(f"{option} {text!r}: unknown operator at "
                                    f"{text[i - len(op):]!r}; use one of {' '.join(_OPS)}")
            value, i = _value(text, i, option)
            out.append(("value", value))
        else:
            start = i
            while i < n and not text[i].isspace() and text[i] not in "()" \
                    and text[i] not in _OP_CHARS:
                i += 1
            out.append(("word", text[start:i]))
    return out


def _value(text: str, i: int, option: str) -> tuple[str, int]:
    """The value after an operator: quoted, or up to a space or a closing parenthesis."""
    n = len(text)
    while i < n and text[i] == " ":
        i += 1
    if i < n and text[i] in "'\"":
        end = text.find(text[i], i + 1)
        if end < 0:
            raise ArgumentError(f"{option} {text!r}: unclosed quote")
        return text[i + 1:end], end + 1
    start = i
    while i < n and not text[i].isspace() and text[i] != ")":
        i += 1
    return text[start:i], i


class _Parser:
    def __init__(self, text: str, option: str) -> None:
        self.text = text
        self.option = option
        self.toks = _tokens(text, option)
        self.pos = 0

    def fail(self, expected: str) -> ArgumentError:
        at = self.toks[self.pos][1] if self.pos < len(self.toks) else "the end"
        return ArgumentError(f"{self.option} {self.text!r}: expected {expected} at {at!r} "
                             "(e.g. role=web, cpus>=4, os=~^lin, role=web and not env=prod)")

    def peek(self) -> tuple[str, str] | None:
        return self.toks[self.pos] if self.pos < len(self.toks) else None

    def keyword(self, word: str) -> bool:
        tok = self.peek()
        if tok is not None and tok[0] == "word" and tok[1].lower() == word:
            self.pos += 1
            return True
        return False

    def parse(self) -> Node:
        if not self.toks:
            raise self.fail("a condition")
        node = self.or_()
        if self.pos != len(self.toks):
            raise self.fail("and, or or the end")
        return node

    def or_(self) -> Node:
        parts = [self.and_()]
        while self.keyword("or"):
            parts.append(self.and_())
        return parts[0] if len(parts) == 1 else Any_(tuple(parts))

    def and_(self) -> Node:
        parts = [self.not_()]
        while True:
            if self.keyword("and"):
                parts.append(self.not_())
                continue
            tok = self.peek()
            if tok is not None and (tok[0] == "(" or (tok[0] == "word"
                                                        and tok[1].lower() != "or")):
                parts.append(self.not_())  # side by side: and
                continue
            break
        return parts[0] if len(parts) == 1 else _all(parts)

    def not_(self) -> Node:
        if self.keyword("not"):
            return Not(self.not_())
        return self.primary()

    def primary(self) -> Node:
        tok = self.peek()
        if tok is None:
            raise self.fail("a condition")
        if tok[0] == "(":
            self.pos += 1
            node = self.or_()
            if self.peek() is None or self.peek()[0] != ")":  # type: ignore[index]
                raise self.fail("')'")
            self.pos += 1
            return node
        if tok[0] != "word" or not _KEY.match(tok[1]):
            raise self.fail("NAME OP VALUE")
        if self.pos + 2 > len(self.toks) or self.toks[self.pos + 1][0] != "op":
            raise self.fail(f"an operator after {tok[1]!r}")
        key, op, value = tok[1], self.toks[self.pos + 1][1], self.toks[self.pos + 2][1]
        self.pos += 3
        try:
            return Term(key, "=" if op == "==" else op, value)
        except re.error as exc:
            raise ArgumentError(f"{self.option} {self.text!r}: {key}{op}{value}: not a "
                                f"regular expression: {exc}") from None

