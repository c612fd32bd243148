"""Kamailio (Debian ``kamailio`` 5.6) as a carrier: a registrar with digest authentication.

:func:`start_kamailio` writes a config for a free loopback UDP port and runs kamailio in the
foreground until the ``async with`` block ends:

- REGISTER: ``www`` digest auth (``pv_www_authenticate`` with the one password given, realm =
  the To domain), then ``save("location")`` into usrloc in memory (``db_mode 0``). As the stock
  kamailio.cfg does for a client behind NAT, a REGISTER over TCP (it comes from an ephemeral
  port, not the contact's) has its source saved as the binding's ``received`` address
  (``fix_nated_register``): calls to the contact then go back on the registering connection,
  and so do the in-dialog requests (the callee's Contact gets an ``alias`` param naming that
  connection, ``set_contact_alias``, which ``handle_ruri_alias`` follows).
- INVITE: ``proxy`` digest auth (realm = the From domain), then, with Record-Route, a number
  given in ``routes`` (request-URI user -> ``host:port``) is relayed there over UDP, anything else
  to the registered contact (``lookup("location")``; 404 when nobody is registered).
- In-dialog requests follow the route set.
- Every request is logged (``REQ <method> ...`` with the Expires header), so a test counts
  REGISTERs from Kamailio's side (:meth:`Kamailio.requests`; retransmissions count once), and
  sees which transport each came over.

:meth:`Kamailio.contacts` reads the bindings with ``kamcmd ul.dump`` over the ``ctl`` socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import new_workdir
from .ports import LOOPBACK, free_port, udp_port_bound

__all__ = ["Kamailio", "kamailio_binary", "run_kamailio", "start_kamailio"]

MODULES_DIR = "/usr/lib/x86_64-linux-gnu/kamailio/modules/"
START_TIMEOUT = 15.0

CONFIG = """#!KAMAILIO
debug=2
log_stderror=yes
children=2
tcp_children=1
disable_tcp=no
auto_aliases=no
listen=udp:{host}:{port}
listen=tcp:{host}:{port}
alias="{host}:{port}"
mpath="{modules}"

loadmodule "kex.so"
loadmodule "corex.so"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "textops.so"
loadmodule "siputils.so"
loadmodule "xlog.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
loadmodule "auth.so"
loadmodule "ctl.so"
loadmodule "nathelper.so"

modparam("usrloc", "db_mode", 0)
modparam("registrar", "default_expires", 300)
modparam("registrar", "min_expires", 1)
modparam("ctl", "binrpc", "unix:{ctl}")
modparam("rr", "append_fromtag", 1)
modparam("nathelper|registrar", "received_avp", "$avp(RECEIVED)")

request_route {{
    xlog("L_NOTICE", "REQ $rm ru=$ru src=$pr:$si:$sp exp=$hdr(Expires) auth=$au cs=$cs ci=$ci\\n");
    if (!mf_process_maxfwd_header("10")) {{
        sl_send_reply("483", "Too Many Hops");
        exit;
    }}
    if (has_totag()) {{
        if (loose_route()) {{
            if (!isdsturiset()) {{
                handle_ruri_alias();
            }}
            t_relay();
            exit;
        }}
        if (is_method("ACK")) {{
            if (t_check_trans()) {{
                t_relay();
            }}
            exit;
        }}
        sl_send_reply("404", "Not Here");
        exit;
    }}
    if (is_method("CANCEL")) {{
        if (t_check_trans()) {{
            t_relay();
        }}
        exit;
    }}
    if (is_method("REGISTER")) {{
        if (!pv_www_authenticate("$td", "{password}", "0")) {{
            www_challenge("$td", "0");
            exit;
        }}
        if (proto == TCP) {{
            fix_nated_register();
        }}
        if (!save("location")) {{
            sl_reply_error();
        }}
        exit;
    }}
    if (is_method("INVITE")) {{
        if (!pv_proxy_authenticate("$fd", "{password}", "0")) {{
            proxy_challenge("$fd", "0");
            exit;
        }}
        consume_credentials();
        record_route();
{routes}
        if (!lookup("location")) {{
            sl_send_reply("404", "Not Registered");
            exit;
        }}
        t_on_reply("FROM_CALLEE");
        t_relay();
        exit;
    }}
    sl_send_reply("405", "Method Not Allowed");
}}

onreply_route[FROM_CALLEE] {{
    if (proto == TCP) {{
        set_contact_alias();
    }}
}}
"""

_REQ = re.compile(r"REQ (\S+) ru=(\S+) src=(\w+):(\S+) exp=(\S*) auth=(\S*) "
                  r"cs=(\S+) ci=(\S+)")


@dataclass
class LoggedRequest:
    method: str
    uri: str
    source: str
    expires: str
    authorized: bool
    transport: str  # "udp" or "tcp": how it reached Kamailio


@dataclass
class Kamailio:
    host: str
    port: int
    password: str
    workdir: Path
    process: asyncio.subprocess.Process

    @property
    def target(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "kamailio.log"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def requests(self, method: str | None = None) -> list[LoggedRequest]:
        """The requests Kamailio received, in order (from its log), each once: a
        retransmission (same Call-ID, CSeq and method) is not counted again."""
        found = []
        seen: set[tuple[str, str, str]] = set()
        for match in _REQ.finditer(self.log()):
            key = (match[1], match[7], match[8])
            if key in seen:
                continue
            seen.add(key)
            logged = LoggedRequest(match[1], match[2], match[4], match[5],
                                   match[6] not in ("", "<null>"), match[3])
            if method is None or logged.method == method:
                found.append(logged)
        return found

    async def contacts(self, user: str) -> list[str]:
        """The contact URIs registered for ``user`` (``kamcmd ul.dump``)."""
        process = await asyncio.create_subprocess_exec(
            "kamcmd", "-s", f"unix:{self.workdir / 'ctl'}", "ul.dump",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(process.communicate(), 10)
        assert process.returncode == 0, f"kamcmd ul.dump failed: {err.decode(errors='replace')}"
        text = out.decode(errors="replace")
        contacts: list[str] = []
        for block in re.split(r"\n\s*AoR:\s*", "\n" + text)[1:]:
            aor = block.split("\n", 1)[0].strip()
            if aor == user or aor.startswith(f"{user}@"):
                contacts += re.findall(r"Address:\s*(\S+)", block)
        return contacts


def number_routes(routes: Mapping[str, str]) -> str:
    """The config lines relaying an INVITE for each number to its address."""
    for number, address in routes.items():
        if not re.fullmatch(r"\+?[0-9]+", number) or not re.fullmatch(r"[\w.:\[\]-]+", address):
            raise ValueError(f"bad route {number!r} -> {address!r}")
    return "\n".join(
        f'        if ($rU == "{number}") {{ $du = "sip:{address}"; t_relay(); exit; }}'
        for number, address in routes.items())


def kamailio_binary() -> str:
    binary = shutil.which("kamailio") or "/usr/sbin/kamailio"
    if not Path(binary).exists():
        raise RuntimeError("kamailio is not installed (Debian package kamailio)")
    return binary


@contextlib.asynccontextmanager
async def run_kamailio(config: Path, workdir: Path, *, port: int, host: str = LOOPBACK,
                       defines: Sequence[str] = (),
                       ready: Callable[[], bool] = lambda: True,
                       ) -> AsyncIterator[asyncio.subprocess.Process]:
    """Kamailio in the foreground with `config` (and ``-A`` `defines`), logging to
    ``workdir/kamailio.log``: yields once it listens on UDP `port` and `ready()` holds;
    stopped (SIGTERM, then SIGKILL) at the end."""
    log_path = workdir / "kamailio.log"
    command = [kamailio_binary(), "-f", str(config), "-P", str(workdir / "kamailio.pid"),
               "-Y", str(workdir), "-DD", "-E", "-w", str(workdir)]
    for define in defines:
        command += ["-A", define]
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            *command, stdout=log, stderr=log, start_new_session=True)
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT
        while not (udp_port_bound(port, host) and ready()):
            if process.returncode is not None or loop.time() > deadline:
                text = log_path.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"kamailio did not start:\n{text}")
            await asyncio.sleep(0.05)
        yield process
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()
        # Its main process ends its children, but a TCP child was once seen to outlive it (its
        # main's pipes closed): whatever is left of its process group goes too.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


@contextlib.asynccontextmanager
async def start_kamailio(*, password: str, host: str = LOOPBACK,
                         routes: Mapping[str, str] | None = None,
                         tcp_lifetime: int | None = None) -> AsyncIterator[Kamailio]:
    """Kamailio as registrar + authenticating proxy on a free port; stopped at the end.
    `routes` sends INVITEs for a number (request-URI user) to a ``host:port`` over UDP;
    `tcp_lifetime`: seconds an idle TCP connection lives (Kamailio's default: 120)."""
    workdir = new_workdir("kamailio")
    port = free_port(host)  # UDP and TCP
    config = workdir / "kamailio.cfg"
    text = CONFIG.format(host=host, port=port, modules=MODULES_DIR, ctl=workdir / "ctl",
                         password=password, routes=number_routes(routes or {}))
    if tcp_lifetime is not None:
        text = text.replace("\ndisable_tcp=no\n",
                            f"\ndisable_tcp=no\ntcp_connection_lifetime={tcp_lifetime}\n")
    config.write_text(text)
    async with run_kamailio(config, workdir, port=port, host=host,
                            ready=(workdir / "ctl").exists) as process:
        yield Kamailio(host, port, password, workdir, process)
