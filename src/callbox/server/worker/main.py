"""A media worker process: one `MediaHost` commanded over the socket its parent passed.

Started by `ProcessLink` as ``python -m callbox.server.worker.main --fd N``. It lives as long as
its channel: EOF (the main process stopped it, or died) stops its sessions and ends it. SIGINT
and SIGTERM are ignored, so a Ctrl-C or a SIGTERM sent to the whole process group reaches only
the main process, which ends the calls (and their recordings) before it stops its workers.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import logging
import signal
import socket
from typing import Any

from callbox.server import collector
from callbox.server.media.priority import raise_priority
from callbox.server.tasks import spawn
from callbox.server.worker import messages as m
from callbox.server.worker.framing import FramedSocket
from callbox.server.worker.host import MediaHost

log = logging.getLogger(__name__)


async def serve(fd: int) -> None:
    channel_sock = socket.socket(fileno=fd)
    closed = asyncio.get_running_loop().create_future()
    host = MediaHost(lambda event: channel.send(event))

    async def open_recording(request: m.Request, command: m.OpenRecording) -> None:
        try:
            await host.open_recording(command)
        except OSError as exc:
            channel.send(m.Reply(request.number, error=exc.strerror or str(exc)))
            return
        channel.send(m.Reply(request.number))

    def on_message(message: Any, fds: collections.deque[int]) -> None:
        if isinstance(message, m.OpenSession):
            sock = socket.socket(fileno=fds.popleft())
            sock.setblocking(False)
            host.open_session(message, sock)
        elif isinstance(message, m.Request):
            command = message.command
            if isinstance(command, m.OpenRecording):
                spawn(open_recording(message, command), name=f"open-recording-{command.rid}")
                return
            try:
                channel.send(m.Reply(message.number, value=host.handle(command)))
            except Exception as exc:
                channel.send(m.Reply(message.number, error=f"{type(exc).__name__}: {exc}"))
        else:
            try:
                host.handle(message)
            except Exception:
                log.exception("media command %r failed", message)

    def on_closed() -> None:
        if not closed.done():
            closed.set_result(None)

    channel = FramedSocket(channel_sock, on_message, on_closed)
    host.start()
    collector.settle()
    await closed
    await host.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="callbox media worker (started by callbox)")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--name", default="worker")
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format=f"%(asctime)s %(levelname)s [{args.name}] %(name)s: %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise_priority()
    if args.loop == "uvloop":
        import uvloop
        uvloop.run(serve(args.fd))
    else:
        asyncio.run(serve(args.fd))


if __name__ == "__main__":
    main()
