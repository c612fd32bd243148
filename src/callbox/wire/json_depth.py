"""How deeply a JSON text nests arrays and objects, measured without parsing it.

`json.loads` recurses once per level, so a frame of 100,000 ``[`` ends in a `RecursionError`
deep in the C stack instead of a parse error. Measuring the depth first bounds that cheaply:
numpy counts the brackets of the whole text at once, skipping those inside strings.
"""

from __future__ import annotations

import json
from typing import Any, Final

import numpy as np

DEFAULT_MAX_DEPTH: Final = 64  # RELAY frames, SWML documents and SWAIG replies nest far less
QUOTE: Final = ord('"')
OPENERS: Final = (ord("["), ord("{"))
CLOSERS: Final = (ord("]"), ord("}"))


def nesting_depth(text: str) -> int:
    """The deepest nesting of arrays and objects in `text` (0 for a scalar).

    Exact for valid JSON, and for every valid prefix of invalid JSON, which is all a parser
    reads before it stops: so a parser never nests deeper than this.
    """
    # Without escaped backslashes and escaped quotes, every quote left opens or closes a string.
    plain = text.replace("\\\\", "").replace('\\"', "")
    data = np.frombuffer(plain.encode("utf-8", "surrogatepass"), dtype=np.uint8)
    if data.size == 0:
        return 0
    opens = (data == OPENERS[0]) | (data == OPENERS[1])
    closes = (data == CLOSERS[0]) | (data == CLOSERS[1])
    outside_strings = (np.cumsum(data == QUOTE, dtype=np.int64) & 1) == 0
    steps = (opens.astype(np.int32) - closes.astype(np.int32)) * outside_strings
    return max(0, int(np.cumsum(steps, dtype=np.int64).max()))


def nests_deeper_than(text: str, limit: int) -> bool:
    """Whether `text` nests more than `limit` levels; free for texts with few brackets."""
    if text.count("[") + text.count("{") <= limit:
        return False
    return nesting_depth(text) > limit


def loads_bounded(data: str | bytes, max_depth: int = DEFAULT_MAX_DEPTH) -> Any:
    """`json.loads` for untrusted input: JSON nested deeper than `max_depth` is a ValueError
    (like any other invalid JSON), found before decoding, never a RecursionError."""
    text = data.decode(json.detect_encoding(data), "surrogatepass") if isinstance(data, bytes) \
        else data
    if nests_deeper_than(text, max_depth):
        raise ValueError(f"JSON nested deeper than {max_depth} levels")
    return json.loads(text)
