from __future__ import annotations

import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest

from callbox.server.media import g711

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

ALL_SAMPLES = np.arange(-32768, 32768, dtype=np.int16)
ALL_CODES = bytes(range(256))


def test_ulaw_encode_matches_audioop_for_every_sample() -> None:
    assert g711.ulaw_encode(ALL_SAMPLES) == audioop.lin2ulaw(ALL_SAMPLES.tobytes(), 2)


def test_alaw_encode_matches_audioop_for_every_sample() -> None:
    assert g711.alaw_encode(ALL_SAMPLES) == audioop.lin2alaw(ALL_SAMPLES.tobytes(), 2)


def test_ulaw_decode_matches_audioop_for_every_byte() -> None:
    expected = np.frombuffer(audioop.ulaw2lin(ALL_CODES, 2), dtype=np.int16)
    decoded = g711.ulaw_decode(ALL_CODES)
    assert decoded.dtype == np.int16
    np.testing.assert_array_equal(decoded, expected)


def test_alaw_decode_matches_audioop_for_every_byte() -> None:
    expected = np.frombuffer(audioop.alaw2lin(ALL_CODES, 2), dtype=np.int16)
    decoded = g711.alaw_decode(ALL_CODES)
    assert decoded.dtype == np.int16
    np.testing.assert_array_equal(decoded, expected)


def test_well_known_codes() -> None:
    assert g711.ulaw_encode(np.zeros(3, dtype=np.int16)) == b"\xff\xff\xff"  # PCMU silence
    assert g711.alaw_encode(np.zeros(3, dtype=np.int16)) == b"\xd5\xd5\xd5"  # PCMA silence
    assert g711.ulaw_decode(b"\x80\x00").tolist() == [32124, -32124]
    assert g711.alaw_decode(b"\xaa\x2a").tolist() == [32256, -32256]


@pytest.mark.parametrize("codec", list(g711.CODECS.values()), ids=lambda c: c.name)
def test_decode_encode_roundtrip_is_stable(codec: g711.G711Codec) -> None:
    decoded = codec.decode(ALL_CODES)
    assert codec.decode(codec.encode(decoded)).tolist() == decoded.tolist()


def test_encode_accepts_views_and_other_dtypes() -> None:
    pcm = np.arange(-16000, 16000, 100, dtype=np.int16)
    assert g711.ulaw_encode(pcm[::2]) == g711.ulaw_encode(pcm[::2].copy())
    wide = np.array([-40000, -5, 0, 5, 40000], dtype=np.int32)
    clipped = np.array([-32768, -5, 0, 5, 32767], dtype=np.int16)
    assert g711.alaw_encode(wide) == g711.alaw_encode(clipped)


def test_codec_registry() -> None:
    assert g711.CODECS["PCMU"].payload_type == 0
    assert g711.CODECS["PCMA"].payload_type == 8
    assert g711.codec_for_payload_type(0) is g711.PCMU
    assert g711.codec_for_payload_type(8) is g711.PCMA
    assert g711.codec_for_payload_type(18) is None
    assert g711.PCMU.name == "PCMU" and g711.PCMA.name == "PCMA"
    assert {g711.PCMU, g711.PCMA} == set(g711.CODECS.values())  # hashable, identity equality
    assert g711.PCMU != g711.PCMA


def test_decode_into_reuses_buffer() -> None:
    out = np.zeros(200, dtype=np.int16)
    view = g711.PCMU.decode_into(bytes(range(160)), out)
    assert view.base is out or np.shares_memory(view, out)
    np.testing.assert_array_equal(view, g711.ulaw_decode(bytes(range(160))))
    assert not out[160:].any()


def test_tables_are_read_only() -> None:
    with pytest.raises(ValueError):
        g711.ULAW_DECODE_TABLE[0] = 1


needs_sox = pytest.mark.usefixtures("peer_env")  # fails when sox (or another peer) is missing


def _sox(args: list[str]) -> None:
    subprocess.run(["sox", "-D", *args], check=True, capture_output=True)


@needs_sox
@pytest.mark.parametrize(("codec", "kind"), [(g711.PCMU, "ul"), (g711.PCMA, "al")])
def test_matches_sox(tmp_path: Path, codec: g711.G711Codec, kind: str) -> None:
    # sox rounds 16 -> 13/14 bits where the reference coder truncates, so feed it samples with
    # no low bits to lose; the G.711 mapping itself must agree exactly.
    pcm = np.arange(-32768, 32768, 8, dtype=np.int16)
    raw = tmp_path / "in.raw"
    encoded = tmp_path / f"out.{kind}"
    decoded = tmp_path / "back.raw"
    pcm.tofile(raw)
    _sox(["-t", "raw", "-r", "8000", "-e", "signed", "-b", "16", "-c", "1", str(raw), str(encoded)])
    assert encoded.read_bytes() == codec.encode(pcm)
    _sox(["-t", kind, "-r", "8000", "-c", "1", str(encoded), "-t", "raw", "-e", "signed",
          "-b", "16", str(decoded)])  # fmt: skip
    back = np.fromfile(decoded, dtype=np.int16)
    np.testing.assert_array_equal(back, codec.decode(encoded.read_bytes()))


@needs_sox
def test_sox_decodes_every_byte_like_us(tmp_path: Path) -> None:
    for codec, kind in ((g711.PCMU, "ul"), (g711.PCMA, "al")):
        src = tmp_path / f"all.{kind}"
        dst = tmp_path / f"all-{kind}.raw"
        src.write_bytes(ALL_CODES)
        _sox(["-t", kind, "-r", "8000", "-c", "1", str(src), "-t", "raw", "-e", "signed",
              "-b", "16", str(dst)])  # fmt: skip
        np.testing.assert_array_equal(np.fromfile(dst, dtype=np.int16), codec.decode(ALL_CODES))
