"""Two media sessions joined in the one media clock: each party hears the other.

While joined, the bridge is the clock's member instead of the two sessions: each tick it first
takes in both sessions' received frames, then sends each session the other's frame (with that
session's own plays mixed over it). Both halves happen in the same tick, so what one party says
reaches the other with no added frame of delay and each leg's recording sees, in the same tick,
its party (`speak`) and what that party heard (`listen`). Each direction keeps its own receive
buffer, so each party's jitter is absorbed on its own side.
"""

from __future__ import annotations

from callbox.server.media.clock import MediaClock
from callbox.server.media.session import MediaSession


class MediaBridge:
    """Joins sessions `a` and `b`; `join()` puts it in the clock, `split()` takes it out."""

    def __init__(self, a: MediaSession, b: MediaSession, clock: MediaClock) -> None:
        if a is b:
            raise ValueError("a session cannot be bridged to itself")
        self.a = a
        self.b = b
        self.clock = clock
        self.joined = False

    def __repr__(self) -> str:
        return f"<MediaBridge {self.a.local_port}<->{self.b.local_port}>"

    def join(self) -> None:
        """From the next tick on, each session sends what the other received. Sessions not yet
        started start receiving now."""
        if self.joined:
            return
        for session in (self.a, self.b):
            self.clock.remove(session)
            if not session.started and not session.closed:
                session.start()
        self.clock.add(self)
        self.joined = True

    def split(self) -> None:
        """Each session goes back to ticking on its own (a closed one stays out)."""
        if not self.joined:
            return
        self.clock.remove(self)
        self.joined = False
        for session in (self.a, self.b):
            if not session.closed and session.started:
                self.clock.add(session)

    def tick(self) -> None:
        a, b = self.a, self.b
        heard_by_b = a.receive()
        heard_by_a = b.receive()
        a.transmit(heard_by_b, heard_by_a)
        b.transmit(heard_by_a, heard_by_b)
