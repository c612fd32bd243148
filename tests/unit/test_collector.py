"""The garbage collector settled after start-up: start-up's objects frozen, fewer young runs."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from callbox.server import collector


@pytest.fixture
def restored_collector() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


@pytest.mark.usefixtures("restored_collector")
def test_settle_freezes_what_is_alive_and_raises_the_young_threshold() -> None:
    gc.unfreeze()
    alive = object(), [1, 2, 3]  # tracked: the container is in a generation until frozen
    assert gc.get_freeze_count() == 0
    collector.settle()
    assert gc.get_freeze_count() > 0
    assert not any(o is alive for generation in range(3) for o in gc.get_objects(generation))
    young, middle, old = gc.get_threshold()
    assert young == collector.YOUNG_THRESHOLD > 700 and (middle, old) == (10, 10)
    cycle: list[object] = []
    cycle.append(cycle)  # a cycle made after settling is still collected
    del cycle
    assert gc.collect() >= 1
