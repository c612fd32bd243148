"""The platform's configuration: a TOML file, overridden by CALLBOX_* variables and CLI flags.

Every key is documented in the README. Precedence: CLI flag > environment > file > default.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

ENV_PREFIX = "CALLBOX_"
MAX_WORKERS = 64


class ConfigError(ValueError):
    """A configuration value is missing or wrong; the message says which and why."""


@dataclass
class SipConfig:
    listen: str = "127.0.0.1:5060"
    rtp_ports: str = "20000-20999"
    # Address written into SDP and Contact; empty = the host of `listen`.
    public_host: str = ""
    # Over this many concurrent calls, new INVITEs get 503 with Retry-After.
    max_calls: int = 1000


@dataclass
class HttpConfig:
    listen: str = "127.0.0.1:8443"
    tls_cert: str = ""
    tls_key: str = ""
    public_url: str = "https://127.0.0.1:8443"
    # Optional plain-HTTP/WS listener for local clients; empty = none.
    plain_listen: str = ""


@dataclass
class StorageConfig:
    """Local disk, and optionally an S3 API where finished recordings are moved.

    `s3_endpoint` empty = recordings stay on local disk. `s3_retry_seconds` is the first delay
    before a failed upload is tried again (doubling on each failure, up to 30 times it).
    """

    data_dir: str = "./callbox-data"
    s3_endpoint: str = ""
    s3_bucket: str = ""
    s3_access_key: str = ""
    s3_secret_key: str = ""  # or CALLBOX_STORAGE_S3_SECRET_KEY
    s3_region: str = "us-east-1"
    s3_retry_seconds: float = 2.0


@dataclass
class DatabaseConfig:
    """Where metadata (recordings, the webhook queue) lives. `url` empty = SQLite files in the
    data directory; else a PostgreSQL URL (``postgresql://user:pass@host:5432/callbox``) that
    every node of a cluster shares. The whole URL may come from CALLBOX_DATABASE_URL (keeps the
    password out of the file)."""

    url: str = ""


@dataclass
class ServerConfig:
    # Media worker processes (RTP, the media clock, recording files); 0 = media in the main
    # process. Default: one per core.
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)


@dataclass
class LogConfig:
    level: str = "info"


@dataclass
class ClusterConfig:
    """This node among several (README "Scale out")."""

    # Names this node in RELAY events and recordings; empty = a new random id at each start.
    node_id: str = ""
    # The NATS server that carries RELAY offers, commands and events between nodes; empty =
    # one node on its own.
    bus_url: str = ""
    # At SIGTERM, calls in progress may go on for this many seconds while new INVITEs and
    # OPTIONS health checks get 503; the ones left are then hung up. 0 = hang up at once.
    drain_seconds: int = 0


MAX_DRAIN_SECONDS = 86400
BUS_SCHEMES = ("nats",)


# Speech-to-text engines the `ai` verb can use ([ai] stt).
STT_ENGINES = ("pocketsphinx",)


@dataclass
class AiConfig:
    """The `ai` verb: an OpenAI-compatible chat-completions endpoint and the STT engine.

    `base_url` is the API root (e.g. "https://api.openai.com/v1"; "/chat/completions" is
    appended); empty = no LLM (the `ai` verb then explains this to the caller and logs it).
    """

    base_url: str = ""
    model: str = ""
    api_key: str = ""
    stt: str = "pocketsphinx"


@dataclass
class Project:
    id: str
    token: str
    # Key for HMAC-SHA256 webhook signatures; empty = the token.
    signing_key: str = ""


@dataclass
class Route:
    """Where a call goes: `number` matches the request-URI user part ("*" = any)."""

    number: str
    swml: str = ""
    swml_url: str = ""
    context: str = ""
    project: str = ""

    def matches(self, user: str) -> bool:
        return self.number == "*" or self.number == user


TRUNK_TRANSPORTS = ("udp", "tcp")


@dataclass
class Trunk:
    """A carrier or PBX: where to send (`proxy`), how to authenticate, whether to register."""

    name: str
    proxy: str  # host[:port]
    transport: str = "udp"
    username: str = ""
    password: str = ""  # or CALLBOX_TRUNK_<NAME>_PASSWORD
    realm: str = ""  # answer challenges from this realm only; empty = any
    register: bool = False
    expires: int = 300
    from_number: str = ""
    # Networks (CIDR) calls to this trunk's registered contact may come from; empty = any.
    allow: list[str] = field(default_factory=list)

    @property
    def host_port(self) -> tuple[str, int]:
        """The proxy's host and port (5060 when not given)."""
        return split_host_port(self.proxy)


def split_host_port(value: str, default_port: int = 5060) -> tuple[str, int]:
    """'sip.example.net' -> ('sip.example.net', 5060); 'h:5080' and '[::1]:5080' work too."""
    text = value.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else rest
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = text, ""
    if port_text and not port_text.isdigit():
        raise ConfigError(f"bad port in {value!r}")
    port = int(port_text) if port_text else default_port
    if not host or not 1 <= port <= 65535:
        raise ConfigError(f"{value!r} is not host[:port] with a port 1-65535")
    return host, port


@dataclass
class Config:
    sip: SipConfig = field(default_factory=SipConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    log: LogConfig = field(default_factory=LogConfig)
    ai: AiConfig = field(default_factory=AiConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    projects: list[Project] = field(default_factory=list)
    routes: list[Route] = field(default_factory=list)
    trunks: list[Trunk] = field(default_factory=list)

    @property
    def data_dir(self) -> Path:
        return Path(self.storage.data_dir)

    def route_for(self, user: str) -> Route | None:
        """First matching route wins."""
        return next((r for r in self.routes if r.matches(user)), None)

    def project(self, project_id: str) -> Project | None:
        return next((p for p in self.projects if p.id == project_id), None)


_SECTIONS: dict[str, type] = {
    "sip": SipConfig,
    "server": ServerConfig,
    "http": HttpConfig,
    "storage": StorageConfig,
    "database": DatabaseConfig,
    "log": LogConfig,
    "ai": AiConfig,
    "cluster": ClusterConfig,
}


def parse_host_port(value: str, what: str) -> tuple[str, int]:
    """'127.0.0.1:5060' -> ('127.0.0.1', 5060); '[::1]:5060' works too."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ConfigError(f"{what} must be HOST:PORT, got {value!r}")
    number = int(port)
    if not 0 <= number <= 65535:
        raise ConfigError(f"{what} port must be 0-65535, got {number}")
    return host.strip("[]"), number


def parse_port_range(value: str) -> tuple[int, int]:
    """'20000-20999' -> (20000, 20999); at least two ports (RTP uses even ports)."""
    low, sep, high = value.partition("-")
    if not sep or not low.strip().isdigit() or not high.strip().isdigit():
        raise ConfigError(f"sip.rtp_ports must be LOW-HIGH, got {value!r}")
    first, last = int(low), int(high)
    if not 1024 <= first < last <= 65535:
        raise ConfigError(f"sip.rtp_ports must satisfy 1024 <= LOW < HIGH <= 65535, got {value!r}")
    return first, last


def _coerce(section: str, key: str, value: Any, default: Any) -> Any:
    name = f"{section}.{key}"
    if isinstance(default, bool):
        if isinstance(value, str):
            return value.lower() in ("1", "true", "yes", "on")
        return bool(value)
    if isinstance(default, int):
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name} must be an integer, got {value!r}") from None
    if isinstance(default, float):
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name} must be a number, got {value!r}") from None
    if not isinstance(value, str):
        raise ConfigError(f"{name} must be a string, got {value!r}")
    return value


def _apply(target: Any, section: str, values: Mapping[str, Any]) -> None:
    known = {f.name: f for f in fields(target)}
    for key, value in values.items():
        if key not in known:
            allowed = ", ".join(sorted(known))
            raise ConfigError(f"unknown key [{section}] {key}; known keys: {allowed}")
        setattr(target, key, _coerce(section, key, value, getattr(target, key)))


def _table_list(raw: Any, name: str) -> list[dict[str, Any]]:
    if raw is None:
        return []
    if not isinstance(raw, list) or not all(isinstance(x, dict) for x in raw):
        raise ConfigError(f"[[{name}]] must be an array of tables")
    return raw


def _project(raw: dict[str, Any]) -> Project:
    try:
        project = Project(**{k: str(v) for k, v in raw.items()})
    except TypeError as exc:
        raise ConfigError(
            f"[[projects]] needs id and token (and optionally signing_key): {exc}"
        ) from None
    if not project.id or not project.token:
        raise ConfigError("[[projects]] id and token must not be empty")
    return project


def _route(raw: dict[str, Any]) -> Route:
    try:
        route = Route(**{k: str(v) for k, v in raw.items()})
    except TypeError as exc:
        raise ConfigError(
            f"[[routes]] accepts number, swml, swml_url, context, project: {exc}"
        ) from None
    targets = [t for t in (route.swml, route.swml_url, route.context) if t]
    if len(targets) != 1:
        raise ConfigError(
            f"route {route.number!r} needs exactly one of swml, swml_url or context"
        )
    return route


TRUNK_STRINGS = ("name", "proxy", "transport", "username", "password", "realm", "from_number")


def _trunk(raw: dict[str, Any], environ: Mapping[str, str]) -> Trunk:
    name = raw.get("name")
    label = f"[[trunks]] {name!r}" if isinstance(name, str) and name else "[[trunks]]"
    known = {f.name for f in fields(Trunk)}
    for key in raw:
        if key not in known:
            raise ConfigError(f"unknown key {key!r} in {label}; known keys: "
                              f"{', '.join(sorted(known))}")
    for key in TRUNK_STRINGS:
        if key in raw and not isinstance(raw[key], str):
            raise ConfigError(f"{label} {key} must be a string, got {raw[key]!r}")
    for key in ("name", "proxy"):
        if not raw.get(key):
            raise ConfigError(f"{label} needs {key}")
    if "register" in raw and not isinstance(raw["register"], bool):
        raise ConfigError(f"{label} register must be true or false, got {raw['register']!r}")
    expires = raw.get("expires", 300)
    if isinstance(expires, bool) or not isinstance(expires, int) or not 1 <= expires <= 86400:
        raise ConfigError(f"{label} expires must be an integer 1-86400 (seconds), "
                          f"got {expires!r}")
    trunk = Trunk(**raw)
    env_name = f"{ENV_PREFIX}TRUNK_{trunk.name.upper()}_PASSWORD"
    trunk.password = environ.get(env_name, trunk.password)
    if not all(ch.isalnum() or ch in "-_." for ch in trunk.name):
        raise ConfigError(f"{label} name may hold only letters, digits, '-', '_' and '.'")
    if trunk.transport not in TRUNK_TRANSPORTS:
        raise ConfigError(f"{label} transport must be one of {', '.join(TRUNK_TRANSPORTS)}, "
                          f"got {trunk.transport!r}")
    try:
        trunk.host_port  # noqa: B018  (validates proxy)
    except ConfigError as exc:
        raise ConfigError(f"{label} proxy: {exc}") from None
    allow = raw.get("allow", [])
    if not isinstance(allow, list) or not all(isinstance(a, str) for a in allow):
        raise ConfigError(f'{label} allow must be a list of CIDR strings, e.g. ["192.0.2.0/24"]')
    for network in allow:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            raise ConfigError(f"{label} allow: {network!r} is not a CIDR network") from None
    if trunk.register and not trunk.username:
        raise ConfigError(f"{label} register = true needs username")
    if trunk.password and not trunk.username:
        raise ConfigError(f"{label} password needs username")
    return trunk


def load_config(
    path: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Build the Config: file, then CALLBOX_SECTION_KEY variables, then `overrides`.

    `overrides` uses dotted keys ("sip.listen") with None meaning "not given".
    """
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None

    config = Config()
    for key in raw:
        if key not in _SECTIONS and key not in ("projects", "routes", "trunks"):
            raise ConfigError(f"unknown section [{key}] in {path}")
    for section in _SECTIONS:
        values = raw.get(section, {})
        if not isinstance(values, dict):
            raise ConfigError(f"[{section}] must be a table")
        _apply(getattr(config, section), section, values)
    config.projects = [_project(p) for p in _table_list(raw.get("projects"), "projects")]
    config.routes = [_route(r) for r in _table_list(raw.get("routes"), "routes")]

    environ = os.environ if env is None else env
    config.trunks = [_trunk(t, environ) for t in _table_list(raw.get("trunks"), "trunks")]
    for section in _SECTIONS:
        target = getattr(config, section)
        prefix = f"{ENV_PREFIX}{section.upper()}_"
        values = {
            name[len(prefix):].lower(): value
            for name, value in environ.items()
            if name.startswith(prefix)
        }
        _apply(target, section, values)

    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        section, _, key = dotted.partition(".")
        _apply(getattr(config, section), section, {key: value})

    validate(config)
    return config


def validate_storage(storage: StorageConfig) -> None:
    if not storage.s3_endpoint:
        return
    if not storage.s3_endpoint.startswith(("http://", "https://")):
        raise ConfigError(f"storage.s3_endpoint must be an http(s) URL, "
                          f"got {storage.s3_endpoint!r}")
    for key in ("s3_bucket", "s3_access_key", "s3_secret_key", "s3_region"):
        if not getattr(storage, key):
            hint = " (or CALLBOX_STORAGE_S3_SECRET_KEY)" if key == "s3_secret_key" else ""
            raise ConfigError(f"storage.{key} must be set when storage.s3_endpoint is{hint}")
    if not 0 < storage.s3_retry_seconds <= 3600:
        raise ConfigError(f"storage.s3_retry_seconds must be > 0 and <= 3600, "
                          f"got {storage.s3_retry_seconds!r}")


def validate_database(database: DatabaseConfig) -> None:
    if database.url and not database.url.startswith(("postgresql://", "postgres://")):
        raise ConfigError("database.url must be a postgresql:// (or postgres://) URL, got "
                          f"{database.url.split('@')[-1]!r}")


def validate(config: Config) -> None:
    parse_host_port(config.sip.listen, "sip.listen")
    parse_port_range(config.sip.rtp_ports)
    parse_host_port(config.http.listen, "http.listen")
    if not 0 <= config.server.workers <= MAX_WORKERS:
        raise ConfigError(f"server.workers must be 0-{MAX_WORKERS} (0 = media in the main "
                          f"process), got {config.server.workers}")
    if config.http.plain_listen:
        parse_host_port(config.http.plain_listen, "http.plain_listen")
    if bool(config.http.tls_cert) != bool(config.http.tls_key):
        raise ConfigError("http.tls_cert and http.tls_key must be given together")
    if config.log.level.lower() not in ("debug", "info", "warning", "error"):
        raise ConfigError(
            f"log.level must be one of debug, info, warning, error, got {config.log.level!r}"
        )
    if config.ai.stt not in STT_ENGINES:
        raise ConfigError(
            f"ai.stt must be one of {', '.join(STT_ENGINES)}, got {config.ai.stt!r}"
        )
    if config.ai.base_url:
        if not config.ai.base_url.startswith(("http://", "https://")):
            raise ConfigError(f"ai.base_url must be an http(s) URL, got {config.ai.base_url!r}")
        if not config.ai.model:
            raise ConfigError("ai.model must be set when ai.base_url is (e.g. \"gpt-4o-mini\")")
    validate_storage(config.storage)
    validate_cluster(config.cluster)
    validate_database(config.database)
    ids = [p.id for p in config.projects]
    if len(ids) != len(set(ids)):
        raise ConfigError("[[projects]] ids must be unique")
    names = [t.name for t in config.trunks]
    if len(names) != len(set(names)):
        raise ConfigError("[[trunks]] names must be unique")
    for route in config.routes:
        if route.project and route.project not in ids:
            raise ConfigError(f"route {route.number!r} names unknown project {route.project!r}")


def validate_cluster(cluster: ClusterConfig) -> None:
    node_id = cluster.node_id
    if node_id and not (len(node_id) <= 64
                        and all(ch.isascii() and (ch.isalnum() or ch in "-_.") for ch in node_id)):
        raise ConfigError(f"cluster.node_id may hold only letters, digits, '-', '_' and '.' "
                          f"(at most 64), got {node_id!r}")
    if cluster.bus_url:
        check_bus_url(cluster.bus_url)
    if not 0 <= cluster.drain_seconds <= MAX_DRAIN_SECONDS:
        raise ConfigError(f"cluster.drain_seconds must be 0-{MAX_DRAIN_SECONDS}, "
                          f"got {cluster.drain_seconds}")


def check_bus_url(url: str) -> None:
    """A NATS server URL: nats://HOST[:PORT] (credentials allowed, nothing after the port)."""
    what = f'cluster.bus_url must be a NATS URL such as "nats://127.0.0.1:4222", got {url!r}'
    parsed = urllib.parse.urlsplit(url)
    try:
        port = parsed.port
    except ValueError:
        raise ConfigError(what) from None
    if (parsed.scheme not in BUS_SCHEMES or not parsed.hostname or port == 0
            or parsed.path not in ("", "/") or parsed.query or parsed.fragment):
        raise ConfigError(what)
