"""Images for ``dlsys predict``: decoded, grey-scaled and resized to the model's input, read
with the polarity of MNIST's (light on dark), and judged against what such images are like.

MNIST and Fashion-MNIST images are a light object centred on a dark, plain background and
stretched to full contrast: every one of Fashion-MNIST's 70,000 images has a pixel above
0.99, and its one-pixel border is dark in all but a few. A photo of a shoe on white paper
is the opposite polarity, and is inverted (``--invert auto`` looks at the border). An image
unlike them all (a plot of training curves: wider than high, and faint once squeezed into
28 x 28) still gets a class with a high probability, and the most a model can do about it
is be told: the warning says why the prediction means little.

Colour photos for ImageNet-style models (input 3 x H x W, sides of 64 or more) are read as
torchvision's ImageNet preset reads them instead (``PhotoPreset``, ``read_photo``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
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
    def grey(image) -> np.ndarray:
        return np.asarray(image.convert("L").resize((side, side)), dtype=np.float32) / 255.0

    return _decoded(path, grey)


def _decoded(path: Path, convert: Callable) -> tuple[np.ndarray, int, int]:
    """``convert(image)`` of the PNG or JPEG at ``path``, opened by Pillow once its header
    declares no more than ``MAX_IMAGE_PIXELS``, and the size it was decoded at."""
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
                return convert(image), width, height
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


# Colour photos for ImageNet-style models: torchvision's evaluation preset (the shorter
# side resized to 256 with bilinear filtering, the central 224 x 224 kept, each channel
# normalised by ImageNet's statistics), which such models' weights were trained behind.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_RESIZE, IMAGENET_CROP = 256, 224
# A model taking (N, 3, H, W) with both sides at least this is read as one for photos;
# smaller colour inputs (CIFAR's 32 x 32) are resized as a whole, as grey ones are.
MIN_PHOTO_SIDE = 64


def takes_photos(input_shape: tuple) -> bool:
    """Whether a model's input shape (one image, without the batch) is an ImageNet-style
    one: three channels, each side at least ``MIN_PHOTO_SIDE`` (or left free: None)."""
    return (len(input_shape) == 3 and input_shape[0] == 3
            and all(side is None or side >= MIN_PHOTO_SIDE for side in input_shape[1:]))


@dataclass(frozen=True)
class PhotoPreset:
    """How a photo becomes a model's input: its shorter side resized to ``resize``, the
    central ``crop`` (height, width) kept, then ``(pixel - mean) / std`` per channel (R, G,
    B, pixels in [0, 1])."""

    resize: int
    crop: tuple[int, int]
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @classmethod
    def for_input(cls, sides: tuple, resize: int | None = None,
                  crop: tuple[int, int] | None = None, mean=None, std=None) -> PhotoPreset:
        """The preset for a model whose input has ``sides`` (height, width; None where the
        model leaves one free): the crop is the model's size (224 where it is free), and
        the resize keeps ImageNet's 256 : 224 margin around it unless told otherwise."""
        fixed = tuple(sides) if all(s is not None for s in sides) else None
        if crop is not None and fixed is not None and tuple(crop) != fixed:
            raise DataError(f"--crop {crop[0]}x{crop[1]}: the model takes {fixed[0]}x"
                            f"{fixed[1]} images")
        crop = tuple(crop or fixed or (IMAGENET_CROP, IMAGENET_CROP))
        if resize is None:
            resize = round(min(crop) * IMAGENET_RESIZE / IMAGENET_CROP)
        if resize < min(crop):
            raise DataError(f"--resize {resize}: the shorter side must be at least the crop's "
                            f"({crop[0]}x{crop[1]})")
        return cls(resize, crop, tuple(mean or IMAGENET_MEAN), tuple(std or IMAGENET_STD))

    def apply(self, image) -> np.ndarray:
        """A Pillow image as the model's input: float32 (3, height, width)."""
        from PIL import Image

        width, height = image.size
        # The shorter side to `resize`, the longer in proportion, rounded down (as
        # torchvision's Resize(int) computes it).
        if width <= height:
            size = (self.resize, int(self.resize * height / width))
        else:
            size = (int(self.resize * width / height), self.resize)
        crop_height, crop_width = self.crop
        if size[0] < crop_width or size[1] < crop_height:
            raise DataError(f"a {width}x{height} image resized to {size[0]}x{size[1]} (shorter "
                            f"side {self.resize}) is smaller than the crop, {crop_height}x"
                            f"{crop_width} (height x width); give a larger --resize")
        resized = image.convert("RGB").resize(size, Image.BILINEAR)
        top = int(round((size[1] - crop_height) / 2))
        left = int(round((size[0] - crop_width) / 2))
        cropped = resized.crop((left, top, left + crop_width, top + crop_height))
        pixels = np.asarray(cropped, dtype=np.float32) / 255.0
        normalised = (pixels - np.float32(self.mean)) / np.float32(self.std)
        return np.ascontiguousarray(normalised.transpose(2, 0, 1), dtype=np.float32)


def read_photo(path: Path, preset: PhotoPreset) -> np.ndarray:
    """One colour image as an ImageNet-style model's input (3, height, width). A PNG or
    JPEG goes through ``preset``; a ``.npy`` array is taken as that input already
    (preprocessed), its values only checked to be finite."""
    shape = (3, *preset.crop)
    if path.suffix.lower() != ".npy":
        try:
            return _decoded(path, preset.apply)[0]
        except DataError as err:
            if str(err).startswith(str(path)):
                raise
            raise DataError(f"{path}: {err}") from None
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: not a readable .npy array ({err})") from None
    if array.size != math.prod(shape) or not np.issubdtype(array.dtype, np.number) \
            or np.iscomplexobj(array):
        raise DataError(f"{path}: needs {math.prod(shape)} real values (the model's input "
                        f"{shape}), got an array of {array.dtype} with shape {array.shape}")
    pixels = np.asarray(array, dtype=np.float32).reshape(shape)
    if not np.isfinite(pixels).all():
        raise DataError(f"{path}: values must be finite")
    return pixels


def three_floats(flag: str, text: str, positive: bool = False) -> tuple[float, float, float]:
    """``--mean`` / ``--std``: one number per channel (R, G, B), separated by commas."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or not all(math.isfinite(v) and (v > 0 or not positive)
                                   for v in values):
        kind = "positive numbers" if positive else "numbers"
        example = ",".join(map(str, IMAGENET_STD if positive else IMAGENET_MEAN))
        raise DataError(f"{flag} {text!r}: give three {kind} separated by commas (R,G,B), "
                        f"e.g. {flag} {example}")
    return values


def crop_size(text: str) -> tuple[int, int]:
    """``--crop``: N (a square) or HxW, in pixels."""
    parts = text.lower().split("x")
    if len(parts) in (1, 2) and all(p.strip().isdigit() and int(p) > 0 for p in parts):
        sides = [int(p) for p in parts]
        return (sides[0], sides[-1])
    raise DataError(f"--crop {text!r}: give the side of a square (224) or HEIGHTxWIDTH "
                    f"(224x224)")


def photo_options(resize: int | None, crop: str | None, mean: str | None,
                  std: str | None) -> dict:
    """``dlsys predict``'s ``--resize``, ``--crop``, ``--mean`` and ``--std`` as
    :meth:`PhotoPreset.for_input` takes them; only those given."""
    options = {"resize": resize, "crop": None if crop is None else crop_size(crop),
               "mean": None if mean is None else three_floats("--mean", mean),
               "std": None if std is None else three_floats("--std", std, positive=True)}
    return {name: value for name, value in options.items() if value is not None}
