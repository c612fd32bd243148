"""Speech to text for the `ai` verb: caller frames in, transcribed utterances out.

`SpeechToText` is the interface the conversation uses: `feed()` each 20 ms frame of what the
caller says (8 kHz int16, from the media tick, on the loop; the frame is copied if kept) and
`await utterance()` for the next transcript. Any engine can implement it; engines that only
turn a finished utterance into text subclass `SegmentingSpeechToText` and implement
`transcribe()`, which runs in a worker thread, never on the event loop (`decode()` can move
it elsewhere).

Segmentation (`UtteranceSegmenter`, sans-I/O) uses the recording engine's voice detector: an
utterance starts with speech (60 ms of frames over the threshold) and keeps 0.3 s of audio
from before it; it ends after 0.8 s of non-speech (or at 30 s).

`PocketsphinxSTT` decodes offline with pocketsphinx 5 and the US English model its wheel
ships. That model is trained on 16 kHz audio, so utterances are resampled 8 -> 16 kHz (FFT,
exact band-limited) and get a low noise floor (-50 dBFS): pocketsphinx's noise estimate
mis-handles digitally silent padding, and recognition of telephone audio improves markedly.
pocketsphinx holds the GIL while it decodes (seconds for a long utterance), which would stall
every call's media in a thread, so it runs in worker processes (`python -m
callbox.server.ai.stt_worker`, each keeping one loaded decoder), driven over pipes by threads
that wait without the GIL. A worker exits when its stdin closes (so with this process).
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import json
import logging
import os
import queue
import struct
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any, Final, Protocol

import numpy as np
import numpy.typing as npt

from callbox.server.media.frames import FRAME_SECONDS, SAMPLE_RATE
from callbox.server.recording.detector import VoiceDetector

log = logging.getLogger(__name__)

PRE_ROLL_SECONDS: Final = 0.3  # audio kept from before the speech onset
END_SILENCE_SECONDS: Final = 0.8  # non-speech that ends an utterance
MAX_UTTERANCE_SECONDS: Final = 30.0
INPUT_SENSITIVITY: Final = 44.0  # the recording engine's default: speech above -44 dBFS
NOISE_FLOOR_RMS: Final = 100.0  # about -50 dBFS of comfort noise added before decoding
MAX_PENDING_UTTERANCES: Final = 8  # older transcripts are dropped if nobody reads them

Pcm = npt.NDArray[np.int16]

DECODE_WORKERS: Final = min(4, os.cpu_count() or 1)

WORKER_MODULE: Final = "callbox.server.ai.stt_worker"
REQUEST_HEADER: Final = struct.Struct("<II")  # PCM byte count, noise seed
REPLY_HEADER: Final = struct.Struct("<I")  # JSON byte count

# transcribe() calls, and the threads that drive worker processes, run in this pool.
_EXECUTOR = ThreadPoolExecutor(max_workers=DECODE_WORKERS, thread_name_prefix="stt")


class SttError(RuntimeError):
    """The speech-to-text engine cannot run (missing package, model failure)."""


class SpeechToText(Protocol):
    """A speech-to-text engine for one call."""

    def feed(self, frame: np.ndarray) -> None:
        """The next 20 ms of caller audio (160 int16 samples at 8 kHz); copy it if kept."""

    async def utterance(self) -> str:
        """The next transcribed utterance (may be "" when nothing was recognised)."""

    def close(self) -> None:
        """Stop: pending work is abandoned."""


class UtteranceSegmenter:
    """Cuts a stream of frames into utterances with the voice detector (sans-I/O)."""

    def __init__(self, *, input_sensitivity: float = INPUT_SENSITIVITY,
                 end_silence_seconds: float = END_SILENCE_SECONDS,
                 pre_roll_seconds: float = PRE_ROLL_SECONDS,
                 max_seconds: float = MAX_UTTERANCE_SECONDS) -> None:
        self._sensitivity = input_sensitivity
        self._end_frames = max(1, round(end_silence_seconds / FRAME_SECONDS))
        self._max_frames = max(1, round(max_seconds / FRAME_SECONDS))
        self._pre_roll: collections.deque[np.ndarray] = collections.deque(
            maxlen=max(1, round(pre_roll_seconds / FRAME_SECONDS)))
        self._detector = VoiceDetector(input_sensitivity)
        self._frames: list[np.ndarray] = []
        self._silent_run = 0

    @property
    def in_utterance(self) -> bool:
        return bool(self._frames)

    def feed(self, frame: np.ndarray) -> Pcm | None:
        """Feed one frame; returns the utterance's audio when this frame ends one."""
        speech = self._detector.feed(frame)
        if not self._frames:
            self._pre_roll.append(frame.copy())
            if speech:  # the onset: the pre-roll holds the run of frames that started it
                self._frames = list(self._pre_roll)
                self._pre_roll.clear()
                self._silent_run = 0
            return None
        self._frames.append(frame.copy())
        self._silent_run = 0 if speech else self._silent_run + 1
        if self._silent_run >= self._end_frames or len(self._frames) >= self._max_frames:
            return self._finish()
        return None

    def flush(self) -> Pcm | None:
        """The utterance in progress, if any (at the end of the stream)."""
        return self._finish() if self._frames else None

    def _finish(self) -> Pcm:
        audio = np.concatenate(self._frames)
        self._frames = []
        self._silent_run = 0
        self._detector = VoiceDetector(self._sensitivity)  # the next one needs its own onset
        return audio


class SegmentingSpeechToText:
    """`SpeechToText` for engines that transcribe whole utterances (`transcribe()`).

    Frames are segmented on the loop (cheap); each finished utterance is transcribed in the
    shared STT worker pool, in order, by one task per call.
    """

    def __init__(self, segmenter: UtteranceSegmenter | None = None) -> None:
        self._segmenter = segmenter or UtteranceSegmenter()
        self._audio: asyncio.Queue[Pcm] = asyncio.Queue()
        self._texts: asyncio.Queue[str] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self._closed = False

    def transcribe(self, audio: Pcm) -> str:
        """Blocking: 8 kHz int16 utterance -> text. Runs in a worker thread."""
        raise NotImplementedError

    async def decode(self, audio: Pcm) -> str:
        """`transcribe()` off the loop; engines that hold the GIL override this."""
        return await asyncio.get_running_loop().run_in_executor(
            _EXECUTOR, self.transcribe, audio)

    def feed(self, frame: np.ndarray) -> None:
        if self._closed:
            return
        audio = self._segmenter.feed(frame)
        if audio is not None:
            self._submit(audio)

    def _submit(self, audio: Pcm) -> None:
        if self._audio.qsize() >= MAX_PENDING_UTTERANCES:
            log.info("speech-to-text is behind; dropping a %.1f s utterance",
                     len(audio) / SAMPLE_RATE)
            return
        self._audio.put_nowait(audio)
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._work(), name="stt")

    async def _work(self) -> None:
        while True:
            audio = await self._audio.get()
            try:
                text = await self.decode(audio)
            except SttError as exc:
                log.warning("speech-to-text failed: %s", exc)
                text = ""
            except Exception:
                log.exception("speech-to-text failed on a %.1f s utterance",
                              len(audio) / SAMPLE_RATE)
                text = ""
            log.debug("utterance (%.1f s): %r", len(audio) / SAMPLE_RATE, text)
            if self._texts.qsize() >= MAX_PENDING_UTTERANCES:
                self._texts.get_nowait()
            self._texts.put_nowait(text)

    async def utterance(self) -> str:
        return await self._texts.get()

    def close(self) -> None:
        self._closed = True
        if self._worker is not None:
            self._worker.cancel()
            self._worker = None


# -- pocketsphinx -------------------------------------------------------------------------------


def upsample_2x(audio: np.ndarray) -> Pcm:
    """8 kHz -> 16 kHz, band-limited (zero-padded spectrum)."""
    count = len(audio)
    if count == 0:
        return np.zeros(0, dtype=np.int16)
    spectrum = np.fft.rfft(audio.astype(np.float64))
    padded = np.zeros(count + 1, dtype=np.complex128)
    padded[: len(spectrum)] = spectrum
    if count % 2 == 0:  # the Nyquist bin is split between +/- frequencies
        padded[count // 2] *= 0.5
    out = np.fft.irfft(padded, 2 * count) * 2.0
    return np.clip(np.rint(out), -32768, 32767).astype(np.int16)


def prepare_for_pocketsphinx(audio: np.ndarray, seed: int = 0) -> Pcm:
    """The 16 kHz signal pocketsphinx gets: noise floor added, resampled."""
    rng = np.random.default_rng(seed)
    noisy = audio.astype(np.float64) + rng.normal(0.0, NOISE_FLOOR_RMS, len(audio))
    return upsample_2x(np.clip(noisy, -32768, 32767))


_decoder: Any = None  # this process's pocketsphinx decoder (one per decoding process)


def load_decoder() -> Any:
    global _decoder
    if _decoder is None:
        try:
            import pocketsphinx  # type: ignore[import-untyped]
        except ImportError as exc:
            raise SttError(
                f"pocketsphinx is not installed (pip install 'pocketsphinx>=5'): {exc}"
            ) from None
        try:
            _decoder = pocketsphinx.Decoder(loglevel="FATAL")
        except (RuntimeError, OSError, ValueError) as exc:
            raise SttError(f"pocketsphinx could not load its English model: {exc}") from None
    return _decoder


def pocketsphinx_transcribe(audio: np.ndarray, seed: int = 0) -> str:
    """Blocking: an 8 kHz int16 utterance -> text, with this process's decoder."""
    pcm = prepare_for_pocketsphinx(audio, seed)
    decoder = load_decoder()
    decoder.start_utt()
    decoder.process_raw(pcm.tobytes(), no_search=False, full_utt=True)
    decoder.end_utt()
    hypothesis = decoder.hyp()
    return hypothesis.hypstr.strip() if hypothesis is not None else ""


def read_exact(stream: IO[bytes], size: int) -> bytes:
    """`size` bytes, or fewer only at end of stream."""
    chunks = []
    while size:
        chunk = stream.read(size)
        if not chunk:
            break
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


class _Worker:
    """One decoding process; used by one thread at a time."""

    def __init__(self) -> None:
        package_root = str(Path(__file__).resolve().parents[3])  # where `callbox` lives
        path = os.environ.get("PYTHONPATH")
        env = {**os.environ, "PYTHONPATH": package_root + (os.pathsep + path if path else "")}
        try:
            self.proc = subprocess.Popen([sys.executable, "-m", WORKER_MODULE], env=env,
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        except OSError as exc:
            raise SttError(f"cannot start the speech-to-text worker: {exc}") from None

    def request(self, audio: np.ndarray, seed: int) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        pcm = np.ascontiguousarray(audio, dtype="<i2").tobytes()
        try:
            self.proc.stdin.write(REQUEST_HEADER.pack(len(pcm), seed) + pcm)
            self.proc.stdin.flush()
        except OSError:
            raise SttError("the speech-to-text worker process has died") from None
        header = read_exact(self.proc.stdout, REPLY_HEADER.size)
        if len(header) < REPLY_HEADER.size:
            raise SttError(f"the speech-to-text worker process died "
                           f"(exit status {self.proc.wait()})")
        (size,) = REPLY_HEADER.unpack(header)
        reply = json.loads(read_exact(self.proc.stdout, size))
        if "error" in reply:
            raise SttError(reply["error"])
        return str(reply["text"])

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()  # the worker exits at end of input


_idle_workers: queue.SimpleQueue[_Worker] = queue.SimpleQueue()
_all_workers: list[_Worker] = []


def _in_worker(audio: np.ndarray, seed: int) -> str:
    """Blocking (in a thread, waiting on a pipe without the GIL): decode in a worker process."""
    try:
        worker = _idle_workers.get_nowait()
    except queue.Empty:
        worker = _Worker()
        _all_workers.append(worker)
    try:
        text = worker.request(audio, seed)
    except BaseException:
        worker.close()  # a worker that failed mid-request is not reused
        _all_workers.remove(worker)
        raise
    _idle_workers.put(worker)
    return text


@atexit.register
def _close_workers() -> None:
    for worker in _all_workers:
        worker.close()


class PocketsphinxSTT(SegmentingSpeechToText):
    """Offline US English recognition with pocketsphinx (its wheel's bundled model)."""

    def __init__(self, segmenter: UtteranceSegmenter | None = None, *, seed: int = 0) -> None:
        super().__init__(segmenter)
        self.seed = seed

    @staticmethod
    async def check() -> None:
        """Raise SttError now if pocketsphinx cannot run (a worker loads its decoder)."""
        await asyncio.get_running_loop().run_in_executor(
            _EXECUTOR, _in_worker, np.zeros(0, np.int16), 0)

    def transcribe(self, audio: Pcm) -> str:
        """In this process (blocking, holds the GIL): for tools and tests."""
        return pocketsphinx_transcribe(audio, self.seed)

    async def decode(self, audio: Pcm) -> str:
        return await asyncio.get_running_loop().run_in_executor(
            _EXECUTOR, _in_worker, audio, self.seed)


def make_stt(engine: str) -> SpeechToText:
    """The engine named in `[ai] stt` (see `callbox.server.config.STT_ENGINES`)."""
    if engine == "pocketsphinx":
        return PocketsphinxSTT()
    raise SttError(f"unknown speech-to-text engine {engine!r}; known: pocketsphinx")


async def check_engine(engine: str) -> None:
    """Raise SttError if `engine` cannot run here (checked off the loop)."""
    if engine == "pocketsphinx":
        await PocketsphinxSTT.check()
        return
    raise SttError(f"unknown speech-to-text engine {engine!r}; known: pocketsphinx")
