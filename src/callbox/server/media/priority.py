"""The priority of processes that send or record media in real time.

Media has a deadline every 20 ms, signalling and HTTP do not: a media worker, and a caller that
streams audio (`callbox call`, the demo's parties), ask to run before the machine's ordinary
processes (MEDIA_NICE), as voice servers' media threads do. A sender that is not scheduled for
longer than the far end's playout delay loses the audio it sends late.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

MEDIA_NICE = -10


def raise_priority() -> None:
    """Run every thread of this process (some libraries start theirs at import) at
    MEDIA_NICE; threads started later inherit it. Without the right (CAP_SYS_NICE; root has
    it) the process keeps its priority."""
    try:
        threads = [int(tid) for tid in os.listdir("/proc/self/task")]  # Linux: nice is per thread
    except OSError:
        threads = [0]
    try:
        for tid in threads:
            os.setpriority(os.PRIO_PROCESS, tid, MEDIA_NICE)
    except PermissionError:
        log.info("media at the normal priority (no right to raise it to nice %d)", MEDIA_NICE)
