"""ITU-T G.711 mu-law (PCMU) and A-law (PCMA), bit-exact with the classic reference coder.

Every conversion is a single numpy table lookup. The tables are computed once at import:

* decode tables: 256 entries, code byte -> int16 sample;
* encode tables: 65536 entries, indexed by the int16 sample viewed as uint16 -> code byte.

The results match the widely used Sun reference implementation (the one CPython's ``audioop``
and sox use): mu-law encodes the 14 most significant bits with a bias of 33, A-law the 13 most
significant bits, both with the usual bit inversions on the wire.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from callbox.server.media.frames import SAMPLE_RATE

PCMU_PAYLOAD_TYPE: Final = 0
PCMA_PAYLOAD_TYPE: Final = 8

# mu-law: sign bit, 3-bit segment (exponent), 4-bit quantisation step (mantissa).
_ULAW_BIAS: Final = 0x84  # 132 in 16-bit units; 33 in the 14-bit domain the encoder works in
_ULAW_CLIP: Final = 8159  # largest 14-bit magnitude before the bias is added
_ULAW_SEGMENT_ENDS: Final = (0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF)
# A-law: even bits inverted on the wire.
_ALAW_XOR: Final = 0x55
_ALAW_SEGMENT_ENDS: Final = (0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF)

Int16Array = npt.NDArray[np.int16]


def _all_int16() -> npt.NDArray[np.int32]:
    """Every int16 value, ordered by its uint16 bit pattern (so the index is the table key)."""
    return np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.int16).astype(np.int32)


def _build_ulaw_decode() -> Int16Array:
    code = ~np.arange(256, dtype=np.int32) & 0xFF
    mantissa = code & 0x0F
    segment = (code >> 4) & 0x07
    magnitude = (((mantissa << 3) + _ULAW_BIAS) << segment) - _ULAW_BIAS
    return np.where(code & 0x80, -magnitude, magnitude).astype(np.int16)


def _build_ulaw_encode() -> npt.NDArray[np.uint8]:
    value = _all_int16() >> 2  # 14-bit domain (arithmetic shift, like the reference)
    negative = value < 0
    magnitude = np.minimum(np.abs(value), _ULAW_CLIP) + (_ULAW_BIAS >> 2)
    segment = np.searchsorted(np.asarray(_ULAW_SEGMENT_ENDS), magnitude, side="left")
    mantissa = (magnitude >> (np.minimum(segment, 7) + 1)) & 0x0F
    code = np.where(segment >= 8, 0x7F, (segment << 4) | mantissa)
    mask = np.where(negative, 0x7F, 0xFF)
    return (code ^ mask).astype(np.uint8)


def _build_alaw_decode() -> Int16Array:
    code = np.arange(256, dtype=np.int32) ^ _ALAW_XOR
    mantissa = (code & 0x0F) << 4
    segment = (code >> 4) & 0x07
    magnitude = np.where(
        segment == 0,
        mantissa + 8,
        (mantissa + 0x108) << np.maximum(segment - 1, 0),
    )
    return np.where(code & 0x80, magnitude, -magnitude).astype(np.int16)


def _build_alaw_encode() -> npt.NDArray[np.uint8]:
    value = _all_int16() >> 3  # 13-bit domain
    negative = value < 0
    magnitude = np.where(negative, -value - 1, value)
    segment = np.searchsorted(np.asarray(_ALAW_SEGMENT_ENDS), magnitude, side="left")
    shift = np.where(segment < 2, 1, np.minimum(segment, 7))
    code = np.where(segment >= 8, 0x7F, (segment << 4) | ((magnitude >> shift) & 0x0F))
    mask = np.where(negative, _ALAW_XOR, _ALAW_XOR | 0x80)
    return (code ^ mask).astype(np.uint8)


ULAW_DECODE_TABLE: Final[Int16Array] = _build_ulaw_decode()
ULAW_ENCODE_TABLE: Final[npt.NDArray[np.uint8]] = _build_ulaw_encode()
ALAW_DECODE_TABLE: Final[Int16Array] = _build_alaw_decode()
ALAW_ENCODE_TABLE: Final[npt.NDArray[np.uint8]] = _build_alaw_encode()
for _table in (ULAW_DECODE_TABLE, ULAW_ENCODE_TABLE, ALAW_DECODE_TABLE, ALAW_ENCODE_TABLE):
    _table.flags.writeable = False
del _table


def _as_uint16(pcm: npt.ArrayLike) -> npt.NDArray[np.uint16]:
    """The samples' bit patterns as uint16 (no copy for int16 input; others are clipped)."""
    arr = np.asarray(pcm)
    if arr.dtype != np.int16:
        arr = np.clip(arr, -32768, 32767).astype(np.int16)
    return arr.view(np.uint16)


def ulaw_decode(payload: bytes) -> Int16Array:
    """PCMU bytes -> new int16 array (one sample per byte)."""
    return ULAW_DECODE_TABLE[np.frombuffer(payload, dtype=np.uint8)]


def ulaw_encode(pcm: npt.ArrayLike) -> bytes:
    """int16 samples -> PCMU bytes. Non-int16 input is clipped to the int16 range first."""
    return ULAW_ENCODE_TABLE[_as_uint16(pcm)].tobytes()


def alaw_decode(payload: bytes) -> Int16Array:
    """PCMA bytes -> new int16 array (one sample per byte)."""
    return ALAW_DECODE_TABLE[np.frombuffer(payload, dtype=np.uint8)]


def alaw_encode(pcm: npt.ArrayLike) -> bytes:
    """int16 samples -> PCMA bytes. Non-int16 input is clipped to the int16 range first."""
    return ALAW_ENCODE_TABLE[_as_uint16(pcm)].tobytes()


@dataclass(frozen=True, slots=True, eq=False)
class G711Codec:
    """One G.711 variant as negotiated in SDP (``a=rtpmap:0 PCMU/8000``).

    Compared and hashed by identity (there is one instance per variant: :data:`CODECS`).
    """

    name: str
    payload_type: int
    decode_table: Int16Array
    encode_table: npt.NDArray[np.uint8]
    clock_rate: int = SAMPLE_RATE

    def encode(self, pcm: npt.ArrayLike) -> bytes:
        """int16 samples -> payload bytes."""
        return self.encode_table[_as_uint16(pcm)].tobytes()

    def decode(self, payload: bytes) -> Int16Array:
        """Payload bytes -> new int16 array."""
        return self.decode_table[np.frombuffer(payload, dtype=np.uint8)]

    def decode_into(self, payload: bytes, out: Int16Array) -> Int16Array:
        """Decode into ``out[:len(payload)]`` without allocating; returns that slice."""
        view = out[: len(payload)]
        np.take(self.decode_table, np.frombuffer(payload, dtype=np.uint8), out=view)
        return view

    def __repr__(self) -> str:
        return f"G711Codec({self.name}/{self.clock_rate}, pt={self.payload_type})"


PCMU: Final = G711Codec("PCMU", PCMU_PAYLOAD_TYPE, ULAW_DECODE_TABLE, ULAW_ENCODE_TABLE)
PCMA: Final = G711Codec("PCMA", PCMA_PAYLOAD_TYPE, ALAW_DECODE_TABLE, ALAW_ENCODE_TABLE)

CODECS: Final[dict[str, G711Codec]] = {PCMU.name: PCMU, PCMA.name: PCMA}
_BY_PAYLOAD_TYPE: Final[dict[int, G711Codec]] = {c.payload_type: c for c in CODECS.values()}


def codec_for_payload_type(payload_type: int) -> G711Codec | None:
    """The codec for a static payload type (0 -> PCMU, 8 -> PCMA), else None."""
    return _BY_PAYLOAD_TYPE.get(payload_type)
