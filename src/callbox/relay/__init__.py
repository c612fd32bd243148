"""The RELAY client SDK: take calls from a RELAY server (callbox, or a SignalWire space).

    from callbox.relay import RelayClient

    client = RelayClient(project="...", token="...", host="127.0.0.1:8443",
                         contexts=["default"])

    @client.on_call
    async def handle(call):
        await call.answer()
        await call.play([{"type": "tts", "text": "Leave a message after the beep."}])
        action = await call.record(audio={"beep": True, "terminators": "#"})
        event = await action.wait()
        print(event.url)
        await call.hangup()

    client.run()

`play()` and `record()` return their action as soon as the server accepted the command, like
SignalWire's own SDK; `await action.wait()` for the end. A recording with `beep` starts after
the prompts playing on the call (the server orders them), so the sequence above is heard as
written.
"""

from callbox.relay.actions import (
    Action,
    CollectAction,
    PlayAction,
    RecordAction,
    StandaloneCollectAction,
)
from callbox.relay.call import Call
from callbox.relay.client import RelayClient
from callbox.relay.events import AuthenticationError, DialError, RelayError, RelayEvent

__all__ = [
    "Action",
    "AuthenticationError",
    "Call",
    "CollectAction",
    "DialError",
    "PlayAction",
    "RecordAction",
    "RelayClient",
    "RelayError",
    "RelayEvent",
    "StandaloneCollectAction",
]
