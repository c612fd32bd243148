"""SWML recording verbs: record (foreground), record_call (background), stop_record_call."""

from __future__ import annotations

import logging
from typing import Any

from callbox.server.recording.engine import Recording, RecordingError
from callbox.server.recording.machine import RecState
from callbox.server.swml.runner import SwmlError, SwmlRunner, verb
from callbox.wire.recording import EntryPoint, RecordParamError, RecordParams

log = logging.getLogger(__name__)


def _params(verb_name: str, params: Any) -> dict[str, Any]:
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise SwmlError(f"{verb_name} takes an object, got {params!r}")
    return params


async def _start(runner: SwmlRunner, verb_name: str, params: dict[str, Any],
                 entry: EntryPoint) -> Recording | None:
    """Validate and start a recording; a bad parameter is logged and nothing starts."""
    try:
        settings = RecordParams.parse(params, entry)
        runner.call.answer()
        return await runner.recordings().start_recording(
            runner.call, settings, control_id=params.get("control_id"),
            project_id=runner.call.project_id,
        )
    except (RecordParamError, RecordingError) as exc:
        log.warning("call %s: %s: %s", runner.call.id, verb_name, exc)
        return None


@verb("record")
async def record(runner: SwmlRunner, params: Any) -> None:
    """Record in the foreground: the script waits until the recording ends."""
    runner.vars.update(record_url="", record_result="failed")
    recording = await _start(runner, "record", _params("record", params), "swml_record")
    if recording is None:
        return
    event = await recording.done
    runner.vars["record_url"] = event.get("url", "")
    runner.vars["record_result"] = ("success" if recording.state is RecState.FINISHED
                                    else "failed")
    runner.vars["record_duration"] = event.get("duration")


@verb("record_call")
async def record_call(runner: SwmlRunner, params: Any) -> None:
    """Record in the background: the script goes on at once."""
    runner.vars.update(record_call_url="", record_call_result="failed", record_control_id="")
    recording = await _start(runner, "record_call", _params("record_call", params),
                             "swml_record_call")
    if recording is None:
        return
    runner.vars["record_call_url"] = recording.url
    runner.vars["record_call_result"] = ("failed" if recording.state is RecState.ERROR
                                         else "success")
    runner.vars["record_control_id"] = recording.control_id


@verb("stop_record_call")
async def stop_record_call(runner: SwmlRunner, params: Any) -> None:
    """Stop the recording with `control_id`, else the most recently started one."""
    params = _params("stop_record_call", params)
    control_id = params.get("control_id")
    running = [r for r in runner.call.recordings if not r.is_done]
    if control_id:
        running = [r for r in running if r.control_id == control_id]
    if not running:
        runner.vars["stop_record_call_result"] = "failed"
        log.info("call %s: stop_record_call: no active recording%s", runner.call.id,
                 f" {control_id!r}" if control_id else "")
        return
    recording = running[-1]
    recording.stop()
    await recording.done
    runner.vars["stop_record_call_result"] = "success"
