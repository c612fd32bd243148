"""The `callbox` command: serve | call | demo | swaig.

Every error a user can cause is one line on stderr that says what is wrong, and exit status 2
(bad arguments, bad configuration, an address that cannot be used). A call that the other side
refuses is exit status 1 (see `callbox call`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from typing import NoReturn

from callbox import __version__

log = logging.getLogger("callbox")


EVENT_LOOPS = ("auto", "uvloop", "asyncio")
EVENT_LOOP_ENV = "CALLBOX_EVENT_LOOP"
USAGE_ERROR = 2


class CliError(Exception):
    """A user's mistake: printed as one line after the command's name, exit status 2."""


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and a pointer to --help), not the usage text."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE_ERROR, f"{self.prog}: {message} (see '{self.prog} --help')\n")


def use_event_loop(choice: str = "auto") -> None:
    """`auto`: uvloop when importable (about 4x cheaper per UDP packet than the stdlib loop);
    `uvloop`: uvloop or fail; `asyncio`: the stdlib loop (for comparison)."""
    if choice == "asyncio":
        return
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise CliError("--loop uvloop, but uvloop is not installed") from None
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def _setup_logging(level: str) -> None:
    # the format names none of these: a record need not look them up (a few per call); nor
    # the caller's file and line (the logging HOWTO's "Optimization": `_srcfile = None`)
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    logging._srcfile = None
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )


# -- serve --------------------------------------------------------------------------------

async def _serve(args: argparse.Namespace) -> int:
    from callbox.server import collector
    from callbox.server.app import Platform
    from callbox.server.config import ConfigError, load_config
    from callbox.server.database import DatabaseUnavailable

    try:
        config = load_config(args.config, overrides={
            "sip.listen": args.sip_listen, "sip.rtp_ports": args.rtp_ports,
            "server.workers": args.workers,
            "http.listen": args.http_listen, "http.public_url": args.public_url,
            "storage.data_dir": args.data_dir, "log.level": args.log_level,
        })
    except ConfigError as exc:
        raise CliError(f"configuration error: {exc}") from None
    _setup_logging(config.log.level)
    try:
        platform = Platform(config)
    except ValueError as exc:  # a value the loader could not check on its own
        raise CliError(f"configuration error: {exc}") from None
    try:
        await platform.start()
    except DatabaseUnavailable as exc:
        await platform.stop()
        raise CliError(str(exc)) from None
    except OSError as exc:
        await platform.stop()
        raise CliError(f"cannot listen: {exc}") from None
    print(platform.banner(), flush=True)
    collector.settle()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    stop.clear()  # a second signal ends the drain
    await platform.drain(config.cluster.drain_seconds, cut_short=stop)
    log.info("shutting down")
    await platform.stop()
    return 0


# -- call ---------------------------------------------------------------------------------

async def _call(args: argparse.Namespace) -> int:
    from callbox.caller import (
        parse_call_target,
        parse_dtmf_schedule,
        parse_local_host,
        place_call,
    )
    from callbox.server.media.priority import raise_priority

    try:
        target = parse_call_target(args.uri)
        schedule = parse_dtmf_schedule(args.dtmf or "")
        local_host = parse_local_host(args.local_host)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    if args.hangup_after is not None and not 0 < args.hangup_after < 86400:
        raise CliError(f"--hangup-after must be a number of seconds above 0, "
                       f"got {args.hangup_after}")
    play = args.play
    if play and "://" not in play and ":" not in play.split("/")[0] and not Path(play).exists():
        raise CliError(f"--play file not found: {play}")
    record_heard = Path(args.record_heard) if args.record_heard else None
    if record_heard is not None and not record_heard.parent.is_dir():
        raise CliError(f"--record-heard: no such directory: {record_heard.parent}")
    family = socket.AF_INET6 if ":" in local_host else socket.AF_INET
    try:
        found = await asyncio.get_running_loop().getaddrinfo(
            target.host, target.port or 5060, family=family, type=socket.SOCK_DGRAM)
    except OSError as exc:
        raise CliError(f"cannot resolve {target.host!r} in {args.uri!r}: {exc}") from None
    # the SIP layer sends to addresses, not names: call the address the name resolved to
    resolved = dataclasses.replace(target, host=str(found[0][4][0]))
    raise_priority()  # the audio it streams has a deadline every 20 ms
    result = await place_call(
        str(resolved), play=play, dtmf=schedule, hangup_after=args.hangup_after,
        record_heard=record_heard, local_host=local_host,
    )
    if result.status >= 300:
        print(f"call failed: {result.status} {result.reason}", file=sys.stderr)
        return 1
    print(f"call answered; lasted {result.answered_seconds:.1f} s, hung up by "
          f"{result.hung_up_by}; RTP sent {result.packets_sent}, received "
          f"{result.packets_received}; digits sent: {''.join(result.digits_sent) or 'none'}")
    if args.record_heard:
        print(f"heard audio ({result.heard_seconds:.1f} s) saved to {args.record_heard}")
    return 0


# -- demo ---------------------------------------------------------------------------------

async def _demo(args: argparse.Namespace) -> int:
    from callbox.demo import run_demo

    _setup_logging(args.log_level)
    return await run_demo(Path(args.data_dir))


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="callbox", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"callbox {__version__}")
    commands = parser.add_subparsers(dest="command", required=True,
                                     metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the platform")
    serve.add_argument("--config", help="TOML configuration file (see README)")
    serve.add_argument("--sip-listen", help="SIP UDP and TCP HOST:PORT (sip.listen)")
    serve.add_argument("--rtp-ports", help="RTP port range LOW-HIGH (sip.rtp_ports)")
    serve.add_argument("--workers", type=int,
                       help="media worker processes, 0 = media in this process (server.workers; "
                            "default: one per core)")
    serve.add_argument("--http-listen", help="HTTPS/WSS HOST:PORT (http.listen)")
    serve.add_argument("--public-url", help="base URL for recording links (http.public_url)")
    serve.add_argument("--data-dir", help="where recordings and state live (storage.data_dir)")
    serve.add_argument("--log-level", help="debug, info, warning or error (log.level)")
    serve.add_argument("--loop", choices=EVENT_LOOPS,
                       help=f"event loop: auto (uvloop when installed; default), uvloop or "
                            f"asyncio (the stdlib loop); also ${EVENT_LOOP_ENV}")
    serve.set_defaults(run=_serve)

    call = commands.add_parser("call", help="place a SIP call from the command line")
    call.add_argument("uri", help="e.g. sip:prompt@127.0.0.1:5060")
    call.add_argument("--play", help="audio file (WAV/MP3) or media URL (say:TEXT, silence:S)")
    call.add_argument("--dtmf", help='digits to send, DIGITS@SECONDS after answer: "#@3.5"')
    call.add_argument("--hangup-after", type=float, help="hang up after N seconds")
    call.add_argument("--record-heard", help="save what the caller heard to this WAV file")
    call.add_argument("--local-host", default="127.0.0.1", help="address to bind and offer")
    call.set_defaults(run=_call)

    demo = commands.add_parser("demo", help="start the platform and place a demo call")
    demo.add_argument("--data-dir", default="./callbox-data", help="where the demo keeps files")
    demo.add_argument("--log-level", default="warning")
    demo.set_defaults(run=_demo)

    from callbox.swaig_cli import add_parser as add_swaig_parser

    add_swaig_parser(commands)  # swaig list|invoke: a live call's agent functions, by hand
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "call":
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    name = f"callbox {args.command}"
    choice = getattr(args, "loop", None) or os.environ.get(EVENT_LOOP_ENV) or "auto"
    try:
        if choice not in EVENT_LOOPS:
            raise CliError(f"{EVENT_LOOP_ENV} must be one of {', '.join(EVENT_LOOPS)}, "
                           f"got {choice!r}")
        use_event_loop(choice)
        with contextlib.suppress(KeyboardInterrupt):
            code: int = asyncio.run(args.run(args))
            return code
        return 130
    except CliError as exc:
        return _fail(name, str(exc))
    except OSError as exc:  # the machine refused something we asked (a port, a directory)
        log.debug("%s failed", name, exc_info=True)
        return _fail(name, f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename
                                                        else ""))


def _fail(name: str, message: str) -> int:
    print(f"{name}: {message}", file=sys.stderr)
    return USAGE_ERROR


if __name__ == "__main__":
    sys.exit(main())
