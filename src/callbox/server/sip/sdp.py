"""SDP (RFC 4566) parsing/serializing and the offer/answer model (RFC 3264) for G.711 audio.

Only what a G.711 + RFC 4733 DTMF endpoint needs is modelled as fields (connection, rtpmap,
fmtp, ptime, direction); other attributes are kept in `attributes` in order, and other line
types (b=, i=, k=, ...) are ignored.
"""

from __future__ import annotations

import email.message
import email.parser
import email.policy
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
SUPPORTED_CODECS = ("PCMU", "PCMA")
STATIC_PAYLOAD_TYPES = {0: "PCMU", 8: "PCMA"}  # RFC 3551 table 4, the ones we can decode
# Other static audio payload types, only to name them in error messages.
OTHER_STATIC_AUDIO = {3: "GSM", 4: "G723", 5: "DVI4", 7: "LPC", 9: "G722", 15: "G728", 18: "G729"}
CODEC_PAYLOAD_TYPES = {name: pt for pt, name in STATIC_PAYLOAD_TYPES.items()}
AUDIO_CLOCK_RATE = 8000
RTP_PROFILES = ("RTP/AVP", "RTP/AVPF")
TELEPHONE_EVENT = "telephone-event"
DEFAULT_DTMF_FMTP = "0-16"
DEFAULT_DTMF_PAYLOAD_TYPE = 101
DEFAULT_PTIME = 20
SESSION_NAME = "callbox"
ORIGIN_USERNAME = "callbox"
HOLD_ADDRESSES = ("0.0.0.0", "::")  # RFC 2543-style hold (RFC 3264 §8.4)
MAX_NUMBER_DIGITS = 20
SDP_CONTENT_TYPE = "application/sdp"
MULTIPART_MIXED = "multipart/mixed"

_LINE_RE = re.compile(r"([a-z])=(.*)")
_INT_RE = re.compile(r"[0-9]{1,20}")
_RTPMAP_RE = re.compile(r"([0-9]{1,3})\s+([^/\s]+)/([0-9]{1,9})(?:/([0-9]{1,3}))?\s*")
_FMTP_RE = re.compile(r"([0-9]{1,3})\s+(.*)")
_PTIME_RE = re.compile(r"([0-9]{1,6})(?:\.[0-9]*)?\s*")
_TOKEN_RE = re.compile(r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+")


class SdpError(ValueError):
    """Malformed or unusable SDP."""


class NoCommonCodec(SdpError):
    """The offer (or answer) has no audio codec we can use; answer the INVITE with 488."""


class UnsupportedContentType(ValueError):
    """The body is neither SDP nor a multipart/mixed body holding SDP (answer 415)."""


@dataclass
class Origin:
    username: str = ORIGIN_USERNAME
    session_id: int = 0
    session_version: int = 0
    nettype: str = "IN"
    addrtype: str = "IP4"
    address: str = "127.0.0.1"

    def __str__(self) -> str:
        return (
            f"{self.username} {self.session_id} {self.session_version} "
            f"{self.nettype} {self.addrtype} {self.address}"
        )


@dataclass
class MediaDescription:
    media: str
    port: int
    proto: str
    formats: list[str]
    connection: str | None = None
    direction: str | None = None
    rtpmap: dict[int, tuple[str, int, int | None]] = field(default_factory=dict)
    fmtp: dict[int, str] = field(default_factory=dict)
    ptime: int | None = None
    maxptime: int | None = None
    attributes: list[tuple[str, str | None]] = field(default_factory=list)
    # Why this stream is unusable (a malformed line in its section); it is answered with port 0
    # while the other streams of the offer are still negotiated (RFC 3264 §6).
    error: str | None = None

    def codec_name(self, fmt: str) -> tuple[str, int, int | None] | None:
        """(encoding, clock rate, channels) for a format, from rtpmap or the static table."""
        if not (fmt.isascii() and fmt.isdigit()):
            return None
        pt = int(fmt)
        if pt in self.rtpmap:
            return self.rtpmap[pt]
        if pt in STATIC_PAYLOAD_TYPES:
            return STATIC_PAYLOAD_TYPES[pt], AUDIO_CLOCK_RATE, None
        return None

    def serialize_lines(self) -> list[str]:
        lines = [f"m={self.media} {self.port} {self.proto} {' '.join(self.formats)}"]
        if self.connection is not None:
            lines.append(f"c={_connection_line(self.connection)}")
        for pt, (encoding, rate, channels) in self.rtpmap.items():
            suffix = f"/{channels}" if channels is not None else ""
            lines.append(f"a=rtpmap:{pt} {encoding}/{rate}{suffix}")
        lines += [f"a=fmtp:{pt} {params}" for pt, params in self.fmtp.items()]
        if self.ptime is not None:
            lines.append(f"a=ptime:{self.ptime}")
        lines += _attribute_lines(self.attributes)
        if self.direction is not None:
            lines.append(f"a={self.direction}")
        return lines


@dataclass
class SessionDescription:
    origin: Origin = field(default_factory=Origin)
    session_name: str = "-"
    connection: str | None = None
    direction: str | None = None
    media: list[MediaDescription] = field(default_factory=list)
    timing: str = "0 0"
    attributes: list[tuple[str, str | None]] = field(default_factory=list)
    version: int = 0

    def serialize(self) -> bytes:
        lines = [f"v={self.version}", f"o={self.origin}", f"s={self.session_name or '-'}"]
        if self.connection is not None:
            lines.append(f"c={_connection_line(self.connection)}")
        lines.append(f"t={self.timing}")
        lines += _attribute_lines(self.attributes)
        if self.direction is not None:
            lines.append(f"a={self.direction}")
        for media in self.media:
            lines += media.serialize_lines()
        return ("\r\n".join(lines) + "\r\n").encode("utf-8")

    def media_connection(self, media: MediaDescription) -> str | None:
        return media.connection if media.connection is not None else self.connection

    def media_direction(self, media: MediaDescription) -> str:
        return media.direction or self.direction or "sendrecv"


@dataclass
class NegotiatedMedia:
    remote_host: str
    remote_port: int
    payload_type: int
    codec: str
    dtmf_payload_type: int | None
    ptime: int = DEFAULT_PTIME
    local_direction: str = "sendrecv"


def _connection_line(address: str) -> str:
    return f"IN {'IP6' if ':' in address else 'IP4'} {address}"


def _attribute_lines(attributes: list[tuple[str, str | None]]) -> list[str]:
    return [f"a={name}" if value is None else f"a={name}:{value}" for name, value in attributes]


def _parse_int(text: str, what: str) -> int:
    if not _INT_RE.fullmatch(text):
        raise SdpError(f"bad {what}: {text[:40]!r}")
    return int(text)


def _parse_connection(value: str) -> str:
    parts = value.split()
    if len(parts) != 3 or parts[0] != "IN" or parts[1] not in ("IP4", "IP6"):
        raise SdpError(f"bad connection line: {value[:80]!r}")
    return parts[2].split("/", 1)[0]  # drop a multicast TTL / count


def _parse_origin(value: str) -> Origin:
    parts = value.split()
    if len(parts) != 6:
        raise SdpError(f"bad origin line: {value[:80]!r}")
    return Origin(
        parts[0],
        _parse_int(parts[1], "session id"),
        _parse_int(parts[2], "session version"),
        parts[3],
        parts[4],
        parts[5],
    )


def _parse_media(value: str) -> MediaDescription:
    parts = value.split()
    if len(parts) < 4:
        raise SdpError(f"bad media line: {value[:80]!r}")
    port_text = parts[1].split("/", 1)[0]
    port = _parse_int(port_text, "media port")
    if port > 65535:
        raise SdpError(f"bad media port: {port}")
    if not _TOKEN_RE.fullmatch(parts[0]) or not all(_TOKEN_RE.fullmatch(f) for f in parts[3:]):
        raise SdpError(f"bad media line: {value[:80]!r}")
    return MediaDescription(parts[0], port, parts[2], parts[3:])


def _apply_media_attribute(media: MediaDescription, name: str, value: str | None) -> None:
    if name == "rtpmap" and value is not None:
        match = _RTPMAP_RE.fullmatch(value)
        if not match:
            raise SdpError(f"bad rtpmap: {value[:80]!r}")
        channels = int(match.group(4)) if match.group(4) else None
        media.rtpmap[int(match.group(1))] = (match.group(2), int(match.group(3)), channels)
    elif name == "fmtp" and value is not None:
        match = _FMTP_RE.fullmatch(value)
        if not match:
            raise SdpError(f"bad fmtp: {value[:80]!r}")
        media.fmtp[int(match.group(1))] = match.group(2).strip()
    elif name == "ptime" and value is not None:
        match = _PTIME_RE.fullmatch(value)
        if not match:
            raise SdpError(f"bad ptime: {value[:80]!r}")
        media.ptime = int(match.group(1))
    elif name == "maxptime" and value is not None:
        match = _PTIME_RE.fullmatch(value)
        if not match:
            raise SdpError(f"bad maxptime: {value[:80]!r}")
        media.maxptime = int(match.group(1))
    elif name in DIRECTIONS and value is None:
        media.direction = name
    else:
        media.attributes.append((name, value))


def _split_attribute(value: str, line: str) -> tuple[str, str | None]:
    name, colon, attr_value = value.partition(":")
    if not name:
        raise SdpError(f"bad attribute line: {line[:80]!r}")
    return name, attr_value if colon else None


def _apply_media_line(media: MediaDescription, kind: str, value: str, line: str) -> None:
    """A c= or a= line inside a media section."""
    if kind == "c":
        media.connection = _parse_connection(value)
    else:
        _apply_media_attribute(media, *_split_attribute(value, line))


def sdp_body(body: bytes, content_type: str | None) -> bytes:
    """The SDP in a message body: the body itself, or the SDP part of a multipart/mixed body
    (RFC 5621). Raises UnsupportedContentType for anything else."""
    media_type = (content_type or SDP_CONTENT_TYPE).split(";", 1)[0].strip().lower()
    if media_type == SDP_CONTENT_TYPE:
        return body
    if media_type != MULTIPART_MIXED:
        raise UnsupportedContentType(f"unsupported Content-Type {media_type[:60]!r}")
    head = f"Content-Type: {content_type}\r\n\r\n".encode("utf-8", "replace")
    message = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(head + body)
    if message.is_multipart():
        for part in message.get_payload():
            if isinstance(part, email.message.Message) and \
                    part.get_content_type() == SDP_CONTENT_TYPE:
                payload = part.get_payload(decode=True)
                if isinstance(payload, bytes):
                    return payload
    raise UnsupportedContentType("multipart/mixed body without an application/sdp part")


def parse_sdp(data: bytes | str) -> SessionDescription:
    """Parse a session description; raises SdpError (only) for anything malformed."""
    if isinstance(data, bytes | bytearray | memoryview):
        raw = bytes(data)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("latin-1")  # s=/i= may carry legacy charsets
    elif isinstance(data, str):
        text = data
    else:
        raise SdpError(f"cannot parse SDP from {type(data).__name__}")
    session = SessionDescription()
    seen_version = seen_origin = False
    current: MediaDescription | None = None
    for raw_line in text.split("\n"):
        line = raw_line.rstrip("\r")
        if not line.strip():
            continue
        match = _LINE_RE.fullmatch(line)
        if current is not None and current.error is not None:
            continue  # the rest of an unusable stream's section
        if not match:
            if current is not None:
                current.error = f"malformed SDP line: {line[:80]!r}"
                continue
            raise SdpError(f"malformed SDP line: {line[:80]!r}")
        kind, value = match.group(1), match.group(2).strip()
        if current is not None and kind in "ca":
            try:
                _apply_media_line(current, kind, value, line)
            except SdpError as exc:
                current.error = str(exc)
            continue
        if kind == "v":
            if value != "0" or seen_version:
                raise SdpError(f"unsupported SDP version line: {value[:20]!r}")
            seen_version = True
        elif not seen_version:
            raise SdpError("SDP must start with v=0")
        elif kind == "o":
            session.origin = _parse_origin(value)
            seen_origin = True
        elif kind == "s" and current is None:
            session.session_name = value
        elif kind == "t" and current is None:
            session.timing = value
        elif kind == "c":
            session.connection = _parse_connection(value)
        elif kind == "m":
            current = _parse_media(value)
            session.media.append(current)
        elif kind == "a":
            name, attr = _split_attribute(value, line)
            if name in DIRECTIONS and attr is None:
                session.direction = name
            else:
                session.attributes.append((name, attr))
    if not seen_version:
        raise SdpError("empty SDP")
    if not seen_origin:
        raise SdpError("SDP has no o= line")
    return session


def _describe_codecs(media: MediaDescription) -> str:
    names = []
    for fmt in media.formats:
        codec = media.codec_name(fmt)
        if codec is None:
            known = OTHER_STATIC_AUDIO.get(int(fmt)) if fmt.isascii() and fmt.isdigit() else None
            names.append(f"{known}/{AUDIO_CLOCK_RATE}" if known else f"PT {fmt}")
        elif codec[0].lower() != TELEPHONE_EVENT:
            names.append(f"{codec[0]}/{codec[1]}")
    return ", ".join(names) or "nothing"


def _pick_codec(media: MediaDescription, codecs: Sequence[str]) -> tuple[int, str] | None:
    """The first format in the media line's order that is one of `codecs`, at 8 kHz mono."""
    wanted = {c.upper() for c in codecs}
    for fmt in media.formats:
        codec = media.codec_name(fmt)
        if codec is None:
            continue
        name, rate, channels = codec
        if name.upper() in wanted and rate == AUDIO_CLOCK_RATE and channels in (None, 1):
            return int(fmt), name.upper()
    return None


def _pick_dtmf(media: MediaDescription) -> int | None:
    for fmt in media.formats:
        codec = media.codec_name(fmt)
        if codec and codec[0].lower() == TELEPHONE_EVENT and codec[1] == AUDIO_CLOCK_RATE:
            return int(fmt)
    return None


def _is_rtp_audio(media: MediaDescription) -> bool:
    return (media.media == "audio" and media.port != 0 and media.error is None
            and media.proto.upper() in RTP_PROFILES)


def check_media_address(host: str) -> None:
    """Refuse a multicast connection address: callbox speaks unicast RTP. A host name passes;
    the caller resolves it (off the media clock) and checks the result again."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return
    if address.is_multicast:
        raise SdpError(f"multicast connection address {host} is not supported")


def _reverse_direction(direction: str) -> str:
    return {"sendonly": "recvonly", "recvonly": "sendonly"}.get(direction, direction)


def _offer_direction(session: SessionDescription, media: MediaDescription) -> str:
    """The offerer's direction; a 0.0.0.0 connection means it will not receive (old hold)."""
    direction = session.media_direction(media)
    if session.media_connection(media) in HOLD_ADDRESSES:
        direction = {"sendrecv": "sendonly", "recvonly": "inactive"}.get(direction, direction)
    return direction


def answer_offer(
    offer: SessionDescription,
    *,
    local_host: str,
    local_port: int,
    session_id: int,
    session_version: int,
    codecs: Sequence[str] = SUPPORTED_CODECS,
) -> tuple[SessionDescription, NegotiatedMedia]:
    """Answer an offer per RFC 3264 §6: accept the first usable audio stream, reject the rest."""
    chosen: tuple[int, int, str] | None = None  # (m-line index, payload type, codec)
    for index, media in enumerate(offer.media):
        if _is_rtp_audio(media):
            picked = _pick_codec(media, codecs)
            if picked is not None:
                chosen = (index, *picked)
                break
    if chosen is None:
        audio_streams = [m for m in offer.media if m.media == "audio"]
        supported = ", ".join(c.upper() for c in codecs)
        if not audio_streams:
            raise NoCommonCodec(f"no audio stream in offer; callbox supports {supported}")
        offered = "; ".join(
            _describe_codecs(m) if _is_rtp_audio(m) else f"{m.proto} port {m.port}"
            for m in audio_streams
        )
        raise NoCommonCodec(f"no common codec: offer has {offered}; callbox supports {supported}")
    index, payload_type, codec = chosen
    offered_media = offer.media[index]
    remote_host = offer.media_connection(offered_media)
    if remote_host is None:
        raise SdpError("offer has no connection address for the audio stream")
    check_media_address(remote_host)
    if offered_media.maxptime is not None and offered_media.maxptime < DEFAULT_PTIME:
        raise SdpError(f"maxptime {offered_media.maxptime} ms is below the {DEFAULT_PTIME} ms "
                       "packets callbox sends")
    direction = _reverse_direction(_offer_direction(offer, offered_media))
    dtmf = _pick_dtmf(offered_media)

    audio = MediaDescription("audio", local_port, offered_media.proto, [str(payload_type)])
    audio.rtpmap[payload_type] = (codec, AUDIO_CLOCK_RATE, None)
    if dtmf is not None:
        audio.formats.append(str(dtmf))
        audio.rtpmap[dtmf] = (TELEPHONE_EVENT, AUDIO_CLOCK_RATE, None)
        audio.fmtp[dtmf] = offered_media.fmtp.get(dtmf, DEFAULT_DTMF_FMTP)
    audio.ptime = DEFAULT_PTIME
    audio.direction = direction

    answer_media = [
        audio if i == index else MediaDescription(m.media, 0, m.proto, list(m.formats))
        for i, m in enumerate(offer.media)
    ]
    answer = SessionDescription(
        origin=Origin(
            ORIGIN_USERNAME,
            session_id,
            session_version,
            "IN",
            "IP6" if ":" in local_host else "IP4",
            local_host,
        ),
        session_name=SESSION_NAME,
        connection=local_host,
        media=answer_media,
    )
    negotiated = NegotiatedMedia(
        remote_host=remote_host,
        remote_port=offered_media.port,
        payload_type=payload_type,
        codec=codec,
        dtmf_payload_type=dtmf,
        ptime=offered_media.ptime or DEFAULT_PTIME,
        local_direction=direction,
    )
    return answer, negotiated


def make_offer(
    *,
    local_host: str,
    local_port: int,
    session_id: int,
    session_version: int,
    codecs: Sequence[str] = SUPPORTED_CODECS,
    dtmf_payload_type: int | None = DEFAULT_DTMF_PAYLOAD_TYPE,
    direction: str = "sendrecv",
) -> SessionDescription:
    if direction not in DIRECTIONS:
        raise SdpError(f"bad direction {direction!r}")
    audio = MediaDescription("audio", local_port, "RTP/AVP", [])
    for name in codecs:
        pt = CODEC_PAYLOAD_TYPES.get(name.upper())
        if pt is None:
            raise SdpError(f"unsupported codec {name!r}")
        audio.formats.append(str(pt))
        audio.rtpmap[pt] = (name.upper(), AUDIO_CLOCK_RATE, None)
    if not audio.formats:
        raise SdpError("an offer needs at least one codec")
    if dtmf_payload_type is not None:
        audio.formats.append(str(dtmf_payload_type))
        audio.rtpmap[dtmf_payload_type] = (TELEPHONE_EVENT, AUDIO_CLOCK_RATE, None)
        audio.fmtp[dtmf_payload_type] = DEFAULT_DTMF_FMTP
    audio.ptime = DEFAULT_PTIME
    audio.direction = direction
    return SessionDescription(
        origin=Origin(
            ORIGIN_USERNAME,
            session_id,
            session_version,
            "IN",
            "IP6" if ":" in local_host else "IP4",
            local_host,
        ),
        session_name=SESSION_NAME,
        connection=local_host,
        media=[audio],
    )


def accept_answer(offer: SessionDescription, answer: SessionDescription) -> NegotiatedMedia:
    """Read the peer's answer to our offer (RFC 3264 §7)."""
    if len(answer.media) != len(offer.media):
        raise SdpError(f"answer has {len(answer.media)} media lines, offer had {len(offer.media)}")
    index = next((i for i, m in enumerate(offer.media) if _is_rtp_audio(m)), None)
    if index is None:
        raise SdpError("our offer has no audio stream")
    ours, theirs = offer.media[index], answer.media[index]
    if theirs.port == 0 or theirs.media != "audio":
        raise NoCommonCodec("the answer rejected the audio stream")
    offered_codecs = [c[0] for f in ours.formats if (c := ours.codec_name(f)) is not None]
    picked = _pick_codec(theirs, [c for c in offered_codecs if c.upper() in SUPPORTED_CODECS])
    if picked is None:
        raise NoCommonCodec(f"no common codec: answer has {_describe_codecs(theirs)}")
    remote_host = answer.media_connection(theirs)
    if remote_host is None:
        raise SdpError("answer has no connection address for the audio stream")
    dtmf = _pick_dtmf(theirs) if _pick_dtmf(ours) is not None else None
    # We send if we offered to send and they receive; likewise the other way round.
    our_direction = offer.media_direction(ours)
    their_direction = _offer_direction(answer, theirs)
    send = our_direction in ("sendrecv", "sendonly") and their_direction in ("sendrecv", "recvonly")
    recv = our_direction in ("sendrecv", "recvonly") and their_direction in ("sendrecv", "sendonly")
    local_direction = {
        (True, True): "sendrecv",
        (True, False): "sendonly",
        (False, True): "recvonly",
        (False, False): "inactive",
    }[(send, recv)]
    return NegotiatedMedia(
        remote_host=remote_host,
        remote_port=theirs.port,
        payload_type=picked[0],
        codec=picked[1],
        dtmf_payload_type=dtmf,
        ptime=theirs.ptime or DEFAULT_PTIME,
        local_direction=local_direction,
    )
