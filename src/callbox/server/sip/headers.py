"""Structured SIP header values (RFC 3261 §19, §20, §25): URIs, name-addrs, Via and CSeq.

Parameter names are case-insensitive in SIP, so they are stored lower-cased. Parameter values
are stored exactly as written (a quoted value keeps its quotes), so that serializing a parsed
value reproduces it.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

MAGIC_COOKIE = "z9hG4bK"
MAX_CSEQ = 2**31  # RFC 3261 §8.1.1.5: the sequence number MUST be less than 2**31
MAX_PORT = 65535
DEFAULT_SIP_PORT = 5060
DEFAULT_SIPS_PORT = 5061
DEFAULT_PORTS = {"UDP": 5060, "TCP": 5060, "SCTP": 5060, "TLS": 5061, "WS": 80, "WSS": 443}
SIP_SCHEMES = ("sip", "sips")
TEL_SCHEME = "tel"

TOKEN_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
_SCHEME_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*):(.*)", re.S)
_HOSTNAME_RE = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.\-]*[A-Za-z0-9_.])?")
_USER_RE = re.compile(r"[^\s<>\"@:\x00-\x1f\x7f]+")
_PASSWORD_RE = re.compile(r"[^\s<>\"@\x00-\x1f\x7f]*")
_PORT_RE = re.compile(r"[0-9]{1,5}")
_UNSAFE_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_DISPLAY_RE = re.compile(r"[^\"<>\x00-\x1f\x7f]*")
_VIA_RE = re.compile(r"SIP\s*/\s*2\.0\s*/\s*([A-Za-z0-9\-.!%*_+`'~]+)\s+(.*)", re.S | re.I)
_CSEQ_RE = re.compile(r"([0-9]{1,10})\s+([A-Za-z0-9\-.!%*_+`'~]+)")


class SipParseError(ValueError):
    """A malformed SIP message or header; `status` is the response code to answer it with."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


Params = dict[str, str | None]


def split_quoted(text: str, sep: str) -> list[str]:
    """Split `text` on `sep`, ignoring separators inside quoted strings and `<...>`.

    Lenient by design: an unterminated quote or bracket simply extends to the end.
    """
    if '"' not in text and "<" not in text:  # nothing to skip over: the common case
        return text.split(sep)
    parts: list[str] = []
    start = 0
    in_quote = False
    escaped = False
    angle = 0
    for i, ch in enumerate(text):
        if in_quote:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_quote = False
        elif ch == '"':
            in_quote = True
        elif ch == "<":
            angle += 1
        elif ch == ">" and angle:
            angle -= 1
        elif ch == sep and not angle:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def parse_params(text: str) -> Params:
    """Parse `;name[=value]` pairs; `text` is what follows the first `;` (or is empty)."""
    params: Params = {}
    for raw in split_quoted(text, ";"):
        item = raw.strip()
        if not item:
            continue
        name, eq, value = item.partition("=")
        name = name.strip()
        if not TOKEN_RE.fullmatch(name):
            raise SipParseError(f"bad parameter {item!r}")
        if not eq:
            params[name.lower()] = None
            continue
        value = value.strip()
        if not value or _UNSAFE_RE.search(value):
            raise SipParseError(f"bad parameter value {item!r}")
        if value.startswith('"'):
            if not _is_quoted_string(value):
                raise SipParseError(f"bad quoted parameter {item!r}")
        elif " " in value or "\t" in value or '"' in value:
            raise SipParseError(f"bad parameter value {item!r}")
        params[name.lower()] = value
    return params


def format_params(params: Params) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params.items())


def _is_quoted_string(value: str) -> bool:
    try:
        _text, end = read_quoted(value, 0)
    except SipParseError:
        return False
    return end == len(value)


def read_quoted(text: str, pos: int) -> tuple[str, int]:
    """Read the quoted string starting at `text[pos]` (a `"`); return (unescaped, end index)."""
    out: list[str] = []
    i = pos + 1
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            if i + 1 >= len(text):
                break
            out.append(text[i + 1])
            i += 2
            continue
        if ch == '"':
            return "".join(out), i + 1
        out.append(ch)
        i += 1
    raise SipParseError("unterminated quoted string")


def quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def parse_port(text: str) -> int:
    if not _PORT_RE.fullmatch(text):
        raise SipParseError(f"bad port {text!r}")
    port = int(text)
    if port > MAX_PORT:
        raise SipParseError(f"bad port {text!r}")
    return port


def parse_hostport(text: str) -> tuple[str, int | None]:
    """Parse `host[:port]`; IPv6 references must be bracketed and are returned without brackets."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise SipParseError(f"bad IPv6 reference {text!r}")
        host = text[1:end]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise SipParseError(f"bad IPv6 address {host!r}") from None
        rest = text[end + 1 :]
        if not rest:
            return host, None
        if not rest.startswith(":"):
            raise SipParseError(f"bad host {text!r}")
        return host, parse_port(rest[1:])
    host, colon, port = text.partition(":")
    if not _HOSTNAME_RE.fullmatch(host):
        raise SipParseError(f"bad host {text!r}")
    return host, (parse_port(port) if colon else None)


def format_host(host: str, port: int | None = None) -> str:
    """`host[:port]`, bracketing IPv6 addresses."""
    shown = f"[{host}]" if ":" in host else host
    return shown if port is None else f"{shown}:{port}"


@dataclass
class SipUri:
    """A sip:, sips: (or, minimally, tel:) URI. IPv6 `host` is stored without brackets."""

    scheme: str = "sip"
    user: str | None = None
    password: str | None = None
    host: str = ""
    port: int | None = None
    params: Params = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> SipUri:
        match = _SCHEME_RE.fullmatch(text.strip())
        if not match:
            raise SipParseError(f"bad URI {text!r}")
        scheme, rest = match.group(1).lower(), match.group(2)
        if _UNSAFE_RE.search(rest) or " " in rest or "\t" in rest:
            raise SipParseError(f"bad URI {text!r}")
        if scheme == TEL_SCHEME:
            number, _, ptext = rest.partition(";")
            if not number or not _USER_RE.fullmatch(number):
                raise SipParseError(f"bad tel URI {text!r}")
            return cls(scheme=scheme, user=number, params=parse_params(ptext))
        if scheme not in SIP_SCHEMES:
            raise SipParseError(f"unsupported URI scheme {scheme!r}")
        user = password = None
        at = rest.find("@")
        if at >= 0:
            userinfo, rest = rest[:at], rest[at + 1 :]
            user, colon, pw = userinfo.partition(":")
            if not _USER_RE.fullmatch(user) or not _PASSWORD_RE.fullmatch(pw):
                raise SipParseError(f"bad URI user part {text!r}")
            password = pw if colon else None
        rest, qmark, htext = rest.partition("?")
        hostport, _, ptext = rest.partition(";")
        host, port = parse_hostport(hostport)
        headers: dict[str, str] = {}
        if qmark:
            for item in htext.split("&"):
                name, eq, value = item.partition("=")
                if not name or not eq:
                    raise SipParseError(f"bad URI header {item!r}")
                headers[name] = value
        return cls(scheme, user, password, host, port, parse_params(ptext), headers)

    @property
    def host_port(self) -> str:
        return format_host(self.host, self.port)

    def __str__(self) -> str:
        if self.scheme == TEL_SCHEME:
            return f"tel:{self.user or ''}{format_params(self.params)}"
        out = [self.scheme, ":"]
        if self.user is not None:
            out.append(self.user)
            if self.password is not None:
                out += [":", self.password]
            out.append("@")
        out += [self.host_port, format_params(self.params)]
        if self.headers:
            out += ["?", "&".join(f"{k}={v}" for k, v in self.headers.items())]
        return "".join(out)


@dataclass
class NameAddr:
    """From/To/Contact/Route style value: `"Display" <uri>;params` or `uri;params`."""

    display: str | None
    uri: SipUri
    params: Params = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> NameAddr:
        text = text.strip()
        display: str | None = None
        if text.startswith('"'):
            display, end = read_quoted(text, 0)
            rest = text[end:].lstrip()
        elif "<" in text:
            lt = text.index("<")
            raw = text[:lt].strip()
            if not _DISPLAY_RE.fullmatch(raw):
                raise SipParseError(f"bad display name {raw!r}")
            display = raw or None
            rest = text[lt:]
        else:
            # addr-spec form: everything after the first ';' is a header parameter (§20.10)
            uri_text, _, ptext = text.partition(";")
            return cls(None, SipUri.parse(uri_text), parse_params(ptext))
        if not rest.startswith("<"):
            raise SipParseError(f"expected <uri> in {text!r}")
        gt = rest.find(">")
        if gt < 0:
            raise SipParseError(f"unterminated <uri> in {text!r}")
        uri = SipUri.parse(rest[1:gt])
        after = rest[gt + 1 :].strip()
        if after and not after.startswith(";"):
            raise SipParseError(f"unexpected text after <uri> in {text!r}")
        return cls(display, uri, parse_params(after[1:]))

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")

    def without_tag(self) -> NameAddr:
        params = {k: v for k, v in self.params.items() if k != "tag"}
        return NameAddr(self.display, self.uri, params)

    def __str__(self) -> str:
        shown = f"<{self.uri}>" if self.display is None else f"{quote(self.display)} <{self.uri}>"
        return shown + format_params(self.params)


@dataclass
class Via:
    """One Via value: `SIP/2.0/UDP host:port;branch=...`. IPv6 `host` is stored unbracketed."""

    transport: str
    host: str
    port: int | None = None
    params: Params = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> Via:
        match = _VIA_RE.fullmatch(text.strip())
        if not match:
            raise SipParseError(f"bad Via {text!r}")
        transport = match.group(1).upper()
        sent_by, _, ptext = match.group(2).partition(";")
        host, port = parse_hostport(re.sub(r"\s+", "", sent_by))
        return cls(transport, host, port, parse_params(ptext))

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")

    @property
    def received(self) -> str | None:
        return self.params.get("received")

    @property
    def rport(self) -> int | None:
        """The rport value filled in by a server (RFC 3581), if numeric."""
        value = self.params.get("rport")
        if value is None or not _PORT_RE.fullmatch(value):
            return None
        return int(value)

    @property
    def wants_rport(self) -> bool:
        """True when the client asked for symmetric response routing (bare `;rport`)."""
        return "rport" in self.params

    @property
    def effective_port(self) -> int:
        return self.port if self.port is not None else DEFAULT_PORTS.get(self.transport, 5060)

    @property
    def sent_by(self) -> str:
        return format_host(self.host, self.port)

    def __str__(self) -> str:
        return f"SIP/2.0/{self.transport} {self.sent_by}{format_params(self.params)}"


@dataclass(frozen=True)
class CSeq:
    seq: int
    method: str

    @classmethod
    def parse(cls, text: str) -> CSeq:
        match = _CSEQ_RE.fullmatch(text.strip())
        if not match:
            raise SipParseError(f"bad CSeq {text!r}")
        seq = int(match.group(1))
        if seq >= MAX_CSEQ:
            raise SipParseError(f"CSeq number too large: {seq}")
        return cls(seq, match.group(2))

    def __str__(self) -> str:
        return f"{self.seq} {self.method}"
