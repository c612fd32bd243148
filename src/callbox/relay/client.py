"""`RelayClient`: connect to a RELAY server (callbox or a SignalWire space), take calls.

    client = RelayClient(project="...", token="...", host="127.0.0.1:8443",
                         contexts=["default"])

    @client.on_call
    async def handle(call):
        await call.answer()
        ...

    client.run()

Settings left out come from the environment: `SIGNALWIRE_PROJECT_ID`, `SIGNALWIRE_API_TOKEN`
(or `SIGNALWIRE_TOKEN`), `SIGNALWIRE_SPACE` (or `SIGNALWIRE_HOST`) for the host, and
`SIGNALWIRE_RELAY_CA_FILE` for a PEM file of certificates to trust (a self-signed server).
`host` is `host[:port]` (WSS at path `/`, as SignalWire's SDK does) or a full `ws://` /
`wss://` URL. `CALLBOX_RELAY_URL`, when set, wins over every other host setting, the `host`
argument included: it points a program written for a SignalWire space at a local callbox
without editing it (`callbox demo` runs the seed voicemail program this way).

The connection is kept up: when it drops, the client reconnects with exponential backoff and
resumes its session (it sends back the server's `protocol`), so events for its calls that were
sent meanwhile are delivered. Events are acknowledged, and de-duplicated when re-sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import ssl
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from callbox import __version__
from callbox.relay import protocol as core
from callbox.relay.call import Call
from callbox.relay.channel import EventListener, EventRouter, Unsubscribe
from callbox.relay.events import AuthenticationError, DialError, RelayError, RelayEvent
from callbox.wire import dial as dial_wire
from callbox.wire import relay as wire

log = logging.getLogger("callbox.relay")

CallHandler = Callable[[Call], Awaitable[Any]]

DEFAULT_HOST = "relay.signalwire.com"
REQUEST_TIMEOUT = 15.0
DIAL_TIMEOUT = 120.0  # seconds dial() waits for an answer, as SignalWire's SDK does
CONNECT_TIMEOUT = 10.0
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
MAX_FRAME_BYTES = 10 * 1024 * 1024


def relay_url(host: str) -> str:
    """`host[:port]` -> ``wss://host[:port]/``; a ``ws://`` or ``wss://`` URL is kept
    (with ``/`` as the path when it has none)."""
    text = host.strip()
    if "://" in text:
        parts = urlsplit(text)
        if parts.scheme not in ("ws", "wss") or not parts.netloc:
            raise ValueError(f"host must be HOST[:PORT] or a ws:// or wss:// URL, got {host!r}")
        return text if parts.path else f"{text}/"
    if not text or any(c in text for c in "/@?# "):
        raise ValueError(f"host must be HOST[:PORT] or a ws:// or wss:// URL, got {host!r}")
    return f"wss://{text}/"


def _env(*names: str) -> str:
    for name in names:
        value = os.environ.get(name)
        if value:
            return value
    return ""


class RelayClient:
    """A RELAY client: one WebSocket to the server, inbound calls for `contexts`.

    The I/O shell around the protocol core (`callbox.relay.protocol.RelayProtocol`): it owns
    the socket, the reconnects and the tasks, while the core decides what each frame means and
    what to answer. Its calls talk to it as their `RelayChannel`.
    """

    def __init__(self, project: str | None = None, token: str | None = None,
                 host: str | None = None, contexts: list[str] | None = None, *,
                 ca_file: str | None = None, agent: str | None = None) -> None:
        self.project = project or _env("SIGNALWIRE_PROJECT_ID")
        self.token = token or _env("SIGNALWIRE_API_TOKEN", "SIGNALWIRE_TOKEN")
        if not self.project:
            raise ValueError("project is required: pass project=... or set "
                             "SIGNALWIRE_PROJECT_ID")
        if not self.token:
            raise ValueError("token is required: pass token=... or set SIGNALWIRE_API_TOKEN")
        self.host = (_env("CALLBOX_RELAY_URL") or host
                     or _env("SIGNALWIRE_SPACE", "SIGNALWIRE_HOST") or DEFAULT_HOST)
        self.url = relay_url(self.host)
        self.ca_file = ca_file or _env("SIGNALWIRE_RELAY_CA_FILE") or None
        if self.ca_file and not os.path.isfile(self.ca_file):
            raise ValueError(f"CA file {self.ca_file!r} (ca_file / SIGNALWIRE_RELAY_CA_FILE) "
                             "does not exist")
        self.agent = agent or f"callbox-relay/{__version__}"
        self.reconnects = 0
        self.calls: dict[str, Call] = {}
        self._core = core.RelayProtocol(self.project, self.token, contexts or [],
                                        agent=self.agent)
        self._router = EventRouter()
        self._handler: CallHandler | None = None
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pinger: asyncio.Task[None] | None = None
        self._reconnector: asyncio.Task[None] | None = None
        self._ready: asyncio.Event | None = None
        self._stopped: asyncio.Event | None = None
        self._fatal: BaseException | None = None
        self._closing = False
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._dials: dict[str, asyncio.Future[Call]] = {}  # by tag
        self._tasks: set[asyncio.Task[Any]] = set()

    def __repr__(self) -> str:
        return f"<RelayClient {self.project}@{self.url} {self.protocol or 'not connected'}>"

    @property
    def connected(self) -> bool:
        return self._ready is not None and self._ready.is_set()

    # -- the session, as the protocol core keeps it -------------------------------------------

    @property
    def protocol(self) -> str:
        """The server's session name, sent back to resume ("" before the first connect)."""
        return self._core.protocol

    @protocol.setter
    def protocol(self, value: str) -> None:
        self._core.protocol = value

    @property
    def identity(self) -> str:
        return self._core.identity

    @property
    def session_restored(self) -> bool:
        return self._core.session_restored

    @property
    def contexts(self) -> list[str]:
        return self._core.contexts

    @contexts.setter
    def contexts(self, value: list[str]) -> None:
        self._core.contexts = list(value)

    # -- handlers ---------------------------------------------------------------------------

    def on_call(self, handler: CallHandler) -> CallHandler:
        """Decorator: `handler(call)` runs as its own task for each inbound call."""
        self._handler = handler
        return handler

    # -- life cycle -------------------------------------------------------------------------

    def run(self) -> None:
        """Connect and serve calls until Ctrl-C (or SIGTERM). Raises `AuthenticationError`
        when the server rejects the project or token."""
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        installed = []
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(signum, stop.set)
                installed.append(signum)
            except (NotImplementedError, RuntimeError):  # not the main thread / Windows
                pass
        try:
            await self._connect_with_retry(stop)
            if not stop.is_set():
                assert self._stopped is not None
                stopped = asyncio.ensure_future(self._stopped.wait())
                interrupted = asyncio.ensure_future(stop.wait())
                await asyncio.wait({stopped, interrupted}, return_when=asyncio.FIRST_COMPLETED)
                stopped.cancel()
                interrupted.cancel()
        finally:
            for signum in installed:
                loop.remove_signal_handler(signum)
            await self.disconnect()
        if self._fatal is not None:
            raise self._fatal

    async def _connect_with_retry(self, stop: asyncio.Event) -> None:
        delay = BACKOFF_FIRST
        while not stop.is_set():
            try:
                await self.connect()
                return
            except AuthenticationError:
                raise
            except (OSError, aiohttp.ClientError, TimeoutError, RelayError) as exc:
                log.warning("RELAY: cannot connect to %s: %s; retrying in %.1f s", self.url,
                            _describe(exc), delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            delay = min(delay * 2, BACKOFF_MAX)

    async def connect(self) -> None:
        """Open the WebSocket and authenticate (for use inside your own event loop).

        Raises `AuthenticationError` for bad credentials, `RelayError` / `OSError` /
        `aiohttp.ClientError` when the server cannot be reached.
        """
        self._closing = False
        self._fatal = None
        self._ready = self._ready or asyncio.Event()
        self._stopped = self._stopped or asyncio.Event()
        self._stopped.clear()
        try:
            await self._open()
        except BaseException:
            if self._http is not None:
                await self._http.close()
                self._http = None
            raise

    async def disconnect(self) -> None:
        """Close the connection and stop reconnecting; handlers still running are cancelled."""
        self._closing = True
        for task in (self._reconnector, self._pinger):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
        ws = self._ws
        if ws is not None and not ws.closed:
            with contextlib.suppress(Exception):
                await ws.close()
        if self._reader is not None and self._reader is not asyncio.current_task():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._reader, 2)
        if ws is not None:
            self._lost(ws, "the client disconnected")
        tasks = [t for t in self._tasks if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.close()
            self._http = None
        if self._ready is not None:
            self._ready.clear()
        if self._stopped is not None:
            self._stopped.set()

    async def __aenter__(self) -> RelayClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.disconnect()

    # -- the socket -------------------------------------------------------------------------

    def _ssl(self) -> ssl.SSLContext | bool:
        if not self.url.startswith("wss:"):
            return False
        if self.ca_file:
            return ssl.create_default_context(cafile=self.ca_file)
        return True

    async def _open(self) -> None:
        if self._http is None:
            self._http = aiohttp.ClientSession()
        ws = await self._http.ws_connect(
            self.url, ssl=self._ssl(), max_msg_size=MAX_FRAME_BYTES, heartbeat=None,
            autoping=True, timeout=aiohttp.ClientWSTimeout(ws_close=5.0),
        )
        self._ws = ws
        connect_id = self._core.connect()
        reply = self._wait_for(connect_id)
        self._reader = asyncio.get_running_loop().create_task(self._read_loop(ws))
        try:
            await self._flush(ws)
            await asyncio.wait_for(reply, CONNECT_TIMEOUT)
        except BaseException as exc:
            self._lost(ws, "the connection closed while authenticating")
            await ws.close()
            if isinstance(exc, TimeoutError):
                raise RelayError(f"no reply to {wire.CONNECT} within {CONNECT_TIMEOUT:g} s"
                                 ) from None
            raise
        finally:
            self._waiting.pop(connect_id, None)
        assert self._ready is not None
        self._ready.set()
        self._pinger = asyncio.get_running_loop().create_task(self._ping_loop(ws))

    async def _read_loop(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        try:
            async for message in ws:
                if message.type == aiohttp.WSMsgType.TEXT:
                    await self._on_frame(ws, message.data)
                elif message.type == aiohttp.WSMsgType.ERROR:
                    log.info("RELAY: socket error: %s", ws.exception())
                    break
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("RELAY: reading from the socket failed")
        finally:
            self._lost(ws, "the connection to the RELAY server was lost")

    def _lost(self, ws: aiohttp.ClientWebSocketResponse, why: str) -> None:
        """`ws` is gone (or given up on): pending requests fail with `why`; a connection that
        was up is reconnected. Only the first call for a socket counts."""
        if ws is not self._ws:
            return
        self._ws = None
        # only a socket that was up is reconnected from here; one that fails while connecting
        # is retried by whoever was connecting (connect() raises, _reconnect() loops)
        was_up = self._ready is not None and self._ready.is_set()
        if self._ready is not None:
            self._ready.clear()
        if self._pinger is not None and self._pinger is not asyncio.current_task():
            self._pinger.cancel()
        for failed in self._core.connection_lost(why):
            self._settle(failed)
        if self._closing or not was_up:
            return
        log.warning("RELAY: connection to %s lost; reconnecting", self.url)
        if self._reconnector is None or self._reconnector.done():
            self._reconnector = asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        delay = BACKOFF_FIRST
        while not self._closing:
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            if self._closing:
                return
            try:
                await self._open()
                self.reconnects += 1
                return
            except AuthenticationError as exc:
                log.error("RELAY: %s", exc)
                self._fatal = exc
                if self._stopped is not None:
                    self._stopped.set()
                return
            except (OSError, aiohttp.ClientError, TimeoutError, RelayError) as exc:
                log.warning("RELAY: reconnecting to %s failed: %s; next try in %.1f s",
                            self.url, _describe(exc), min(delay * 2, BACKOFF_MAX))
            delay = min(delay * 2, BACKOFF_MAX)

    async def _ping_loop(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Tick the core's ping clock; close the socket when it says the server is gone."""
        loop = asyncio.get_running_loop()
        with contextlib.suppress(asyncio.CancelledError):
            while ws is self._ws and not ws.closed:
                outcome = self._core.tick(loop.time())
                await self._flush(ws)
                if any(isinstance(event, core.PingsUnanswered) for event in outcome):
                    log.warning("RELAY: %d pings unanswered; reconnecting",
                                self._core.missed_pings)
                    await ws.close()
                    return
                wake_at = self._core.next_tick_at()
                if wake_at is None:
                    return
                await asyncio.sleep(max(0.0, wake_at - loop.time()))

    # -- frames -----------------------------------------------------------------------------

    async def _flush(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Write what the core queued. A socket closing meanwhile is not an error here: an
        event not acknowledged is sent again after the reconnect, and a request fails when the
        connection's loss is noticed."""
        for text in self._core.data_to_send():
            with contextlib.suppress(ConnectionError, RuntimeError, aiohttp.ClientError):
                await ws.send_str(text)

    async def _on_frame(self, ws: aiohttp.ClientWebSocketResponse, text: str) -> None:
        if ws is not self._ws or self._core.state is core.State.IDLE:
            return  # a socket given up on, or one whose connect was refused
        outcome = self._core.receive(text)
        await self._flush(ws)  # acks first: the events were received
        for event in outcome:
            self._on_protocol_event(event)

    def _on_protocol_event(self, event: core.ProtocolEvent) -> None:
        match event:
            case core.EventReceived(event=relay_event):
                self._on_event(relay_event)
            case core.RequestSucceeded() | core.RequestFailed():
                self._settle(event)
            case core.Connected():
                self._on_connected(event)
            case core.DisconnectRequested(restart=restart):
                log.info("RELAY: the server asked us to reconnect%s",
                         " with a new session" if restart else "")
            case core.BadFrame(reason=reason):
                log.warning("RELAY: bad frame from the server: %s", reason)
            case core.ServerError(code=code, message=message):
                log.warning("RELAY: server error: %s (code %s)", message, code)
            case core.PingsUnanswered():
                pass  # only tick() reports it; the ping loop acts on it

    def _wait_for(self, request_id: str) -> asyncio.Future[dict[str, Any]]:
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        return future

    def _settle(self, outcome: core.RequestSucceeded | core.RequestFailed | core.Connected
                ) -> None:
        future = self._waiting.get(outcome.request_id)
        if future is None or future.done():
            return
        if isinstance(outcome, core.RequestFailed):
            future.set_exception(outcome.error)
        else:
            future.set_result(outcome.result if isinstance(outcome, core.RequestSucceeded)
                              else {})

    def _on_connected(self, event: core.Connected) -> None:
        if event.resumed_from and not event.session_restored and self.calls:
            log.warning("RELAY: session %s could not be resumed; %d call(s) lost",
                        event.resumed_from, len(self.calls))
        log.info("RELAY: connected to %s as %s (%s)", self.url, event.identity,
                 "session resumed" if event.session_restored else "new session")
        self._settle(event)

    def _on_event(self, event: RelayEvent) -> None:
        if event.event_type == wire.CALL_RECEIVE:
            self._on_receive(event)
            return
        if event.event_type == dial_wire.CALL_DIAL:
            self._on_dial(event)
            return
        if (event.event_type == wire.CALL_STATE and event.tag in self._dials
                and event.call_id and event.call_id not in self.calls):
            self._dialled_leg(event.params)  # a leg of our dial: its events reach it from now
        if not self._router.dispatch(event):
            log.debug("RELAY: %s for unknown call %s", event.event_type, event.call_id)
            return
        call = self.calls.get(event.call_id)
        if call is not None and call.state == "ended" and not call.active_actions:
            self.calls.pop(call.call_id, None)
            self._router.drop(call.call_id)

    def _on_receive(self, event: RelayEvent) -> None:
        if not event.call_id or event.call_id in self.calls:
            return
        call = Call(self, event.params)
        self.calls[call.call_id] = call
        if self._handler is None:
            log.warning("RELAY: call %s offered but no @on_call handler is set", call.call_id)
            return
        self.spawn(self._handle(call), f"call-{call.call_id}")

    def _dialled_leg(self, params: Mapping[str, Any]) -> Call:
        call = Call(self, {**params, "direction": "outbound"})
        self.calls[call.call_id] = call
        return call

    def _on_dial(self, event: RelayEvent) -> None:
        future = self._dials.get(event.tag)
        if future is None or future.done():
            return
        if event.dial_state == "answered":
            info = event.params.get("call")
            leg = dict(info) if isinstance(info, Mapping) else {}
            call = self.calls.get(str(leg.get("call_id", "")))
            if call is None:
                call = self._dialled_leg({**leg, "call_state": "answered"})
            future.set_result(call)
        elif event.dial_state == "failed":
            code = event.params.get("sip_code")
            future.set_exception(DialError(event.tag, event.reason or "error",
                                           code if isinstance(code, int) else 0))

    async def _handle(self, call: Call) -> None:
        assert self._handler is not None
        try:
            await self._handler(call)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("RELAY: the handler for call %s failed", call.call_id)

    # -- the channel of its calls -------------------------------------------------------------

    def subscribe(self, call_id: str, listener: EventListener, control_id: str = ""
                  ) -> Unsubscribe:
        """`listener(event)` for every event of `call_id` (or only of its `control_id`)."""
        return self._router.subscribe(call_id, listener, control_id)

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Run `coro` as a task of this client (cancelled by `disconnect()`)."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def execute(self, method: str, params: Mapping[str, Any],
                      timeout: float = REQUEST_TIMEOUT) -> dict[str, Any]:
        """Send one request and return its result. A calling result whose `code` is not 2xx
        raises `RelayError` with that code (e.g. 404 unknown call, 410 call gone, 400 bad
        params, with the server's message). While reconnecting, the request waits for the
        connection (within `timeout`)."""
        if self._ready is None:
            raise RelayError("not connected: call connect() or run() first")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if not self._ready.is_set():
            if self._closing:
                raise RelayError("the client is disconnected")
            try:
                await asyncio.wait_for(self._ready.wait(), timeout)
            except TimeoutError:
                raise RelayError(f"not connected to {self.url}; {method} not sent") from None
        ws = self._ws
        if ws is None:
            raise RelayError(f"not connected to {self.url}; {method} not sent")
        request_id = self._core.send_request(method, params)
        reply = self._wait_for(request_id)
        try:
            await self._flush(ws)
            return await asyncio.wait_for(reply, max(0.1, deadline - loop.time()))
        except TimeoutError:
            raise RelayError(f"no reply to {method} within {timeout:g} s") from None
        finally:
            self._waiting.pop(request_id, None)
            self._core.abandon(request_id)

    async def dial(self, devices: list[list[dict[str, Any]]], *, region: str | None = None,
                   tag: str | None = None, max_duration: int | None = None,
                   dial_timeout: float | None = None) -> Call:
        """Place a call and return it once answered (direction "outbound").

        `devices`: an outer list tried one after the other, each an inner list rung at the
        same time, e.g. ``[[{"type": "sip", "params": {"to": "sip:bob@example.com"}}]]`` or
        ``{"type": "phone", "params": {"to_number": "+1...", "from_number": "+1..."}}``.
        `max_duration` is in minutes. Raises `DialError` (with `reason`: busy, noAnswer,
        decline, error, and `sip_code`) when nobody answered, `RelayError` for a refused
        command (400 with the wrong field) or no outcome within `dial_timeout` seconds
        (120 by default).
        """
        dial_tag = tag or str(uuid.uuid4())
        params: dict[str, Any] = {"tag": dial_tag, "devices": devices}
        if region is not None:
            params["region"] = region
        if max_duration is not None:
            params["max_duration"] = max_duration
        future: asyncio.Future[Call] = asyncio.get_running_loop().create_future()
        self._dials[dial_tag] = future
        timeout = DIAL_TIMEOUT if dial_timeout is None else dial_timeout
        try:
            await self.execute(dial_wire.DIAL, params)
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise RelayError(f"dial {dial_tag}: no answer within {timeout:g} s") from None
        finally:
            del self._dials[dial_tag]

    async def receive(self, contexts: list[str]) -> None:
        """Also take calls for `contexts` (kept for the next reconnect)."""
        await self.execute(wire.RECEIVE, {"contexts": list(contexts)})

    async def unreceive(self, contexts: list[str]) -> None:
        """Stop taking calls for `contexts`."""
        await self.execute(wire.UNRECEIVE, {"contexts": list(contexts)})


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
