"""The pocketsphinx decoding process (`python -m callbox.server.ai.stt_worker`).

pocketsphinx holds the GIL while it decodes, so the platform runs it here, out of its own
process. Protocol on stdin/stdout, little-endian: a request is `u32 byte count, u32 noise seed`
then that many bytes of 8 kHz int16 PCM (zero bytes = just load the decoder); a reply is `u32
byte count` then UTF-8 JSON, `{"text": ...}` or `{"error": ...}`. It exits at end of input.
"""

from __future__ import annotations

import json
import sys

import numpy as np

from callbox.server.ai.stt import (
    REPLY_HEADER,
    REQUEST_HEADER,
    SttError,
    load_decoder,
    pocketsphinx_transcribe,
    read_exact,
)


def serve(stdin, stdout) -> None:  # type: ignore[no-untyped-def]
    while True:
        header = read_exact(stdin, REQUEST_HEADER.size)
        if len(header) < REQUEST_HEADER.size:
            return
        size, seed = REQUEST_HEADER.unpack(header)
        data = read_exact(stdin, size)
        if len(data) < size:
            return
        try:
            if size:
                reply = {"text": pocketsphinx_transcribe(np.frombuffer(data, "<i2"), seed)}
            else:
                load_decoder()
                reply = {"text": ""}
        except SttError as exc:
            reply = {"error": str(exc)}
        except Exception as exc:
            reply = {"error": f"pocketsphinx failed: {type(exc).__name__}: {exc}"}
        body = json.dumps(reply).encode()
        stdout.write(REPLY_HEADER.pack(len(body)) + body)
        stdout.flush()


if __name__ == "__main__":
    serve(sys.stdin.buffer, sys.stdout.buffer)
