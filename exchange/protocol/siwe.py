"""Sign-In with Ethereum (EIP-4361) messages: built, parsed strictly, checked. Pure (no I/O).

The text a member signs (EIP-191 ``personal_sign``) to sign in, to the member portal
(``/portal/siwe/login``) and on the peer WebSocket (``login`` with ``message``)::

    {domain} wants you to sign in with your Ethereum account:
    {address}

    {statement}

    URI: {uri}
    Version: 1
    Chain ID: {chain_id}
    Nonce: {nonce}
    Issued At: {issued_at}
    Expiration Time: {expiration_time}      (optional, and so are the lines below)
    Not Before: {not_before}
    Request ID: {request_id}
    Resources:
    - {resource}

Lines end with LF alone and there is none after the last line. The first line may start
with ``{scheme}://`` before the domain; without a statement, its line and the blank line
after it are left out (the address line is then followed by two blank lines). The address
is EIP-55 checksummed, the nonce at least 8 letters and digits, times RFC 3339
(``2026-11-21T18:00:00Z``, or with an offset). :func:`parse` refuses anything else with a
:class:`SiweError` naming the field; :func:`check` compares a parsed message with what the
server expects (domain, chain, times) and raises a :class:`VoltbourseError` with a
``SIWE_*`` code. Whether the nonce was issued and is unused, and whose signature it is,
is the caller's to check (the nonce store; :func:`exchange.protocol.auth.recover_login`).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from urllib.parse import urlsplit

from eth_utils import to_checksum_address

from exchange.protocol.errors import VoltbourseError, register

__all__ = [
    "MAX_MESSAGE_CHARS", "PREAMBLE", "SiweError", "SiweMessage", "check", "format_time", "from_offer", "new_nonce",
    "parse", "parse_time", "safe_statement",
]

SIWE_INVALID = register("SIWE_INVALID", 401, "the sign-in message is not a valid EIP-4361 message (field: reason)")
SIWE_WRONG_DOMAIN = register("SIWE_WRONG_DOMAIN", 401, "the sign-in message names another domain (or URI host, "
                             "URI path, or scheme) than the endpoint the request was sent to")
SIWE_WRONG_CHAIN = register("SIWE_WRONG_CHAIN", 401, "the sign-in message names another chain id than the "
                            "exchange's")
SIWE_EXPIRED = register("SIWE_EXPIRED", 401, "the sign-in message's expiration time (or its nonce's) has passed")
SIWE_NOT_YET_VALID = register("SIWE_NOT_YET_VALID", 401, "the sign-in message is issued in the future or its "
                              "not-before time has not come")
SIWE_NONCE_UNKNOWN = register("SIWE_NONCE_UNKNOWN", 401, "the sign-in message's nonce was not issued by this "
                              "server (for this connection)")
SIWE_NONCE_USED = register("SIWE_NONCE_USED", 401, "the sign-in message's nonce was used already (a replay)")

PREAMBLE = " wants you to sign in with your Ethereum account:"
MAX_MESSAGE_CHARS = 4096
MAX_NONCE_CHARS = 128
DEFAULT_SKEW = timedelta(minutes=1)

# RFC 3986 pieces (ASCII only)
_UNRESERVED = r"A-Za-z0-9\-._~"
_SUB_DELIMS = r"!$&'()*+,;="
_PCT = r"%[0-9A-Fa-f]{2}"
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*")
_USERINFO = rf"(?:[{_UNRESERVED}{_SUB_DELIMS}:]|{_PCT})*"
_REG_NAME = rf"(?:[{_UNRESERVED}{_SUB_DELIMS}]|{_PCT})+"
_IP_LITERAL = r"\[[0-9A-Fa-f:.]+\]|\[[vV][0-9A-Fa-f]+\.[A-Za-z0-9\-._~!$&'()*+,;=:]+\]"
_AUTHORITY = re.compile(rf"(?:{_USERINFO}@)?(?:{_IP_LITERAL}|{_REG_NAME})(?::[0-9]{{0,5}})?")
_URI = re.compile(rf"[A-Za-z][A-Za-z0-9+\-.]*:(?:[{_UNRESERVED}{_SUB_DELIMS}:/?#\[\]@]|{_PCT})*")
_STATEMENT = re.compile(rf"[{_UNRESERVED}{_SUB_DELIMS}:/?#\[\]@ ]+")
_REQUEST_ID = re.compile(rf"(?:[{_UNRESERVED}{_SUB_DELIMS}:@]|{_PCT})*")
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
_NONCE = re.compile(rf"[A-Za-z0-9]{{8,{MAX_NONCE_CHARS}}}")
_CHAIN_ID = re.compile(r"[1-9][0-9]{0,77}")
_TIME = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]{1,9}))?"
                   r"(Z|[+\-][0-9]{2}:[0-9]{2})")
_STATEMENT_DROP = re.compile(rf"[^{_UNRESERVED}{_SUB_DELIMS}:/?#\[\]@ ]")


class SiweError(ValueError):
    """A message that is not EIP-4361: ``field`` (``domain``, ``address``, ``URI``, ...,
    or ``message`` for its layout) and ``reason``."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def _parse_time(field: str, text: str) -> datetime:
    m = _TIME.fullmatch(text)
    if m is None:
        raise SiweError(field, f"not an RFC 3339 date-time (e.g. 2026-11-21T18:00:00Z): {text!r}")
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    frac, offset = m.group(7), m.group(8)
    try:
        tz: timezone = UTC
        if offset != "Z":
            sign = 1 if offset[0] == "+" else -1
            oh, om = int(offset[1:3]), int(offset[4:6])
            if oh > 23 or om > 59:
                raise ValueError("offset out of range")
            tz = timezone(timedelta(minutes=sign * (oh * 60 + om)))
        micro = int((frac or "0").ljust(6, "0")[:6])
        # in UTC, a time at the edge of the calendar with an offset (9999-12-31T23:59:59-23:59)
        # is out of datetime's range: OverflowError, refused like any invalid time
        return datetime(year, month, day, hour, minute, second, micro, tzinfo=tz).astimezone(UTC)
    except (ValueError, OverflowError) as exc:
        raise SiweError(field, f"not a valid date-time: {text!r} ({exc})") from None


def format_time(t: datetime) -> str:
    """RFC 3339 in UTC with ``Z`` (microseconds only when there are any)."""
    if t.tzinfo is None or t.utcoffset() is None:
        raise ValueError("times must be timezone-aware")
    t = t.astimezone(UTC)
    base = t.strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}.{t.microsecond:06d}Z" if t.microsecond else f"{base}Z"


def new_nonce() -> str:
    """A fresh random nonce: 32 hex digits (128 bits), letters and digits only."""
    return secrets.token_hex(16)


def safe_statement(text: str) -> str:
    """``text`` with every character a statement may not hold dropped (EIP-4361 allows
    RFC 3986 reserved and unreserved characters and spaces; no line break)."""
    return _STATEMENT_DROP.sub("", text).strip() or "Sign in"


@dataclass(frozen=True)
class SiweMessage:
    """One EIP-4361 message. Built values are checked like parsed ones (``SiweError``);
    times are timezone-aware (held in UTC)."""

    domain: str
    address: str
    uri: str
    chain_id: int
    nonce: str
    issued_at: datetime
    statement: str | None = None
    version: str = "1"
    scheme: str | None = None
    expiration_time: datetime | None = None
    not_before: datetime | None = None
    request_id: str | None = None
    resources: tuple[str, ...] | None = None  # None: no "Resources:" line; (): the line alone

    def __post_init__(self) -> None:
        if self.scheme is not None and not _SCHEME.fullmatch(self.scheme):
            raise SiweError("scheme", f"not an RFC 3986 scheme: {self.scheme!r}")
        if not _AUTHORITY.fullmatch(self.domain):
            raise SiweError("domain", f"not an RFC 3986 authority (host[:port]): {self.domain!r}")
        if not _ADDRESS.fullmatch(self.address):
            raise SiweError("address", f"not 0x and 40 hex digits: {self.address!r}")
        if to_checksum_address(self.address) != self.address:
            raise SiweError("address", f"not in its EIP-55 checksum form ({to_checksum_address(self.address)})")
        if self.statement is not None and not _STATEMENT.fullmatch(self.statement):
            raise SiweError("statement", "empty, or holds a character outside RFC 3986 reserved/unreserved "
                            "characters and spaces (no line break)")
        if not _URI.fullmatch(self.uri):
            raise SiweError("URI", f"not an RFC 3986 URI: {self.uri!r}")
        if self.version != "1":
            raise SiweError("Version", f"must be 1, not {self.version!r}")
        if type(self.chain_id) is not int or not _CHAIN_ID.fullmatch(str(self.chain_id)):
            raise SiweError("Chain ID", f"must be a positive integer: {self.chain_id!r}")
        if not _NONCE.fullmatch(self.nonce):
            raise SiweError("Nonce", f"must be 8-{MAX_NONCE_CHARS} letters and digits: {self.nonce!r}")
        for name, t in (("Issued At", self.issued_at), ("Expiration Time", self.expiration_time),
                        ("Not Before", self.not_before)):
            if t is not None and (t.tzinfo is None or t.utcoffset() is None):
                raise SiweError(name, "must be timezone-aware")
        if self.request_id is not None and not _REQUEST_ID.fullmatch(self.request_id):
            raise SiweError("Request ID", f"holds a character outside RFC 3986 pchar: {self.request_id!r}")
        for r in self.resources or ():
            if not _URI.fullmatch(r):
                raise SiweError("Resources", f"not an RFC 3986 URI: {r!r}")

    def text(self) -> str:
        """The message as signed (EIP-4361 layout, LF line ends, none at the end)."""
        head = f"{self.scheme}://{self.domain}" if self.scheme else self.domain
        lines = [head + PREAMBLE, self.address, ""]
        if self.statement is not None:
            lines.append(self.statement)
        lines += ["", f"URI: {self.uri}", f"Version: {self.version}", f"Chain ID: {self.chain_id}",
                  f"Nonce: {self.nonce}", f"Issued At: {format_time(self.issued_at)}"]
        if self.expiration_time is not None:
            lines.append(f"Expiration Time: {format_time(self.expiration_time)}")
        if self.not_before is not None:
            lines.append(f"Not Before: {format_time(self.not_before)}")
        if self.request_id is not None:
            lines.append(f"Request ID: {self.request_id}")
        if self.resources is not None:
            lines.append("Resources:")
            lines += [f"- {r}" for r in self.resources]
        return "\n".join(lines)


_REQUIRED = (("URI", "URI: "), ("Version", "Version: "), ("Chain ID", "Chain ID: "), ("Nonce", "Nonce: "),
             ("Issued At", "Issued At: "))
_OPTIONAL = (("Expiration Time", "Expiration Time: "), ("Not Before", "Not Before: "), ("Request ID", "Request ID: "))


def parse(text: str) -> SiweMessage:
    """The message in ``text`` (exactly the EIP-4361 layout), or :class:`SiweError` naming
    the first field or line that is wrong."""
    if not isinstance(text, str):
        raise SiweError("message", "must be text")
    if len(text) > MAX_MESSAGE_CHARS:
        raise SiweError("message", f"longer than {MAX_MESSAGE_CHARS} characters")
    if "\r" in text:
        raise SiweError("message", "lines must end with LF alone (no CR)")
    if not text.isascii():
        raise SiweError("message", "must be ASCII")
    lines = text.split("\n")
    if lines[-1] == "" and len(lines) > 1:
        raise SiweError("message", "must not end with a line break")
    pos = 0

    def take(field: str, what: str) -> str:
        nonlocal pos
        if pos >= len(lines):
            raise SiweError(field, f"missing: expected {what}")
        line = lines[pos]
        pos += 1
        return line

    header = take("domain", f"'<domain>{PREAMBLE}'")
    if not header.endswith(PREAMBLE):
        raise SiweError("domain", f"the first line must be '<domain>{PREAMBLE}'")
    authority, scheme = header[: -len(PREAMBLE)], None
    if "://" in authority:
        scheme, authority = authority.split("://", 1)
        if not _SCHEME.fullmatch(scheme):
            raise SiweError("scheme", f"not an RFC 3986 scheme: {scheme!r}")
    if not _AUTHORITY.fullmatch(authority):
        raise SiweError("domain", f"not an RFC 3986 authority (host[:port]): {authority!r}")
    address = take("address", "the address line")
    if not _ADDRESS.fullmatch(address):
        raise SiweError("address", f"not 0x and 40 hex digits: {address!r}")
    if to_checksum_address(address) != address:
        raise SiweError("address", f"not in its EIP-55 checksum form ({to_checksum_address(address)})")
    if take("message", "a blank line after the address") != "":
        raise SiweError("message", "expected a blank line after the address")
    statement: str | None = take("statement", "a statement or a blank line")
    if statement == "":
        statement = None
    else:
        if not _STATEMENT.fullmatch(statement or ""):
            raise SiweError("statement", "holds a character outside RFC 3986 reserved/unreserved characters "
                            "and spaces")
        if take("message", "a blank line after the statement") != "":
            raise SiweError("message", "expected a blank line after the statement")
    values: dict[str, str] = {}
    for field, tag in _REQUIRED:
        line = take(field, f"'{tag}…'")
        if not line.startswith(tag):
            raise SiweError(field, f"expected a line '{tag}…' here, got {line[:40]!r}")
        values[field] = line[len(tag):]
    for field, tag in _OPTIONAL:
        if pos < len(lines) and lines[pos].startswith(tag):
            values[field] = lines[pos][len(tag):]
            pos += 1
    resources: tuple[str, ...] | None = None
    if pos < len(lines) and lines[pos] == "Resources:":
        pos += 1
        found = []
        while pos < len(lines) and lines[pos].startswith("- "):
            found.append(lines[pos][2:])
            pos += 1
        resources = tuple(found)
    if pos < len(lines):
        line = lines[pos]
        known = [f for f, tag in _REQUIRED + _OPTIONAL if line.startswith(tag)]
        if known or line == "Resources:":
            raise SiweError(known[0] if known else "Resources", f"out of order or repeated: {line[:40]!r}")
        raise SiweError("message", f"unexpected line {pos + 1}: {line[:40]!r}")
    version = values["Version"]
    if version != "1":
        raise SiweError("Version", f"must be 1, not {version!r}")
    chain = values["Chain ID"]
    if not _CHAIN_ID.fullmatch(chain):
        raise SiweError("Chain ID", f"must be a positive integer without leading zeros: {chain!r}")
    return SiweMessage(
        domain=authority, address=address, uri=values["URI"], chain_id=int(chain), nonce=values["Nonce"],
        issued_at=_parse_time("Issued At", values["Issued At"]), statement=statement, version=version,
        scheme=scheme,
        expiration_time=_parse_time("Expiration Time", values["Expiration Time"])
        if "Expiration Time" in values else None,
        not_before=_parse_time("Not Before", values["Not Before"]) if "Not Before" in values else None,
        request_id=values.get("Request ID"), resources=resources)


def check(msg: SiweMessage, *, domain: str, chain_id: int, now: datetime, scheme: str | None = None,
          path: str | None = None, skew: timedelta = DEFAULT_SKEW) -> None:
    """Refuse (``VoltbourseError`` with a ``SIWE_*`` code) a message that is not for
    ``domain`` (the Host the request was sent to; also the URI's authority, and the
    scheme when the message names one), not for the resource ``path`` when one is given
    (the URI's path: a market's endpoint, so that a sign-in to one community of a platform
    is no sign-in to another), not for ``chain_id``, issued in the future (beyond
    ``skew``), expired, or not valid yet."""
    want = domain.lower()
    if msg.domain.lower() != want:
        raise VoltbourseError(SIWE_WRONG_DOMAIN, f"the message is for {msg.domain!r}, this server is {domain!r}")
    uri = urlsplit(msg.uri)
    if uri.netloc.lower() != want:
        raise VoltbourseError(SIWE_WRONG_DOMAIN, f"the message's URI {msg.uri!r} is not on {domain!r}")
    if path is not None and uri.path != path:
        raise VoltbourseError(SIWE_WRONG_DOMAIN, f"the message's URI {msg.uri!r} is not this endpoint ({path!r}): "
                              "sign the URI the offer gave")
    if msg.scheme is not None and scheme is not None and msg.scheme.lower() != scheme.lower():
        raise VoltbourseError(SIWE_WRONG_DOMAIN, f"the message is for {msg.scheme}://, this request came over "
                              f"{scheme}://")
    if msg.chain_id != chain_id:
        raise VoltbourseError(SIWE_WRONG_CHAIN, f"the message is for chain {msg.chain_id}, this exchange signs on "
                              f"chain {chain_id}")
    if msg.issued_at > now + skew:
        raise VoltbourseError(SIWE_NOT_YET_VALID, f"issued at {format_time(msg.issued_at)}, in the future (now "
                              f"{format_time(now)})")
    if msg.expiration_time is not None and msg.expiration_time <= now:
        raise VoltbourseError(SIWE_EXPIRED, f"expired at {format_time(msg.expiration_time)} (now "
                              f"{format_time(now)}): sign in again")
    if msg.not_before is not None and msg.not_before > now:
        raise VoltbourseError(SIWE_NOT_YET_VALID, f"not valid before {format_time(msg.not_before)} (now "
                              f"{format_time(now)})")


def from_offer(offer: Mapping[str, Any], address: str) -> SiweMessage:
    """Client side: the message answering a server's offer (the WebSocket hello's ``siwe``,
    or ``GET /portal/siwe/nonce``) for ``address`` (any case; checksummed here)."""
    return SiweMessage(domain=offer["domain"], address=to_checksum_address(address), uri=offer["uri"],
                       chain_id=int(offer["chain_id"]), nonce=offer["nonce"], statement=offer.get("statement"),
                       version=str(offer.get("version", "1")), issued_at=parse_time(offer["issued_at"]),
                       expiration_time=parse_time(offer["expiration_time"])
                       if offer.get("expiration_time") else None)


def parse_time(text: str) -> datetime:
    """An RFC 3339 date-time (as in a message) in UTC; ``SiweError`` otherwise."""
    return _parse_time("time", text)
