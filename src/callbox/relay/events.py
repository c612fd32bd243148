"""Events and errors of the RELAY client."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


class RelayError(Exception):
    """The server refused something, or the connection failed; `code` is the server's code
    (a calling result code such as 404, or a JSON-RPC error code) when there is one."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message if code is None else f"{message} (code {code})")
        self.message = message
        self.code = code


class AuthenticationError(RelayError):
    """`signalwire.connect` was rejected: wrong project or token. Retrying will not help."""


class DialError(RelayError):
    """`RelayClient.dial()` got `dial_state: failed`: nobody answered. `reason` is busy,
    noAnswer, decline or error; `sip_code` the SIP status behind it (0 if none came)."""

    def __init__(self, tag: str, reason: str, sip_code: int) -> None:
        super().__init__(f"dial {tag} failed: {reason}"
                         + (f" (SIP {sip_code})" if sip_code else ""))
        self.tag = tag
        self.reason = reason
        self.sip_code = sip_code


@dataclass
class RelayEvent:
    """One `signalwire.event`: its type and its raw `params` (exactly as the server sent them).

    Convenience properties read the usual fields; for a `calling.call.record` event `url`,
    `duration` and `size` come from `params["record"]` or, failing that, the top level; for a
    `calling.call.collect` event `result`, `final`, `digits` and `terminator`.
    """

    event_type: str
    params: dict[str, Any] = field(default_factory=dict)
    timestamp: float = 0.0
    event_id: str = ""

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any], event_id: str = "") -> RelayEvent:
        params = payload.get("params")
        timestamp = payload.get("timestamp")
        return cls(
            event_type=str(payload.get("event_type", "")),
            params=dict(params) if isinstance(params, Mapping) else {},
            timestamp=_finite(timestamp, 0.0),
            event_id=event_id,
        )

    def _get(self, name: str, default: Any = None) -> Any:
        return self.params.get(name, default)

    def _record_field(self, name: str, default: Any) -> Any:
        record = self.params.get("record")
        if isinstance(record, Mapping) and name in record:
            return record[name]
        return self.params.get(name, default)

    @property
    def call_id(self) -> str:
        return str(self._get("call_id", ""))

    @property
    def control_id(self) -> str:
        return str(self._get("control_id", ""))

    @property
    def state(self) -> str:
        """`state` (play, record) or `call_state` (call state events)."""
        return str(self._get("state", self._get("call_state", "")))

    @property
    def url(self) -> str:
        return str(self._record_field("url", "") or "")

    @property
    def duration(self) -> float:
        return _finite(self._record_field("duration", 0.0), 0.0)

    @property
    def size(self) -> int:
        return int(_finite(self._record_field("size", 0), 0.0))

    @property
    def result(self) -> dict[str, Any]:
        """A collect event's `result` (``{"type": "digit", "params": {...}}``); {} if none."""
        value = self.params.get("result")
        return dict(value) if isinstance(value, Mapping) else {}

    @property
    def final(self) -> bool:
        """False for a collect's partial result."""
        return self.params.get("final") is not False

    @property
    def digits(self) -> str:
        """The digits of a collect's `digit` result."""
        return str(self._result_param("digits"))

    @property
    def terminator(self) -> str:
        """The terminator that ended a collect's `digit` result ("" if none)."""
        return str(self._result_param("terminator"))

    def _result_param(self, name: str) -> Any:
        params = self.result.get("params")
        return params.get(name, "") if isinstance(params, Mapping) else ""

    @property
    def tag(self) -> str:
        return str(self._get("tag", "") or "")

    @property
    def dial_state(self) -> str:
        return str(self._get("dial_state", "") or "")

    @property
    def connect_state(self) -> str:
        return str(self._get("connect_state", "") or "")

    @property
    def peer(self) -> dict[str, Any]:
        """The other call of a `calling.call.connect` event (call_id, node_id, tag, device)."""
        peer = self._get("peer")
        return dict(peer) if isinstance(peer, Mapping) else {}

    @property
    def reason(self) -> str:
        return str(self._get("reason", "") or self._get("end_reason", "") or "")


def _finite(value: Any, default: float) -> float:
    """`value` as a float when it is a finite number (JSON may carry 1e999 or a huge int)."""
    if not isinstance(value, int | float):
        return default
    try:
        number = float(value)
    except OverflowError:
        return default
    return number if math.isfinite(number) else default
