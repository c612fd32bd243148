"""RELAY two-party shapes: `calling.dial`, `calling.connect`, `calling.disconnect`, devices,
and the `calling.call.dial` / `calling.call.connect` events.

Devices come as a plan: an outer list tried one after the other (serial), each an inner list
rung at the same time (parallel). One device is

- ``{"type": "sip", "params": {"to": "sip:...", "from": "sip:...", "headers": [...],
  "timeout": 30}}``, or
- ``{"type": "phone", "params": {"to_number": "+1...", "from_number": "+1...",
  "timeout": 30}}``.

`parse_devices` checks a plan and names the wrong field (``devices[0][1].params.to``); the
event builders give the params the official client 3.7.5 reads (`dial_state` + `call` with
`dial_winner`; `connect_state` + `peer`). Pure, no I/O, shared by our client and the server.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from callbox.wire.relay import ParamError, to_number

DIAL: Final = "calling.dial"
CONNECT: Final = "calling.connect"
DISCONNECT: Final = "calling.disconnect"

CALL_DIAL: Final = "calling.call.dial"
CALL_CONNECT: Final = "calling.call.connect"

DIAL_STATES: Final = ("dialing", "answered", "failed")
CONNECT_STATES: Final = ("connecting", "connected", "disconnected", "failed")

CODE_CONFLICT: Final = "409"  # connect on a call already connected, disconnect when not

DEVICE_TYPES: Final = ("sip", "phone")
MAX_GROUPS: Final = 10  # serial groups in one plan
MAX_PARALLEL: Final = 10  # devices rung at once in one group
MAX_RING_TIMEOUT: Final = 600.0  # seconds
MAX_HEADERS: Final = 20
CUSTOM_HEADER_NAME: Final = re.compile(r"[Xx]-[A-Za-z0-9-]{1,64}")  # only custom ones are sent
MAX_TEXT: Final = 256  # characters of a URI, number or header


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    """One device as the wire gives it: `kind` sip (`to`/`from_` are sip: URIs) or phone
    (numbers); `timeout` seconds of ringing (None: the platform's default)."""

    kind: str
    to: str
    from_: str | None = None
    timeout: float | None = None
    headers: tuple[tuple[str, str], ...] = field(default=())

    def to_params(self) -> dict[str, Any]:
        """The device object as sent in `calling.dial` and echoed in events."""
        params: dict[str, Any]
        if self.kind == "sip":
            params = {"to": self.to}
            if self.from_ is not None:
                params["from"] = self.from_
            if self.headers:
                params["headers"] = [{"name": n, "value": v} for n, v in self.headers]
        else:
            params = {"to_number": self.to}
            if self.from_ is not None:
                params["from_number"] = self.from_
        if self.timeout is not None:
            params["timeout"] = self.timeout
        return {"type": self.kind, "params": params}

    @classmethod
    def parse(cls, value: Any, where: str) -> DeviceSpec:
        if not isinstance(value, Mapping):
            raise ParamError(where, f"{where} must be an object with a type and params, "
                             f"got {value!r}")
        kind = value.get("type")
        if kind not in DEVICE_TYPES:
            raise ParamError(f"{where}.type",
                             f"{where}.type must be 'sip' or 'phone', got {kind!r}")
        params = value.get("params")
        if not isinstance(params, Mapping):
            raise ParamError(f"{where}.params", f"{where}.params must be an object")
        to_key, from_key = ("to", "from") if kind == "sip" else ("to_number", "from_number")
        to = _text(params.get(to_key), f"{where}.params.{to_key}", required=True)
        from_ = _text(params.get(from_key), f"{where}.params.{from_key}", required=False)
        assert to is not None
        if kind == "sip":
            for name, uri in ((to_key, to), (from_key, from_)):
                if uri is not None and not uri.lower().startswith("sip:"):
                    raise ParamError(f"{where}.params.{name}", f"{where}.params.{name} must be "
                                     f"a sip: URI, got {uri!r}")
        return cls(kind, to, from_, _timeout(params.get("timeout"), f"{where}.params.timeout"),
                   parse_headers(params.get("headers"), f"{where}.params.headers"))


def _text(value: Any, where: str, *, required: bool) -> str | None:
    if value is None or value == "":
        if required:
            raise ParamError(where, f"{where} is required")
        return None
    if not isinstance(value, str) or len(value) > MAX_TEXT or not value.strip():
        raise ParamError(where, f"{where} must be a string of at most {MAX_TEXT} characters, "
                         f"got {value!r}")
    return value.strip()


def _timeout(value: Any, where: str) -> float | None:
    if value is None:
        return None
    seconds = to_number(value)
    if seconds is None or not 0 < seconds <= MAX_RING_TIMEOUT:
        raise ParamError(where, f"{where} must be a number of seconds from 0 to "
                         f"{MAX_RING_TIMEOUT:g}, got {value!r}")
    return seconds


def parse_headers(value: Any, where: str) -> tuple[tuple[str, str], ...]:
    """Custom SIP headers `[{"name": "X-...", "value": "..."}]`; ParamError names the field."""
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > MAX_HEADERS:
        raise ParamError(where, f"{where} must be a list of at most {MAX_HEADERS} "
                         '{"name": ..., "value": ...} objects')
    headers = []
    for index, item in enumerate(value):
        here = f"{where}[{index}]"
        if not isinstance(item, Mapping):
            raise ParamError(here, f'{here} must be {{"name": ..., "value": ...}}')
        name = _text(item.get("name"), f"{here}.name", required=True)
        text = _text(item.get("value"), f"{here}.value", required=True)
        assert name is not None and text is not None
        if not CUSTOM_HEADER_NAME.fullmatch(name):
            raise ParamError(f"{here}.name", f"{here}.name must be a custom header (X-...: "
                             f"letters, digits, '-'), got {name!r}")
        if any(ord(c) < 32 or ord(c) == 127 for c in text):
            raise ParamError(f"{here}.value", f"{here}.value must not hold control characters")
        headers.append((name, text))
    return tuple(headers)


def parse_devices(value: Any, where: str = "devices") -> list[list[DeviceSpec]]:
    """A plan of devices (serial groups of parallel devices); ParamError names the field."""
    if not isinstance(value, list) or not value:
        raise ParamError(where, f"{where} must be a non-empty list of lists of devices")
    if len(value) > MAX_GROUPS:
        raise ParamError(where, f"{where} may hold at most {MAX_GROUPS} serial groups")
    plan = []
    for i, group in enumerate(value):
        here = f"{where}[{i}]"
        if not isinstance(group, list) or not group:
            raise ParamError(here, f"{here} must be a non-empty list of devices "
                             "(rung at the same time)")
        if len(group) > MAX_PARALLEL:
            raise ParamError(here, f"{here} may hold at most {MAX_PARALLEL} devices")
        plan.append([DeviceSpec.parse(device, f"{here}[{j}]") for j, device in enumerate(group)])
    return plan


def parse_max_duration(value: Any) -> float | None:
    """`max_duration` of a dial or connect: minutes (as the official client documents it)
    -> seconds; None when absent."""
    if value is None:
        return None
    minutes = to_number(value)
    if minutes is None or minutes <= 0:
        raise ParamError("max_duration", "max_duration must be a number of minutes > 0, "
                         f"got {value!r}")
    return minutes * 60.0


def parse_tag(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > 128:
        raise ParamError("tag", "tag must be a string of at most 128 characters")
    return value


# -- events -----------------------------------------------------------------------------------


def leg_params(*, call_id: str, node_id: str, tag: str, device: Mapping[str, Any],
               dial_winner: bool | None = None) -> dict[str, Any]:
    """One leg as `calling.call.dial` (`call`) and `calling.call.connect` (`peer`) name it."""
    params: dict[str, Any] = {"call_id": call_id, "node_id": node_id, "tag": tag,
                              "device": dict(device)}
    if dial_winner is not None:
        params["dial_winner"] = dial_winner
    return params


def dial_params(*, tag: str, node_id: str, state: str, call: Mapping[str, Any] | None = None,
                reason: str | None = None, sip_code: int | None = None) -> dict[str, Any]:
    """`calling.call.dial` params; a failed dial carries `reason` (busy, noAnswer, decline,
    error) and the SIP status as `sip_code` (0 when nothing answered at all)."""
    params: dict[str, Any] = {"tag": tag, "node_id": node_id, "dial_state": state}
    if call is not None:
        params["call"] = dict(call)
    if state == "failed":
        params["reason"] = reason or "error"
        params["sip_code"] = sip_code or 0
    return params


def connect_params(*, call_id: str, node_id: str, tag: str, state: str,
                   peer: Mapping[str, Any] | None = None, reason: str | None = None,
                   sip_code: int | None = None) -> dict[str, Any]:
    """`calling.call.connect` params (for the call that connected); `peer` once connected,
    `reason` and `sip_code` when it failed."""
    params: dict[str, Any] = {"call_id": call_id, "node_id": node_id, "tag": tag,
                              "connect_state": state}
    if peer is not None:
        params["peer"] = dict(peer)
    if state == "failed":
        params["reason"] = reason or "error"
        params["sip_code"] = sip_code or 0
    return params
