"""``dlsys predict`` on images unlike MNIST's (issue 24): a dark-on-white photo is inverted
(``--invert auto|yes|no``), and an image that looks nothing like the training data (a plot
of training curves) gets a warning."""

import numpy as np
import pytest
from cli_runner import run_cli as _run
from PIL import Image

import dlsys
from dlsys import nn
from dlsys.data.mnist import DEFAULT_DATA_DIR, load_dataset
from dlsys.frontend.images import light_border, unlike_training_images

# A disc in the middle of a 28 x 28 image: where an MNIST-like object lies.
_ROWS, _COLS = np.mgrid[:28, :28]
CENTRE = ((_ROWS - 13.5) ** 2 + (_COLS - 13.5) ** 2 < 8 ** 2).astype(np.float32)


@pytest.fixture(scope="module")
def centre_model(tmp_path_factory):
    """A model that answers "object" when the middle of the image is light (as MNIST's
    objects are) and "nothing" when it is dark."""
    model = nn.Sequential(nn.Linear(784, 2))
    weight = np.stack([CENTRE.ravel(), -CENTRE.ravel()])
    model.load_state_dict({"0.weight": weight, "0.bias": np.array([0, CENTRE.sum() / 2],
                                                                  np.float32)})
    path = tmp_path_factory.mktemp("model") / "centre.npz"
    dlsys.save(model, path, metadata={"classes": ["object", "nothing"]})
    return path


def _photo(path, light_object: bool, size: int = 280):
    """A square photo of a disc: light on black, or dark on white paper (a shoe on a
    table), at ten times MNIST's size with a little noise."""
    disc = np.kron(CENTRE, np.ones((size // 28, size // 28)))
    pixels = 255 * (disc if light_object else 1 - disc)
    noise = np.random.default_rng(0).normal(0, 6, pixels.shape)
    Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8)).save(path)
    return path


def _predict(capsys, *args) -> tuple[list[str], list[str]]:
    assert _run(["predict", *map(str, args)]) == 0
    captured = capsys.readouterr()
    return captured.out.strip().splitlines(), captured.err.strip().splitlines()


def test_a_dark_on_white_photo_is_inverted_unless_told_not_to(capsys, centre_model, tmp_path):
    photo = _photo(tmp_path / "shoe.png", light_object=False)
    (line,), warnings = _predict(capsys, centre_model, photo)
    assert line.startswith(f"{photo}: object (") and line.endswith(", inverted)")
    assert warnings == []
    (line,), warnings = _predict(capsys, centre_model, photo, "--invert", "no")
    assert line.startswith(f"{photo}: nothing (")
    assert len(warnings) == 1 and "100 % of its border is lit" in warnings[0]


def test_a_light_on_dark_photo_is_read_as_it_is(capsys, centre_model, tmp_path):
    photo = _photo(tmp_path / "digit.png", light_object=True)
    (line,), warnings = _predict(capsys, centre_model, photo)
    assert line.startswith(f"{photo}: object (") and "inverted" not in line
    assert warnings == []
    (line,), _ = _predict(capsys, centre_model, photo, "--invert", "yes")
    assert line.startswith(f"{photo}: nothing (") and line.endswith(", inverted)")


def test_a_plot_of_training_curves_gets_a_warning(capsys, data_dir, tmp_path):
    run = tmp_path / "run"
    assert _run(["train", "--model", "logreg", "--data", str(data_dir), "--val-size", "100",
                 "--batch-size", "50", "--epochs", "2", "--out", str(run),
                 "--no-progress"]) == 0
    capsys.readouterr()
    (line,), (warning,) = _predict(capsys, run, run / "curves.png")
    assert line.startswith(f"{run / 'curves.png'}: ")
    assert warning.startswith(f"dlsys: warning: {run / 'curves.png'} looks nothing like the "
                              f"training images")
    assert "squeezed into a square" in warning and "brightest pixel" in warning


def test_an_unknown_invert_mode_is_a_flag_error(capsys, centre_model, tmp_path):
    assert _run(["predict", str(centre_model), "x.png", "--invert", "maybe"]) == 2
    assert "argument --invert: invalid choice: 'maybe'" in capsys.readouterr().err


@pytest.mark.skipif(not DEFAULT_DATA_DIR.is_dir(),
                    reason=f"Fashion-MNIST is not installed in {DEFAULT_DATA_DIR}")
def test_the_training_images_are_neither_inverted_nor_warned_about():
    images = load_dataset(DEFAULT_DATA_DIR).test.images.reshape(-1, 28, 28)
    images = images.astype(np.float32) / (255 if images.max() > 1 else 1)
    assert not any(light_border(image) for image in images)
    warned = sum(bool(unlike_training_images(image, 28, 28)) for image in images)
    assert warned <= len(images) // 1000
