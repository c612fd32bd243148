"""CPython's cyclic garbage collector kept off the calls' path.

The collector runs when allocations outnumber deallocations by a threshold (700 by default),
and each run walks the youngest generation; now and then a full run walks every object still
alive. A platform allocates steadily (SIP messages, media frames, events), so with the defaults
it collects often, and its full runs walk everything imported at start-up as well. `settle()`,
called once the process is up, moves what start-up left out of the collector's reach
(`gc.freeze()`) and lets the youngest generation grow larger before a run: fewer runs over
fewer objects. Cycles are still collected.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 20_000  # allocations (net) before the youngest generation is collected


def settle() -> None:
    """Collect once, freeze what is alive now, and raise the youngest generation's threshold."""
    gc.collect()
    gc.freeze()
    _young, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
