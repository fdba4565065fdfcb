"""Images for ``dlsys predict``: decoded, grey-scaled and resized to the model's input, read
with the polarity of MNIST's (light on dark), and judged against what such images are like.

MNIST and Fashion-MNIST images are a light object centred on a dark, plain background and
stretched to full contrast: every one of Fashion-MNIST's 70,000 images has a pixel above
0.99, and its one-pixel border is dark in all but a few. A photo of a shoe on white paper
is the opposite polarity, and is inverted (``--invert auto`` looks at the border). An image
unlike them all (a plot of training curves: wider than high, and faint once squeezed into
28 x 28) still gets a class with a high probability, and the most a model can do about it
is be told: the warning says why the prediction means little.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np

from dlsys.errors import DataError

# One image file as it is decoded: 2^24 pixels (4096 x 4096); a PNG whose header declares
# more is refused before anything is decoded.
MAX_IMAGE_PIXELS = 1 << 24
INVERT_CHOICES = ("auto", "yes", "no")
# --invert auto reads an image as dark on light when this share of its border is light.
# A border of noise (half light) is left alone: it says nothing of the polarity.
LIGHT_BORDER_SHARE = 0.75
# What the training images never are, once light on dark. Measured on Fashion-MNIST's test
# split: the brightest pixel is at least 0.996 in every image; the border's pixels over
# half brightness are at most 36 % of it (median 0 %).
FAINT = 0.5
LIT_BORDER_SHARE = 0.5
# Wider than high (or higher than wide) by more than this: resizing to a square distorts it.
MAX_ASPECT = 1.5


def _border(pixels: np.ndarray) -> np.ndarray:
    """The outermost ring of pixels of a 2-D image."""
    return np.concatenate([pixels[0], pixels[-1], pixels[1:-1, 0], pixels[1:-1, -1]])


def light_border(pixels: np.ndarray) -> bool:
    """Whether the image is dark on light: most of its border is over half brightness."""
    return float(np.mean(_border(pixels) > 0.5)) >= LIGHT_BORDER_SHARE


def unlike_training_images(pixels: np.ndarray, width: int, height: int) -> list[str]:
    """Why an image (2-D, light on dark, in [0, 1]; decoded from ``width`` x ``height``)
    looks nothing like MNIST's, or nothing."""
    reasons = []
    if max(width, height) > MAX_ASPECT * min(width, height):
        reasons.append(f"it is {width}x{height} pixels, squeezed into a square")
    brightest = float(pixels.max())
    if brightest < FAINT:
        reasons.append(f"its brightest pixel is {100 * brightest:.0f} % of white once "
                       f"resized, where the training images reach 100 %")
    lit = float(np.mean(_border(pixels) > 0.5))
    if lit > LIT_BORDER_SHARE:
        reasons.append(f"{100 * lit:.0f} % of its border is lit, where the training images "
                       f"have a plain dark one")
    return reasons


def _read_npy(path: Path, size: int) -> np.ndarray:
    """A ``.npy`` array of ``size`` pixels in [0, 1], fed as it is."""
    try:
        # Mapped, not read: its header's shape is checked before its data is loaded.
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: not a readable .npy array ({err})") from None
    if array.size != size or not np.issubdtype(array.dtype, np.number) \
            or np.iscomplexobj(array):
        raise DataError(f"{path}: needs {size} real pixel values, got an array of "
                        f"{array.dtype} with shape {array.shape}")
    pixels = array.astype(np.float32)
    if not np.isfinite(pixels).all() or pixels.min() < 0 or pixels.max() > 1:
        raise DataError(f"{path}: pixel values must be finite and in [0, 1]")
    return pixels


def _decode(path: Path, side: int) -> tuple[np.ndarray, int, int]:
    """A PNG or JPEG grey-scaled and resized to ``side`` x ``side``, in [0, 1], and the size
    it was decoded at."""
    from PIL import Image, UnidentifiedImageError

    try:
        # PIL only warns between its own limit and twice it; here a bomb is an error.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:  # reads the header: the size, no pixels yet
                width, height = image.size
                if width * height > MAX_IMAGE_PIXELS:
                    raise DataError(f"{path}: an image of {width}x{height} pixels, more than "
                                    f"the {MAX_IMAGE_PIXELS} dlsys predict decodes")
                grey = image.convert("L").resize((side, side))
                return np.asarray(grey, dtype=np.float32) / 255.0, width, height
    except UnidentifiedImageError:
        raise DataError(f"{path}: not an image (PNG or JPEG) nor a .npy array") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise DataError(f"{path}: too large an image to decode ({err})") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read the image ({err})") from None


def read_image(path: Path, input_shape: tuple[int, ...], invert: str = "auto"
               ) -> tuple[np.ndarray, bool]:
    """One image as the model's input, and whether it was inverted.

    A PNG or JPEG is grey-scaled, resized and inverted when ``invert`` is ``yes``, or
    ``auto`` and its border is light; a warning says when it looks nothing like the
    training images. A ``.npy`` array (pixels in [0, 1] with the input's number of
    elements) is the model's input already, and is fed as it is.
    """
    size = math.prod(input_shape)
    if path.suffix.lower() == ".npy":
        return _read_npy(path, size).reshape(input_shape), False
    side = math.isqrt(size)
    if side * side != size:
        raise DataError(f"the model's input {input_shape} is not a square image")
    pixels, width, height = _decode(path, side)
    inverted = invert == "yes" or (invert == "auto" and light_border(pixels))
    if inverted:
        pixels = 1.0 - pixels
    reasons = unlike_training_images(pixels, width, height)
    if reasons:
        warnings.warn(f"{path} looks nothing like the training images (light on dark, "
                      f"square, full contrast): {'; '.join(reasons)}. Its prediction means "
                      f"little", UserWarning, stacklevel=2)
    return pixels.reshape(input_shape), inverted
