"""Bad DataModule and view arguments: one ConfigError naming the key and the valid range."""

import os

import pytest
from tests_support import ROOT, ColourDataModule

from distill.cli import main
from distill.data import (
    DeviceViews,
    DigitsDataModule,
    ImageFolderDataModule,
    MultiCropViews,
    STL10DataModule,
    SupervisedViews,
    TwoViews,
    ViewRecipe,
)
from distill.data.augment import ViewSpec
from distill.errors import ConfigError

DATA, VIEWS = "data.init_args", "data.init_args.views.init_args"
INTEGER, NON_NEGATIVE = "an integer >= 1", "an integer >= 0"
PROBABILITY, SCALE = "a number in [0, 1]", "two area fractions [min, max] with 0 < min <= max <= 1"


class NoViews(ViewRecipe):
    def specs(self):
        return []


CASES = {
    "batch_size 0": (ColourDataModule, {"batch_size": 0}, f"{DATA}.batch_size=0", INTEGER),
    "batch_size -4": (ColourDataModule, {"batch_size": -4}, f"{DATA}.batch_size=-4", INTEGER),
    "num_workers -1": (
        ColourDataModule, {"num_workers": -1}, f"{DATA}.num_workers=-1", NON_NEGATIVE,
    ),
    "image_size 0": (ColourDataModule, {"image_size": 0}, f"{DATA}.image_size=0", INTEGER),
    "eval_resize 0": (ColourDataModule, {"eval_resize": 0}, f"{DATA}.eval_resize=0", INTEGER),
    "eval_batch_size 0": (
        ColourDataModule, {"eval_batch_size": 0}, f"{DATA}.eval_batch_size=0", INTEGER,
    ),
    "no view": (
        ColourDataModule, {"views": NoViews()}, f"{DATA}.views: NoViews makes no view",
        "a recipe with one view or more",
    ),
    "digits val_fraction 0": (
        DigitsDataModule, {"val_fraction": 0.0}, f"{DATA}.val_fraction=0.0", "above 0.0050",
    ),
    "digits val_fraction too small for 10 classes": (
        DigitsDataModule, {"val_fraction": 0.005}, f"{DATA}.val_fraction=0.005", "up to 0.9944",
    ),
    "digits val_fraction 1": (
        DigitsDataModule, {"val_fraction": 1.0}, f"{DATA}.val_fraction=1.0", "each of the 10",
    ),
    "stl10 train_split": (
        STL10DataModule, {"train_split": "test"}, f"{DATA}.train_split='test'",
        "unlabeled, train, train+unlabeled",
    ),
    "folder mean": (
        ImageFolderDataModule, {"mean": (0.5, 0.5)}, f"{DATA}.mean=(0.5, 0.5)", "3 numbers",
    ),
    "folder std 0": (
        ImageFolderDataModule, {"std": (0.2, 0.0, 0.2)}, f"{DATA}.std=(0.2, 0.0, 0.2)",
        "3 numbers > 0",
    ),
    "crop_size 0": (SupervisedViews, {"crop_size": 0}, f"{VIEWS}.crop_size=0", INTEGER),
    "padding -1": (SupervisedViews, {"padding": -1}, f"{VIEWS}.padding=-1", NON_NEGATIVE),
    "min_scale 0": (SupervisedViews, {"min_scale": 0.0}, f"{VIEWS}.min_scale=0.0", "(0, 1]"),
    "hflip_prob 1.5": (
        SupervisedViews, {"hflip_prob": 1.5}, f"{VIEWS}.hflip_prob=1.5", PROBABILITY,
    ),
    "two views crop_size -3": (TwoViews, {"crop_size": -3}, f"{VIEWS}.crop_size=-3", INTEGER),
    "two views min_scale 1.2": (TwoViews, {"min_scale": 1.2}, f"{VIEWS}.min_scale=1.2", "(0, 1]"),
    "color_jitter -0.1": (TwoViews, {"color_jitter": -0.1}, f"{VIEWS}.color_jitter=-0.1", "[0, 2]"),
    "color_jitter 2.5": (TwoViews, {"color_jitter": 2.5}, f"{VIEWS}.color_jitter=2.5", "[0, 2]"),
    "gray_prob -0.2": (TwoViews, {"gray_prob": -0.2}, f"{VIEWS}.gray_prob=-0.2", PROBABILITY),
    "blur_prob nan": (TwoViews, {"blur_prob": float("nan")}, f"{VIEWS}.blur_prob=nan", PROBABILITY),
    "num_global 0": (MultiCropViews, {"num_global": 0}, f"{VIEWS}.num_global=0", INTEGER),
    "num_local -1": (MultiCropViews, {"num_local": -1}, f"{VIEWS}.num_local=-1", NON_NEGATIVE),
    "global_size 0": (MultiCropViews, {"global_size": 0}, f"{VIEWS}.global_size=0", INTEGER),
    "local_size 0": (MultiCropViews, {"local_size": 0}, f"{VIEWS}.local_size=0", INTEGER),
    "global_scale reversed": (
        MultiCropViews, {"global_scale": (0.9, 0.4)}, f"{VIEWS}.global_scale=(0.9, 0.4)", SCALE,
    ),
    "local_scale from 0": (
        MultiCropViews, {"local_scale": (0.0, 0.4)}, f"{VIEWS}.local_scale=(0.0, 0.4)", SCALE,
    ),
    "local_scale past 1": (
        MultiCropViews, {"local_scale": [0.05, 1.5]}, f"{VIEWS}.local_scale=[0.05, 1.5]", SCALE,
    ),
    "color_jitter_strength 6": (
        MultiCropViews, {"color_jitter_strength": 6.0}, f"{VIEWS}.color_jitter_strength=6.0",
        "[0, 5]",
    ),
    "blur_probs two": (
        MultiCropViews, {"blur_probs": (1.0, 0.1)}, f"{VIEWS}.blur_probs=(1.0, 0.1)",
        "3 numbers in [0, 1]",
    ),
    "blur_probs 1.5": (
        MultiCropViews, {"blur_probs": (1.0, 0.1, 1.5)}, f"{VIEWS}.blur_probs=(1.0, 0.1, 1.5)",
        "3 numbers in [0, 1]",
    ),
    "solarization_prob -0.5": (
        MultiCropViews, {"solarization_prob": -0.5}, f"{VIEWS}.solarization_prob=-0.5",
        PROBABILITY,
    ),
    "canvas_size 0": (
        DeviceViews, {"recipe": TwoViews(), "canvas_size": 0}, f"{VIEWS}.canvas_size=0", INTEGER,
    ),
    "spec size 0": (ViewSpec, {"size": 0}, "ViewSpec.size=0", INTEGER),
    "spec scale": (ViewSpec, {"size": 8, "scale": (0.5, 2.0)}, "ViewSpec.scale=(0.5, 2.0)", SCALE),
    "spec ratio": (
        ViewSpec, {"size": 8, "ratio": (4 / 3, 3 / 4)}, "ViewSpec.ratio=", "(min, max), min <= max",
    ),
    "spec jitter": (
        ViewSpec, {"size": 8, "jitter": (-1.0, 0.0, 0.0, 0.0)}, "ViewSpec.jitter=",
        "brightness, contrast and saturation >= 0",
    ),
    "spec blur_sigma": (
        ViewSpec, {"size": 8, "blur_sigma": (0.0, 2.0)}, "ViewSpec.blur_sigma=(0.0, 2.0)",
        "2 numbers > 0",
    ),
    "spec solarize_prob": (
        ViewSpec, {"size": 8, "solarize_prob": 2.0}, "ViewSpec.solarize_prob=2.0", PROBABILITY,
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_argument_is_one_message_naming_key_and_valid_range(case, tmp_path):
    build, kwargs, named, valid = CASES[case]
    if build in (ImageFolderDataModule, STL10DataModule):
        kwargs = {"data_dir": str(tmp_path / "nothing-here"), **kwargs}  # checked before files
    with pytest.raises(ConfigError) as error:
        build(**kwargs)
    message = str(error.value)
    assert message.startswith(named) and valid in message and "\n" not in message


def test_good_arguments_pass():
    ColourDataModule(batch_size=1, num_workers=0, image_size=1, eval_resize=None)
    SupervisedViews(crop_size=1, padding=0, min_scale=1.0, hflip_prob=0)
    TwoViews(color_jitter=2.0, blur_prob=1)
    MultiCropViews(num_local=0, global_scale=[0.4, 0.4], color_jitter_strength=5.0)
    DigitsDataModule(val_fraction=0.9944)


def test_cli_refuses_crop_size_0_before_writing_anything(tmp_path, capsys):
    args = [
        "fit", "--config", str(ROOT / "configs" / "quickstart.yaml"),
        "--trainer.default_root_dir", str(tmp_path / "run"),
        "--data.init_args.views.init_args.crop_size", "0",
    ]  # fmt: skip
    with pytest.raises(SystemExit) as exit_:
        main(args)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err
    assert err.strip() == f"distill: error: {VIEWS}.crop_size=0; valid: an integer >= 1", err
    assert not os.path.exists(tmp_path / "run")
