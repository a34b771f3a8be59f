"""Every learning-rate schedule by value at every boundary: step 0, the last warm-up step, the
warm-up's end, each milestone, the last step. The expected rates are the formulas written out
here; the schedule under test is fastcifar/training/schedule.py."""

import math

import pytest

from fastcifar.config import OptimConfig, ScheduleConfig
from fastcifar.training.schedule import LRSchedule

PEAK, START, FINAL, GAMMA = 0.4, 0.04, 0.01, 0.2  # none of them the config defaults
STEPS_PER_EPOCH, EPOCHS = 10, 10  # 100 updates, steps 0..99
WARMUP = 20  # 2 epochs


def schedule(name: str, warmup_epochs: float = 2, milestones=(5, 8)) -> LRSchedule:
    return LRSchedule(OptimConfig(lr=PEAK), ScheduleConfig(name=name, warmup_epochs=warmup_epochs,
                      warmup_start_lr=START, milestones=milestones, gamma=GAMMA, final_lr=FINAL),
                      STEPS_PER_EPOCH, EPOCHS)


def after_warmup(step: int) -> float:
    """How far the decay has gone: 0 at the warm-up's end, 1 at step 100 (one past the last)."""
    return (step - WARMUP) / (STEPS_PER_EPOCH * EPOCHS - WARMUP)


EXPECTED = {
    "constant": {20: PEAK, 50: PEAK, 99: PEAK},
    "multistep": {20: PEAK, 49: PEAK, 50: PEAK * GAMMA, 79: PEAK * GAMMA, 80: PEAK * GAMMA ** 2,
                  99: PEAK * GAMMA ** 2},
    "cosine": {s: FINAL + (PEAK - FINAL) * (1 + math.cos(math.pi * after_warmup(s))) / 2 for s in (20, 60, 99)},
    "onecycle": {s: PEAK - (PEAK - FINAL) * after_warmup(s) for s in (20, 60, 99)},
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_warmup_is_linear_from_its_start_to_the_peak(name):
    lr = schedule(name)
    for step in (0, 1, 10, 19):
        want = START + (PEAK - START) * step / WARMUP
        assert lr(step) == pytest.approx(want, rel=1e-9), f"{name}: warm-up step {step} is {lr(step)}, expected {want}"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_rate_at_the_warmup_end_each_milestone_and_the_last_step(name):
    lr = schedule(name)
    for step, want in EXPECTED[name].items():
        assert lr(step) == pytest.approx(want, rel=1e-9), f"{name}: step {step} is {lr(step)}, expected {want}"


def test_cosine_and_onecycle_reach_final_lr_and_stay_there():
    assert schedule("cosine")(100) == pytest.approx(FINAL) and schedule("onecycle")(100) == pytest.approx(FINAL)
    assert schedule("cosine")(150) == pytest.approx(FINAL) and schedule("onecycle")(150) == pytest.approx(FINAL)
    assert schedule("cosine")(60) == pytest.approx((PEAK + FINAL) / 2)  # half way: the mean of the two


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_without_warmup_step_0_is_the_peak(name):
    assert schedule(name, warmup_epochs=0)(0) == pytest.approx(PEAK)


def test_fractional_epochs_become_steps():
    lr = schedule("multistep", warmup_epochs=0.5, milestones=(2.5,))  # 5 warm-up steps, milestone at 25
    assert lr(4) == pytest.approx(START + (PEAK - START) * 4 / 5)
    assert (lr(5), lr(24), lr(25)) == pytest.approx((PEAK, PEAK, PEAK * GAMMA))


def test_the_trainer_applies_each_steps_rate(synthetic_root, tmp_path):
    """Three logged steps of a tiny run, warm-up over its first epoch (10 steps) from 0: update k
    (0-based) runs at 0.05 * k / 10, the schedule's value for that step, not the next one's."""
    from conftest import tiny_config

    from fastcifar.rundir import records
    from fastcifar.training import Trainer

    run_dir = tmp_path / "run"
    cfg = tiny_config(synthetic_root, run_dir, train__max_steps=3, train__log_every=1, schedule__warmup_epochs=1,
                      schedule__warmup_start_lr=0.0)
    trainer = Trainer(cfg)
    trainer.fit()
    rates = [r["lr"] for r in records(run_dir) if "loss" in r]
    assert rates == pytest.approx([0.0, 0.005, 0.01]), f"logged rates {rates}"
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.01)  # the last update's rate, as set
