"""The epsilon schedule: 0 during warm-up, monotone, smooth, full epsilon from the end of the ramp."""

import pytest

from nncert.training.schedules import EpsSchedule, smooth_ramp


def test_smooth_ramp_ends_and_monotone():
    values = [smooth_ramp(i / 1000) for i in range(1001)]
    assert values[0] == 0.0 and values[-1] == 1.0
    assert all(a <= b for a, b in zip(values, values[1:]))
    assert smooth_ramp(-1.0) == 0.0 and smooth_ramp(2.0) == 1.0


def test_smooth_ramp_is_continuous_with_continuous_slope_at_the_switch():
    h = 1e-6
    assert smooth_ramp(0.25 - h) == pytest.approx(smooth_ramp(0.25 + h), abs=1e-5)
    left = (smooth_ramp(0.25 - h) - smooth_ramp(0.25 - 2 * h)) / h
    right = (smooth_ramp(0.25 + 2 * h) - smooth_ramp(0.25 + h)) / h
    assert left == pytest.approx(right, rel=1e-3)


def test_eps_schedule_warmup_ramp_and_plateau():
    schedule = EpsSchedule.from_epochs(0.3, warmup_epochs=2, ramp_epochs=5, steps_per_epoch=10)
    eps = [schedule(step) for step in range(100)]
    assert all(e == 0.0 for e in eps[:20]) and all(schedule.natural(s) for s in range(20))
    assert not schedule.natural(20) and 0 < eps[20] < 0.01
    assert all(a <= b for a, b in zip(eps, eps[1:]))
    assert eps[69] == 0.3  # the ramp's last step
    assert all(e == 0.3 for e in eps[69:])
    assert eps[68] < 0.3


def test_eps_schedule_without_ramp():
    schedule = EpsSchedule(0.1, warmup_steps=3, ramp_steps=0)
    assert [schedule(s) for s in range(5)] == [0.0, 0.0, 0.0, 0.1, 0.1]
