"""Learning-rate schedules against hand-computed values of the protocol (sections 1-2).

Paper schedule: T = swa_start (SWA) or epochs (SGD), t = epoch / T, r = swa_lr / lr_init
(SWA) or 0.01 (SGD); factor 1 for t <= 0.5, 1 - (1 - r)(t - 0.5)/0.4 for 0.5 < t <= 0.9,
r for t > 0.9; lr = lr_init * factor.
"""

import pytest
from omegaconf import OmegaConf

from swa_repro.schedule import ConstantSchedule, CyclicSchedule, PaperSchedule, build_schedule


def _cfg(
    name="paper",
    *,
    swa=True,
    swa_start=126,
    swa_lr=0.05,
    lr_init=0.1,
    epochs=225,
    lr=None,
    a1=None,
    a2=None,
    cycle_epochs=None,
):
    schedule = {"name": name}
    for key, value in (("lr", lr), ("a1", a1), ("a2", a2), ("cycle_epochs", cycle_epochs)):
        if value is not None:
            schedule[key] = value
    return OmegaConf.create(
        {
            "schedule": schedule,
            "method": {"swa": swa, "swa_start": swa_start, "swa_lr": swa_lr},
            "optim": {"lr_init": lr_init},
            "epochs": epochs,
        }
    )


# ---------------------------------------------------------------- PreResNet164 C-100 SWA


def test_preresnet_c100_swa_boundaries():
    # lr_init 0.1, swa_lr 0.05, T = swa_start = 126, 225 epochs (1.5 budgets).
    sched = build_schedule(_cfg(swa_start=126, swa_lr=0.05, lr_init=0.1, epochs=225))
    assert sched(0) == 0.1
    assert sched(62) == 0.1
    assert sched(63) == 0.1  # t = 63/126 = 0.5 exactly: still the flat part
    assert sched(64) == pytest.approx(0.1 * (1 - (1 - 0.5) * (64 / 126 - 0.5) / 0.4), rel=1e-12)
    assert sched(64) < 0.1
    assert sched(100) == pytest.approx(0.1 * (1 - 0.5 * (100 / 126 - 0.5) / 0.4), rel=1e-12)
    # 113/126 = 0.8968 (< 0.9, last decaying epoch); 114/126 = 0.9048 (> 0.9).
    assert sched(113) == pytest.approx(0.1 * (1 - 0.5 * (113 / 126 - 0.5) / 0.4), rel=1e-12)
    assert sched(113) > 0.05
    assert sched(114) == 0.05
    for epoch in range(114, 225):
        assert sched(epoch) == 0.05, epoch


def test_paper_schedule_is_constant_within_an_epoch():
    sched = build_schedule(_cfg(swa_start=126, swa_lr=0.05, lr_init=0.1))
    for epoch in (0, 63, 64, 90, 113, 114, 200):
        values = {sched(epoch, step, 391) for step in range(391)}
        assert len(values) == 1, epoch


def test_paper_schedule_is_monotone_non_increasing():
    sched = build_schedule(_cfg(swa_start=161, swa_lr=0.01, lr_init=0.05, epochs=300))
    values = [sched(e) for e in range(300)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


# ------------------------------------------------------------ every SWA recipe of Table 1

# (model / data, lr_init, swa_lr, swa_start, SWA epochs)
SWA_RECIPES = [
    ("vgg16 c100", 0.05, 0.01, 161, 300),
    ("vgg16 c10", 0.05, 0.01, 161, 300),
    ("preresnet c100", 0.1, 0.05, 126, 225),
    ("preresnet c10", 0.1, 0.01, 126, 225),
    ("wrn28x10 c100", 0.1, 0.05, 161, 300),
    ("wrn28x10 c10", 0.1, 0.05, 161, 300),
]

# Hand-derived boundary epochs: last flat epoch (t <= 0.5), first decaying one, last
# decaying one (t <= 0.9) and first at swa_lr (t > 0.9).
#   T = 161: 80/161 = 0.4969, 81/161 = 0.5031, 144/161 = 0.8944, 145/161 = 0.9006
#   T = 126: 63/126 = 0.5,    64/126 = 0.5079, 113/126 = 0.8968, 114/126 = 0.9048
BOUNDARIES = {161: (80, 81, 144, 145), 126: (63, 64, 113, 114)}


@pytest.mark.parametrize(("label", "lr_init", "swa_lr", "swa_start", "epochs"), SWA_RECIPES)
def test_swa_recipe_boundaries(label, lr_init, swa_lr, swa_start, epochs):
    sched = build_schedule(
        _cfg(swa=True, swa_start=swa_start, swa_lr=swa_lr, lr_init=lr_init, epochs=epochs)
    )
    r = swa_lr / lr_init
    last_flat, first_decay, last_decay, first_swa = BOUNDARIES[swa_start]
    assert sched(0) == lr_init
    assert sched(last_flat) == lr_init
    for e in (first_decay, (first_decay + last_decay) // 2, last_decay):
        expected = lr_init * (1 - (1 - r) * (e / swa_start - 0.5) / 0.4)
        assert sched(e) == pytest.approx(expected, rel=1e-12), (label, e)
        assert swa_lr < sched(e) < lr_init, (label, e)
    for e in range(first_swa, epochs):
        assert sched(e) == pytest.approx(swa_lr, rel=1e-12, abs=0), (label, e)


# (model, lr_init, SGD epochs): T = epochs, r = 0.01
SGD_RECIPES = [("vgg16", 0.05, 200), ("preresnet", 0.1, 150), ("wrn28x10", 0.1, 200)]


@pytest.mark.parametrize(("label", "lr_init", "epochs"), SGD_RECIPES)
def test_sgd_recipe_boundaries(label, lr_init, epochs):
    # swa_start / swa_lr set to values that must be ignored by an SGD run.
    sched = build_schedule(
        _cfg(swa=False, swa_start=126, swa_lr=0.05, lr_init=lr_init, epochs=epochs)
    )
    half, ninety = epochs // 2, epochs * 9 // 10  # 100/180 (T=200), 75/135 (T=150): exact
    assert sched(half) == lr_init
    for e in (half + 1, (half + ninety) // 2, ninety - 1):
        expected = lr_init * (1 - (1 - 0.01) * (e / epochs - 0.5) / 0.4)
        assert sched(e) == pytest.approx(expected, rel=1e-12), (label, e)
    # t = 0.9 exactly: end of the linear part, factor 0.01 (up to rounding).
    assert sched(ninety) == pytest.approx(0.01 * lr_init, rel=1e-9)
    for e in range(ninety + 1, epochs):
        assert sched(e) == pytest.approx(0.01 * lr_init, rel=1e-12), (label, e)
    assert sched(epochs - 1) == pytest.approx(0.01 * lr_init, rel=1e-12)


def test_sgd_schedule_uses_epochs_not_swa_start():
    sgd = build_schedule(_cfg(swa=False, swa_start=126, swa_lr=0.05, lr_init=0.1, epochs=150))
    # epoch 100: t = 100/150 with r = 0.01; with T = 126, r = 0.5 it would be different.
    assert sgd(100) == pytest.approx(0.1 * (1 - 0.99 * (100 / 150 - 0.5) / 0.4), rel=1e-12)
    assert sgd(149) == pytest.approx(0.001, rel=1e-12)


def test_swa_lr_does_not_depend_on_total_epochs():
    long_run = build_schedule(_cfg(swa=True, swa_start=126, swa_lr=0.05, lr_init=0.1, epochs=225))
    short_run = build_schedule(_cfg(swa=True, swa_start=126, swa_lr=0.05, lr_init=0.1, epochs=150))
    for e in range(150):
        assert long_run(e) == short_run(e), e
    # ...whereas the SGD schedule does depend on it.
    sgd_long = build_schedule(_cfg(swa=False, lr_init=0.1, epochs=225))
    sgd_short = build_schedule(_cfg(swa=False, lr_init=0.1, epochs=150))
    assert sgd_long(100) != sgd_short(100)


def test_swa_start_is_a_real_number():
    # swa_start 126.5: 63/126.5 = 0.498 (flat), 64/126.5 = 0.506 (decaying).
    sched = build_schedule(_cfg(swa_start=126.5, swa_lr=0.05, lr_init=0.1))
    assert sched(63) == 0.1
    assert sched(64) == pytest.approx(0.1 * (1 - 0.5 * (64 / 126.5 - 0.5) / 0.4), rel=1e-12)
    # 113/126.5 = 0.8933: decaying; 114/126.5 = 0.9012: swa_lr (with T rounded up to 127,
    # 114/127 = 0.8976 would still be decaying; rounded down to 126, epoch 64 would differ).
    assert sched(113) > 0.05
    assert sched(114) == 0.05
    assert sched(64) != pytest.approx(0.1 * (1 - 0.5 * (64 / 126 - 0.5) / 0.4), rel=1e-9)


def test_build_paper_returns_paper_schedule():
    assert isinstance(build_schedule(_cfg()), PaperSchedule)


# ------------------------------------------------------------------ constant and cyclic


def test_constant_schedule():
    sched = build_schedule(_cfg("constant", lr=0.05))
    assert isinstance(sched, ConstantSchedule)
    for epoch in (0, 1, 139, 140, 299):
        for step in (0, 7, 390):
            assert sched(epoch, step, 391) == 0.05


A1, A2 = 0.05, 0.01


def _cyclic(cycle_epochs):
    sched = build_schedule(_cfg("cyclic", a1=A1, a2=A2, cycle_epochs=cycle_epochs))
    assert isinstance(sched, CyclicSchedule)
    return sched


def test_cyclic_first_mid_last_iteration():
    spe, cycle_epochs = 5, 2
    c = cycle_epochs * spe  # 10 iterations per cycle
    sched = _cyclic(cycle_epochs)
    # i = 1: t = 1/c
    assert sched(0, 0, spe) == pytest.approx((1 - 1 / c) * A1 + A2 / c, rel=1e-12)
    # i = 5: t = 0.5 (last step of epoch 0)
    assert sched(0, 4, spe) == pytest.approx(0.5 * A1 + 0.5 * A2, rel=1e-12)
    # i = 6: t = 0.6 (first step of epoch 1, still in the first cycle)
    assert sched(1, 0, spe) == pytest.approx(0.4 * A1 + 0.6 * A2, rel=1e-12)
    # i = 10: last iteration of the cycle, t = 1 -> a2 exactly
    assert sched(1, 4, spe) == A2
    # i = 11: first iteration of the second cycle
    assert sched(2, 0, spe) == pytest.approx((1 - 1 / c) * A1 + A2 / c, rel=1e-12)
    # within a cycle the LR strictly decreases
    values = [sched(e, s, spe) for e in range(2) for s in range(spe)]
    assert all(a > b for a, b in zip(values, values[1:], strict=False))


def test_cyclic_last_iteration_of_every_cycle_is_a2():
    spe, cycle_epochs = 7, 3
    sched = _cyclic(cycle_epochs)
    for cycle in range(6):
        last_epoch = (cycle + 1) * cycle_epochs - 1
        assert sched(last_epoch, spe - 1, spe) == A2, cycle
        # and the next iteration jumps back up
        assert sched(last_epoch + 1, 0, spe) == pytest.approx(
            (1 - 1 / (cycle_epochs * spe)) * A1 + A2 / (cycle_epochs * spe), rel=1e-12
        )


def test_cyclic_is_periodic_across_epochs():
    spe, cycle_epochs = 4, 2
    sched = _cyclic(cycle_epochs)
    for epoch in range(10):
        for step in range(spe):
            i = epoch * spe + step + 1  # 1-based over the whole run
            t = (((i - 1) % (cycle_epochs * spe)) + 1) / (cycle_epochs * spe)
            assert sched(epoch, step, spe) == pytest.approx((1 - t) * A1 + t * A2, rel=1e-12)
            assert sched(epoch + cycle_epochs, step, spe) == pytest.approx(
                sched(epoch, step, spe), rel=1e-12
            )


def test_cyclic_one_epoch_cycle_ends_each_epoch_at_a2():
    spe = 391
    sched = _cyclic(1)
    for epoch in range(3):
        assert sched(epoch, spe - 1, spe) == A2
        assert sched(epoch, 0, spe) == pytest.approx((1 - 1 / spe) * A1 + A2 / spe, rel=1e-12)


def test_cyclic_with_one_iteration_per_cycle_is_constant_a2():
    sched = _cyclic(1)
    for epoch in range(5):
        assert sched(epoch, 0, 1) == A2


def test_unknown_schedule_name_raises():
    with pytest.raises(ValueError, match="cosine"):
        build_schedule(_cfg("cosine"))
