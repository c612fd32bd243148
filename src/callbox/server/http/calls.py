"""Live calls over HTTP: list them, and list / invoke the SWAIG functions of a call's `ai` verb.

All need a project's credentials (HTTP Basic, project id and token, as the REST API), and a
project sees only its own calls (another project's call answers 404, like an unknown one).

- `GET  /api/callbox/calls` -> `{"data": [{"call_id", "from", "to", "direction", "state",
  "peer_call_id", "ai"}]}` (`peer_call_id`: the call it is bridged to, else null)
- `GET  /api/callbox/calls/{call_id}/swaig` -> `{"call_id", "functions": [...]}`
- `POST /api/callbox/calls/{call_id}/swaig` `{"function": NAME, "args": {...}}` -> the SWAIG
  reply and what was executed: `{"call_id", "function", "args", "reply", "error", "spoken",
  "executed": [{"action", "status", "detail"?}]}`. A failed webhook is 200 with `error` set
  (the call goes on, as when the model calls it); 404 unknown call or function; 409 when the
  call has no running `ai` verb.

`callbox swaig list|invoke` is the command-line client of these.
"""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING, Final

from aiohttp import web

from callbox.server.ai.conversation import Conversation, ConversationEnded, active_conversation
from callbox.server.http.auth import require_project
from callbox.server.http.bodies import read_json_object
from callbox.server.http.context import services_of
from callbox.server.http.errors import json_error

if TYPE_CHECKING:
    from callbox.server.call import Call
    from callbox.server.config import Project

CALLS_PATH: Final = "/api/callbox/calls"
MAX_BODY_BYTES: Final = 64 * 1024


def add_call_routes(app: web.Application) -> None:
    app.router.add_get(CALLS_PATH, list_calls)
    app.router.add_get(CALLS_PATH + "/{call_id}/swaig", list_functions)
    app.router.add_post(CALLS_PATH + "/{call_id}/swaig", invoke_function)


async def list_calls(request: web.Request) -> web.Response:
    project = require_project(request)
    calls = [c for c in services_of(request).calls.values() if _owns(project, c)]
    return web.json_response({"data": [{
        "call_id": call.id, "from": call.from_user, "to": call.to_user,
        "direction": call.direction, "state": str(call.state), "peer_call_id": call.peer_id,
        "ai": active_conversation(call.id) is not None,
    } for call in calls]})


async def list_functions(request: web.Request) -> web.Response:
    project = require_project(request)
    call = _own_call(request, project)
    conversation = _conversation(call)
    return web.json_response({"call_id": call.id, "functions": conversation.describe()})


async def invoke_function(request: web.Request) -> web.Response:
    project = require_project(request)
    call = _own_call(request, project)
    body = await read_json_object(
        request, MAX_BODY_BYTES, '{"function": NAME, "args": {...}}')
    name = body.get("function")
    args = body.get("args", {})
    if not isinstance(name, str) or not name:
        raise json_error(web.HTTPBadRequest, "invalid_parameter",
                     "`function` (the SWAIG function's name) is required",
                     attribute="function")
    if not isinstance(args, dict):
        raise json_error(web.HTTPBadRequest, "invalid_parameter",
                     "`args` must be a JSON object of the function's arguments",
                     attribute="args")
    conversation = _conversation(call)
    if name not in conversation.functions:
        known = ", ".join(conversation.functions) or "none"
        raise json_error(web.HTTPNotFound, "not_found",
                     f"the call's ai verb has no function {name!r}; it has: {known}",
                     attribute="function")
    try:
        result = await conversation.invoke(name, args)
    except ConversationEnded as exc:
        raise json_error(web.HTTPConflict, "no_ai", f"cannot invoke {name}: {exc}") from None
    return web.json_response({"call_id": call.id, **result.to_json()})


# -- helpers --------------------------------------------------------------------------------


def _owns(project: Project, call: Call) -> bool:
    return hmac.compare_digest(call.project_id.encode(), project.id.encode())


def _own_call(request: web.Request, project: Project) -> Call:
    call = services_of(request).calls.get(request.match_info["call_id"])
    if call is None or not _owns(project, call):
        raise json_error(web.HTTPNotFound, "not_found", "no such live call")
    return call


def _conversation(call: Call) -> Conversation:
    conversation = active_conversation(call.id)
    if conversation is None:
        raise json_error(web.HTTPConflict, "no_ai",
                     f"call {call.id} has no running ai verb (no agent is talking on it)")
    return conversation
