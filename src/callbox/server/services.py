"""What the RELAY hub and the HTTP handlers need from the platform, and nothing more.

`Platform` builds one `Services` and fills the parts that exist only once it has started (the
recording store and engine, the public URL when the HTTPS port was ephemeral). The hub and the
handlers hold this object, never the platform, so they cannot reach the rest of it and do not
import it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from callbox.server.auth import ProjectAuth
from callbox.server.call import Call
from callbox.server.outbound import OutboundCalls
from callbox.server.recording.engine import RecordingEngine
from callbox.server.storage.s3 import ObjectStore
from callbox.server.store.recordings import RecordingStore
from callbox.server.worker.pool import MediaHosts


@dataclass
class Services:
    calls: dict[str, Call]  # the live calls by id (the platform adds and removes them)
    auth: ProjectAuth
    node_id: str
    ready: bool = False  # started (SIP listens); False again while draining and stopping
    media: MediaHosts | None = None  # the media hosts (clocks, RTP counters: the metrics)
    public_url: str = ""  # base of recording links and REST `links`
    recordings: RecordingStore | None = None  # None until the platform has started
    recorder: RecordingEngine | None = None  # None until the platform has started
    trunk_states: Callable[[], dict[str, str]] = dict  # registering trunks' state by name
    outbound: OutboundCalls | None = None  # places calls (dial, connect); set by the platform
    objects: ObjectStore | None = None  # the S3 bucket of recordings, when configured
