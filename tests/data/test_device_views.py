import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image
from tests_support import (
    ColourDataModule,
    photometric_batch_error,
    pixel_normalisation_error,
    quiet_trainer,
    resumable_fit,
)
from torch.utils.data import default_collate

from distill.data import DeviceViews, MultiCropViews, SupervisedViews, TwoViews, ViewRecipe
from distill.data.device_views import Canvas
from distill.data.sampling import SeededSampler
from distill.errors import ConfigError

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def smooth_image(height=48, width=40):
    """Gradients in every channel: resampling differences stay small."""
    rows, columns = np.mgrid[0:height, 0:width]
    pixels = np.stack([columns * 5, rows * 4, (rows + columns) * 2 + 20], -1)
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


def device_views(recipe, images, seeds, canvas_size=None):
    """The views ``DeviceViews`` makes of ``images``, each drawn under its seed."""
    wrapped = DeviceViews(recipe, canvas_size)
    transform = wrapped.build(MEAN, STD)
    canvases = []
    for image, seed in zip(images, seeds, strict=True):
        torch.manual_seed(seed)
        canvases.append(transform(image))
    return wrapped.apply(default_collate(canvases), MEAN, STD)


def host_views(recipe, image, seed):
    torch.manual_seed(seed)
    return recipe.build(MEAN, STD)(image)


@pytest.mark.parametrize(
    "recipe, sizes",
    [
        (SupervisedViews(crop_size=24), None),
        (TwoViews(crop_size=24), [24, 24]),
        (
            MultiCropViews(num_global=2, num_local=3, global_size=24, local_size=12),
            [24] * 2 + [12] * 3,
        ),
    ],
)
def test_device_views_have_the_recipe_layout(recipe, sizes):
    views = device_views(recipe, [smooth_image()] * 3, [0, 1, 2])
    if sizes is None:
        assert isinstance(views, torch.Tensor) and views.shape == (3, 3, 24, 24)
        return
    assert [tuple(view.shape) for view in views] == [(3, 3, size, size) for size in sizes]
    assert all(view.dtype == torch.float32 and view.is_contiguous() for view in views)


@pytest.mark.numerics
@pytest.mark.parametrize("canvas_size", [None, 36])
@pytest.mark.parametrize(
    "recipe",
    [
        TwoViews(crop_size=24),
        MultiCropViews(num_global=2, num_local=2, global_size=24, local_size=12),
    ],
)
def test_device_views_are_the_host_views_of_the_same_codes(recipe, canvas_size):
    # Same parameters; only the resampling differs (roi_align on a float canvas against
    # torchvision's antialiased uint8 resize), a few levels of 255 on smooth images.
    image = smooth_image()
    for seed in range(8):
        on_device = device_views(recipe, [image], [seed], canvas_size)
        on_host = host_views(recipe, image, seed)
        for device_view, host_view in zip(on_device, on_host, strict=True):
            difference = (device_view[0] - host_view).abs() * torch.tensor(STD).view(3, 1, 1)
            assert difference.max() <= 6 / 255 and difference.mean() <= 2 / 255


@pytest.mark.numerics
def test_padded_crop_on_device_is_the_host_crop():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), np.uint8))
    recipe = SupervisedViews(crop_size=32, padding=4)
    error = 2 * pixel_normalisation_error(
        MEAN, STD
    )  # pixels copied; each side normalises its own way
    for seed in range(10):
        on_device = device_views(recipe, [image], [seed])[0]
        torch.testing.assert_close(on_device, host_views(recipe, image, seed), atol=error, rtol=0)


@pytest.mark.numerics
def test_a_samples_views_do_not_depend_on_its_batch():
    recipe = MultiCropViews(num_global=2, num_local=2, global_size=24, local_size=12)
    images = [smooth_image() for _ in range(4)]
    batch = device_views(recipe, images, [10, 11, 12, 13])
    alone = device_views(recipe, images[2:3], [12])
    error = photometric_batch_error(24) / min(STD) + 2 * pixel_normalisation_error(MEAN, STD)
    for in_batch, by_itself in zip(batch, alone, strict=True):
        torch.testing.assert_close(in_batch[2:3], by_itself, atol=error, rtol=0)


def test_images_of_different_sizes_need_a_canvas():
    transform = DeviceViews(TwoViews()).build(MEAN, STD)
    transform(smooth_image(32, 32))
    with pytest.raises(ConfigError, match="canvas_size"):
        transform(smooth_image(40, 30))
    canvas = DeviceViews(TwoViews(), canvas_size=20).build(MEAN, STD)(smooth_image(40, 30))
    assert canvas.image.shape == (3, 20, 20) and canvas.size.tolist() == [40, 30]


def test_a_recipe_without_view_specs_is_refused():
    class Opaque(ViewRecipe):
        pass

    with pytest.raises(ConfigError, match="Opaque"):
        DeviceViews(Opaque())


def test_the_wrapped_recipes_settings_show_through():
    views = DeviceViews(MultiCropViews(num_global=2, num_local=4))
    assert views.num_views == 6 and views.num_global == 2 and views.local_size == 16


@pytest.mark.numerics
def test_ranks_see_the_views_of_a_single_process():
    # Per-sample codes are a function of (seed, epoch, index): the rank holding a sample
    # makes the views one process would.
    data = ColourDataModule(views=DeviceViews(TwoViews(blur_prob=0.0)))
    data.setup("fit")

    def views_by_index(world, rank):
        sampler = SeededSampler(data.train_set, world, rank, seed=0)
        sampler.set_epoch(1)
        items = list(sampler)[:6]
        canvases, _, indices = default_collate(data.train_set.__getitems__(items))
        views = data.views.apply(canvases, data.mean, data.std)
        return {
            index: torch.stack([v[i] for v in views]) for i, index in enumerate(indices.tolist())
        }

    single = views_by_index(1, 0)
    # Batches of 3 and 6: the photometric reductions may round otherwise.
    error = photometric_batch_error(32) / min(data.std) + 2 * pixel_normalisation_error(
        data.mean, data.std
    )
    for rank in (0, 1):
        shared = {i: views for i, views in views_by_index(2, rank).items() if i in single}
        assert len(shared) == 3  # the rank's first three of the single process's first six
        for index, views in shared.items():
            torch.testing.assert_close(views, single[index], atol=error, rtol=0)


def test_datamodule_makes_training_views_after_transfer_and_passes_others():
    data = ColourDataModule(batch_size=4, views=DeviceViews(TwoViews(crop_size=24, blur_prob=0)))
    batch = next(iter(data.train_dataloader()))
    assert isinstance(batch[0], Canvas) and batch[0].image.dtype == torch.uint8
    views, targets, indices = data.on_after_batch_transfer(batch, 0)
    assert [tuple(view.shape) for view in views] == [(4, 3, 24, 24)] * 2
    assert torch.equal(targets, batch[1]) and torch.equal(indices, batch[2])
    val = next(iter(data.val_dataloader()))
    assert data.on_after_batch_transfer(val, 0) is val


class ViewRecorder(L.LightningModule):
    """Records every training step's views; a weight so that there is something to fit."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(1))
        self.seen: dict[int, list[torch.Tensor]] = {}

    def training_step(self, batch, batch_idx):
        views, _, _ = batch
        self.seen[self.global_step] = [view.clone() for view in views]
        return self.weight * sum(view.mean() for view in views)

    def validation_step(self, batch, batch_idx):
        """Nothing: the tests look at the training views (the data has a val loader)."""

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def recipe_data(**kwargs):
    recipe = MultiCropViews(num_global=2, num_local=2, global_size=24, local_size=12)
    return ColourDataModule(batch_size=8, views=DeviceViews(recipe), **kwargs)


def test_a_resumed_fit_sees_the_views_of_the_uninterrupted_one(tmp_path):
    straight, _ = resumable_fit(ViewRecorder, recipe_data, tmp_path / "straight")
    resumable_fit(ViewRecorder, recipe_data, tmp_path / "first", stop_after=2)
    last = str(tmp_path / "first" / "last.ckpt")
    resumed, _ = resumable_fit(ViewRecorder, recipe_data, tmp_path / "second", ckpt_path=last)
    assert sorted(resumed.seen) == [4, 5, 6, 7]
    for step, views in resumed.seen.items():
        for view, expected in zip(views, straight.seen[step], strict=True):
            torch.testing.assert_close(view, expected, atol=0, rtol=0)


def test_worker_processes_do_not_change_the_views(tmp_path):
    def fit(**kwargs):
        L.seed_everything(0)
        model = ViewRecorder()
        trainer = quiet_trainer(tmp_path, max_epochs=1, limit_train_batches=2, limit_val_batches=0)
        trainer.fit(model, datamodule=recipe_data(**kwargs))
        return model.seen

    reference, with_workers = fit(), fit(num_workers=2, persistent_workers=False)
    for step, views in reference.items():
        for view, expected in zip(views, with_workers[step], strict=True):
            torch.testing.assert_close(view, expected, atol=0, rtol=0)


def test_dino_trains_on_device_views(tmp_path):
    from distill.methods import DINO

    model = DINO(
        backbone="resnet8", output_dim=32, hidden_dim=16, bottleneck_dim=8,
        optimizer=lambda p: torch.optim.AdamW(p, lr=0.01), lr_reference_batch=None,
    )  # fmt: skip
    trainer = quiet_trainer(tmp_path, max_steps=2, limit_val_batches=0)
    trainer.fit(model, datamodule=recipe_data())
    assert trainer.global_step == 2 and torch.isfinite(trainer.callback_metrics["train/loss"])
