"""The trainer's per-step bookkeeping (kdjax.train.trainer): non-finite streaks, the save
schedule, stop requests, metrics averaged over the log interval."""

import numpy as np
import pytest

from kdjax.train.preemption import Preemption
from kdjax.train.trainer import IntervalMean, TrainingError, check_skips, save_or_stop


class _Ckpt:
    def __init__(self):
        self.saved = []

    def save(self, step, state, meta):
        self.saved.append((step, meta["data_position"]))


def test_check_skips_names_the_non_finite_metrics():
    check_skips({"consecutive_skips": 2.0, "loss": float("nan")}, 3, 5, "/ckpt")  # below limit
    with pytest.raises(TrainingError, match=r"step 5: 3 consecutive.*non-finite: loss.*/ckpt"):
        check_skips({"consecutive_skips": 3.0, "loss": float("nan"), "lr": 1e-3}, 3, 5, "/ckpt")
    with pytest.raises(TrainingError, match=r"non-finite: grad_norm"):
        check_skips({"consecutive_skips": np.float32(4), "grad_norm": np.array(np.inf)}, 3, 9,
                    "/c")


def test_save_or_stop_saves_on_schedule_at_the_end_and_on_a_signal():
    ckpt, preempt = _Ckpt(), Preemption()
    stops = [save_or_stop(d, 10, None, preempt, 4, ckpt, {}) for d in range(1, 11)]
    assert not any(stops) and ckpt.saved == [(4, 4), (8, 8), (10, 10)]
    preempt.requested = True
    assert save_or_stop(5, 10, None, preempt, 4, ckpt, {}) is True
    assert ckpt.saved[-1] == (5, 5)


def test_interval_mean_averages_every_step_and_keeps_counters_last():
    import jax.numpy as jnp

    mean = IntervalMean()
    assert mean.result() == {}
    for i, loss in enumerate([1.0, 2.0, 6.0]):
        mean.add({"loss": jnp.float32(loss), "skipped_steps": jnp.int32(i),
                  "consecutive_skips": jnp.int32(0)})
    out = mean.result()
    assert out["loss"] == pytest.approx(3.0)  # (1 + 2 + 6) / 3, not the last step's 6
    assert out["skipped_steps"] == 2 and out["consecutive_skips"] == 0
    mean.add({"loss": jnp.float32(5.0), "skipped_steps": jnp.int32(2),
              "consecutive_skips": jnp.int32(0)})
    assert mean.result()["loss"] == pytest.approx(5.0)  # a new interval
