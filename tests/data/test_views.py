import numpy as np
import pytest
import torch
from PIL import Image

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


def test_eval_transform_normalises_with_given_statistics():
    pixels = np.full((32, 32, 3), 128, dtype=np.uint8)
    out = eval_transform(32, MEAN, STD)(Image.fromarray(pixels))
    expected = (128 / 255 - torch.tensor(MEAN)) / torch.tensor(STD)
    torch.testing.assert_close(out[:, 5, 5], expected)


def test_eval_transform_resizes_then_centre_crops():
    out = eval_transform(24, MEAN, STD, resize=28)(image(56))
    assert out.shape == (3, 24, 24)
