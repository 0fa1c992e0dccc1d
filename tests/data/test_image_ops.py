import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from tests_support import EPS32, HUE_LIPSCHITZ, photometric_batch_error
from torchvision.transforms.v2 import functional as TF

from distill.data import image_ops
from distill.data.augment import IDENTITY_FACTORS, ViewParams

pytestmark = pytest.mark.numerics
ADJUST = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
# torchvision's adjust_hue runs in float32 (the other ops keep float64): the input's rounding
# and ~8 roundings of the hue, which the sextant curves scale by 6 (times a chroma ≤ 1).
TORCHVISION_HUE_ERROR = 40 * EPS32


def images(count=4, size=12, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(count, 3, size, size, generator=generator, dtype=torch.float64)


def reference_jitter(image, factors, order):
    """torchvision's ColorJitter.transform of one image: the four ops in ``order``."""
    for op in order:
        image = ADJUST[op](image, float(factors[op]))
    return image


def jitter_difference(factors, order):
    """Bound on distill's jitter against torchvision's for one image: each blend with luma
    moves by |1 − f| times the luma weights' difference (red 0.299 vs 0.2989: 1e-4 of a
    channel ≤ 1), the hue by torchvision's float32 error; every later op scales a difference
    by its Lipschitz constant (f for brightness, |f| + |1 − f| for the blends with luma)."""
    bound = 0.0
    for op in order:
        f = float(factors[op])
        if op == 3:
            bound = HUE_LIPSCHITZ * bound + TORCHVISION_HUE_ERROR
        elif op == 0:
            bound = abs(f) * bound
        else:
            bound = (abs(f) + abs(1 - f)) * bound + abs(1 - f) * 1e-4
    return bound


def test_color_jitter_applies_each_rows_own_factors_in_its_own_order():
    x = images(6)
    factors = torch.tensor(
        [[1.3, 0.7, 1.2, 0.1], [0.6, 1.4, 0.8, -0.05], [1.0, 1.0, 0.0, 0.3],
         [1.4, 1.3, 1.4, -0.5], [0.0, 0.5, 1.0, 0.0], [1.1, 0.9, 1.1, 0.02]],
        dtype=torch.float64,
    )  # fmt: skip
    order = torch.tensor(
        [[0, 1, 2, 3], [3, 2, 1, 0], [1, 3, 0, 2], [2, 0, 3, 1], [0, 2, 1, 3], [3, 0, 2, 1]]
    )
    out = image_ops.color_jitter(x.clone(), factors, order)
    for i in range(6):
        expected = reference_jitter(x[i], factors[i], order[i].tolist())
        error = jitter_difference(factors[i], order[i].tolist())
        torch.testing.assert_close(out[i], expected, atol=error, rtol=0)


def test_shift_hue_matches_torchvision_on_grays_and_ties():
    x = images(5)
    x[0] = 0.5  # gray: no hue
    x[1, 1] = x[1, 0]  # red and green tie for the maximum
    x[2, 2] = x[2, 1].clamp(max=1)  # green and blue tie
    shift = torch.tensor([0.2, -0.3, 0.5, -0.5, 0.0], dtype=torch.float64)
    out = image_ops.shift_hue(x.clone(), shift)
    for i in range(5):
        expected = TF.adjust_hue(x[i], float(shift[i]))
        torch.testing.assert_close(out[i], expected, atol=TORCHVISION_HUE_ERROR, rtol=0)


@pytest.mark.parametrize("size", [20, 160])  # the matrix and the shifted-sum paths
def test_gaussian_blur_matches_torchvision_with_reflected_borders(size):
    x = images(2, size)
    sigma = torch.tensor([0.4, 1.9], dtype=torch.float64)
    out = image_ops.gaussian_blur(x.clone(), sigma, radius=6)
    for i in range(2):
        expected = TF.gaussian_blur(x[i], [13, 13], [float(sigma[i])] * 2)
        # Float64 on both sides: two 13-tap sums of values ≤ 1 round ~30 times 2⁻⁵³.
        torch.testing.assert_close(out[i], expected, atol=1e-12, rtol=0)


def test_solarize_inverts_uint8_values_from_128_as_pil():
    pixels = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, 2)
    pil = np.asarray(ImageOps.solarize(Image.fromarray(pixels), threshold=128), dtype=np.float64)
    out = image_ops.solarize(torch.from_numpy(pixels).permute(2, 0, 1)[None].double() / 255)
    torch.testing.assert_close(out[0].permute(1, 2, 0) * 255, torch.tensor(pil))


def test_grayscale_is_pil_luma():
    pixels = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    gray = image_ops.grayscale(torch.from_numpy(pixels).permute(2, 0, 1)[None].double() / 255)
    pil = np.asarray(Image.fromarray(pixels).convert("L"), dtype=np.float64) / 255
    assert gray.shape == (1, 3, 16, 16) and (gray[0] == gray[0, :1]).all()
    assert np.abs(gray[0, 0].numpy() - pil).max() <= 0.5 / 255 + 1e-9  # PIL rounds to uint8


def test_photometric_is_the_same_in_chunks(monkeypatch):
    x = images(9, 16).float()
    count = len(x)
    generator = torch.Generator().manual_seed(1)
    params = ViewParams(
        box=torch.zeros(count, 4, dtype=torch.float64),
        flip=torch.zeros(count, dtype=torch.bool),
        factors=torch.tensor([1.2, 0.8, 1.1, 0.1]).repeat(count, 1),
        order=torch.stack([torch.randperm(4, generator=generator) for _ in range(count)]),
        gray=torch.arange(count) % 3 == 0,
        sigma=torch.where(torch.arange(count) % 2 == 0, 1.5, 0.0),
        solarize=torch.arange(count) % 4 == 0,
    )
    params = params._replace(factors=torch.where(
        (torch.arange(count) % 5 == 0)[:, None], torch.tensor(IDENTITY_FACTORS), params.factors
    ))  # fmt: skip
    whole = image_ops.photometric(x.clone(), params, blur_radius=6)
    monkeypatch.setattr(image_ops, "CHUNK_PIXELS", 2 * 16 * 16)
    chunked = image_ops.photometric(x.clone(), params, blur_radius=6)
    # Factors within 0.2 of 1: the chunks' shapes may only round the reductions otherwise.
    error = photometric_batch_error(16, jitter=0.2)
    torch.testing.assert_close(chunked, whole, atol=error, rtol=0)
    assert (whole[0] == whole[0, :1]).all()  # gray row
    assert not torch.allclose(whole[1], x[1])
