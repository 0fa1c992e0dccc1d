import math

import torch

from distill.modules.collapse import CollapseWatch

LOG_K = math.log(64)
HEALTHY = (0.5 * LOG_K, 0.1)
UNIFORM = (0.99 * LOG_K, 0.0)
ONE_HOT = (0.0, 0.99 * LOG_K)


def observe(watch: CollapseWatch, *steps: tuple[float, float]) -> None:
    for entropy, kl in steps:
        watch.observe(torch.tensor(entropy), torch.tensor(kl))


def test_warns_once_after_patience_consecutive_collapsed_steps():
    watch = CollapseWatch(LOG_K, patience=3, tolerance=0.05)
    assert watch.check() is None  # nothing observed yet
    observe(watch, UNIFORM, UNIFORM, HEALTHY, UNIFORM, UNIFORM)
    assert watch.check() is None  # runs of 2: the healthy step broke the first
    observe(watch, UNIFORM)
    warning = watch.check()  # the run of 2 went on across the check to 3
    assert warning.startswith("DINO teacher collapse to uniform for 3 steps: entropy 4.117")
    assert "lower teacher_temp" in warning and f"log K {LOG_K:.3f}" in warning
    observe(watch, UNIFORM, UNIFORM, UNIFORM)
    assert watch.check() is None  # warned once


def test_reports_the_longest_run_since_the_last_check_and_its_kind():
    watch = CollapseWatch(LOG_K, patience=2, tolerance=0.05)
    observe(watch, ONE_HOT, ONE_HOT, ONE_HOT, HEALTHY, HEALTHY)
    warning = watch.check()  # the run ended before the check; the longest counts
    assert warning.startswith("DINO teacher collapse to one dimension for 3 steps")
    assert f"KL(mean || uniform) {0.99 * LOG_K:.3f}" in warning and "centering" in warning


def test_tolerance_sets_what_counts_as_collapsed():
    strict = CollapseWatch(LOG_K, patience=1, tolerance=0.001)
    observe(strict, UNIFORM)  # 1 % below log K: not within 0.1 %
    assert strict.check() is None
    loose = CollapseWatch(LOG_K, patience=1, tolerance=0.02)
    observe(loose, UNIFORM)
    assert "for 1 steps" in loose.check()
