"""The platform: wires configuration, SIP, media, routes and the web side together."""

from __future__ import annotations

import asyncio
import logging
import ssl
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from callbox import __version__
from callbox.server import ai  # noqa: F401  (registers the SWML `ai` verb)
from callbox.server.auth import ProjectAuth
from callbox.server.call import Call
from callbox.server.call_media import CallMediaFactory
from callbox.server.cluster import Cluster
from callbox.server.config import Config, Route, parse_host_port, parse_port_range
from callbox.server.database import Database, open_database
from callbox.server.http.app import make_app
from callbox.server.inbound import InboundCalls
from callbox.server.media.ports import RtpPortPool
from callbox.server.outbound import OutboundCalls
from callbox.server.recording.engine import RecordingEngine
from callbox.server.relay.hub import RelayHub
from callbox.server.services import Services
from callbox.server.sip.endpoint import SipEndpoint
from callbox.server.sip.transaction import Timers
from callbox.server.sip.trunks import Trunks
from callbox.server.storage.s3 import S3Settings
from callbox.server.storage.uploads import RecordingUploads, open_uploads
from callbox.server.store.recordings import RecordingRow, RecordingStore
from callbox.server.swml.fetch import SwmlFetchError, fetch_swml
from callbox.server.swml.runner import SwmlError, SwmlRunner, parse_document
from callbox.server.tasks import spawn
from callbox.server.tls import ensure_self_signed, server_context
from callbox.server.webhooks import WebhookQueue
from callbox.server.worker.pool import MediaHosts

log = logging.getLogger(__name__)

# A draining node of a cluster asks its RELAY clients to reconnect after this many seconds (a
# load balancer's health checks have taken it out by then: deploy/haproxy's take 4 s) ...
RELAY_MOVE_AFTER = 5.0
# ... and a node that stops waits at most this long for the other nodes to take its RELAY
# sessions over (its clients reconnect: 1-2 s, longer when they land here again first).
RELAY_MOVE_WAIT = 5.0

ERROR_PROMPT = "say:Sorry, this number is not available right now. Goodbye."


@dataclass
class Listening:
    """Where the platform ended up listening (ports may be 0 = ephemeral in tests)."""

    sip: tuple[str, int]
    https: tuple[str, int]
    plain: tuple[str, int] | None
    cert: Path


class Platform:
    def __init__(self, config: Config, *, sip_timers: Timers | None = None) -> None:
        self.config = config
        self.calls: dict[str, Call] = {}
        # Called with each new call before its route runs (tests, metrics, RELAY offers).
        self.call_observers: list[Callable[[Call], None]] = []
        sip_host, _ = parse_host_port(config.sip.listen, "sip.listen")
        self.advertised_host = config.sip.public_host or sip_host
        first, last = parse_port_range(config.sip.rtp_ports)
        self.ports = RtpPortPool(sip_host, first, last)
        self.media = MediaHosts(config.server.workers, self.ports, self.advertised_host,
                                log_level=config.log.level)
        self.sip = SipEndpoint(advertised_host=self.advertised_host,
                               user_agent=f"callbox/{__version__}", timers=sip_timers)
        self._runners: list[web.AppRunner] = []
        self.listening: Listening | None = None
        self.node_id = config.cluster.node_id or str(uuid.uuid4())
        self.recorder: RecordingEngine | None = None
        self.recordings: RecordingStore | None = None  # the recorder's metadata (REST reads it)
        self.webhooks: WebhookQueue | None = None  # the recorder's webhook queue
        self.recovered: list[RecordingRow] = []
        self.database: Database | None = None  # PostgreSQL, with [database] url
        self.uploads: RecordingUploads | None = None  # moves recordings to S3, when configured
        self.services = Services(
            calls=self.calls, auth=ProjectAuth(config), node_id=self.node_id, media=self.media,
            public_url=config.http.public_url,
        )
        self.trunks = Trunks(self.sip, config.trunks)
        self.services.trunk_states = self.trunks.states
        self.relay = RelayHub(self.services)
        # RELAY across nodes over NATS, when [cluster] bus_url is set
        self.cluster = Cluster(config.cluster.bus_url, self.relay) if config.cluster.bus_url \
            else None
        self.relay.cluster = self.cluster
        self.relay_move_after = RELAY_MOVE_AFTER
        media = CallMediaFactory(self.media)
        self.inbound = InboundCalls(
            config=config, media=media, calls=self.calls,
            has_relay_session=self._has_relay_client,
            on_new_call=self._on_new_call, on_call_ended=self._on_call_ended,
        )
        self.sip.on_invite = self.inbound.on_invite
        self.outbound = OutboundCalls(
            trunks=config.trunks, sip=self.sip, media=media, calls=self.calls,
            on_call_ended=self._on_call_ended, max_calls=config.sip.max_calls,
        )
        self.services.outbound = self.outbound
        self._no_calls = asyncio.Event()  # set when the last call ends

    async def media_counters(self) -> dict[str, int]:
        """RTP totals since start (ended calls + live ones), for /metrics and benchmarks."""
        return (await self.media.snapshot()).counters

    # -- life cycle -----------------------------------------------------------------------

    async def start(self) -> Listening:
        data_dir = self.config.data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        if self.config.http.tls_cert:
            cert, key = Path(self.config.http.tls_cert), Path(self.config.http.tls_key)
        else:
            cert, key = ensure_self_signed(data_dir / "tls")
        app = make_app(self.services, self.relay.websocket)
        https = await self._serve(app, self.config.http.listen, server_context(cert, key))
        plain = None
        if self.config.http.plain_listen:
            plain = await self._serve(app, self.config.http.plain_listen, None)
        if parse_host_port(self.config.http.listen, "http.listen")[1] == 0:
            self.config.http.public_url = f"https://{https[0]}:{https[1]}"  # ephemeral port
        self.services.public_url = self.config.http.public_url
        if self.config.database.url:  # shared metadata: migrated here, closed in stop()
            self.database = await open_database(self.config.database.url)
        self.recorder = RecordingEngine(
            data_dir=data_dir, public_url=self.config.http.public_url, node_id=self.node_id,
            signing_keys={p.id: p.signing_key or p.token for p in self.config.projects},
            database=self.database,
        )
        self.recordings = self.recorder.store
        self.webhooks = self.recorder.webhooks.queue
        self.services.recordings = self.recordings
        self.services.recorder = self.recorder
        self.recovered = await self.recorder.start()
        uploads = self.uploads = await open_uploads(
            S3Settings.from_config(self.config.storage), self.recorder.store,
            self.recorder.recordings_dir, retry_seconds=self.config.storage.s3_retry_seconds)
        if uploads is not None:
            self.recorder.on_concluded(lambda recording: uploads.submit(recording.id))
            self.services.objects = uploads.objects
        loop_module = type(asyncio.get_running_loop()).__module__.split(".")[0]
        self.media.event_loop = "uvloop" if loop_module == "uvloop" else "asyncio"
        await self.media.start()
        if self.cluster is not None:  # before SIP: calls may be offered across nodes at once
            await self.cluster.start()
        sip_host, sip_port = parse_host_port(self.config.sip.listen, "sip.listen")
        await self.sip.start(sip_host, sip_port)
        self.trunks.start()
        self.listening = Listening((self.sip.host, self.sip.port), https, plain, cert.resolve())
        self.services.ready = True
        return self.listening

    async def _serve(self, app: web.Application, listen: str,
                     ssl_context: ssl.SSLContext | None) -> tuple[str, int]:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        host, port = parse_host_port(listen, "http.listen")
        site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
        await site.start()
        self._runners.append(runner)
        addresses = runner.addresses  # the bound (host, port, ...) of each listening socket
        return host, int(addresses[0][1]) if addresses else port

    def refuse_new_calls(self) -> None:
        """New INVITEs and OPTIONS health checks get 503 from now on (a load balancer sends
        new calls to the other nodes) and this node's RELAY clients are offered no more calls
        of other nodes; calls in progress go on."""
        self.services.ready = False
        self.inbound.accepting = self.outbound.accepting = False
        self.sip.accepting_calls = False
        if self.cluster is not None:  # nor RELAY calls offered by the other nodes
            self.cluster.stop_taking_calls()

    async def drain(self, seconds: float, cut_short: asyncio.Event | None = None) -> None:
        """Refuse new calls and wait up to `seconds` for the calls in progress to end, or
        until `cut_short` is set (a second signal). `stop()` hangs up the ones left."""
        self.refuse_new_calls()
        if not self.calls or seconds <= 0:
            return
        log.info("draining: %d calls in progress, waiting up to %g s for them to end",
                 len(self.calls), seconds)
        self._no_calls.clear()
        waits = [asyncio.ensure_future(self._no_calls.wait())]
        if cut_short is not None:
            waits.append(asyncio.ensure_future(cut_short.wait()))
        mover = spawn(self._send_relay_clients_away_later(), name="relay-clients-away") \
            if self.cluster is not None else None
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()
            if mover is not None:
                mover.cancel()
        if self.calls:
            log.info("draining ended with %d calls in progress: hanging them up",
                     len(self.calls))

    async def _send_relay_clients_away_later(self) -> None:
        """Once a load balancer has seen this node draining (its /health answers 503), its
        RELAY clients reconnect: to another node, which takes their sessions over (they keep
        their calls here, commanded from there, and get new calls there)."""
        await asyncio.sleep(self.relay_move_after)
        moved = await self.relay.send_clients_away("node draining")
        if moved:
            log.info("draining: %d RELAY clients asked to reconnect elsewhere", moved)

    async def stop(self) -> None:
        """Graceful: refuse new calls (503), hang up the active ones (their recordings finish
        with complete files), deliver queued webhooks, then close everything."""
        self.refuse_new_calls()
        others = self.cluster is not None and bool(self.cluster.directory.nodes)
        await self.relay.close(wait_for_moves=RELAY_MOVE_WAIT if others else 0.0)
        for call in list(self.calls.values()):
            await call.hangup()
        await self.trunks.stop()
        self.sip.close()
        for runner in self._runners:
            await runner.cleanup()
        if self.recorder is not None:  # REST reads its store until the runners stop
            await self.recorder.close()  # finishes its recordings, flushes its webhooks
        await self.media.stop()  # after the recorder: its recordings ended in the hosts
        if self.cluster is not None:  # after the calls: their last events go out first
            await self.cluster.close()
        if self.uploads is not None:  # what is not uploaded yet is, at the next start
            await self.uploads.close()
        if self.database is not None:
            await self.database.close()

    def banner(self) -> str:
        assert self.listening is not None
        sip, https, plain = self.listening.sip, self.listening.https, self.listening.plain
        lines = [
            f"callbox {__version__} is running",
            f"  SIP       udp:{sip[0]}:{sip[1]}  (RTP ports {self.config.sip.rtp_ports})",
            f"  HTTPS     https://{https[0]}:{https[1]}/  (RELAY: wss://{https[0]}:{https[1]}/)",
            f"  TLS cert  {self.listening.cert}",
            f"  data      {self.config.data_dir.resolve()}",
            f"  media     {self._media_description()}",
        ]
        if plain:
            lines.insert(3, f"  HTTP      http://{plain[0]}:{plain[1]}/  (plain WS for local use)")
        return "\n".join(lines)

    def _media_description(self) -> str:
        if self.media.workers == 0:
            return "in this process (server.workers = 0)"
        pids = ", ".join(str(view.link.pid) for view in self.media.views)
        return f"{self.media.workers} worker processes (pids {pids})"

    # -- calls ----------------------------------------------------------------------------

    def _on_new_call(self, call: Call, route: Route) -> None:
        for observer in tuple(self.call_observers):
            observer(call)
        call.ring()
        spawn(self._run_route(call, route), name=f"route-{call.id}")

    def _has_relay_client(self, project_id: str, context: str) -> bool:
        """A RELAY client of the context here, or on another node of the cluster."""
        return self.relay.has_session_for(project_id, context) or (
            self.cluster is not None and self.cluster.has_taker(project_id, context))

    def _on_call_ended(self, call: Call) -> None:
        self.calls.pop(call.id, None)
        if not self.calls:
            self._no_calls.set()

    async def _run_route(self, call: Call, route: Route) -> None:
        if route.context:
            if self.relay.offer(call, route.context):
                return
            if self.cluster is not None and await self.cluster.offer(call, route.context):
                return
            # the session went away since the INVITE (480 when it was another node's)
            await call.hangup("error" if self.cluster is None else "hangup")
            return
        try:
            if route.swml:
                document = parse_document(route.swml)
            else:
                document = await fetch_swml(route.swml_url, call)
        except (SwmlError, SwmlFetchError) as exc:
            log.warning("call %s: route %r: %s", call.id, route.number, exc)
            await self._fail_call(call)
            return
        await SwmlRunner(call, document, recordings=self.recorder, ai=self.config.ai,
                         outbound=self.outbound).run()

    async def _fail_call(self, call: Call) -> None:
        """Tell the caller something went wrong, then hang up cleanly."""
        try:
            call.answer()
            operation = await call.play([ERROR_PROMPT])
            await asyncio.wait_for(operation.wait(), timeout=15)
        except Exception:  # the error prompt is best effort; the hangup is not
            log.debug("error prompt failed", exc_info=True)
        await call.hangup("error")

