"""ds_engine.timers: the switched-off timers take the measuring timers' arguments."""

from __future__ import annotations

import pytest

from ds_engine.timers import NoopTimer, SynchronizedWallClockTimer


@pytest.mark.faults
def test_noop_interval_takes_the_interval_arguments() -> None:
    # engine.timers is a NoopTimer when wall_clock_breakdown is off; code written against the measuring
    # timer (elapsed(False), stop(True)) raised TypeError on it before.
    on, off = SynchronizedWallClockTimer()("fwd"), NoopTimer()("fwd")
    for timer in (on, off):
        timer.start()
        timer.stop(False)
        timer.start()
        timer.stop(True, False)
        assert timer.elapsed(False) >= 0.0 and timer.elapsed(True) >= 0.0
    assert off.elapsed(reset=False) == 0.0
    off.stop(reset=True, record=True, anything="else")  # DeepSpeed's Noop timer takes any keyword
