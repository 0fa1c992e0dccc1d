"""Fixtures shared by the method tests."""

import pytest
import torch

from distill.methods import Supervised


@pytest.fixture(scope="module")
def teacher_checkpoint(tmp_path_factory):
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("teacher") / "teacher.ckpt"
    torch.save({"state_dict": Supervised(backbone="resnet14", num_classes=5).state_dict()}, path)
    return str(path)
