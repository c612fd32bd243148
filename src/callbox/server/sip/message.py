"""SIP messages (RFC 3261 §7): parsing bytes into requests/responses and serializing them back.

The parser is strict about what the rest of the stack relies on (start line, the mandatory
headers and their syntax, Content-Length) and lenient about the rest, like deployed stacks:
LF-only line endings, folded header lines, leading CRLFs and compact header names are accepted.
"""

from __future__ import annotations

import functools
import re
import secrets
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar, cast

from callbox.server.sip.headers import (
    MAGIC_COOKIE,
    TOKEN_RE,
    CSeq,
    NameAddr,
    SipParseError,
    Via,
    split_quoted,
)

__all__ = [
    "COMPACT_FORMS",
    "LIST_HEADERS",
    "MAX_HEADER_LINES",
    "MAX_MESSAGE_BYTES",
    "REASON_PHRASES",
    "Headers",
    "SipMessage",
    "SipParseError",
    "SipRequest",
    "SipResponse",
    "is_keepalive",
    "make_cancel",
    "make_response",
    "new_branch",
    "new_call_id",
    "new_tag",
    "oversize_reason",
    "parse_message",
    "unsupported_version",
]

_T = TypeVar("_T")

SIP_VERSION = "SIP/2.0"
CRLF = "\r\n"
MANDATORY_HEADERS = ("Via", "From", "To", "Call-ID", "CSeq")
SINGLE_HEADERS = ("From", "To", "Call-ID", "CSeq")
BRANCH_RANDOM_BYTES = 12  # 96 random bits after the magic cookie
TAG_RANDOM_BYTES = 8
CALL_ID_RANDOM_BYTES = 16
# Bounds checked on the raw bytes before parsing: parsing costs grow with the header count
# (a 52 KB message with 1000 Vias takes 20-60 ms), and signalling shares the event loop with
# the media clock. Real requests, SDP included, stay far below both.
MAX_MESSAGE_BYTES = 16 * 1024
MAX_HEADER_LINES = 100
# Methods whose 101-299 responses create a dialog, so Record-Route is echoed (RFC 3261 §12.1.1).
DIALOG_CREATING_METHODS = frozenset({"INVITE", "SUBSCRIBE", "REFER", "NOTIFY"})

COMPACT_FORMS = {
    "v": "Via",
    "f": "From",
    "t": "To",
    "i": "Call-ID",
    "m": "Contact",
    "l": "Content-Length",
    "c": "Content-Type",
    "k": "Supported",
    "s": "Subject",
    "e": "Content-Encoding",
    "o": "Event",
    "u": "Allow-Events",
    "r": "Refer-To",
    "b": "Referred-By",
    "x": "Session-Expires",
}

_CANONICAL_NAMES = [
    "Accept", "Accept-Encoding", "Accept-Language", "Alert-Info", "Allow", "Allow-Events",
    "Authentication-Info", "Authorization", "Call-ID", "Call-Info", "Contact",
    "Content-Disposition", "Content-Encoding", "Content-Language", "Content-Length",
    "Content-Type", "CSeq", "Date", "Error-Info", "Event", "Expires", "From", "In-Reply-To",
    "Max-Forwards", "Min-Expires", "Min-SE", "MIME-Version", "Organization",
    "P-Asserted-Identity", "P-Preferred-Identity", "Priority", "Proxy-Authenticate",
    "Proxy-Authorization", "Proxy-Require", "RAck", "Reason", "Record-Route", "Refer-To",
    "Referred-By", "Replaces", "Reply-To", "Require", "Retry-After", "Route", "RSeq", "Server",
    "Session-Expires", "Subject", "Subscription-State", "Supported", "Timestamp", "To",
    "Unsupported", "User-Agent", "Via", "Warning", "WWW-Authenticate",
]  # fmt: skip
CANONICAL_NAMES = {name.lower(): name for name in _CANONICAL_NAMES}

# Headers whose values are comma-separated lists; get_all() splits them (RFC 3261 §7.3.1).
LIST_HEADERS = frozenset(
    name.lower()
    for name in (
        "Via", "Route", "Record-Route", "Contact", "Allow", "Supported", "Require",
        "Proxy-Require", "Unsupported", "Allow-Events", "Accept", "Accept-Encoding",
        "Accept-Language", "Content-Encoding", "Content-Language", "In-Reply-To",
        "Alert-Info", "Call-Info", "Error-Info", "P-Asserted-Identity",
    )
)  # fmt: skip

REASON_PHRASES: dict[int, str] = {
    100: "Trying",
    180: "Ringing",
    181: "Call Is Being Forwarded",
    182: "Queued",
    183: "Session Progress",
    199: "Early Dialog Terminated",
    200: "OK",
    202: "Accepted",
    204: "No Notification",
    300: "Multiple Choices",
    301: "Moved Permanently",
    302: "Moved Temporarily",
    305: "Use Proxy",
    380: "Alternative Service",
    400: "Bad Request",
    401: "Unauthorized",
    402: "Payment Required",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    410: "Gone",
    413: "Request Entity Too Large",
    414: "Request-URI Too Long",
    415: "Unsupported Media Type",
    416: "Unsupported URI Scheme",
    420: "Bad Extension",
    421: "Extension Required",
    422: "Session Interval Too Small",
    423: "Interval Too Brief",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    484: "Address Incomplete",
    485: "Ambiguous",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    489: "Bad Event",
    491: "Request Pending",
    493: "Undecipherable",
    500: "Server Internal Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Server Time-out",
    505: "Version Not Supported",
    513: "Message Too Large",
    600: "Busy Everywhere",
    603: "Decline",
    604: "Does Not Exist Anywhere",
    606: "Not Acceptable",
}

_REQUEST_LINE_RE = re.compile(r"([A-Za-z0-9\-.!%*_+`'~]+) +(\S+) +SIP/2\.0", re.I)
_ANY_VERSION_REQUEST_LINE_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+ +\S+ +(SIP/[0-9]+\.[0-9]+)")
_STATUS_LINE_RE = re.compile(r"SIP/2\.0 +([1-6][0-9][0-9])(?: +(.*))?", re.I)
_REQUEST_URI_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:\S+")
_BAD_CHARS_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# The same in a whole head whose lines are joined by CRLF: any other CR or LF is one too.
_BAD_CHARS_IN_CRLF_HEAD_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]|\r(?!\n)|(?<!\r)\n")


def canonical_name(name: str) -> str:
    """Expand compact forms and use the RFC spelling for known headers; others are kept as-is."""
    lower = name.lower()
    if lower in COMPACT_FORMS:
        return COMPACT_FORMS[lower]
    return CANONICAL_NAMES.get(lower, name)


@functools.lru_cache(maxsize=256)
def _names(name: str) -> tuple[str, str]:
    """(canonical name, the key it is found by: lower-cased), cached: names repeat."""
    canonical = canonical_name(name)
    return canonical, canonical.lower()


@functools.lru_cache(maxsize=256)
def _is_token(name: str) -> bool:
    """A header name's syntax, cached: names repeat."""
    return TOKEN_RE.fullmatch(name) is not None


def _lookup_key(name: str) -> str:
    return _names(name)[1]


class Headers:
    """Ordered, case-insensitive multi-map of header lines."""

    __slots__ = ("_items", "_keys")

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items: list[tuple[str, str]] = []
        self._keys: list[str] = []  # `_lookup_key` of each item's name, in step with `_items`
        for name, value in items:
            self.add(name, value)

    def get(self, name: str, default: str | None = None) -> str | None:
        """First value; for list headers, the first element of the first line."""
        key = _lookup_key(name)
        try:
            first = self._items[self._keys.index(key)][1]
        except ValueError:
            return default
        if key not in LIST_HEADERS:
            return first
        if "," not in first and first.strip():  # the first line holds one element
            return first.strip()
        values = self.get_all(name)
        return values[0] if values else default

    def get_all(self, name: str) -> list[str]:
        key = _lookup_key(name)
        items = self._items
        values = [items[i][1] for i, k in enumerate(self._keys) if k == key]
        if key not in LIST_HEADERS:
            return values
        out: list[str] = []
        for value in values:
            out.extend(p.strip() for p in split_quoted(value, ",") if p.strip())
        return out

    def count(self, name: str) -> int:
        """How many lines of `name` there are (a list header's line may hold several values)."""
        return self._keys.count(_lookup_key(name))

    def add(self, name: str, value: str) -> None:
        canonical, key = _names(name)
        self._items.append((canonical, value))
        self._keys.append(key)

    def set(self, name: str, value: str) -> None:
        """Replace every line of `name` with one line, at the position of the first."""
        key = _lookup_key(name)
        if key not in self._keys:
            self.add(name, value)
            return
        first = self._keys.index(key)
        kept = [(k, item) for i, (k, item) in enumerate(zip(self._keys, self._items, strict=True))
                if k != key or i == first]
        self._keys = [k for k, _ in kept]
        self._items = [item for _, item in kept]
        self._items[first] = (canonical_name(name), value)

    def remove(self, name: str) -> None:
        key = _lookup_key(name)
        kept = [(k, item) for k, item in zip(self._keys, self._items, strict=True) if k != key]
        self._keys = [k for k, _ in kept]
        self._items = [item for _, item in kept]

    def items(self) -> list[tuple[str, str]]:
        return list(self._items)

    def copy(self) -> Headers:
        new = Headers()
        new._items = list(self._items)
        new._keys = list(self._keys)
        return new

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        return _lookup_key(name) in self._keys

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(list(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Headers):
            return NotImplemented
        return (self._keys == other._keys
                and [v for _, v in self._items] == [v for _, v in other._items])

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"


class _MessageMixin:
    """Accessors shared by requests and responses (they raise SipParseError when malformed).

    A structured header value is parsed once per message and text: the same object comes back
    while the header line is unchanged, so callers must not modify it (copy it first).
    """

    headers: Headers
    body: bytes
    _parsed: dict[tuple[str, str], object]

    def _required(self, name: str) -> str:
        value = self.headers.get(name)
        if value is None:
            raise SipParseError(f"missing mandatory header {name}")
        return value

    def _parse_once(self, name: str, parse: Callable[[str], _T]) -> _T:
        key = (name, self._required(name))
        found = self._parsed.get(key)
        if found is None:
            found = self._parsed[key] = parse(key[1])
        return cast(_T, found)

    @property
    def call_id(self) -> str:
        return self._required("Call-ID").strip()

    @property
    def cseq(self) -> CSeq:
        return self._parse_once("CSeq", CSeq.parse)

    @property
    def from_addr(self) -> NameAddr:
        return self._parse_once("From", NameAddr.parse)

    @property
    def to_addr(self) -> NameAddr:
        return self._parse_once("To", NameAddr.parse)

    @property
    def from_tag(self) -> str | None:
        return self.from_addr.tag

    @property
    def to_tag(self) -> str | None:
        return self.to_addr.tag

    @property
    def top_via(self) -> Via:
        return self._parse_once("Via", Via.parse)

    def replace_top_via(self, via: Via) -> None:
        """Put `via` in place of the top Via line (the others stay, in order); `top_via` is
        `via` from now on."""
        vias = self.headers.get_all("Via")
        self.headers.remove("Via")
        text = str(via)
        for value in [text, *vias[1:]]:
            self.headers.add("Via", value)
        self._parsed["Via", text] = via

    @property
    def branch(self) -> str | None:
        return self.top_via.branch

    @property
    def content_type(self) -> str | None:
        return self.headers.get("Content-Type")

    def _serialize(self, start_line: str) -> bytes:
        lines = [start_line]
        lines += [f"{n}: {v}" for n, v in self.headers if n.lower() != "content-length"]
        lines.append(f"Content-Length: {len(self.body)}")
        return (CRLF.join(lines) + CRLF + CRLF).encode("utf-8") + self.body


@dataclass
class SipRequest(_MessageMixin):
    method: str
    uri: str
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""
    _parsed: dict[tuple[str, str], object] = field(
        default_factory=dict, init=False, repr=False, compare=False)

    def serialize(self) -> bytes:
        return self._serialize(f"{self.method} {self.uri} {SIP_VERSION}")


@dataclass
class SipResponse(_MessageMixin):
    status: int
    reason: str
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""
    _parsed: dict[tuple[str, str], object] = field(
        default_factory=dict, init=False, repr=False, compare=False)

    def serialize(self) -> bytes:
        return self._serialize(f"{SIP_VERSION} {self.status} {self.reason}")


SipMessage = SipRequest | SipResponse


def is_keepalive(data: bytes) -> bool:
    """True for CRLF keepalive pings/pongs (RFC 5626 §4.4.1): only CR and LF bytes."""
    return bool(data) and not data.strip(b"\r\n")


def oversize_reason(data: bytes) -> str | None:
    """Why `data` is too large to parse (answer 513 or drop it), or None. Cheap: no decoding."""
    if len(data) > MAX_MESSAGE_BYTES:
        return f"message of {len(data)} bytes exceeds {MAX_MESSAGE_BYTES}"
    head_end = data.find(b"\n\r\n")
    if head_end < 0:
        head_end = data.find(b"\n\n")
    lines = data.count(b"\n", 0, head_end if head_end >= 0 else len(data))
    if lines > MAX_HEADER_LINES:
        return f"{lines} header lines exceed {MAX_HEADER_LINES}"
    return None


def unsupported_version(data: bytes) -> str | None:
    """The SIP version of a request line that is well formed but not SIP/2.0 (answer 505)."""
    end = data.find(b"\n")
    line = data[: end if end >= 0 else len(data)].rstrip(b"\r").decode("latin-1")
    match = _ANY_VERSION_REQUEST_LINE_RE.fullmatch(line)
    if match is None or match.group(1).upper() == SIP_VERSION:
        return None
    return match.group(1)


def _split_head(data: bytes) -> tuple[list[str], bytes]:
    """Split into decoded head lines (start line first) and the raw bytes after the blank line."""
    end = data.find(b"\r\n\r\n")
    if end >= 0:  # the usual shape: every line ends with CRLF, none with a bare CR or LF
        try:
            head = data[:end].decode("utf-8")
        except UnicodeDecodeError:
            raise SipParseError("headers are not valid UTF-8") from None
        if not _BAD_CHARS_IN_CRLF_HEAD_RE.search(head):
            return head.split(CRLF), data[end + 4 :]
    return _split_head_lines(data)


def _split_head_lines(data: bytes) -> tuple[list[str], bytes]:
    """`_split_head` line by line: LF-only or mixed line endings, no blank line."""
    pos = 0
    lines: list[bytes] = []
    while True:
        nl = data.find(b"\n", pos)
        if nl < 0:
            # No blank line: treat the rest as the last header line and the body as empty.
            last = data[pos:].rstrip(b"\r")
            if last:
                lines.append(last)
            body = b""
            break
        line = data[pos:nl]
        if line.endswith(b"\r"):
            line = line[:-1]
        pos = nl + 1
        if not line:
            body = data[pos:]
            break
        lines.append(line)
    try:
        decoded = [raw.decode("utf-8") for raw in lines]
    except UnicodeDecodeError:
        raise SipParseError("headers are not valid UTF-8") from None
    for text in decoded:
        if _BAD_CHARS_RE.search(text):
            raise SipParseError("control character in header section")
    return decoded, body


def _parse_header_lines(lines: list[str]) -> Headers:
    unfolded: list[str] = []
    for line in lines:
        if line[:1] in (" ", "\t"):
            if not unfolded:
                raise SipParseError("continuation line before the first header")
            unfolded[-1] = unfolded[-1].rstrip() + " " + line.strip()
        else:
            unfolded.append(line)
    headers = Headers()
    for line in unfolded:
        name, colon, value = line.partition(":")
        name = name.rstrip(" \t")
        if not colon or not _is_token(name):
            raise SipParseError(f"malformed header line {line[:80]!r}")
        headers.add(name, value.strip())
    return headers


def _validate(headers: Headers, method: str | None) -> dict[tuple[str, str], object]:
    """Check what the stack relies on; return the structured values parsed on the way (the
    message's `_parsed`, so its accessors do not parse them again)."""
    for name in MANDATORY_HEADERS:
        if name not in headers:
            raise SipParseError(f"missing mandatory header {name}")
    for name in SINGLE_HEADERS:
        if headers.count(name) > 1:
            raise SipParseError(f"more than one {name} header")
    if not (headers.get("Call-ID") or "").strip():
        raise SipParseError("empty Call-ID")
    cseq_text = headers.get("CSeq") or ""
    cseq = CSeq.parse(cseq_text)
    if method is not None and cseq.method != method:
        raise SipParseError(f"CSeq method {cseq.method} does not match request method {method}")
    from_text, to_text = headers.get("From") or "", headers.get("To") or ""
    parsed: dict[tuple[str, str], object] = {
        ("CSeq", cseq_text): cseq,
        ("From", from_text): NameAddr.parse(from_text),
        ("To", to_text): NameAddr.parse(to_text),
    }
    vias = headers.get_all("Via")
    if not vias:
        raise SipParseError("missing mandatory header Via")
    parsed["Via", vias[0]] = Via.parse(vias[0])
    for via in vias[1:]:
        Via.parse(via)
    # Dialogs are built from these, so an accepted message can always create one.
    contacts = headers.get_all("Contact")
    if method == "INVITE" and not contacts:
        raise SipParseError("missing Contact in INVITE")
    for contact in contacts:
        if contact != "*":
            NameAddr.parse(contact)
    for route in headers.get_all("Record-Route"):
        NameAddr.parse(route)
    return parsed


def _content_length(headers: Headers) -> int | None:
    values = {v.strip() for v in headers.get_all("Content-Length")}
    if not values:
        return None
    if len(values) > 1:
        raise SipParseError("conflicting Content-Length headers")
    value = values.pop()
    if not value.isascii() or not value.isdigit() or len(value) > 10:
        raise SipParseError(f"bad Content-Length {value!r}")
    return int(value)


def parse_message(data: bytes) -> SipMessage:
    """Parse one datagram (or one framed stream message) into a request or response."""
    data = bytes(data).lstrip(b"\r\n")
    if not data:
        raise SipParseError("empty message (keepalive)")
    lines, body = _split_head(data)
    start, header_lines = lines[0], lines[1:]
    headers = _parse_header_lines(header_lines)
    status_match = _STATUS_LINE_RE.fullmatch(start)
    request_match = None if status_match else _REQUEST_LINE_RE.fullmatch(start)
    if status_match is None and request_match is None:
        raise SipParseError(f"malformed start line {start[:80]!r}")
    if request_match is not None:
        method, uri = request_match.group(1), request_match.group(2)
        if not _REQUEST_URI_RE.fullmatch(uri):
            raise SipParseError(f"bad Request-URI {uri[:80]!r}")
        parsed = _validate(headers, method)
    else:
        parsed = _validate(headers, None)
    length = _content_length(headers)
    if length is not None:
        if length > len(body):
            raise SipParseError(
                f"truncated body: Content-Length {length}, {len(body)} bytes received"
            )
        body = body[:length]
    message: SipMessage
    if request_match is not None:
        message = SipRequest(method, uri, headers, body)
    else:
        assert status_match is not None
        message = SipResponse(
            int(status_match.group(1)), (status_match.group(2) or "").strip(), headers, body
        )
    message._parsed.update(parsed)
    return message


def make_response(
    request: SipRequest,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
    content_type: str | None = None,
) -> SipResponse:
    """Build a response per RFC 3261 §8.2.6.2 (Via, From, To, Call-ID, CSeq copied)."""
    out = Headers()
    for name, value in request.headers:
        if name == "Via":
            out.add(name, value)
    out.add("From", request.headers.get("From") or "")
    to_value = request.headers.get("To") or ""
    if to_tag is not None and request.to_tag is None:
        to_value = f"{to_value};tag={to_tag}"
    out.add("To", to_value)
    out.add("Call-ID", request.headers.get("Call-ID") or "")
    out.add("CSeq", request.headers.get("CSeq") or "")
    if 101 <= status <= 299 and request.method in DIALOG_CREATING_METHODS:
        for name, value in request.headers:
            if name == "Record-Route":
                out.add(name, value)
    for name, value in headers:
        out.add(name, value)
    if content_type is not None:
        out.set("Content-Type", content_type)
    phrase = reason if reason is not None else REASON_PHRASES.get(status, "Unknown")
    response = SipResponse(status, phrase, out, body)
    response._parsed.update(request._parsed)  # keyed by the text: only equal lines match
    return response


def make_cancel(invite: SipRequest) -> SipRequest:
    """CANCEL for a pending INVITE (RFC 3261 §9.1): same URI, top Via, From, To, Call-ID, Route."""
    headers = Headers()
    headers.add("Via", str(invite.top_via))
    for name, value in invite.headers:
        if name == "Route":
            headers.add(name, value)
    headers.add("Max-Forwards", "70")
    headers.add("From", invite.headers.get("From") or "")
    headers.add("To", invite.headers.get("To") or "")
    headers.add("Call-ID", invite.call_id)
    headers.add("CSeq", f"{invite.cseq.seq} CANCEL")
    return SipRequest("CANCEL", invite.uri, headers)


def new_branch() -> str:
    return MAGIC_COOKIE + secrets.token_hex(BRANCH_RANDOM_BYTES)


def new_tag() -> str:
    return secrets.token_hex(TAG_RANDOM_BYTES)


def new_call_id(host: str) -> str:
    return f"{secrets.token_hex(CALL_ID_RANDOM_BYTES)}@{host}"
