"""The `ai` verb's runtime: speech to text, the model, SWAIG calls and their actions.

- `stt`: the `SpeechToText` interface, utterance segmentation, `PocketsphinxSTT`;
- `llm`: an OpenAI-compatible chat-completions client;
- `swaig_client`: the SWAIG request to an agent's function webhook;
- `actions`: executing a SWAIG reply's `response` and `action` list on the call;
- `conversation`: the loop that ties them together for one call;
- `verb`: the SWML `ai` verb, registered with the SWML runner when this package is imported.
"""

from callbox.server.ai import verb  # noqa: F401

