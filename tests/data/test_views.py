import numpy as np
import pytest
import torch
from PIL import Image
from tests_support import EPS32, photometric_batch_error, pixel_normalisation_error
from torchvision.transforms.v2 import functional as F

from distill.data.augment import group_params
from distill.data.base import IndexedDataset
from distill.data.views import MultiCropViews, SupervisedViews, TwoViews, eval_transform

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def image(size=32, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def test_supervised_views_return_one_normalised_tensor():
    view = SupervisedViews(crop_size=32, padding=4).build(MEAN, STD)(image())
    assert isinstance(view, torch.Tensor) and view.shape == (3, 32, 32)
    assert view.dtype == torch.float32


def test_supervised_random_resized_crop_sets_size():
    recipe = SupervisedViews(crop_size=24, random_resized_crop=True)
    assert recipe.build(MEAN, STD)(image(64)).shape == (3, 24, 24)


def test_two_views_are_two_different_crops():
    torch.manual_seed(0)
    views = TwoViews(crop_size=32, blur_prob=0.0).build(MEAN, STD)(image())
    assert isinstance(views, list) and len(views) == 2
    assert all(v.shape == (3, 32, 32) for v in views)
    assert not torch.equal(views[0], views[1])


def test_multi_crop_puts_globals_first_with_their_sizes():
    recipe = MultiCropViews(num_global=2, num_local=3, global_size=32, local_size=16)
    views = recipe.build(MEAN, STD)(image())
    assert recipe.num_views == 5 and len(views) == 5
    assert [tuple(v.shape[-2:]) for v in views] == [(32, 32)] * 2 + [(16, 16)] * 3


def test_multi_crop_rejects_no_global_view():
    with pytest.raises(ValueError, match="num_global"):
        MultiCropViews(num_global=0)


@pytest.mark.numerics
def test_eval_transform_normalises_with_given_statistics():
    pixels = np.full((32, 32, 3), 128, dtype=np.uint8)
    out = eval_transform(32, MEAN, STD)(Image.fromarray(pixels))
    expected = (128 / 255 - torch.tensor(MEAN)) / torch.tensor(STD)
    torch.testing.assert_close(out[:, 5, 5], expected)


def test_eval_transform_resizes_then_centre_crops():
    out = eval_transform(24, MEAN, STD, resize=28)(image(56))
    assert out.shape == (3, 24, 24)


def coordinate_image(height=40, width=30):
    """uint8 RGB whose red is the column and green the row of each pixel."""
    rows, columns = np.mgrid[0:height, 0:width]
    return Image.fromarray(np.stack([columns, rows, rows * 0 + 7], -1).astype(np.uint8))


def recording(monkeypatch):
    """The parameters ``HostViews.apply`` draws, recorded per view group."""
    from distill.data import views as views_module

    recorded = []

    def record(*args):
        recorded.append(group_params(*args))
        return recorded[-1]

    monkeypatch.setattr(views_module, "group_params", record)
    return recorded


def denormalised(view, mean=MEAN, std=STD):
    return view * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1)


@pytest.mark.numerics
def test_padded_crop_cuts_out_the_sampled_box_with_zeros_and_flips(monkeypatch):
    recorded = recording(monkeypatch)
    transform = SupervisedViews(crop_size=32, padding=4).build(MEAN, STD)
    image = coordinate_image(40, 30)
    source = F.pil_to_tensor(image).double()
    padded = torch.nn.functional.pad(source, (40,) * 4)
    flips = set()
    for seed in range(20):
        torch.manual_seed(seed)
        view = denormalised(transform(image).double()) * 255
        params = recorded[-1]
        (top, left, height, width), flip = params.box[0].int().tolist(), bool(params.flip[0])
        expected = padded[:, 40 + top : 40 + top + height, 40 + left : 40 + left + width]
        expected = expected.flip(-1) if flip else expected
        # Pixels copied: only the normalisation rounds (3 times), undone here in float64.
        error = 255 * 3 * EPS32 * (1 + max(MEAN))
        torch.testing.assert_close(view, expected, atol=error, rtol=0)
        flips.add(flip)
    assert flips == {True, False}


@pytest.mark.numerics
def test_resized_crop_resizes_the_sampled_box(monkeypatch):
    recorded = recording(monkeypatch)
    transform = TwoViews(crop_size=24, color_jitter_prob=0, gray_prob=0, blur_prob=0).build(
        MEAN, STD
    )
    image = coordinate_image(40, 30)
    source = F.pil_to_tensor(image)
    torch.manual_seed(0)
    views = transform(image)
    params = recorded[-1]
    for view, box, flip in zip(views, params.box.int().tolist(), params.flip, strict=True):
        expected = F.resized_crop(source, *box, [24, 24], antialias=True).double() / 255
        expected = expected.flip(-1) if flip else expected
        # The same uint8 resize: only the normalisation rounds (3 times), undone in float64.
        error = 3 * EPS32 * (1 + max(MEAN))
        torch.testing.assert_close(denormalised(view.double()), expected, atol=error, rtol=0)


@pytest.mark.numerics
def test_views_of_a_sample_do_not_depend_on_the_rest_of_its_batch():
    recipe = MultiCropViews(num_global=2, num_local=3, blur_probs=(1.0, 0.5, 0.5))
    dataset = IndexedDataset([(image(32, seed), 0) for seed in range(6)], recipe.build(MEAN, STD))
    batch = dataset.__getitems__([(11 + i, i) for i in range(6)])
    alone = dataset.__getitems__([(14, 3)])[0]
    assert alone[2] == 3
    error = photometric_batch_error(32) / min(STD) + 2 * pixel_normalisation_error(MEAN, STD)
    for view, expected in zip(alone[0], batch[3][0], strict=True):
        torch.testing.assert_close(view, expected, atol=error, rtol=0)
    assert not torch.equal(batch[2][0][0], batch[3][0][0])
