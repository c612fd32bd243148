"""Kamailio as a load balancer in front of callbox nodes: the repository's own example config.

:func:`start_dispatcher` runs ``deploy/kamailio/callbox-dispatcher.cfg`` as it is shipped, its
values given with ``-A`` defines (listen address, the dispatcher list it writes for `nodes`,
a short OPTIONS probe interval and node answer timeout), until the ``async with`` block ends.

:meth:`Dispatcher.states` reads each node's state (active, inactive, probed) with
``kamcmd dispatcher.list``. The config logs one line per request (``REQ <method> ...
src=<ip>:<port> ci=<Call-ID>``), one per call sent to a node (``CALL ci=<Call-ID> to node
sip:<host>:<port>``) and one per failover; :class:`Dispatcher` reads them back.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import new_workdir
from .kamailio import MODULES_DIR, run_kamailio
from .ports import LOOPBACK, free_udp_port

__all__ = ["CONFIG_PATH", "Dispatcher", "LoggedRequest", "start_dispatcher"]

CONFIG_PATH = Path(__file__).resolve().parents[2] / "deploy" / "kamailio" / "callbox-dispatcher.cfg"

_REQ = re.compile(r"REQ (\S+) ru=(\S+) src=(\S+):(\d+) ci=(\S+) cs=(\d+)")
_CALL = re.compile(r"CALL ci=(\S+) to node sip:(\S+)")
_DEST = re.compile(r"URI: sip:(\S+)\s+FLAGS: (\w+)")
_FAILOVER = re.compile(r"FAILOVER ci=(\S+) node sip:(\S+) answered (\S+)")


@dataclass(frozen=True)
class LoggedRequest:
    method: str
    uri: str
    source: str  # "host:port" it came from
    call_id: str


@dataclass
class Dispatcher:
    host: str
    port: int
    workdir: Path
    process: asyncio.subprocess.Process

    @property
    def target(self) -> str:
        return f"{self.host}:{self.port}"

    def log(self) -> str:
        try:
            return (self.workdir / "kamailio.log").read_text(errors="replace")
        except OSError:
            return ""

    def requests(self, method: str | None = None) -> list[LoggedRequest]:
        """The requests Kamailio received, each once (a retransmission, same Call-ID, CSeq
        and method, is not counted again)."""
        found: list[LoggedRequest] = []
        seen: set[tuple[str, str, str]] = set()
        for match in _REQ.finditer(self.log()):
            key = (match[1], match[5], match[6])
            if key in seen or (method is not None and match[1] != method):
                continue
            seen.add(key)
            found.append(LoggedRequest(match[1], match[2], f"{match[3]}:{match[4]}", match[5]))
        return found

    def routed(self) -> dict[str, list[str]]:
        """Call-ID -> the nodes (``host:port``) Kamailio sent its INVITE to, in order."""
        nodes: dict[str, list[str]] = {}
        for match in _CALL.finditer(self.log()):
            nodes.setdefault(match[1], []).append(match[2])
        return nodes

    async def states(self) -> dict[str, str]:
        """Node (``host:port``) -> its dispatcher flags: ``A`` active or ``I`` inactive, then
        ``P`` when probed, ``X`` when not (``kamcmd dispatcher.list`` over the ctl socket)."""
        process = await asyncio.create_subprocess_exec(
            "kamcmd", "-s", f"unix:{self.workdir / 'ctl'}", "dispatcher.list",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(process.communicate(), 10)
        assert process.returncode == 0, f"kamcmd dispatcher.list: {err.decode(errors='replace')}"
        return dict(_DEST.findall(out.decode(errors="replace")))

    def failovers(self) -> list[tuple[str, str, str]]:
        """(Call-ID, node, its answer) for each INVITE moved on to the next node."""
        return [(m[1], m[2], m[3]) for m in _FAILOVER.finditer(self.log())]


def dispatcher_list(nodes: Sequence[str]) -> str:
    """Dispatcher set 1 with one line per node (``host:port``)."""
    for node in nodes:
        if not re.fullmatch(r"[\w.-]+:\d+", node):
            raise ValueError(f"a node is host:port, got {node!r}")
    return "".join(f"1 sip:{node} 0 0\n" for node in nodes)


@contextlib.asynccontextmanager
async def start_dispatcher(nodes: Sequence[str], *, host: str = LOOPBACK,
                           ping_interval: int = 1, answer_timeout_ms: int = 1500,
                           ) -> AsyncIterator[Dispatcher]:
    """The example config on a free UDP port, spreading calls over `nodes` (``host:port``);
    probes them with OPTIONS every `ping_interval` s, fails an INVITE over to the next node
    when one has not answered it within `answer_timeout_ms`."""
    workdir = new_workdir("kamailio-dispatcher")
    port = free_udp_port(host)
    list_path = workdir / "dispatcher.list"
    list_path.write_text(dispatcher_list(nodes))
    defines = [f"LISTEN=udp:{host}:{port}", f'DISPATCHER_LIST="{list_path}"',
               f'MODULES_DIR="{MODULES_DIR}"', f"DS_PING_INTERVAL={ping_interval}",
               f"NODE_ANSWER_TIMEOUT={answer_timeout_ms}",
               f'CTL_SOCKET="unix:{workdir / "ctl"}"']
    async with run_kamailio(CONFIG_PATH, workdir, port=port, host=host, defines=defines,
                            ready=(workdir / "ctl").exists) as process:
        yield Dispatcher(host, port, workdir, process)
