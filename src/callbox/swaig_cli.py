"""`callbox swaig list|invoke`: the SWAIG functions of a live call's AI agent, by hand.

    callbox swaig list                      # live calls of the project
    callbox swaig list --call CALL_ID       # the functions of the call's ai verb
    callbox swaig invoke --call CALL_ID --function stop_recording --args '{}'

It talks to the running platform's HTTPS API (`/api/callbox/calls/...`) with the project's id
and token (HTTP Basic). The platform's certificate is self-signed by default, so HTTPS needs
either `--ca-file` (e.g. the `TLS cert` path `callbox serve` prints) or an explicit
`--insecure`. Options fall back to CALLBOX_URL, CALLBOX_PROJECT, CALLBOX_TOKEN.

Exit status: 0 done; 1 the platform refused or the function failed; 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
from typing import Any
from urllib.parse import quote

import aiohttp

from callbox.wire.basic_auth import basic_auth_header

DEFAULT_URL = "https://127.0.0.1:8443"
TIMEOUT_SECONDS = 90.0  # an invocation waits for a turn in progress and for spoken replies


def add_parser(commands: Any) -> None:
    """Register `swaig` on the `callbox` command's subparsers."""
    swaig = commands.add_parser(
        "swaig", help="list or invoke a live call's AI agent functions",
        description="List or invoke the SWAIG functions of a live call's ai verb, through the "
                    "platform's HTTPS API; invoked functions' actions run on the call.")
    actions = swaig.add_subparsers(dest="swaig_command", required=True, metavar="ACTION")
    for name, text in (("list", "list live calls, or a call's functions (--call)"),
                       ("invoke", "invoke a function and run its actions on the call")):
        sub = actions.add_parser(name, help=text)
        sub.add_argument("--call", required=name == "invoke", help="the call id")
        if name == "invoke":
            sub.add_argument("--function", required=True, help="the function's name")
            sub.add_argument("--args", default="{}", help="arguments as a JSON object")
        sub.add_argument("--url", default=os.environ.get("CALLBOX_URL", DEFAULT_URL),
                         help="the platform's HTTPS URL (CALLBOX_URL; default %(default)s)")
        sub.add_argument("--project", default=os.environ.get("CALLBOX_PROJECT"),
                         help="project id (CALLBOX_PROJECT)")
        sub.add_argument("--token", default=os.environ.get("CALLBOX_TOKEN"),
                         help="project token (CALLBOX_TOKEN)")
        sub.add_argument("--ca-file", help="CA certificate (PEM) to verify the platform with")
        sub.add_argument("--insecure", action="store_true",
                         help="do not verify the platform's TLS certificate")
        sub.set_defaults(run=run)


def _fail(message: str, code: int = 2) -> int:
    print(f"callbox swaig: {message}", file=sys.stderr)
    return code


def _ssl_context(args: argparse.Namespace) -> ssl.SSLContext | bool:
    """What aiohttp's `ssl=` gets: a context (--ca-file), False (--insecure), True (plain)."""
    if not args.url.startswith("https://"):
        return True  # plain HTTP: nothing to verify
    if args.ca_file:
        try:
            return ssl.create_default_context(cafile=args.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"cannot load --ca-file {args.ca_file}: {exc}") from None
    if args.insecure:
        return False
    raise ValueError("HTTPS needs --ca-file CERT (the 'TLS cert' callbox serve prints) or "
                     "--insecure to skip verification")


async def run(args: argparse.Namespace) -> int:
    if not args.url.startswith(("http://", "https://")):
        return _fail(f"--url must be http(s)://HOST:PORT, got {args.url!r}")
    if not args.project or not args.token:
        return _fail("--project and --token (or CALLBOX_PROJECT / CALLBOX_TOKEN) are required")
    try:
        ssl_option = _ssl_context(args)
    except ValueError as exc:
        return _fail(str(exc))
    base = args.url.rstrip("/") + "/api/callbox/calls"
    if args.swaig_command == "invoke":
        try:
            call_args = json.loads(args.args)
        except ValueError as exc:
            return _fail(f"--args is not JSON: {exc}")
        if not isinstance(call_args, dict):
            return _fail("--args must be a JSON object, e.g. '{\"reason\": \"test\"}'")
        method, url = "POST", f"{base}/{quote(args.call, safe='')}/swaig"
        body: dict[str, Any] | None = {"function": args.function, "args": call_args}
    elif args.call:
        method, url, body = "GET", f"{base}/{quote(args.call, safe='')}/swaig", None
    else:
        method, url, body = "GET", base, None
    headers = {"Authorization": basic_auth_header(args.project, args.token)}
    timeout = aiohttp.ClientTimeout(total=TIMEOUT_SECONDS)
    try:
        async with aiohttp.ClientSession(timeout=timeout, headers=headers) as session, \
                session.request(method, url, json=body, ssl=ssl_option) as response:
            text = await response.text()
            status = response.status
    except aiohttp.ClientConnectorCertificateError as exc:
        return _fail(f"the platform's certificate was not accepted: {exc}", 1)
    except (aiohttp.ClientError, TimeoutError) as exc:
        return _fail(f"cannot reach {args.url}: {exc or type(exc).__name__}", 1)
    try:
        reply = json.loads(text)
    except ValueError:
        return _fail(f"HTTP {status}: {text[:200]}", 1)
    if status != 200:
        errors = reply.get("errors") if isinstance(reply, dict) else None
        message = errors[0].get("message") if errors else text[:200]
        return _fail(f"HTTP {status}: {message}", 1)
    print(json.dumps(reply, indent=2))
    if args.swaig_command == "invoke" and reply.get("error"):
        print(f"callbox swaig: {args.function} failed: {reply['error']}", file=sys.stderr)
        return 1
    return 0
