"""What every calling command handler shares: its signature, its result and its refusal.

A handler gets the session that sent the command, the call's `CallEntry` and the params, and
returns a `result` (``ok(...)``) or raises `CommandError` with the code to answer ("400" with a
message naming the wrong field, "404", "410").
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from callbox.wire import relay as wire

if TYPE_CHECKING:
    from callbox.server.relay.calls import CallEntry
    from callbox.server.relay.session import Session

# How long `calling.play` / `calling.record` / `calling.end` / `calling.play_and_collect` wait
# for the play to start (its audio fetched), the recording to start (after the prompt) or the
# BYE to be answered before they answer anyway; events report the rest. The official client
# gives up on a request after 10 s, and then drops its socket.
REPLY_WITHIN = 5.0

Result = dict[str, Any]
T = TypeVar("T")
Handler = Callable[["Session", "CallEntry", Mapping[str, Any]], Awaitable[Result]]
# A command with no call_id (calling.dial): it gets only the session and the params.
SessionHandler = Callable[["Session", Mapping[str, Any]], Awaitable[Result]]


class CommandError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def bad_params(error: Exception) -> CommandError:
    """A "400" whose message is the parameter error's (it names the field)."""
    return CommandError(wire.CODE_BAD_REQUEST, str(error))


def call_gone(entry: CallEntry) -> CommandError:
    return CommandError(wire.CODE_GONE, f"call {entry.call.id} has ended")


def find_control(params: Mapping[str, Any], kind: str,
                 lookup: Callable[[str], T | None]) -> T:
    """The running operation the command's `control_id` names; a "404" naming it otherwise."""
    control_id = params.get("control_id")
    control = lookup(control_id) if isinstance(control_id, str) else None
    if control is None:
        raise CommandError(wire.CODE_NOT_FOUND,
                           f"no {kind} with control_id {control_id!r} on this call")
    return control


def ok(message: str, **extra: Any) -> Result:
    return wire.command_result(wire.CODE_OK, message, **extra)
