"""Reading the request ``id`` of a frame that cannot be processed, so its one answer
carries that id (a peer waiting on it must never hang): a rate-limited frame, or one
that is not valid JSON for orjson (NaN, 1e309, integers beyond 64 bits, nesting deeper
than orjson allows). Pure."""

from __future__ import annotations

import orjson

MAX_INT = 2**53 - 1
_SCAN_LIMIT = 1 << 20  # characters scanned at most (frames are capped well below this)


def _valid(rid: object) -> str | int | None:
    if isinstance(rid, str) and 0 < len(rid) <= 64:
        return rid
    if type(rid) is int and 0 <= rid <= MAX_INT:
        return rid
    return None


def read_request_id(raw: str | bytes) -> str | int | None:
    """The top-level ``id`` of a JSON object frame, if it is a valid request id."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        return _scan(text[:_SCAN_LIMIT])
    return _valid(obj.get("id")) if isinstance(obj, dict) else None


def _string_end(s: str, i: int) -> int:
    """Index after the closing quote of the string starting at ``s[i] == '"'`` (-1: none)."""
    j = i + 1
    n = len(s)
    while j < n:
        c = s[j]
        if c == "\\":
            j += 2
            continue
        if c == '"':
            return j + 1
        j += 1
    return -1


def _scan(s: str) -> str | int | None:
    """Walk the text: find the key ``"id"`` at depth 1 and read its string or integer value."""
    depth = 0
    i, n = 0, len(s)
    expect_key = False
    while i < n:
        c = s[i]
        if c == '"':
            end = _string_end(s, i)
            if end < 0:
                return None
            if depth == 1 and expect_key and s[i:end] == '"id"':
                j = end
                while j < n and s[j] in " \t\r\n":
                    j += 1
                if j < n and s[j] == ":":
                    return _value(s, j + 1)
            expect_key = False
            i = end
            continue
        if c in "{[":
            depth += 1
            expect_key = c == "{" and depth == 1
        elif c in "}]":
            depth -= 1
        elif c == "," and depth == 1:
            expect_key = True
        i += 1
    return None


def _value(s: str, j: int) -> str | int | None:
    n = len(s)
    while j < n and s[j] in " \t\r\n":
        j += 1
    if j < n and s[j] == '"':
        end = _string_end(s, j)
        if end < 0:
            return None
        try:
            return _valid(orjson.loads(s[j:end]))
        except orjson.JSONDecodeError:
            return None
    k = j
    while k < n and s[k].isdigit() and s[k].isascii() and k - j <= 16:
        k += 1
    if k > j and (k >= n or s[k] in " \t\r\n,}"):
        return _valid(int(s[j:k]))
    return None


# --------------------------------------------------------------------------- the NUL character

#: what a NUL character looks like in JSON text (a raw one is not valid JSON in a string)
_NUL_ESCAPE = "\\u0000"
_NUL_ESCAPE_BYTES = _NUL_ESCAPE.encode()
NUL_MESSAGE = "a text may not contain the NUL character (U+0000): nothing stores it"


def has_nul_escape(raw: str | bytes) -> bool:
    """Whether the JSON text may hold a NUL character (a cheap test; :func:`nul_location` tells)."""
    return (_NUL_ESCAPE_BYTES in raw) if isinstance(raw, bytes) else (_NUL_ESCAPE in raw)


def nul_location(value: object, _at: tuple[str | int, ...] = ()) -> tuple[str | int, ...] | None:
    """The location (keys and indexes) of the first string, key or value, in a decoded JSON
    value that holds a NUL character; None if there is none. PostgreSQL's text and jsonb
    refuse it, so every edge refuses it first."""
    if isinstance(value, str):
        return _at if "\x00" in value else None
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(k, str) and "\x00" in k:
                return (*_at, k)
            found = nul_location(v, (*_at, k))
            if found is not None:
                return found
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found = nul_location(v, (*_at, i))
            if found is not None:
                return found
    return None


def json_nul_location(raw: str | bytes) -> tuple[str | int, ...] | None:
    """:func:`nul_location` of a JSON text (None also when it is not valid JSON: its parser says)."""
    if not has_nul_escape(raw):
        return None
    try:
        return nul_location(orjson.loads(raw))
    except orjson.JSONDecodeError:
        return None
