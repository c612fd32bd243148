"""Store writes that wait out a database outage (`recording.persist`)."""

from __future__ import annotations

import pytest

from callbox.server.database import DatabaseUnavailable
from callbox.server.recording.persist import persist, retry_delay


def test_retry_delays_double_and_stay_bounded() -> None:
    assert [retry_delay(n) for n in range(1, 8)] == \
        pytest.approx([0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0])
    assert retry_delay(10_000) == 5.0


async def test_an_outage_is_waited_out_and_other_errors_are_not(
        monkeypatch: pytest.MonkeyPatch) -> None:
    waits: list[float] = []

    async def no_wait(delay: float) -> None:
        waits.append(delay)

    monkeypatch.setattr("callbox.server.recording.persist.asyncio.sleep", no_wait)
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls <= 3:
            raise DatabaseUnavailable("connection refused")
        return "stored"

    assert await persist(flaky, "test write") == "stored"
    assert calls == 4 and waits == pytest.approx([0.2, 0.4, 0.8])

    async def full_disk() -> None:
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        await persist(full_disk, "test write")
    assert len(waits) == 3  # not retried
