"""The RELAY program of `concurrent_recordings.py --variants relay-wav-stereo`.

Takes every call offered on its context, answers it and records it (both directions, no
timeouts, no terminators) until the caller hangs up, as an application written with
`callbox.relay` would. It runs as its own process, so its CPU is not counted as the platform's;
it writes `--ready-file` once connected.

    .venv/bin/python bench/relay_recorder.py --host 127.0.0.1:8080 --project P --token T \\
        --context bench --ready-file /tmp/ready [--format wav] [--stereo]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from pathlib import Path

from callbox.relay import Call, RelayClient, RelayError

log = logging.getLogger("relay_recorder")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", required=True, help="the platform's plain HTTP HOST:PORT")
    parser.add_argument("--project", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--context", required=True)
    parser.add_argument("--ready-file", required=True)
    parser.add_argument("--format", default="wav", choices=("wav", "mp3"))
    parser.add_argument("--stereo", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    audio = {"format": args.format, "stereo": args.stereo, "direction": "both",
             "initial_timeout": 0, "end_silence_timeout": 0, "terminators": ""}
    counts = {"answered": 0, "recorded": 0, "failed": 0}

    client = RelayClient(args.project, args.token, f"ws://{args.host}/", [args.context])

    @client.on_call
    async def record_the_call(call: Call) -> None:
        try:
            await call.answer()
            counts["answered"] += 1
            action = await call.record(audio=audio)
            event = await action.wait()
            counts["recorded" if event.state == "finished" else "failed"] += 1
        except RelayError as exc:  # e.g. the caller hung up before the record started
            counts["failed"] += 1
            log.warning("call %s: %s", call.call_id, exc)

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await client.connect()
        Path(args.ready_file).write_text("connected\n")
        await stop.wait()
        await client.disconnect()
        print(f"relay_recorder: {counts}", flush=True)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


if __name__ == "__main__":
    main()
