"""HTTP digest authentication for SIP (RFC 2617, RFC 7616, RFC 8760), sans-I/O.

`parse_challenge` reads a `WWW-Authenticate` / `Proxy-Authenticate` value, `authorization_value`
computes the matching `Authorization` / `Proxy-Authorization` value, and an `Authenticator`
(one per trunk or dialog) decides whether a 401/407 deserves a retry: at most one answer per
challenge, so a server that keeps refusing ends the exchange instead of looping.
"""

from __future__ import annotations

import hashlib
import secrets
from collections import OrderedDict
from dataclasses import dataclass

from callbox.server.sip.message import Headers, SipRequest, SipResponse, new_branch

# Algorithms we answer, strongest first (RFC 8760 asks a client to prefer SHA-256).
HASHES = {"SHA-256": "sha256", "MD5": "md5"}
ALGORITHMS = ("SHA-256", "SHA-256-SESS", "MD5", "MD5-SESS")
QOP_PREFERENCE = ("auth", "auth-int")
MAX_CHALLENGE_CHARS = 4096
# Nonces whose `nc` counter we remember per authenticator (oldest forgotten first).
MAX_REMEMBERED_NONCES = 32
# Re-sends of one request with credentials, all realms together (a proxy and a registrar).
MAX_ANSWERS = 3
CHALLENGE_HEADERS = {401: ("WWW-Authenticate", "Authorization"),
                     407: ("Proxy-Authenticate", "Proxy-Authorization")}


class DigestParseError(ValueError):
    """A challenge header that is not a usable Digest challenge; the message says why."""


class AuthenticationFailed(Exception):
    """The server refused our credentials (or asked for something we cannot answer)."""


@dataclass(frozen=True)
class Challenge:
    realm: str
    nonce: str
    opaque: str | None = None
    algorithm: str = "MD5"  # upper case, one of ALGORITHMS
    qop: tuple[str, ...] = ()  # lower case, as offered
    stale: bool = False


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str
    realm: str = ""  # answer only this realm; empty = any


def _auth_params(text: str) -> dict[str, str]:
    """`k=v, k="quoted \\" value"` -> {k: v} with lower-case keys."""
    params: dict[str, str] = {}
    i, n = 0, len(text)
    while i < n:
        while i < n and text[i] in " \t,":
            i += 1
        if i >= n:
            break
        eq = text.find("=", i)
        if eq < 0:
            raise DigestParseError(f"auth-param without '=' near {text[i:i + 40]!r}")
        key = text[i:eq].strip().lower()
        if not key or not all(ch.isalnum() or ch in "-_." for ch in key):
            raise DigestParseError(f"bad auth-param name {key[:40]!r}")
        i = eq + 1
        while i < n and text[i] in " \t":
            i += 1
        if i < n and text[i] == '"':
            i += 1
            chars: list[str] = []
            while True:
                if i >= n:
                    raise DigestParseError(f"unterminated quoted value for {key!r}")
                ch = text[i]
                if ch == "\\" and i + 1 < n:
                    chars.append(text[i + 1])
                    i += 2
                    continue
                i += 1
                if ch == '"':
                    break
                chars.append(ch)
            value = "".join(chars)
        else:
            end = text.find(",", i)
            end = n if end < 0 else end
            value = text[i:end].strip()
            i = end
            if not value or any(ch in value for ch in ' \t"'):
                raise DigestParseError(f"bad value for {key!r}")
        if key in params:
            raise DigestParseError(f"auth-param {key!r} given twice")
        params[key] = value
    return params


def parse_challenge(value: str) -> Challenge:
    """Parse one `WWW-Authenticate` / `Proxy-Authenticate` value; raises DigestParseError."""
    if len(value) > MAX_CHALLENGE_CHARS:
        raise DigestParseError(f"challenge longer than {MAX_CHALLENGE_CHARS} characters")
    if any((ord(ch) < 0x20 and ch != "\t") or ord(ch) == 0x7F for ch in value):
        raise DigestParseError("control character in challenge")
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() != "digest":
        raise DigestParseError(f"authentication scheme {scheme[:40]!r} is not Digest")
    params = _auth_params(rest)
    for required in ("realm", "nonce"):
        if required not in params:
            raise DigestParseError(f"Digest challenge without {required}")
    algorithm = params.get("algorithm", "MD5").upper()
    if algorithm not in ALGORITHMS:
        raise DigestParseError(f"unsupported digest algorithm {algorithm[:40]!r}")
    qop = tuple(q.strip().lower() for q in params.get("qop", "").split(",") if q.strip())
    if qop and not set(qop) & set(QOP_PREFERENCE):
        raise DigestParseError(f"unsupported qop {params['qop'][:40]!r}")
    return Challenge(
        realm=params["realm"], nonce=params["nonce"], opaque=params.get("opaque"),
        algorithm=algorithm, qop=qop, stale=params.get("stale", "").lower() == "true",
    )


def _hash(algorithm: str, text: str | bytes) -> str:
    data = text.encode() if isinstance(text, str) else text
    return hashlib.new(HASHES[algorithm.removesuffix("-SESS")], data).hexdigest()


def digest_response(challenge: Challenge, *, username: str, password: str, method: str,
                    uri: str, cnonce: str, nc: int, qop: str | None,
                    body: bytes = b"") -> str:
    """The `response` value (RFC 7616 §3.4.1; RFC 2069 form when `qop` is None)."""
    alg = challenge.algorithm
    ha1 = _hash(alg, f"{username}:{challenge.realm}:{password}")
    if alg.endswith("-SESS"):
        ha1 = _hash(alg, f"{ha1}:{challenge.nonce}:{cnonce}")
    a2 = f"{method}:{uri}"
    if qop == "auth-int":
        a2 += ":" + _hash(alg, body)
    ha2 = _hash(alg, a2)
    if qop is None:
        return _hash(alg, f"{ha1}:{challenge.nonce}:{ha2}")
    return _hash(alg, f"{ha1}:{challenge.nonce}:{nc:08x}:{cnonce}:{qop}:{ha2}")


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def authorization_value(challenge: Challenge, *, username: str, password: str, method: str,
                        uri: str, cnonce: str, nc: int, body: bytes = b"") -> str:
    """The `Authorization` / `Proxy-Authorization` value answering `challenge`."""
    qop = next((q for q in QOP_PREFERENCE if q in challenge.qop), None)
    response = digest_response(challenge, username=username, password=password, method=method,
                               uri=uri, cnonce=cnonce, nc=nc, qop=qop, body=body)
    parts = [f"username={_quoted(username)}", f"realm={_quoted(challenge.realm)}",
             f"nonce={_quoted(challenge.nonce)}", f"uri={_quoted(uri)}",
             f"response={_quoted(response)}", f"algorithm={challenge.algorithm}"]
    if challenge.opaque is not None:
        parts.append(f"opaque={_quoted(challenge.opaque)}")
    if qop is not None:
        parts += [f"qop={qop}", f"nc={nc:08x}", f"cnonce={_quoted(cnonce)}"]
    return "Digest " + ", ".join(parts)


def strongest_per_realm(challenges: list[Challenge]) -> list[Challenge]:
    """One challenge per realm: the strongest algorithm offered (RFC 8760 §2.4)."""
    best: dict[str, Challenge] = {}
    for challenge in challenges:
        current = best.get(challenge.realm)
        if current is None or (ALGORITHMS.index(challenge.algorithm)
                               < ALGORITHMS.index(current.algorithm)):
            best[challenge.realm] = challenge
    return list(best.values())


class Authenticator:
    """Answers challenges with one set of credentials (one per trunk or dialog) and counts
    `nc` per nonce across the requests it authorizes."""

    def __init__(self, credentials: Credentials) -> None:
        self.credentials = credentials
        self._counts: OrderedDict[str, int] = OrderedDict()

    def next_nc(self, nonce: str) -> int:
        count = self._counts.pop(nonce, 0) + 1
        self._counts[nonce] = count
        while len(self._counts) > MAX_REMEMBERED_NONCES:
            self._counts.popitem(last=False)
        return count

    def exchange(self) -> AuthExchange:
        """A fresh retry budget for one request (and its authenticated re-sends)."""
        return AuthExchange(self)


class AuthExchange:
    """The challenges met by one request. Each realm is answered once; a realm that challenges
    again ends the exchange, unless it says `stale=true` with a new nonce, which gets one more
    answer. A proxy and a registrar on the path (407 then 401) are two realms, each answered;
    at most `MAX_ANSWERS` re-sends in all, so no server can keep us looping."""

    def __init__(self, authenticator: Authenticator) -> None:
        self.authenticator = authenticator
        self._nonces: dict[str, str] = {}  # realm -> the nonce we answered last
        self._answers: dict[tuple[str, str], str] = {}  # (header, realm) -> our value
        self._stale_retry_used = False
        self._sent = 0
        self.failure = ""  # why the last retry was refused (empty while none was)

    def _challenges(self, response: SipResponse) -> list[Challenge]:
        header = CHALLENGE_HEADERS[response.status][0]
        found: list[Challenge] = []
        errors: list[str] = []
        for value in response.headers.get_all(header):
            try:
                found.append(parse_challenge(value))
            except DigestParseError as exc:
                errors.append(str(exc))
        wanted = self.authenticator.credentials.realm
        usable = [c for c in found if not wanted or c.realm == wanted]
        if not usable:
            if found:
                offered = ", ".join(sorted({repr(c.realm) for c in found}))
                raise AuthenticationFailed(
                    f"challenge from realm {offered}, but credentials are for realm {wanted!r}")
            raise AuthenticationFailed(
                f"{response.status} without a usable {header}: {'; '.join(errors) or 'none'}")
        return strongest_per_realm(usable)

    def retry(self, request: SipRequest, response: SipResponse) -> SipRequest:
        """The request to send after a 401/407 `response` to `request`; raises
        AuthenticationFailed (its text also kept in `failure`) when it must not be retried."""
        try:
            return self._retry(request, response)
        except AuthenticationFailed as exc:
            self.failure = str(exc)
            raise

    def _retry(self, request: SipRequest, response: SipResponse) -> SipRequest:
        if response.status not in CHALLENGE_HEADERS:
            raise AuthenticationFailed(f"{response.status} is not a challenge")
        challenges = self._challenges(response)
        again = [c for c in challenges if c.realm in self._nonces]
        for challenge in again:
            if (self._nonces[challenge.realm] == challenge.nonce or not challenge.stale
                    or self._stale_retry_used):
                raise AuthenticationFailed(
                    f"credentials refused by realm {challenge.realm!r} "
                    "(wrong username or password?)")
        if self._sent >= MAX_ANSWERS:
            raise AuthenticationFailed(f"still challenged after {MAX_ANSWERS} answers")
        self._stale_retry_used = self._stale_retry_used or bool(again)
        self._sent += 1
        credentials = self.authenticator.credentials
        answer_header = CHALLENGE_HEADERS[response.status][1]
        for challenge in challenges:
            self._nonces[challenge.realm] = challenge.nonce
            self._answers[(answer_header, challenge.realm)] = authorization_value(
                challenge, username=credentials.username, password=credentials.password,
                method=request.method, uri=request.uri, cnonce=secrets.token_hex(8),
                nc=self.authenticator.next_nc(challenge.nonce), body=request.body)
        retried = _next_request(request)
        for _, answer in CHALLENGE_HEADERS.values():
            retried.headers.remove(answer)  # replaced by every answer of this exchange
        for (header, _), value in self._answers.items():
            retried.headers.add(header, value)
        return retried


def _next_request(request: SipRequest) -> SipRequest:
    """The same request as a new transaction: fresh Via branch, CSeq plus one (RFC 3261
    §22.2); Call-ID, From tag and everything else kept."""
    headers = Headers()
    branch_replaced = False
    for name, value in request.headers:
        if name.lower() == "via" and not branch_replaced:
            value = f"{value.split(';branch=')[0]};branch={new_branch()}"
            branch_replaced = True
        headers.add(name, value)
    headers.set("CSeq", f"{request.cseq.seq + 1} {request.method}")
    return SipRequest(request.method, request.uri, headers, request.body)


def credentials_of(request: SipRequest) -> list[tuple[str, str]]:
    """The `Authorization` / `Proxy-Authorization` headers `request` carries (an ACK for a 2xx
    repeats its INVITE's, RFC 3261 §22.1)."""
    return [(answer, value) for _, answer in CHALLENGE_HEADERS.values()
            for value in request.headers.get_all(answer)]
