"""Running a trained model: evaluation over a data split, ``dlsys eval`` and ``dlsys predict``.

Every operator runs as a TVM kernel (the model, the loss, the softmax); numpy only batches
the inputs and summarises the outputs (argmax, the confusion matrix).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

import dlsys
from dlsys import autodiff as ad
from dlsys import nn
from dlsys.data.mnist import NUM_CLASSES, Split, load_dataset
from dlsys.errors import DataError
from dlsys.frontend.images import PhotoPreset, read_image, read_photo, takes_photos
from dlsys.nn import functional as F
from dlsys.nn.serialization import infer_input_shape, output_shape

# One image as a model takes it: 2^24 elements (a 4096 x 4096 grey image, 64 MiB as
# float32). MNIST's is 784; a model file that records more is refused before anything is
# allocated for it.
MAX_INPUT_ELEMENTS = 1 << 24


class Evaluator:
    """A model's inference graph (built in eval mode): logits, mean loss and probabilities,
    run in batches of ``batch_size``.

    A last, smaller batch runs on an executor of its own, so that neither executor re-plans
    (each keeps the plan of its one batch shape). With ``fixed_batch`` (a file that fixes its
    batch size, as PyTorch's ONNX export does: its graph may mix rows, in a reshape that
    bakes the batch in, and that batch is the only one its author ran) the last batch is
    padded with zero images to ``batch_size`` instead, and the padding left out of every
    result.
    """

    def __init__(self, model: nn.Module, batch_size: int, ctx=None,
                 input_shape: Sequence[int] | None = None, fixed_batch: bool = False):
        self.batch_size = batch_size
        self.fixed_batch = fixed_batch
        # Images arrive as rows of pixels; a convolutional model views them as C x H x W.
        self.input_shape = tuple(input_shape) if input_shape is not None else None
        self.x, self.labels = ad.Variable("x"), ad.Variable("labels")
        was_training = model.training
        model.eval()
        logits = model(self.x)
        model.train(was_training)
        self.nodes = [logits, F.cross_entropy(logits, self.labels), ad.softmax_op(logits)]
        self.ctx = ctx
        self._executors: dict[tuple[bool, bool], ad.Executor] = {}

    def _executor(self, with_loss: bool, tail: bool) -> ad.Executor:
        key = (with_loss, tail)
        if key not in self._executors:
            nodes = self.nodes[:2] if with_loss else [self.nodes[0], self.nodes[2]]
            self._executors[key] = ad.Executor(nodes, ctx=self.ctx)
        return self._executors[key]

    def compile(self, input_shape: Sequence[int]) -> None:
        """Build the full-batch executor's kernels now (so a timed epoch excludes them)."""
        self._executor(True, False).run(
            {self.x: np.zeros((self.batch_size, *input_shape), dtype=np.float32),
             self.labels: np.zeros(self.batch_size, dtype=np.int64)})

    def logits_shape(self, input_shape: Sequence[int]) -> tuple[int, ...]:
        """The model's output shape for one image of ``input_shape``, by shape inference
        alone: a model that cannot take the images, or gives other than one row of class
        scores, is refused before any kernel is built."""
        return output_shape(self.nodes[0], self.x, tuple(input_shape))

    def _shaped(self, images: np.ndarray) -> np.ndarray:
        if self.input_shape is None:
            return images
        return images.reshape(len(images), *self.input_shape)

    def _padded(self, images: np.ndarray) -> np.ndarray:
        """``images`` with zero images after them up to a whole batch."""
        padding = np.zeros((self.batch_size - len(images), *images.shape[1:]), images.dtype)
        return np.concatenate([images, padding])

    def _padded_labels(self, labels: np.ndarray, images: np.ndarray) -> np.ndarray:
        """One-hot rows for ``labels``, then all-zero rows for the padding: cross-entropy
        adds nothing for a row labelled all 0, so the batch's mean loss is the real rows'
        sum over the whole batch."""
        classes = output_shape(self.nodes[0], self.x, images.shape[1:])[1]
        rows = np.zeros((self.batch_size, classes), np.float32)
        rows[np.arange(len(labels)), labels.astype(int)] = 1
        return rows

    def evaluate(self, split: Split) -> tuple[float, float, np.ndarray]:
        """Mean loss, accuracy and logits over ``split``."""
        logits, total_loss = [], 0.0
        for start in range(0, len(split), self.batch_size):
            images = self._shaped(split.images[start:start + self.batch_size])
            labels = split.labels[start:start + self.batch_size]
            count, tail = len(images), len(images) < self.batch_size
            if tail and self.fixed_batch:
                labels = self._padded_labels(labels, images)
                images = self._padded(images)
            out, loss = self._executor(True, tail).run({self.x: images, self.labels: labels},
                                                       convert_to_numpy_ret_vals=True)
            logits.append(out[:count])
            total_loss += float(loss[0]) * len(images)
        all_logits = np.concatenate(logits)
        accuracy = float(np.mean(np.argmax(all_logits, axis=1) == split.labels))
        return total_loss / len(split), accuracy, all_logits

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """Softmax of the logits, one row per image."""
        rows = []
        for start in range(0, len(images), self.batch_size):
            chunk = self._shaped(images[start:start + self.batch_size])
            count, tail = len(chunk), len(chunk) < self.batch_size
            if tail and self.fixed_batch:
                chunk = self._padded(chunk)
            out = self._executor(False, tail).run({self.x: chunk}, convert_to_numpy_ret_vals=True)
            rows.append(out[1][:count])
        return np.concatenate(rows)


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, classes: int) -> np.ndarray:
    """``m[t, p]``: how many images of true class ``t`` were predicted as ``p``."""
    return np.bincount(labels.astype(int) * classes + predicted,
                       minlength=classes * classes).reshape(classes, classes)


MODEL_FILE = "model.npz"  # what dlsys train writes into its run folder


def model_file(path: Path) -> Path:
    """The model file ``path`` names: itself, or a run folder's ``model.npz``."""
    if not path.is_dir():
        return path
    if (path / MODEL_FILE).is_file():
        return path / MODEL_FILE
    raise DataError(f"{path} is a folder, not a model file, and holds no {MODEL_FILE} (a run "
                    f"folder has one once its run finished)")


def _load(path: Path, free_photo_sides: bool = False) -> nn.Module:
    if path.suffix.lower() == ".onnx":
        return _load_onnx(path, free_photo_sides)
    model = dlsys.load(path)
    metadata = getattr(model, "metadata", {})
    if "vocab" in metadata:
        raise DataError(f"{path}: a character-level language model (dlsys train --model "
                        f"gpt), not an image classifier; sample it with: dlsys generate "
                        f"{path}")
    shape = metadata.get("input_shape")
    if shape is None:
        # A file that dlsys.save wrote before it recorded shapes, or for a model whose first
        # layer fixes none: the architecture may still fix it.
        inferred = infer_input_shape(model)
        if inferred is None:
            raise DataError(f"{path}: the model file does not record its input shape, and "
                            f"its first layer does not fix one; save it with "
                            f"dlsys.save(model, path, input_shape=(1, 28, 28)) (one image, "
                            f"without the batch)")
        shape = metadata["input_shape"] = list(inferred)
    if not (isinstance(shape, list) and shape and all(isinstance(d, int) and d > 0
                                                      for d in shape)):
        raise DataError(f"{path}: the model file records input shape {shape!r}, not a list "
                        f"of positive ints; save it with dlsys.save(model, path, "
                        f"input_shape=(784,))")
    _check_input_size(path, shape)
    return model


def _check_input_size(path: Path, shape: Sequence[int]) -> None:
    """An input shape from a file is a request to allocate: bounded before it is obeyed."""
    if math.prod(shape) > MAX_INPUT_ELEMENTS:
        raise DataError(f"{path}: input shape {list(shape)} has {math.prod(shape)} elements "
                        f"per image, more than the {MAX_INPUT_ELEMENTS} dlsys eval and "
                        f"predict take")


def _check_outputs(path: Path, outputs: tuple[int, ...], classes: int | None = None) -> None:
    """One row of class scores per image (``classes`` of them, when the data set says)."""
    if len(outputs) != 2:
        raise DataError(f"{path}: the model's output has shape {outputs} for one image; "
                        f"dlsys eval and predict take one row of class scores per image")
    if classes is not None and outputs[1] != classes:
        raise DataError(f"{path}: the model has {outputs[1]} outputs, the data set "
                        f"{classes} classes")


def _load_onnx(path: Path, free_photo_sides: bool = False) -> nn.Module:
    """An ONNX model with one input and one output (the logits), its input shape read from
    the graph's input: every dimension after the batch must be fixed, except, with
    ``free_photo_sides``, the height and width of a colour image (N, 3, H, W), recorded as
    None (``dlsys predict`` crops photos to a size of its choosing)."""
    from dlsys.onnx import import_model  # the optional onnx extra, needed only here

    model = import_model(path)
    if len(model.input_names) != 1 or len(model.output_names) != 1:
        raise DataError(f"{path}: the model has inputs {model.input_names} and outputs "
                        f"{model.output_names}; dlsys eval and predict take one of each")
    dims = model.declared[model.input_names[0]][0]
    if free_photo_sides and dims is not None and len(dims) == 4 and dims[1] == 3:
        dims = [*dims[:2], *(d if isinstance(d, int) else None for d in dims[2:])]
        if takes_photos(tuple(dims[1:])):
            model.metadata = {**model.metadata, "input_shape": list(dims[1:])}
            return model
    if dims is None or len(dims) < 2 or not all(isinstance(d, int) for d in dims[1:]):
        raise DataError(f"{path}: input {model.input_names[0]!r} has shape {dims}; dlsys eval "
                        f"and predict need every dimension after the batch fixed")
    _check_input_size(path, dims[1:])
    # Beside what the importer read from the file (the class names its metadata records).
    model.metadata = {**model.metadata, "input_shape": list(dims[1:])}
    return model


# A --classes file: a name a line, for at most a few thousand classes.
MAX_CLASSES_FILE_BYTES = 1 << 20


def class_names_option(text: str) -> list[str]:
    """``--classes``: a file of one name a line, or names separated by commas."""
    path = Path(text)
    if path.is_file():
        if path.stat().st_size > MAX_CLASSES_FILE_BYTES:
            raise DataError(f"--classes {path}: over {MAX_CLASSES_FILE_BYTES} bytes; a classes "
                            f"file holds one name a line")
        try:
            names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as err:
            raise DataError(f"--classes {path}: unreadable ({err})") from None
    else:
        names = [name.strip() for name in text.split(",")]
    if not names or not all(names):
        raise DataError(f"--classes {text!r}: give names separated by commas, or a file of "
                        f"one name a line")
    return names


def _class_names(model: nn.Module, count: int, given: list[str] | None = None) -> list[str]:
    """What each of the model's ``count`` outputs means: ``--classes``, else the names the
    file records, else the indices."""
    if given is not None:
        if len(given) != count:
            raise DataError(f"--classes names {len(given)} classes; the model has {count} "
                            f"outputs")
        return given
    names = getattr(model, "metadata", {}).get("classes")
    if isinstance(names, list) and len(names) == count and all(isinstance(n, str) for n in names):
        return names
    return [str(i) for i in range(count)]


def _fixed_batch(model: nn.Module, path: Path, log: Callable[[str], None]) -> int | None:
    """The batch size an ONNX file fixes (None for a free one, and for dlsys's own files),
    announced: the images then run in batches of exactly that size."""
    fixed = getattr(model, "fixed_batch", None)
    if fixed is not None:
        log(f"{path} fixes the batch size at {fixed}: images run in batches of {fixed}, the "
            f"last padded")
    return fixed


def evaluate_command(model_path: Path, data: str | None, batch_size: int,
                     confusion_png: Path | None, log: Callable[[str], None] = print,
                     classes: list[str] | None = None) -> dict:
    """``dlsys eval``: loss, accuracy, per-class accuracy and confusion matrix on the test
    split; returns them as a dict. ``classes``: names for the model's outputs."""
    model_path = model_file(model_path)
    model = _load(model_path)
    dataset = load_dataset(data)
    expected = tuple(model.metadata["input_shape"])
    if math.prod(dataset.test.images.shape[1:]) != math.prod(expected):
        raise DataError(f"{dataset.source}: images of shape {dataset.test.images.shape[1:]}, "
                        f"the model takes {expected}")
    fixed = _fixed_batch(model, model_path, log)
    evaluator = Evaluator(model, fixed or min(batch_size, len(dataset.test)),
                          input_shape=expected, fixed_batch=fixed is not None)
    outputs = evaluator.logits_shape(expected)
    _check_outputs(model_path, outputs, NUM_CLASSES)
    names = _class_names(model, outputs[1], classes)
    loss, accuracy, logits = evaluator.evaluate(dataset.test)
    matrix = confusion_matrix(dataset.test.labels, logits.argmax(axis=1), outputs[1])
    per_class = matrix.diagonal() / np.maximum(matrix.sum(axis=1), 1)
    log(f"{model_path} on {dataset.source} test split ({len(dataset.test)} images)")
    log(f"loss {loss:.4f}  accuracy {100 * accuracy:.2f}%")
    width = max(len(n) for n in names)
    for name, value, count in zip(names, per_class, matrix.sum(axis=1)):
        log(f"  {name:{width}s}  {100 * value:6.2f}%  of {count}")
    log("confusion matrix (rows: true class, columns: predicted):")
    for row in matrix:
        log("  " + " ".join(f"{v:5d}" for v in row))
    if confusion_png is not None:
        plot_confusion(matrix, names, confusion_png, f"{model_path.name}: accuracy "
                                                     f"{100 * accuracy:.2f}%")
        log(f"wrote {confusion_png}")
    return {"loss": loss, "accuracy": accuracy, "per_class": per_class.tolist(),
            "confusion": matrix.tolist()}


def plot_confusion(matrix: np.ndarray, names: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on servers
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 6))
    image = ax.imshow(matrix, cmap="Blues")
    ax.set(xticks=range(len(names)), yticks=range(len(names)), xlabel="predicted",
           ylabel="true", title=title)
    ax.set_xticklabels(names, rotation=45, ha="right")
    ax.set_yticklabels(names)
    for (t, p), count in np.ndenumerate(matrix):
        ax.text(p, t, str(count), ha="center", va="center", fontsize=7,
                color="white" if count > matrix.max() / 2 else "black")
    fig.colorbar(image)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# How many classes ``dlsys predict`` lists for a photo, most probable first.
TOP_CLASSES = 5


def predict_command(model_path: Path, images: Sequence[Path],
                    log: Callable[[str], None] = print, invert: str = "auto",
                    classes: list[str] | None = None, photo: dict | None = None
                    ) -> list[tuple[str, float]]:
    """``dlsys predict``: each image's most probable class and its probability (``invert``:
    see :func:`dlsys.frontend.images.read_image`; ``classes``: names for the outputs).

    A model taking colour images of at least 64 x 64 (an ImageNet-style one, as torchvision
    exports) gets photos preprocessed as torchvision's ImageNet preset does
    (:class:`dlsys.frontend.images.PhotoPreset`; ``photo`` holds what the command line
    changes of it: ``resize``, ``crop``, ``mean``, ``std``), and each image's
    ``TOP_CLASSES`` most probable classes are printed."""
    model_path = model_file(model_path)
    model = _load(model_path, free_photo_sides=True)
    input_shape = tuple(model.metadata["input_shape"])
    photo = {k: v for k, v in (photo or {}).items() if v is not None}
    if takes_photos(input_shape):
        preset = PhotoPreset.for_input(input_shape[1:], **photo)
        input_shape = (3, *preset.crop)
        _check_input_size(model_path, input_shape)
        read = [(read_photo(Path(p), preset), False) for p in images]
    else:
        if photo:
            raise DataError(f"--{'/--'.join(photo)}: for models taking colour images of at "
                            f"least 64x64 (N, 3, H, W); {model_path} takes {input_shape}")
        read = [read_image(Path(p), input_shape, invert) for p in images]
    batch = np.stack([pixels for pixels, _ in read])
    fixed = _fixed_batch(model, model_path, log)
    evaluator = Evaluator(model, fixed or len(batch), fixed_batch=fixed is not None)
    outputs = evaluator.logits_shape(input_shape)
    _check_outputs(model_path, outputs)
    names = _class_names(model, outputs[1], classes)
    probabilities = evaluator.probabilities(batch)
    results = []
    for path, row, (_, inverted) in zip(images, probabilities, read):
        best = int(row.argmax())
        results.append((names[best], float(row[best])))
        if takes_photos(input_shape):
            log(f"{path}:")
            for rank, index in enumerate(np.argsort(-row, kind="stable")[:TOP_CLASSES], 1):
                log(f"  {rank}. {names[index]} ({100 * row[index]:.1f}%)")
            continue
        how = ", inverted" if inverted else ""  # read as light on dark, as the model learnt
        log(f"{path}: {names[best]} ({100 * row[best]:.1f}%{how})")
    return results
