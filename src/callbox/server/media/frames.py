"""The media timeline's constants: one home for the sample rate, the 20 ms frame and the RTP
timestamp arithmetic. Every module that slices audio into frames or steps RTP timestamps
imports them from here."""

from __future__ import annotations

from typing import Final

SAMPLE_RATE: Final = 8000  # G.711: samples per second
FRAME_SECONDS: Final = 0.020  # one media-clock tick
FRAME_SAMPLES: Final = 160  # samples in one 20 ms frame at 8000 Hz
FRAMES_PER_SECOND: Final = 50
TIMESTAMP_MOD: Final = 1 << 32  # RTP timestamps wrap here (RFC 3550)
TIMESTAMP_MASK: Final = TIMESTAMP_MOD - 1
