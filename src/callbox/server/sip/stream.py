"""Framing SIP on a byte stream (RFC 3261 §18.3), sans-I/O: bytes in, whole messages out.

On a stream there is no datagram boundary: each message's end is found from its Content-Length,
which is therefore mandatory. CRLFs between messages (RFC 5626 keep-alives) are skipped. The
size and header-line bounds of the datagram path (`message.oversize_reason`) apply before any
parsing, and the buffer never holds more than one bounded message, so a peer cannot make us
buffer without limit. After an error the stream is unusable: the connection is closed.
"""

from __future__ import annotations

import re

from callbox.server.sip.message import MAX_MESSAGE_BYTES, oversize_reason

__all__ = ["StreamError", "StreamFramer"]

# "Content-Length" or its compact form "l", at the start of a header line.
_CONTENT_LENGTH_RE = re.compile(rb"\n(?:content-length|l)[ \t]*:[ \t]*([^\r\n]*)", re.I)
_LEADING_NEWLINES = b"\r\n"
_MAX_LENGTH_DIGITS = 10


class StreamError(Exception):
    """The stream cannot be framed: answer `status` (when possible) and close the connection.

    `head` holds the bytes of the offending message seen so far, to copy Via, CSeq and the like
    into a best-effort response.
    """

    def __init__(self, status: int, phrase: str, reason: str, head: bytes) -> None:
        super().__init__(reason)
        self.status = status
        self.phrase = phrase
        self.reason = reason
        self.head = head


def _too_large(reason: str, head: bytes) -> StreamError:
    return StreamError(513, "Message Too Large", reason, head)


def _bad(reason: str, head: bytes) -> StreamError:
    return StreamError(400, "Bad Request", reason, head)


def _head_end(buffer: bytes | bytearray) -> int:
    """Index just past the blank line ending the header section, or -1."""
    crlf = buffer.find(b"\r\n\r\n")
    lf = buffer.find(b"\n\n")
    ends = [i + 4 for i in (crlf,) if i >= 0] + [i + 2 for i in (lf,) if i >= 0]
    return min(ends) if ends else -1


def _body_length(head: bytes) -> int:
    values = {m.group(1).strip() for m in _CONTENT_LENGTH_RE.finditer(head)}
    if not values:
        raise _bad("Content-Length is required on a stream transport", head)
    if len(values) > 1:
        raise _bad("conflicting Content-Length headers", head)
    value = values.pop()
    if not value.isdigit() or len(value) > _MAX_LENGTH_DIGITS:
        raise _bad(f"bad Content-Length {value[:20]!r}", head)
    return int(value)


class StreamFramer:
    """Cuts a SIP byte stream into messages; `feed` returns every message completed so far.

    When the stream cannot be framed, `error` is set (the messages completed before it are
    still returned) and every later `feed` returns nothing.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self.error: StreamError | None = None

    @property
    def buffered(self) -> int:
        """Bytes held for a message not yet complete."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        """Add received bytes; return the messages they complete, in order."""
        if self.error is not None:
            return []
        self._buffer += data
        messages: list[bytes] = []
        try:
            while (message := self._next_message()) is not None:
                messages.append(message)
        except StreamError as exc:
            self.error = exc
            self._buffer.clear()
        return messages

    def _next_message(self) -> bytes | None:
        buffer = self._buffer
        skip = len(buffer) - len(buffer.lstrip(_LEADING_NEWLINES))
        if skip:
            del buffer[:skip]
        if not buffer:
            return None
        end = _head_end(buffer)
        if end < 0:
            # Not even the header section yet: it alone must respect the bounds.
            reason = oversize_reason(bytes(buffer))
            if reason is not None:
                raise _too_large(reason, bytes(buffer))
            return None
        head = bytes(buffer[:end])
        reason = oversize_reason(head)
        if reason is not None:
            raise _too_large(reason, head)
        total = end + _body_length(head)
        if total > MAX_MESSAGE_BYTES:
            raise _too_large(f"message of {total} bytes exceeds {MAX_MESSAGE_BYTES}", head)
        if len(buffer) < total:
            return None
        message = bytes(buffer[:total])
        del buffer[:total]
        return message
