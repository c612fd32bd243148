from callbox.relay import RelayClient

client = RelayClient(
    project="your-project-id",
    token="your-api-token",
    host="your-space.signalwire.com",
    contexts=["default"],
)

@client.on_call
async def handle_call(call):
    await call.answer()
    await call.play([{"type": "tts", "text": "Leave a message after the beep."}])

    action = await call.record(
        audio={"beep": True, "end_silence_timeout": 3, "terminators": "#"},
    )
    event = await action.wait()

    url = event.params.get("record", {}).get("url", "")
    print(f"Recording saved: {url}")
    await call.hangup()

client.run()
