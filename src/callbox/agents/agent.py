"""AgentBase: an AI agent served over HTTP (its SWML document and its SWAIG functions).

    agent = AgentBase(name="my-agent", route="/agent")
    agent.set_prompt_text("You are a helpful assistant.")

    @agent.tool(name="start_recording", description="Start recording the call")
    def start_recording(args, raw_data):
        return FunctionResult("Recording started.").record_call(control_id="main")

    agent.serve()

Routes (one aiohttp application, built by `get_app()`):

- `GET|POST <route>`: the SWML document (`answer`, then `ai` with the prompt and the SWAIG
  functions, whose `web_hook_url` is `<scheme>://USER:PASS@<Host header><route>/swaig`); for a
  call (`call_id` or `call.call_id` in the POST body, or `?call_id=`), each secure function's
  URL and the post-prompt URL carry a token for that call, `?__token=...`;
- `POST <route>/swaig`: a function call (see `callbox.agents.swaig`); a secure function (the
  default) runs only with its call's token, else 403; GET gives the document;
- `POST <route>/post_prompt`: the conversation summary, passed to `on_summary()` (its call's
  token required, else 403);
- `GET /health` -> `{"status": "healthy", "agent": name}`, `GET /ready` (no auth).

HTTP Basic auth is always on: `basic_auth=(user, password)`, else `SWML_BASIC_AUTH_USER` /
`SWML_BASIC_AUTH_PASSWORD`, else user `signalwire` with a random password made for this
process and logged at start-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final, Literal, overload
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

from aiohttp import web

from callbox.agents.function_result import FunctionResult
from callbox.agents.swaig import (
    UNSUPPORTED_MEDIA_TYPE,
    SwaigError,
    ToolHandler,
    content_type_ok,
    invoke,
    is_async_handler,
    not_found_reply,
    parse_body,
    parse_request,
    reply_for,
)
from callbox.agents.swml import AiVerb, SwaigFunctionSpec, agent_document, function_parameters
from callbox.agents.tool_tokens import POST_PROMPT, TOKEN_PARAM, ToolTokens
from callbox.wire.basic_auth import credentials_equal, parse_basic_auth
from callbox.wire.recording import FORMATS

log = logging.getLogger("callbox.agents")

DEFAULT_PORT: Final = 3000
DEFAULT_USER: Final = "signalwire"
ENV_PORT: Final = "PORT"
ENV_AUTH_USER: Final = "SWML_BASIC_AUTH_USER"
ENV_AUTH_PASSWORD: Final = "SWML_BASIC_AUTH_PASSWORD"
ENV_PROXY_URL_BASE: Final = "SWML_PROXY_URL_BASE"
_TOOL_MARK: Final = "_callbox_tool"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Tool:
    """A registered SWAIG function: how the `ai` verb lists it, and the code that runs it."""

    spec: SwaigFunctionSpec
    handler: ToolHandler


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(body, status=status, headers=headers)


def _call_id_of(request: web.Request, body: Any) -> str | None:
    """The call a SWML fetch is for: `call_id` or `call.call_id` in the body, else the query."""
    if isinstance(body, dict):
        call = body.get("call")
        nested = call.get("call_id") if isinstance(call, dict) else None
        for given in (body.get("call_id"), nested):
            if isinstance(given, str) and given:
                return given
    return request.query.get("call_id") or None


def _resolve_port(port: int | None) -> int:
    if port is not None:
        return int(port)
    env = os.environ.get(ENV_PORT)
    if env:
        try:
            return int(env)
        except ValueError:
            raise ValueError(f"{ENV_PORT} must be a port number, got {env!r}") from None
    return DEFAULT_PORT


def _resolve_credentials(basic_auth: tuple[str, str] | None) -> tuple[str, str, str]:
    """(user, password, source); source is "provided", "environment" or "generated"."""
    if basic_auth is not None:
        user, password = basic_auth
        return str(user), str(password), "provided"
    env_user = os.environ.get(ENV_AUTH_USER)
    env_password = os.environ.get(ENV_AUTH_PASSWORD)
    if env_user and env_password:
        return env_user, env_password, "environment"
    return DEFAULT_USER, secrets.token_urlsafe(18), "generated"


def _route_prefix(route: str) -> str:
    """The route without its trailing slash: "/agent/" -> "/agent", "/" -> "" (the root)."""
    route = "/" + route.strip("/")
    return route.rstrip("/")


class _ToolDecorator:
    """`@agent.tool(...)` registers a function on that agent; `@AgentBase.tool(...)` in a
    subclass marks a method, registered (bound) on each instance."""

    def __get__(
        self, instance: AgentBase | None, owner: type[AgentBase]
    ) -> Callable[..., Callable[[Callable[..., Any]], Callable[..., Any]]]:
        if instance is None:
            return _mark_tool
        return instance._tool_decorator


def _mark_tool(
    name: str | None = None, **kwargs: Any
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def mark(func: Callable[..., Any]) -> Callable[..., Any]:
        setattr(func, _TOOL_MARK, (name or func.__name__, dict(kwargs)))
        return func

    return mark


class AgentBase:
    """An AI agent: a prompt, SWAIG functions (tools) and the web server that serves them.

    `route` is where the SWML document is served (its trailing slash is dropped); `host` /
    `port` where `serve()` listens (port: the argument, else `$PORT`, else 3000).
    `basic_auth=(user, password)` protects every route but /health and /ready.

    Also accepted: `auto_answer` (put `answer` before `ai`, default True), `record_call`,
    `record_format` ("wav" or "mp3") and `record_stereo` (record the whole call from the
    start), `suppress_logs`. Other keyword arguments of the official package are accepted and
    ignored.
    """

    tool = _ToolDecorator()

    def __init__(
        self,
        name: str,
        route: str = "/",
        host: str = "0.0.0.0",
        port: int | None = None,
        basic_auth: tuple[str, str] | None = None,
        *,
        auto_answer: bool = True,
        record_call: bool = False,
        record_format: str = "mp3",
        record_stereo: bool = True,
        suppress_logs: bool = False,
        **kwargs: Any,
    ) -> None:
        if record_format not in FORMATS:
            raise ValueError(
                f"record_format must be one of {', '.join(map(repr, FORMATS))}, "
                f"got {record_format!r}"
            )
        self.name = name
        self.route = _route_prefix(route)
        self.host = host
        self.port = _resolve_port(port)
        user, password, source = _resolve_credentials(basic_auth)
        self._auth = (user, password)
        self._auth_source = source
        self._tokens = ToolTokens()
        self._auto_answer = auto_answer
        self._record_call = record_call
        self._record_format = record_format
        self._record_stereo = record_stereo
        self._suppress_logs = suppress_logs
        self._proxy_url_base: str | None = os.environ.get(ENV_PROXY_URL_BASE) or None
        self._ai = AiVerb()
        self._tools: dict[str, Tool] = {}
        self._pre_answer: list[dict[str, Any]] = []
        self._post_answer: list[dict[str, Any]] = []
        self._post_ai: list[dict[str, Any]] = []
        self._runner: web.AppRunner | None = None
        if kwargs:
            log.debug("AgentBase %s: ignoring options %s", name, ", ".join(sorted(kwargs)))
        self._register_marked_methods()

    # -- identity and credentials ------------------------------------------------------------

    def get_name(self) -> str:
        return self.name

    @overload
    def get_basic_auth_credentials(
        self, include_source: Literal[False] = False
    ) -> tuple[str, str]: ...

    @overload
    def get_basic_auth_credentials(self, include_source: Literal[True]) -> tuple[str, str, str]: ...

    def get_basic_auth_credentials(
        self, include_source: bool = False
    ) -> tuple[str, str] | tuple[str, str, str]:
        """(user, password), plus where they came from when `include_source`."""
        if include_source:
            return (*self._auth, self._auth_source)
        return self._auth

    def get_full_url(self, include_auth: bool = False) -> str:
        """The agent's URL as configured (not as seen by a request): http://host:port/route."""
        if self._proxy_url_base:
            base = self._proxy_url_base.rstrip("/")
        else:
            host = "localhost" if self.host in ("0.0.0.0", "::", "") else self.host
            base = f"http://{host}:{self.port}"
        url = base + self.route
        return self._with_credentials(url) if include_auth else url

    def manual_set_proxy_url(self, proxy_url: str) -> AgentBase:
        """Build webhook URLs on this public base URL (behind a proxy or tunnel) instead of the
        request's scheme and Host header. Same as setting `SWML_PROXY_URL_BASE`."""
        self._proxy_url_base = proxy_url.rstrip("/")
        return self

    # -- prompt and AI configuration ---------------------------------------------------------

    def set_prompt_text(self, text: str) -> AgentBase:
        self._ai.prompt_text = text
        return self

    def get_prompt(self) -> str | None:
        return self._ai.prompt_text

    def set_post_prompt(self, text: str) -> AgentBase:
        """Ask the AI for a summary at the end of the call; it arrives at `on_summary()`."""
        self._ai.post_prompt_text = text
        return self

    def set_post_prompt_url(self, url: str) -> AgentBase:
        """Send the summary to `url` instead of this agent's /post_prompt."""
        self._ai.post_prompt_url = url
        return self

    def set_param(self, key: str, value: Any) -> AgentBase:
        self._ai.params[key] = value
        return self

    def set_params(self, params: dict[str, Any]) -> AgentBase:
        self._ai.params.update(params)
        return self

    def add_hint(self, hint: str) -> AgentBase:
        self._ai.hints.append(hint)
        return self

    def add_hints(self, hints: Iterable[str]) -> AgentBase:
        self._ai.hints.extend(hints)
        return self

    def set_global_data(self, data: dict[str, Any]) -> AgentBase:
        self._ai.global_data = dict(data)
        return self

    def update_global_data(self, data: dict[str, Any]) -> AgentBase:
        self._ai.global_data.update(data)
        return self

    def set_native_functions(self, names: Iterable[str]) -> AgentBase:
        self._ai.native_functions = list(names)
        return self

    def add_language(
        self,
        name: str,
        code: str,
        voice: str,
        speech_fillers: list[str] | None = None,
        function_fillers: list[str] | None = None,
        engine: str | None = None,
        model: str | None = None,
        params: dict[str, Any] | None = None,
    ) -> AgentBase:
        language: dict[str, Any] = {"name": name, "code": code, "voice": voice}
        for key, value in (
            ("engine", engine),
            ("model", model),
            ("speech_fillers", speech_fillers),
            ("function_fillers", function_fillers),
            ("params", params),
        ):
            if value:
                language[key] = value
        self._ai.languages.append(language)
        return self

    def add_pre_answer_verb(self, verb_name: str, config: dict[str, Any]) -> AgentBase:
        self._pre_answer.append({verb_name: config})
        return self

    def add_post_answer_verb(self, verb_name: str, config: dict[str, Any]) -> AgentBase:
        self._post_answer.append({verb_name: config})
        return self

    def add_post_ai_verb(self, verb_name: str, config: dict[str, Any]) -> AgentBase:
        self._post_ai.append({verb_name: config})
        return self

    # -- tools -------------------------------------------------------------------------------

    def define_tool(
        self,
        name: str,
        description: str,
        parameters: dict[str, Any],
        handler: ToolHandler,
        secure: bool = True,
        fillers: dict[str, list[str]] | None = None,
        webhook_url: str | None = None,
        required: list[str] | None = None,
        **swaig_fields: Any,
    ) -> AgentBase:
        """Register a SWAIG function: `handler(args, raw_data)` runs when the AI calls `name`.

        `parameters` is a JSON schema (`{"type": "object", "properties": {...}}`) or just its
        `properties` map (`required` then lists the required ones). The handler returns a
        FunctionResult (or a dict, or a string for the AI to read); it may be `async`.
        `webhook_url` sends calls of this function to another server instead.
        """
        spec = SwaigFunctionSpec(
            name=name,
            description=description,
            parameters=function_parameters(parameters, required),
            secure=secure,
            fillers=fillers,
            webhook_url=webhook_url,
            extra=dict(swaig_fields),
        )
        if name in self._tools:
            log.warning("agent %s: tool %r redefined", self.name, name)
        self._tools[name] = Tool(spec=spec, handler=handler)
        self._ai.functions = [
            f for f in self._ai.functions if isinstance(f, dict) or f.name != name
        ]
        self._ai.functions.append(spec)
        return self

    def register_swaig_function(self, function_dict: dict[str, Any]) -> AgentBase:
        """List a ready-made SWAIG function object (e.g. a DataMap function) as is."""
        self._ai.functions.append(dict(function_dict))
        return self

    def _tool_decorator(
        self, name: str | None = None, **kwargs: Any
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def register(func: Callable[..., Any]) -> Callable[..., Any]:
            self._define_from_decorator(name or func.__name__, func, dict(kwargs))
            return func

        return register

    def _define_from_decorator(
        self, name: str, handler: Callable[..., Any], options: dict[str, Any]
    ) -> None:
        description = options.pop("description", None)
        if description is None:
            description = handler.__doc__ or f"Function {name}"
        self.define_tool(
            name=name,
            description=description,
            parameters=options.pop("parameters", None) or {},
            handler=handler,
            **options,
        )

    def _register_marked_methods(self) -> None:
        seen: set[str] = set()
        for cls in type(self).__mro__:
            for attr, value in vars(cls).items():
                mark = getattr(value, _TOOL_MARK, None)
                if mark is None or attr in seen:
                    continue
                seen.add(attr)
                name, options = mark
                self._define_from_decorator(name, getattr(self, attr), dict(options))

    def on_function_call(
        self, name: str, args: dict[str, Any], raw_data: dict[str, Any] | None = None
    ) -> Any:
        """Run the tool `name`: its handler's result, an error reply if it raised, or (for an
        async handler) an awaitable of one of those. Override to route calls yourself."""
        tool = self._tools.get(name)
        if tool is None:
            return not_found_reply(name)
        if tool.spec.webhook_url:
            return {
                "response": f"External webhook function '{name}' should be executed by "
                f"SignalWire at {tool.spec.webhook_url}, not locally"
            }
        return invoke(name, tool.handler, args, raw_data or {})

    def on_summary(self, summary: Any, raw_data: dict[str, Any] | None = None) -> Any:
        """Called with the post-prompt summary at the end of a call. Override it."""
        log.info("agent %s: summary %s", self.name, summary)
        return None

    def _dispatch_is_async(self, name: str) -> bool:
        if type(self).on_function_call is not AgentBase.on_function_call:
            return is_async_handler(self.on_function_call)
        tool = self._tools.get(name)
        return tool is None or is_async_handler(tool.handler)

    # -- the SWML document -------------------------------------------------------------------

    def _with_credentials(self, url: str) -> str:
        parts = urlsplit(url)
        user, password = self._auth
        netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{parts.netloc}"
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))

    def _base_url(self, request: web.Request | None) -> str:
        if self._proxy_url_base:
            return self._proxy_url_base.rstrip("/") + self.route
        if request is None:
            return self.get_full_url()
        return f"{request.scheme}://{request.host}{self.route}"

    def render_swml(
        self, base_url: str | None = None, call_id: str | None = None
    ) -> dict[str, Any]:
        """The SWML document, its webhook URLs built on `base_url` (scheme://host:port/route,
        without credentials: they are added). Default: `get_full_url()`.

        For a `call_id`, each secure function's URL and the post-prompt URL carry a token for
        that call (`?__token=`); without one, secure functions cannot be called."""
        agent_url = self._with_credentials((base_url or self.get_full_url()).rstrip("/"))
        swaig_url = agent_url + "/swaig"
        post_prompt_url = agent_url + "/post_prompt"
        function_urls: dict[str, str] = {}
        if call_id:
            for name, tool in self._tools.items():
                if tool.spec.secure and not tool.spec.webhook_url:
                    function_urls[name] = self._with_token(swaig_url, name, call_id)
            post_prompt_url = self._with_token(post_prompt_url, POST_PROMPT, call_id)
        ai = self._ai.render(
            swaig_url=swaig_url, post_prompt_url=post_prompt_url, function_urls=function_urls
        )
        post_answer = list(self._post_answer)
        if self._record_call:
            recording = {"format": self._record_format, "stereo": self._record_stereo}
            post_answer.insert(0, {"record_call": recording})
        return agent_document(
            ai,
            auto_answer=self._auto_answer,
            pre_answer=self._pre_answer,
            post_answer=post_answer,
            post_ai=self._post_ai,
        )

    def _with_token(self, url: str, function: str, call_id: str) -> str:
        token = self._tokens.issue(function, call_id)
        return f"{url}?{urlencode({TOKEN_PARAM: token})}"

    def _token_refused(self, request: web.Request, function: str,
                       call_id: str | None) -> web.Response | None:
        """403 unless the request carries the token minted for `function` on `call_id`."""
        if self._tokens.valid(function, call_id, request.query.get(TOKEN_PARAM)):
            return None
        log.warning("agent %s: %s refused: missing or invalid token (call_id=%s)",
                    self.name, function, call_id)
        return _json({"error": f"invalid or missing token for {function} on this call"},
                     status=403)

    def _needs_token(self, function: str) -> bool:
        tool = self._tools.get(function)
        return tool is not None and tool.spec.secure and not tool.spec.webhook_url

    # -- HTTP --------------------------------------------------------------------------------

    def _authorized(self, request: web.Request) -> bool:
        credentials = parse_basic_auth(request.headers.get("Authorization", ""))
        return credentials is not None and credentials_equal(credentials, self._auth)

    def _protected(self, handler: Handler) -> Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            if not self._authorized(request):
                return _json(
                    {"error": "Unauthorized"},
                    status=401,
                    headers={"WWW-Authenticate": f'Basic realm="{self.name}"'},
                )
            return await handler(request)

        return guarded

    async def _handle_document(self, request: web.Request) -> web.StreamResponse:
        body = parse_body(await request.read()) if request.method == "POST" else None
        return _json(self.render_swml(self._base_url(request), _call_id_of(request, body)))

    async def _handle_swaig(self, request: web.Request) -> web.StreamResponse:
        if request.method == "GET":
            return await self._handle_document(request)
        if not content_type_ok(request.headers.get("Content-Type")):
            return _json(UNSUPPORTED_MEDIA_TYPE.body, status=UNSUPPORTED_MEDIA_TYPE.status)
        parsed = parse_request(parse_body(await request.read()))
        if isinstance(parsed, SwaigError):
            return _json(parsed.body, status=parsed.status)
        if self._needs_token(parsed.function):
            refused = self._token_refused(request, parsed.function, parsed.call_id)
            if refused is not None:
                return refused
        reply = await reply_for(
            parsed, self.on_function_call, self._dispatch_is_async(parsed.function)
        )
        if not self._suppress_logs:
            log.info("agent %s: SWAIG %s call_id=%s", self.name, parsed.function, parsed.call_id)
        return _json(reply)

    async def _handle_post_prompt(self, request: web.Request) -> web.StreamResponse:
        if request.method == "GET":
            return await self._handle_document(request)
        if not content_type_ok(request.headers.get("Content-Type")):
            return _json(UNSUPPORTED_MEDIA_TYPE.body, status=UNSUPPORTED_MEDIA_TYPE.status)
        body = parse_body(await request.read())
        body = body if isinstance(body, dict) else {}
        call_id = body.get("call_id")
        refused = self._token_refused(
            request, POST_PROMPT, call_id if isinstance(call_id, str) else None
        )
        if refused is not None:
            return refused
        data = body.get("post_prompt_data")
        summary: Any = None
        if isinstance(data, dict):
            parsed = data.get("parsed")
            summary = parsed[0] if isinstance(parsed, list) and parsed else data.get("raw")
        try:
            if is_async_handler(self.on_summary):
                result = await self.on_summary(summary, body)
            else:
                result = await asyncio.to_thread(self.on_summary, summary, body)
        except Exception:
            log.exception("agent %s: on_summary failed", self.name)
            result = None
        return _json(result if isinstance(result, dict) else {"success": True})

    async def _handle_health(self, request: web.Request) -> web.StreamResponse:
        return _json({"status": "healthy", "agent": self.name})

    async def _handle_ready(self, request: web.Request) -> web.StreamResponse:
        return _json({"status": "ready"})

    def get_app(self) -> web.Application:
        """The aiohttp application serving this agent (mount it, or run it yourself)."""
        app = web.Application()
        document = self._protected(self._handle_document)
        swaig = self._protected(self._handle_swaig)
        post_prompt = self._protected(self._handle_post_prompt)
        base = self.route
        routes: list[tuple[str, Handler]] = [(base or "/", document)]
        if base:
            routes.append((base + "/", document))
        for suffix, handler in (("/swaig", swaig), ("/post_prompt", post_prompt)):
            routes += [(base + suffix, handler), (base + suffix + "/", handler)]
        for path, handler in routes:
            app.router.add_get(path, handler)
            app.router.add_post(path, handler)
        app.router.add_get("/health", self._handle_health)
        app.router.add_get("/ready", self._handle_ready)
        return app

    async def start(self, host: str | None = None, port: int | None = None) -> int:
        """Start serving in the running event loop; returns the bound port (`port=0` picks a
        free one). Stop with `stop()`."""
        if self._runner is not None:
            raise RuntimeError(f"agent {self.name!r} is already running")
        host = self.host if host is None else host
        port = self.port if port is None else port
        runner = web.AppRunner(self.get_app(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as error:
            await runner.cleanup()
            raise OSError(
                error.errno,
                f"agent {self.name!r} cannot listen on {host}:{port} ({error.strerror}); "
                f"pass another port= or set {ENV_PORT}",
            ) from error
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        bound = port
        for address in runner.addresses:
            if isinstance(address, tuple) and len(address) >= 2:
                bound = int(address[1])
                break
        self._log_banner(host, bound)
        return bound

    async def stop(self) -> None:
        """Stop serving (no-op when not running)."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    def _log_banner(self, host: str, port: int) -> None:
        shown = "localhost" if host in ("0.0.0.0", "::", "") else host
        url = f"http://{shown}:{port}{self.route or '/'}"
        user, password = self._auth
        if self._auth_source == "generated":
            credentials = f"{user}:{password} (generated for this process)"
        else:
            credentials = f"{user}:(configured, from {self._auth_source})"
        # A generated password is useless unless seen: say it even where logging is not set up.
        level = logging.WARNING if self._auth_source == "generated" else logging.INFO
        log.log(level, "agent %r serving at %s  basic auth %s", self.name, url, credentials)

    def serve(self, host: str | None = None, port: int | None = None) -> None:
        """Serve until Ctrl-C / SIGTERM (blocking), then stop cleanly."""
        if not logging.getLogger().handlers:
            logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        try:
            with contextlib.suppress(KeyboardInterrupt):
                asyncio.run(self._serve_until_signalled(host, port))
        except OSError as error:  # the port is taken, or the host is not ours
            log.error("%s", error.strerror or error)
            raise SystemExit(1) from None

    def run(self, *args: Any, host: str | None = None, port: int | None = None, **_: Any) -> None:
        """Same as `serve()` (the official package also runs in serverless modes)."""
        self.serve(host=host, port=port)

    async def _serve_until_signalled(self, host: str | None, port: int | None) -> None:
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        installed: list[signal.Signals] = []
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(signum, stopping.set)
                installed.append(signum)
            except (NotImplementedError, RuntimeError):  # not the main thread, or Windows
                pass
        await self.start(host, port)
        try:
            await stopping.wait()
        finally:
            for signum in installed:
                loop.remove_signal_handler(signum)
            await self.stop()
            log.info("agent %r stopped", self.name)


__all__ = ["AgentBase", "FunctionResult", "Tool"]
