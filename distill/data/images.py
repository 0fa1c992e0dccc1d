"""Opening one training image: RGB conversion, the setup check, and errors that name the file."""

from __future__ import annotations

import numpy as np
from PIL import Image

from distill.errors import ConfigError

#: Pillow's 16-bit greyscale modes; ``convert("RGB")`` would clip them to 255.
SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
#: Modes Pillow converts to RGB without clipping (32-bit "I" and float "F" are not among them).
RGB_MODES = frozenset(
    {"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"}
)
JPEG_END = b"\xff\xd9"


def is_sixteen_bit(image: Image.Image) -> bool:
    """Whether ``image`` is 16-bit greyscale (older Pillows open such PNGs as mode "I")."""
    return image.mode in SIXTEEN_BIT_MODES or (image.mode == "I" and image.format == "PNG")


def to_rgb(image: Image.Image) -> Image.Image:
    """``image`` as 8-bit RGB; 16-bit greyscale keeps its high byte, as Pillow does for 16-bit RGB.

    Raises:
        ValueError: A pixel mode without a faithful RGB conversion (32-bit integer, float).
    """
    if is_sixteen_bit(image):
        pixels = np.clip(np.asarray(image, dtype=np.int64), 0, 65535) >> 8
        return Image.fromarray(pixels.astype(np.uint8)).convert("RGB")
    if image.mode not in RGB_MODES:
        raise ValueError(f"unsupported pixel mode {image.mode!r}")
    return image.convert("RGB")


def _ends_with_jpeg_end(path: str) -> bool:
    with open(path, "rb") as file:
        file.seek(0, 2)
        if file.tell() < len(JPEG_END):
            return False
        file.seek(-len(JPEG_END), 2)
        return file.read() == JPEG_END


def check_image(path: str, decode: bool = False) -> str | None:
    """Why ``path`` cannot become a training image, or ``None`` when it can.

    The cheap check opens the header and runs Pillow's ``verify()``: for PNG it reads every
    chunk up to IEND and checks its CRC, so truncation and corruption are found without
    decoding. Pillow's JPEG ``verify()`` checks nothing, so a JPEG must end with the
    end-of-image marker; one that does not (truncated, or with bytes after the marker) is
    decoded in full rather than refused. Other formats only have their header checked.

    Args:
        path: The image file.
        decode: Also decode every file and convert it to RGB (slow, catches everything).
    """
    try:
        with Image.open(path) as image:
            if not (is_sixteen_bit(image) or image.mode in RGB_MODES):
                return f"unsupported pixel mode {image.mode!r}"
            decode = decode or (image.format == "JPEG" and not _ends_with_jpeg_end(path))
            image.verify()
        if decode:
            with Image.open(path) as image:
                to_rgb(image)
    except Exception as error:  # Pillow raises OSError, SyntaxError, ValueError, struct.error...
        return f"{type(error).__name__}: {error}"
    return None


def load_rgb(path: str) -> Image.Image:
    """torchvision's image loader with ``to_rgb``; a file that fails to decode is named.

    Raises:
        ConfigError: The file cannot be decoded (it changed since the setup check, or the
            check was off or only read its header).
    """
    try:
        with Image.open(path) as image:
            return to_rgb(image)
    except Exception as error:
        raise ConfigError(
            f"cannot decode image {path!r} ({type(error).__name__}: {error}); re-encode or "
            f"remove it (data.init_args.verify_images=decode finds such files at setup)."
        ) from error
