"""Augmentation statistics of the recipes, host-side and device-side, against the recipes'
parameters and against lightly's transforms (the cross-check that the two agree).

distill's parameters are recorded where the transforms draw them (``group_params``),
lightly's by wrapping the torchvision and PIL calls its view transforms make. Each kind of
view is drawn ``N`` times from a 48 x 36 image (non-square, so the ratio and fallback paths
count) under fixed seeds, so every check is deterministic. The thresholds are set so that a
correct sampler would fail a check for fewer than 1 in 1000 seeds while a wrong setting
fails clearly (a probability off by 0.04, a range off by 15%, a hue twice as wide):

- a rate against its probability: 4.5 binomial standard errors (two-sided p = 7e-6 per
  check, so below 1e-3 over the ~100 checks); two observed rates: 4.5 standard errors of
  their difference;
- a distribution against a uniform one or against lightly's draws: the Kolmogorov-Smirnov
  distance below its alpha = 0.001 critical value, 1.95 sqrt(1/n) (one sample) or
  1.95 sqrt(1/n + 1/m) (two samples; conservative for the pixel-rounded crop sizes).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter, ImageOps
from scipy import stats
from torch.utils.data import default_collate
from torchvision.transforms import v2

from distill.data import DeviceViews, MultiCropViews, SupervisedViews, TwoViews
from distill.data import views as views_module
from distill.data.augment import ViewSpec, draw_codes, group_params, spec_table

N = 3000
HEIGHT, WIDTH = 48, 36
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
RATES = ("flip", "jitter", "gray", "blur", "solarize")

#: kind -> (recipe, its views of that kind)
KINDS = {
    "two-view": (TwoViews(crop_size=32), [0, 1]),
    "global 1": (MultiCropViews(global_size=32, local_size=16), [0]),
    "global 2": (MultiCropViews(global_size=32, local_size=16), [1]),
    "local": (MultiCropViews(global_size=32, local_size=16), list(range(2, 8))),
    "supervised": (SupervisedViews(crop_size=32, random_resized_crop=True), [0]),
}


@dataclass
class Draws:
    """What ``trials`` views of one kind drew."""

    trials: int
    area: np.ndarray  # crop area / image area
    log_ratio: np.ndarray  # log(crop width / crop height)
    counts: dict[str, int]  # views flipped, jittered, gray, blurred, solarised
    factors: np.ndarray  # [jittered, 4] brightness, contrast, saturation, hue
    order: np.ndarray  # [jittered, 4] op at each slot
    sigma: np.ndarray  # of the blurred views


def image(seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def draws_of(params_by_view: list, views: list[int]) -> Draws:
    box = torch.cat([params_by_view[v].box for v in views]).numpy()
    factors = torch.cat([params_by_view[v].factors for v in views])
    order = torch.cat([params_by_view[v].order for v in views])
    sigma = torch.cat([params_by_view[v].sigma for v in views])
    flip, gray, solarize = (
        torch.cat([getattr(params_by_view[v], name) for v in views])
        for name in ("flip", "gray", "solarize")
    )
    jittered = (factors != torch.tensor([1.0, 1.0, 1.0, 0.0])).any(1)
    counts = {
        "flip": int(flip.sum()), "jitter": int(jittered.sum()), "gray": int(gray.sum()),
        "blur": int((sigma > 0).sum()), "solarize": int(solarize.sum()),
    }  # fmt: skip
    return Draws(
        trials=len(box),
        area=box[:, 2] * box[:, 3] / (HEIGHT * WIDTH),
        log_ratio=np.log(box[:, 3] / box[:, 2]),
        counts=counts,
        factors=factors[jittered].numpy(),
        order=order[jittered].numpy(),
        sigma=sigma[sigma > 0].numpy(),
    )


@functools.cache
def distill_draws(kind: str, pipeline: str) -> Draws:
    """The parameters the host or device transform drew for N images, by view."""
    recipe, views = KINDS[kind]
    recorded = []

    def record(codes, sizes, table, start, stop):
        params = group_params(codes, sizes, table, start, stop)
        count = len(codes)
        recorded.extend(params.rows(i * count, (i + 1) * count) for i in range(stop - start))
        return params

    torch.manual_seed(0)
    images = [image(seed) for seed in range(20)] * (N // 20)
    if pipeline == "host":
        transform = recipe.build(MEAN, STD)
        with mock.patch.object(views_module, "group_params", record):
            transform.apply([transform.prepare(x) for x in images])
    else:
        wrapped = DeviceViews(recipe)
        transform = wrapped.build(MEAN, STD)
        with mock.patch.object(views_module, "group_params", record):  # the shared ViewPlan
            wrapped.apply(default_collate([transform(x) for x in images]), MEAN, STD)
    return draws_of(recorded, views)


def lightly_view(kind: str):
    """The lightly (or, for the supervised recipe, torchvision) transform of one view."""
    from lightly.transforms import DINOTransform, MoCoV2Transform

    if kind == "two-view":
        return MoCoV2Transform(input_size=32).transforms[0]
    if kind == "supervised":
        return v2.Compose([v2.RandomResizedCrop(32), v2.RandomHorizontalFlip()])
    dino = DINOTransform(global_crop_size=32, local_crop_size=16)
    return dino.transforms[{"global 1": 0, "global 2": 1, "local": 2}[kind]]


@functools.cache
def lightly_draws(kind: str) -> Draws:
    """What lightly's view transform drew over N calls, from the calls it made."""
    calls: dict[str, list] = {name: [] for name in ("crop", *RATES)}
    crop_params, jitter_params = v2.RandomResizedCrop.make_params, v2.ColorJitter.make_params
    flip, gray = v2.RandomHorizontalFlip.transform, v2.RandomGrayscale.transform
    blur, solarize = ImageFilter.GaussianBlur, ImageOps.solarize

    def recorded(name, function):
        def wrapper(*args, **kwargs):
            result = function(*args, **kwargs)
            calls[name].append((args, kwargs, result))
            return result

        return wrapper

    torch.manual_seed(0)
    np.random.seed(0)
    transform, source = lightly_view(kind), image()
    with (
        mock.patch.object(v2.RandomResizedCrop, "make_params", recorded("crop", crop_params)),
        mock.patch.object(v2.ColorJitter, "make_params", recorded("jitter", jitter_params)),
        mock.patch.object(v2.RandomHorizontalFlip, "transform", recorded("flip", flip)),
        mock.patch.object(v2.RandomGrayscale, "transform", recorded("gray", gray)),
        mock.patch.object(ImageFilter, "GaussianBlur", recorded("blur", blur)),
        mock.patch.object(ImageOps, "solarize", recorded("solarize", solarize)),
    ):
        for _ in range(N):
            transform(source)
    boxes = np.array([[c[2]["height"], c[2]["width"]] for c in calls["crop"]], dtype=float)
    jitter = [c[2] for c in calls["jitter"]]
    return Draws(
        trials=N,
        area=boxes[:, 0] * boxes[:, 1] / (HEIGHT * WIDTH),
        log_ratio=np.log(boxes[:, 1] / boxes[:, 0]),
        counts={name: len(calls[name]) for name in RATES},
        factors=np.array(
            [
                [
                    j["brightness_factor"],
                    j["contrast_factor"],
                    j["saturation_factor"],
                    j["hue_factor"],
                ]
                for j in jitter
            ]
        ).reshape(-1, 4),
        order=np.array([j["fn_idx"].tolist() for j in jitter]).reshape(-1, 4),
        sigma=np.array([c[1].get("radius", c[0][0] if c[0] else None) for c in calls["blur"]]),
    )


def spec_of(kind: str) -> ViewSpec:
    recipe, views = KINDS[kind]
    return recipe.specs()[views[0]]


def expected_rates(spec: ViewSpec) -> dict[str, float]:
    return {
        "flip": spec.hflip_prob, "jitter": spec.jitter_prob, "gray": spec.gray_prob,
        "blur": spec.blur_prob, "solarize": spec.solarize_prob,
    }  # fmt: skip


def assert_rate(count: int, trials: int, probability: float, what: str) -> None:
    observed = count / trials
    tolerance = 4.5 * math.sqrt(probability * (1 - probability) / trials)
    assert abs(observed - probability) <= tolerance, f"{what}: {observed:.4f} vs {probability}"


def assert_same_rate(a: tuple[int, int], b: tuple[int, int], what: str) -> None:
    pooled = (a[0] + b[0]) / (a[1] + b[1])
    tolerance = 4.5 * math.sqrt(pooled * (1 - pooled) * (1 / a[1] + 1 / b[1]))
    assert abs(a[0] / a[1] - b[0] / b[1]) <= tolerance, f"{what}: {a} vs {b}"


def assert_uniform(values: np.ndarray, low: float, high: float, what: str, slack=1e-6) -> None:
    assert values.min() >= low - slack and values.max() <= high + slack, what
    distance = stats.kstest(values, "uniform", args=(low, high - low)).statistic
    assert distance <= 1.95 / math.sqrt(len(values)), f"{what}: KS {distance:.4f}"


def assert_same_distribution(a: np.ndarray, b: np.ndarray, what: str) -> None:
    distance = stats.ks_2samp(a, b).statistic
    assert distance <= 1.95 * math.sqrt(1 / len(a) + 1 / len(b)), f"{what}: KS {distance:.4f}"


PIPELINES = ["host", "device"]


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("pipeline", PIPELINES)
def test_rates_are_the_recipes_probabilities(pipeline, kind):
    draws = distill_draws(kind, pipeline)
    for name, probability in expected_rates(spec_of(kind)).items():
        assert_rate(draws.counts[name], draws.trials, probability, f"{kind} {name}")


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_lightlys_rates_are_the_recipes_probabilities(kind):
    draws = lightly_draws(kind)
    for name, probability in expected_rates(spec_of(kind)).items():
        assert_rate(draws.counts[name], draws.trials, probability, f"lightly {kind} {name}")


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("pipeline", PIPELINES)
def test_rates_agree_with_lightly(pipeline, kind):
    ours, theirs = distill_draws(kind, pipeline), lightly_draws(kind)
    for name in RATES:
        a, b = (ours.counts[name], ours.trials), (theirs.counts[name], theirs.trials)
        assert_same_rate(a, b, f"{kind} {name}")


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("pipeline", PIPELINES)
def test_crop_area_and_aspect_histograms_agree_with_lightly(pipeline, kind):
    ours, theirs = distill_draws(kind, pipeline), lightly_draws(kind)
    spec = spec_of(kind)
    assert_same_distribution(ours.area, theirs.area, f"{kind} area")
    assert_same_distribution(ours.log_ratio, theirs.log_ratio, f"{kind} log ratio")
    # Pixel rounding moves a 48 x 36 image's area fraction by up to ~0.03 and its ratio by 15%.
    low, high = spec.scale
    assert ours.area.min() >= low - 0.03 and ours.area.max() <= min(1.0, high + 0.03)
    assert np.abs(ours.log_ratio).max() <= math.log(4 / 3) + 0.15


def test_crops_of_a_large_image_are_uniform_in_area_and_log_ratio():
    # On a large image rounding is negligible and the local scale (0.05, 0.4) never
    # rejects a try: area and log ratio are exactly uniform on the recipe's ranges.
    specs = MultiCropViews().specs()
    torch.manual_seed(0)
    codes, sizes = torch.stack([draw_codes(8) for _ in range(N)]), torch.tensor([[3000, 4000]] * N)
    box = group_params(codes, sizes, spec_table(specs), 2, 8).box.numpy()
    ratio_range = math.log(3 / 4), math.log(4 / 3)
    assert_uniform(box[:, 2] * box[:, 3] / 12e6, 0.05, 0.4, "area", slack=1e-3)  # rounding
    assert_uniform(np.log(box[:, 3] / box[:, 2]), *ratio_range, "log ratio", slack=1e-3)


@pytest.mark.parametrize("kind", ["two-view", "global 1", "local"])
@pytest.mark.parametrize("pipeline", PIPELINES)
def test_jitter_factors_are_uniform_in_the_recipe_ranges_and_agree_with_lightly(pipeline, kind):
    ours, theirs = distill_draws(kind, pipeline), lightly_draws(kind)
    *strengths, hue = spec_of(kind).jitter
    ranges = [(1 - s, 1 + s) for s in strengths] + [(-hue, hue)]
    for column, (name, (low, high)) in enumerate(zip(("b", "c", "s", "h"), ranges, strict=True)):
        assert_uniform(ours.factors[:, column], low, high, f"{kind} {name}")
        assert_same_distribution(ours.factors[:, column], theirs.factors[:, column], name)


@pytest.mark.parametrize("kind", ["two-view", "local"])
@pytest.mark.parametrize("pipeline", PIPELINES)
def test_jitter_order_is_a_uniform_permutation_as_lightlys(pipeline, kind):
    for source, draws in (
        ("ours", distill_draws(kind, pipeline)),
        ("lightly", lightly_draws(kind)),
    ):
        order = draws.order
        assert (np.sort(order, 1) == np.arange(4)).all()
        for slot in range(4):
            for op in range(4):
                count = int((order[:, slot] == op).sum())
                assert_rate(count, len(order), 0.25, f"{source} {kind} op {op} at slot {slot}")


@pytest.mark.parametrize("kind", ["two-view", "global 1", "local"])
@pytest.mark.parametrize("pipeline", PIPELINES)
def test_blur_sigma_is_uniform_in_the_recipe_range_and_agrees_with_lightly(pipeline, kind):
    ours, theirs = distill_draws(kind, pipeline), lightly_draws(kind)
    low, high = spec_of(kind).blur_sigma
    assert (low, high) == (0.1, 2.0)
    assert_uniform(ours.sigma, low, high, f"{kind} sigma")
    assert_same_distribution(ours.sigma, theirs.sigma, f"{kind} sigma")
