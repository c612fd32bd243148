"""How the main process reaches a media host: in this process, or in a worker process.

A link carries commands to its host and brings back the host's events (`on_event`); a question
(`request`) waits for its answer. `LocalLink` runs the host in the main process and hands
messages over as they are (synchronously: the embedded, single-process form). `ProcessLink`
starts `python -m callbox.server.worker.main` on a socketpair (`framing`) and hands each RTP
socket over as a file descriptor; when that process dies, `on_lost` runs once (the pool
restarts it) and every question still waiting fails with `WorkerLost`.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
import sys
from collections.abc import Callable
from typing import Any

from callbox.server.worker import messages as m
from callbox.server.worker.framing import FramedSocket
from callbox.server.worker.host import MediaHost

log = logging.getLogger(__name__)

STOP_TIMEOUT = 10.0  # seconds a worker gets to finish its recordings at shutdown


class WorkerLost(RuntimeError):
    """The media worker died (or was stopped) before it answered."""


class MediaLink:
    """What both kinds of links offer; `on_event` and `on_lost` are set by the owner."""

    shares_memory = False  # the host runs in this process: objects are handed over as they are

    def __init__(self, name: str) -> None:
        self.name = name
        self.sessions = 0  # open sessions (the pool places calls on the least busy link)
        self.on_event: Callable[[Any], None] = lambda event: None
        self.on_lost: Callable[[MediaLink], None] = lambda link: None
        self.alive = True

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"

    @property
    def pid(self) -> int | None:
        """The worker's process id (None: the host runs in this process)."""
        return None

    async def start(self) -> None:
        raise NotImplementedError

    def send(self, command: Any) -> None:
        raise NotImplementedError

    def open_session(self, command: m.OpenSession, sock: socket.socket) -> None:
        """Hand `sock` over with the command (the link owns it from now on)."""
        raise NotImplementedError

    async def request(self, command: Any) -> Any:
        raise NotImplementedError

    async def open_recording(self, command: m.OpenRecording) -> None:
        """Create a recording's file where the media runs; raises OSError."""
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError


class LocalLink(MediaLink):
    """The host in this process: commands run at once, events come back at once."""

    shares_memory = True

    def __init__(self, name: str = "local") -> None:
        super().__init__(name)
        self.host = MediaHost(self._deliver)

    def _deliver(self, event: Any) -> None:
        self.on_event(event)

    async def start(self) -> None:
        self.host.start()

    def send(self, command: Any) -> None:
        try:
            self.host.handle(command)
        except Exception:
            log.exception("media command %r failed", command)

    def open_session(self, command: m.OpenSession, sock: socket.socket) -> None:
        self.host.open_session(command, sock)

    async def request(self, command: Any) -> Any:
        return self.host.handle(command)

    async def open_recording(self, command: m.OpenRecording) -> None:
        await self.host.open_recording(command)

    async def stop(self) -> None:
        await self.host.stop()


class ProcessLink(MediaLink):
    """A media worker process (see `worker.main`)."""

    def __init__(self, name: str, *, log_level: str = "info", event_loop: str = "asyncio"
                 ) -> None:
        super().__init__(name)
        self.log_level = log_level
        self.event_loop = event_loop
        self.process: asyncio.subprocess.Process | None = None
        self._channel: FramedSocket | None = None
        self._replies: dict[int, asyncio.Future[Any]] = {}
        self._next_request = 0

    async def start(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "callbox.server.worker.main", "--fd",
                str(theirs.fileno()), "--name", self.name, "--log-level", self.log_level,
                "--loop", self.event_loop, pass_fds=[theirs.fileno()])
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self._channel = FramedSocket(ours, self._on_message, self._on_closed)
        await self.request(m.HostQuery())  # up and answering: its clock runs
        log.info("media worker %s started (pid %d)", self.name, self.process.pid)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None  # None: not started

    def _on_message(self, message: Any, fds: collections.deque[int]) -> None:
        if isinstance(message, m.Reply):
            future = self._replies.pop(message.number, None)
            if future is not None and not future.done():
                if message.error is not None:
                    future.set_exception(_RemoteError(message.error))
                else:
                    future.set_result(message.value)
            return
        self.on_event(message)

    def _on_closed(self) -> None:
        if not self.alive:
            return
        self.alive = False
        for future in self._replies.values():
            if not future.done():
                future.set_exception(WorkerLost(f"media worker {self.name} is gone"))
        self._replies.clear()
        self.on_lost(self)

    def send(self, command: Any) -> None:
        if self._channel is not None:
            self._channel.send(command)

    def open_session(self, command: m.OpenSession, sock: socket.socket) -> None:
        if self._channel is None:
            sock.close()
            return
        self._channel.send(command, [sock])  # closed here once the worker has it

    async def request(self, command: Any) -> Any:
        if not self.alive or self._channel is None:
            raise WorkerLost(f"media worker {self.name} is gone")
        self._next_request += 1
        number = self._next_request
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._replies[number] = future
        self._channel.send(m.Request(number, command))
        return await future

    async def open_recording(self, command: m.OpenRecording) -> None:
        try:
            await self.request(command)
        except _RemoteError as exc:
            raise OSError(str(exc)) from None

    async def stop(self) -> None:
        """Ask the worker to finish (its recordings close) and wait; kill it if it hangs."""
        process = self.process
        if process is None:
            return
        self.alive = False
        if self._channel is not None:
            self._channel.close()  # EOF: the worker stops its sessions and exits
        try:
            await asyncio.wait_for(process.wait(), STOP_TIMEOUT)
        except TimeoutError:
            log.warning("media worker %s did not stop; killing it", self.name)
            process.kill()
            await process.wait()


class _RemoteError(RuntimeError):
    """A command failed in the worker (the message says why)."""
