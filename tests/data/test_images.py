"""The per-file check and loader of distill/data/images.py, on generated files."""

import numpy as np
import pytest
from PIL import Image, ImageFile

from distill.data.images import check_image, load_rgb
from distill.errors import ConfigError


def noise(size=48, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def truncated(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_header_check_catches_truncation_without_decoding(tmp_path, suffix, monkeypatch):
    path = tmp_path / f"image{suffix}"
    noise().save(path)
    assert check_image(str(path)) is None
    truncated(path)
    if suffix == ".png":  # verify() alone finds it: no decode
        monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("decoded"))
    assert "truncated" in check_image(str(path)).lower()


def test_jpeg_with_bytes_after_its_end_marker_is_decoded_not_refused(tmp_path):
    path = tmp_path / "trailer.jpg"
    noise().save(path)
    path.write_bytes(path.read_bytes() + b"camera trailer")
    assert check_image(str(path)) is None


def test_corrupt_png_body_fails_the_header_check(tmp_path):
    path = tmp_path / "flipped.png"
    noise().save(path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, bad IDAT CRC
    path.write_bytes(bytes(data))
    assert check_image(str(path)) is not None


def test_float_image_is_unsupported(tmp_path):
    path = tmp_path / "depth.tif"
    Image.fromarray(np.zeros((8, 8), dtype=np.float32)).save(path)
    assert check_image(str(path)) == "unsupported pixel mode 'F'"


def test_load_rgb_names_the_file(tmp_path):
    path = tmp_path / "broken.jpg"
    noise().save(path)
    truncated(path)
    with pytest.raises(ConfigError, match="broken.jpg") as error:
        load_rgb(str(path))
    assert "truncated" in str(error.value)
