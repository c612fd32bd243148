"""DTMF as RTP telephone-events (RFC 4733), sans-I/O.

Payload (4 octets)::

     0                   1                   2                   3
     0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
    |     event     |E|R| volume    |          duration             |

All packets of one event (one key press) carry the RTP timestamp of the event start; the
duration field grows as the key is held, and the end is signalled with the E bit, normally
sent three times for robustness. The first packet of an event carries the RTP marker bit.
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass
from typing import Final

from callbox.server.media.frames import FRAME_SAMPLES

DTMF_EVENTS: Final = "0123456789*#ABCD"
TELEPHONE_EVENT_SIZE: Final = 4
TICK_SAMPLES: Final = FRAME_SAMPLES  # one update packet per 20 ms tick
TICK_MS: Final = 20
END_REPEATS: Final = 3
MAX_VOLUME: Final = 63  # -dBm0, 6 bits
MAX_DURATION: Final = 0xFFFF
REMEMBERED_PRESSES: Final = 16  # key presses remembered to suppress late repeats

_END_BIT: Final = 0x80
_VOLUME_MASK: Final = 0x3F
_PAYLOAD: Final = struct.Struct("!BBH")
_EVENT_CODES: Final[dict[str, int]] = {ch: code for code, ch in enumerate(DTMF_EVENTS)}


@dataclass(frozen=True, slots=True)
class TelephoneEvent:
    """One RFC 4733 telephone-event payload."""

    event: int
    end: bool
    volume: int
    duration: int

    @classmethod
    def parse(cls, payload: bytes) -> TelephoneEvent:
        """Parse the first 4 octets of a payload; raises ValueError if shorter.

        (A payload may legally hold several events for redundancy; the first is the current.)
        """
        if len(payload) < TELEPHONE_EVENT_SIZE:
            raise ValueError(f"telephone-event payload too short ({len(payload)} bytes)")
        event, flags, duration = _PAYLOAD.unpack_from(payload)
        return cls(event, bool(flags & _END_BIT), flags & _VOLUME_MASK, duration)

    def serialize(self) -> bytes:
        if not 0 <= self.event <= 0xFF:
            raise ValueError(f"event code {self.event} out of range")
        if not 0 <= self.volume <= MAX_VOLUME:
            raise ValueError(f"volume {self.volume} out of range 0-{MAX_VOLUME}")
        if not 0 <= self.duration <= MAX_DURATION:
            raise ValueError(f"duration {self.duration} out of range")
        flags = (_END_BIT if self.end else 0) | self.volume
        return _PAYLOAD.pack(self.event, flags, self.duration)

    @property
    def digit(self) -> str | None:
        """The DTMF character for event codes 0-15, else None."""
        return DTMF_EVENTS[self.event] if self.event < len(DTMF_EVENTS) else None


class DtmfReceiver:
    """Turns a stream of telephone-event payloads into key presses, each reported once.

    A key press is identified by (RTP timestamp, event code): every packet of one press shares
    the timestamp of its start. The first packet seen for a press reports the digit, whether
    it is a start, an update or (if the others were lost) an end packet; all later packets of
    the same press - updates and the repeated end packets - return None. A recent history of
    presses is kept so that a reordered straggler of an earlier press is not reported again.

    Limitation: an event longer than ~8 s (duration overflow, RFC 4733 2.5.1.3) continues with
    a new timestamp and would be reported as a second press.
    """

    __slots__ = ("_recent", "_recent_set", "events", "malformed", "packets")

    def __init__(self) -> None:
        self._recent: deque[tuple[int, int]] = deque()
        self._recent_set: set[tuple[int, int]] = set()
        self.packets = 0
        self.events = 0  # key presses reported
        self.malformed = 0

    def feed(self, timestamp: int, payload: bytes) -> str | None:
        """Process one telephone-event payload; return the digit if it starts a new press."""
        self.packets += 1
        if len(payload) < TELEPHONE_EVENT_SIZE:
            self.malformed += 1
            return None
        event = payload[0]
        key = (timestamp, event)
        if key in self._recent_set:
            return None
        self._recent.append(key)
        self._recent_set.add(key)
        if len(self._recent) > REMEMBERED_PRESSES:
            self._recent_set.discard(self._recent.popleft())
        if event >= len(DTMF_EVENTS):
            return None  # a non-DTMF event (flash, tones): remembered, not reported
        self.events += 1
        return DTMF_EVENTS[event]


class DtmfSender:
    """Builds the RFC 4733 payloads for sending a digit, one list per 20 ms tick.

    The caller sends each tick's payloads with the payload type negotiated for telephone-event,
    all with the same RTP timestamp: the timestamp of the event start (the media timestamp at
    the first tick), not advancing while the event lasts. The first payload of the first tick
    goes out with the RTP marker bit set. After the event, the audio timestamp continues as if
    audio had been sent during it.
    """

    __slots__ = ()

    def packets(self, digit: str, duration_ms: int = 100, volume: int = 10) -> list[list[bytes]]:
        """Payloads per 20 ms tick for one key press of ``duration_ms`` (rounded up to 20 ms).

        Ticks 1..n-1 carry one update each with duration 160, 320, ...; tick n carries the end
        packet (duration n * 160) three times. Raises ValueError for a character not in
        :data:`DTMF_EVENTS` (lowercase a-d are accepted), a bad duration or volume.
        """
        code = _EVENT_CODES.get(digit.upper()) if len(digit) == 1 else None
        if code is None:
            raise ValueError(f"not a DTMF digit: {digit!r}")
        if not 0 <= volume <= MAX_VOLUME:
            raise ValueError(f"volume {volume} out of range 0-{MAX_VOLUME}")
        ticks = max(1, -(-duration_ms // TICK_MS))
        if duration_ms <= 0 or ticks * TICK_SAMPLES > MAX_DURATION:
            raise ValueError(f"DTMF duration {duration_ms} ms out of range")
        updates = [[_PAYLOAD.pack(code, volume, tick * TICK_SAMPLES)] for tick in range(1, ticks)]
        end = _PAYLOAD.pack(code, _END_BIT | volume, ticks * TICK_SAMPLES)
        updates.append([end] * END_REPEATS)
        return updates
