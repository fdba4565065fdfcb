"""A run's settings, light enough for the command line to check flags without loading TVM:
the models' names and shapes, the optimisers and schedules, defaults, and ``RunSettings``,
the one frozen record of a run's settings: built from the flags (``from_args``) or from a
recorded run (``from_record``: ``run.json``, checkpoints), checked in one place
(``settings_problem``, which the constructor runs), written back by ``to_record``.

The learning rate's whole path through the front end is here: its default (``default_lr``),
its check (``learning_rate_problem``, also the ``--lr`` flag's), its schedule per epoch
(``RunSettings.lr_at``); the trainer hands it to the optimiser, whose kernel reads it."""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from dlsys.errors import ArgumentError, ArgumentTypeError, DataError, DlsysError

# The image classifiers, trained on MNIST-format data, and the character-level GPT
# (dlsys.nn.gpt), trained on a text corpus.
IMAGE_MODELS = ("logreg", "mlp", "lenet", "cnn")
MODELS = (*IMAGE_MODELS, "gpt")
# Where ``dlsys train`` puts a run without --out: runs/<model>, runs/<model>-2, ...
RUNS_DIR = "runs"
DEFAULT_MODEL = "mlp"
DEFAULT_HIDDEN = (256, 100)
INPUT_FEATURES = 784
NUM_CLASSES = 10
# What each model takes per image: dense models the 784 pixels in a row, convolutional ones
# a 1 x 28 x 28 image (the same pixels, viewed without a copy).
INPUT_SHAPES = {"logreg": (784,), "mlp": (784,), "lenet": (1, 28, 28), "cnn": (1, 28, 28)}


def check_model(name: str) -> str:
    if name not in MODELS:
        raise ArgumentError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    return name


def check_hidden(hidden) -> tuple[int, ...]:
    """Hidden layer widths: a non-empty sequence of positive ints."""
    if isinstance(hidden, (str, bytes)) or not isinstance(hidden, Sequence) or not hidden:
        raise ArgumentTypeError(f"hidden sizes must be a list of positive ints, got {hidden!r}")
    for width in hidden:
        if isinstance(width, bool) or not isinstance(width, numbers.Integral) or width <= 0:
            raise ArgumentError(f"hidden sizes must be positive ints, got {list(hidden)}")
    return tuple(int(w) for w in hidden)


def layer_sizes(name: str, hidden: Sequence[int] | None = None) -> tuple[int, ...]:
    """The widths of the model's layers, input first."""
    if check_model(name) == "logreg":
        return (INPUT_FEATURES, NUM_CLASSES)
    return (INPUT_FEATURES, *check_hidden(hidden or DEFAULT_HIDDEN), NUM_CLASSES)


# Training keeps the parameters, their gradients and up to two optimiser moments (Adam's) in
# memory, four copies: 256 MiB of float32 parameters (67 million; the default MLP has
# 0.2 million) keeps that near 1 GiB. Larger widths are refused before anything is built.
MAX_PARAM_BYTES = 256 << 20


def gpt_parameter_count(vocab: int, context: int, width: int, layers: int) -> int:
    """The GPT's parameters (dlsys.nn.gpt): two embeddings and the head, and per block two
    layer norms, the attention's q/k/v and output projections and the 4x MLP."""
    block = 2 * 2 * width + 4 * (width * width + width) + 8 * width * width + 5 * width
    return vocab * width + context * width + layers * block + 2 * width + vocab * width + vocab


def model_size_problem(name: str, hidden: Sequence[int] | None = None,
                       gpt: Mapping | None = None) -> str | None:
    """Why the model's parameters are too large to train, computed from the layer widths
    (before anything is allocated), or None. lenet and cnn are fixed and small; the GPT's
    size is ``gpt``'s settings' (an unknown vocabulary counted as 256 characters)."""
    if name == "gpt" and gpt is not None:
        vocab = len(gpt.get("vocab") or "") or 256
        count = gpt_parameter_count(vocab, gpt["context"], gpt["width"], gpt["layers"])
        what = (f"model gpt with context {gpt['context']}, width {gpt['width']} and "
                f"{gpt['layers']} layers")
    elif name in ("logreg", "mlp"):
        sizes = layer_sizes(name, hidden)
        count = sum((fan_in + 1) * fan_out for fan_in, fan_out in zip(sizes[:-1], sizes[1:]))
        what = f"model {name} with hidden sizes {list(sizes[1:-1])}"
    else:
        return None
    if 4 * count <= MAX_PARAM_BYTES:
        return None
    return (f"{what} has {count} parameters "
            f"({4 * count / 2**30:.1f} GiB of float32), more than the "
            f"{MAX_PARAM_BYTES >> 20} MiB dlsys train holds (with their gradients and "
            f"optimizer state)")


def seed_streams(seed: int) -> tuple[np.random.Generator, np.random.Generator]:
    """Two independent generators from one seed: one for initialisation, one for shuffling.

    Separate streams keep the data order unchanged when the initialisation changes, and let a
    checkpoint save the shuffling state alone.
    """
    init_seq, shuffle_seq = np.random.SeedSequence(seed).spawn(2)
    return np.random.default_rng(init_seq), np.random.default_rng(shuffle_seq)


OPTIMIZER_NAMES = ("sgd", "momentum", "adam", "adamw")
SCHEDULE_NAMES = ("constant", "step", "cosine")
# Per optimiser; measured for SGD (see dlsys.frontend.trainer), PyTorch's for Adam(W).
DEFAULT_LR = {"sgd": 0.2, "momentum": 0.02, "adam": 1e-3, "adamw": 1e-3}
# Where a model needs another rate: the cnn's batch norm lets SGD at 0.2 blow up (validation
# at chance after an epoch), while 0.05 and 0.1 both reach 88.4-88.6 % in 2 epochs.
MODEL_LR = {"cnn": {"sgd": 0.05, "momentum": 0.005}, "gpt": {"adam": 6e-3, "adamw": 6e-3}}


def default_lr(model: str, optimizer: str) -> float:
    """The learning rate a run of ``model`` with ``optimizer`` gets unless ``--lr`` is given."""
    return MODEL_LR.get(model, {}).get(optimizer, DEFAULT_LR[optimizer])


DEFAULT_EPOCHS = 10
DEFAULT_BATCH_SIZE = 1000
# The convolutional models learn far more per epoch in smaller batches (LeNet-5, SGD 0.2,
# 3 epochs: 83.6 % validation accuracy at 256 against 65.6 % at 1000), and a batch of 256
# images keeps their activations in cache-sized pieces.
DEFAULT_BATCH_SIZES = {"lenet": 256, "cnn": 256}
# Far beyond any real run; a larger count in a file is a lie about it.
MAX_EPOCHS = 100000
# The GPT's position table and vocabulary: far beyond what this machine trains, and bounds
# on what a record may ask to allocate.
MAX_CONTEXT = 1 << 16
MAX_VOCABULARY = 1 << 16
# The character-level GPT's run: AdamW at 6e-3 with a warm-up epoch then a cosine decay,
# stepped per batch (see dlsys.frontend.lm), on batches of 16 windows of 128 characters; an
# epoch is 50 steps, the run 70 epochs. Sized so that the default run takes a few minutes
# on 2 cores and ends below 2.5 bits per character: in a fixed time, 16 windows a step
# learnt more than 32 (twice the steps), and 300 steps at 6e-3 reached 3.54 bits per
# character where 2e-3 reached 3.72. On znver4, 2 cores, kernels built: 15 epochs (750
# steps) reached 2.99, 30 epochs 2.67, 70 epochs (3,500 steps, 4.3 s an epoch, about 6.5
# minutes with validation) 2.36.
GPT_DEFAULTS = {"context": 128, "width": 128, "heads": 4, "layers": 4, "dropout": 0.0,
                "steps_per_epoch": 50}
MODEL_DEFAULTS: dict[str, dict[str, object]] = {
    "gpt": {**GPT_DEFAULTS, "optimizer": "adamw", "lr_schedule": "cosine", "warmup": 1,
            "weight_decay": 0.01, "batch_size": 16, "epochs": 70},
}
# As Python floats: comparing a float with a numpy float32 casts the float, which warns when
# it overflows float32, the very case being checked.
FLOAT32_MAX = float(np.finfo(np.float32).max)
FLOAT32_TINY = float(np.finfo(np.float32).tiny)


def learning_rate_problem(lr: object) -> str | None:
    """Why ``lr`` cannot be a learning rate, or None if it can.

    The update runs in float32: a rate must be a positive number that float32 holds, neither
    overflowing (1e39 is infinite there) nor too small for a normal float32 (1e-50 is zero,
    and the run would train nothing).
    """
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real):
        return "must be a positive number"
    value = float(lr)
    if not math.isfinite(value) or value <= 0:
        return "must be a positive number"
    if value > FLOAT32_MAX:
        return f"must be at most {FLOAT32_MAX:.4g}, the largest float32"
    if value < FLOAT32_TINY:
        return (f"must be at least {FLOAT32_TINY:.4g}: smaller rates round to zero in "
                "float32")
    return None


def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def scheduled_lr(epoch: int, *, lr: float, epochs: int, warmup: int, lr_schedule: str) -> float:
    """The learning rate of epoch ``epoch`` (from 1): a linear warm-up over ``warmup``
    epochs, then constant, stepped (x0.1 after each third of the rest) or cosine-annealed
    to zero. A function of the epoch alone, so a resumed run follows the same schedule."""
    if epoch <= warmup:
        return lr * epoch / (warmup + 1)
    done, rest = epoch - warmup - 1, max(1, epochs - warmup)
    if lr_schedule == "step":
        return lr * 0.1 ** (done // max(1, math.ceil(rest / 3)))
    if lr_schedule == "cosine":
        return lr * (1 + math.cos(math.pi * done / rest)) / 2
    return lr


Check = Callable[[object], "str | None"]


def _must(accept: Callable[[object], bool], what: str) -> Check:
    """A setting's check: None when ``accept`` takes the value, else what it must be."""
    return lambda value: None if accept(value) else f"must be {what}"


def _setting(check: Check | None = None) -> object:
    """A RunSettings field and its check (the model and hidden widths are checked together,
    by ``_model_problem``). The fields' order is the order in which problems are reported,
    of a record and of a resumed run's contradicting flags."""
    return field(metadata={"check": check})


def _gpt_setting(check: Check) -> object:
    """A setting of the GPT alone: None for the image models, and then left out of the
    record, so that their ``run.json`` reads as it did before the GPT."""
    return field(default=None, metadata={"check": lambda v: None if v is None else check(v)})


def _is_vocabulary(value: object) -> bool:
    """A vocabulary as a run records it: its distinct characters, sorted."""
    return (isinstance(value, str) and 0 < len(value) <= MAX_VOCABULARY
            and list(value) == sorted(set(value)))


@dataclass(frozen=True)
class RunSettings:
    """Every setting of one run, typed and checked: the flags over the defaults, or what a
    run recorded. Frozen: a resumed run's announced changes (``--epochs``, ``--lr``) and
    the data set's resolved source are new settings made with ``dataclasses.replace``,
    which checks them again."""

    model: str = _setting()
    hidden: tuple[int, ...] | None = _setting()  # the mlp's widths; None for other models
    data: str | None = _setting(_must(lambda v: v is None or isinstance(v, str), "a path"))
    epochs: int = _setting(_must(lambda v: is_int(v) and 0 < v <= MAX_EPOCHS,
                                 f"an integer in 1..{MAX_EPOCHS}"))
    batch_size: int = _setting(_must(lambda v: is_int(v) and v > 0, "a positive integer"))
    optimizer: str = _setting(_must(lambda v: v in OPTIMIZER_NAMES,
                                    f"one of {OPTIMIZER_NAMES}"))
    lr: float = _setting(learning_rate_problem)
    weight_decay: float = _setting(_must(lambda v: is_real(v) and 0 <= v < FLOAT32_MAX,
                                         "a non-negative number"))
    lr_schedule: str = _setting(_must(lambda v: v in SCHEDULE_NAMES, f"one of {SCHEDULE_NAMES}"))
    warmup: int = _setting(_must(lambda v: is_int(v) and v >= 0, "a non-negative integer"))
    seed: int = _setting(_must(lambda v: is_int(v) and v >= 0, "a non-negative integer"))
    val_size: int | None = _setting(_must(lambda v: v is None or (is_int(v) and v >= 0),
                                          "a non-negative integer"))
    # The GPT's shape, its dropout, the steps an epoch counts, and its vocabulary (the
    # corpus's characters, known once the corpus is read).
    context: int | None = _gpt_setting(_must(lambda v: is_int(v) and 0 < v <= MAX_CONTEXT,
                                             f"an integer in 1..{MAX_CONTEXT}"))
    width: int | None = _gpt_setting(_must(lambda v: is_int(v) and v > 0, "a positive integer"))
    heads: int | None = _gpt_setting(_must(lambda v: is_int(v) and v > 0, "a positive integer"))
    layers: int | None = _gpt_setting(_must(lambda v: is_int(v) and v > 0,
                                            "a positive integer"))
    dropout: float | None = _gpt_setting(_must(lambda v: is_real(v) and 0 <= v < 1,
                                               "a probability in [0, 1)"))
    steps_per_epoch: int | None = _gpt_setting(_must(lambda v: is_int(v) and v > 0,
                                                     "a positive integer"))
    vocab: str | None = _gpt_setting(_must(_is_vocabulary, f"the sorted distinct characters "
                                                           f"of a corpus (1..{MAX_VOCABULARY})"))

    def __post_init__(self) -> None:
        problem = settings_problem(self.to_record())
        if problem is not None:
            raise DataError(f"run settings: {problem}")

    @classmethod
    def from_args(cls, namespace: object) -> RunSettings:
        """A new run's settings: the flags ``namespace`` gives (attributes named as the
        fields, None when not given; argparse's namespace or a TrainConfig) over the
        defaults, which depend on the model and the optimiser."""
        given = given_settings(namespace)
        model = given.get("model") or DEFAULT_MODEL
        own = MODEL_DEFAULTS.get(model, {})
        optimizer = given.get("optimizer") or own.get("optimizer", "sgd")
        defaults = dict(model=model, hidden=DEFAULT_HIDDEN if model == "mlp" else None,
                        data=None, epochs=DEFAULT_EPOCHS,
                        batch_size=DEFAULT_BATCH_SIZES.get(model, DEFAULT_BATCH_SIZE),
                        weight_decay=0.0, lr_schedule="constant", warmup=0, seed=0,
                        val_size=None)
        defaults.update(own, optimizer=optimizer, lr=default_lr(model, optimizer))
        return cls(**{**defaults, **given})

    @classmethod
    def from_record(cls, record: object, where: str = "run settings") -> RunSettings:
        """The settings a run recorded (``run.json``, a checkpoint's); a DataError
        ``<where>: <problem>`` if they are not a whole, usable run's."""
        problem = settings_problem(record)
        if problem is None:
            # The GPT's settings but its vocabulary (known once the corpus is read) are the
            # GPT's record's; an image model's record has none of them.
            needed = [name for name in SETTING_NAMES if name not in GPT_SETTING_NAMES]
            if record["model"] == "gpt":
                needed += [name for name in GPT_SETTING_NAMES if name != "vocab"]
            missing = [name for name in needed if name not in record]
            if missing:
                problem = f"missing settings {', '.join(missing)}"
        if problem is not None:
            raise DataError(f"{where}: {problem}")
        hidden = record["hidden"]
        return cls(**{**record, "hidden": None if hidden is None else tuple(hidden)})

    def to_record(self) -> dict[str, object]:
        """The settings as ``run.json``, checkpoints and ``metrics.json`` hold them (JSON:
        the hidden widths as a list; the GPT's settings only where they are set);
        ``from_record`` reads it back."""
        record = {name: getattr(self, name) for name in SETTING_NAMES
                  if name not in GPT_SETTING_NAMES or getattr(self, name) is not None}
        if self.hidden is not None:
            record["hidden"] = list(self.hidden)
        return record

    def lr_at(self, epoch: int) -> float:
        """The learning rate of epoch ``epoch`` (from 1), by the run's schedule."""
        return scheduled_lr(epoch, lr=self.lr, epochs=self.epochs, warmup=self.warmup,
                            lr_schedule=self.lr_schedule)

    def describe_lr(self) -> str:
        """``lr 0.02 (cosine schedule, 1 warm-up epoch)``: the rate and, when the rate
        changes during the run, how; for the start line and the plot's title, where a run's
        figures are read against its settings."""
        changes = []
        if self.lr_schedule != "constant":
            changes.append(f"{self.lr_schedule} schedule")
        if self.warmup:
            changes.append(f"{self.warmup} warm-up epoch{'s' if self.warmup > 1 else ''}")
        return f"lr {self.lr}" + (f" ({', '.join(changes)})" if changes else "")


# The one list of the settings' names: RunSettings' fields.
SETTING_NAMES = tuple(f.name for f in dataclasses.fields(RunSettings))
GPT_SETTING_NAMES = ("context", "width", "heads", "layers", "dropout", "steps_per_epoch",
                     "vocab")


def given_settings(namespace: object) -> dict[str, object]:
    """The settings a namespace of flags gives (its attributes named as RunSettings'
    fields that are not None), the hidden widths as a tuple."""
    given = {name: getattr(namespace, name, None) for name in SETTING_NAMES}
    given = {name: value for name, value in given.items() if value is not None}
    if "hidden" in given:
        given["hidden"] = tuple(given["hidden"])
    return given


def _model_problem(config: Mapping) -> str | None:
    """Why the model and its hidden widths cannot be trained, or None."""
    if not isinstance(config.get("model"), str):
        return f"setting model must name a model, got {config.get('model')!r}"
    try:
        check_model(config["model"])
        if config.get("hidden") is not None:
            check_hidden(config["hidden"])
    except DlsysError as err:
        return f"setting model/hidden: {err}"
    if config.get("hidden") is not None and config["model"] != "mlp":
        return f"setting hidden sizes the mlp's layers; model {config['model']} has its own"
    if config["model"] != "gpt":
        given = [name for name in GPT_SETTING_NAMES if config.get(name) is not None]
        if given:
            return (f"setting {given[0]} is the gpt's; model {config['model']} has no "
                    f"{given[0]}")
        return model_size_problem(config["model"], config.get("hidden"))
    return _gpt_problem(config)


def _gpt_problem(config: Mapping) -> str | None:
    """Why the GPT's shape cannot be trained (before its settings are checked one by one:
    a width that its heads do not divide, a model too large), or None."""
    shape = {name: config.get(name) for name in ("context", "width", "heads", "layers")}
    if not all(is_int(value) and value > 0 for value in shape.values()):
        return None  # incomplete or ill-typed: the settings' own checks say which
    if shape["width"] % shape["heads"]:
        return (f"setting width {shape['width']} must be divisible by heads "
                f"{shape['heads']} (each head takes width / heads features)")
    vocab = config.get("vocab")
    return model_size_problem("gpt", gpt={**shape, "vocab": vocab if isinstance(vocab, str)
                                          else None})


def settings_problem(config: object) -> str | None:
    """Why ``config`` cannot be a run's settings (a record, as ``run.json`` and checkpoints
    hold them, whole or in part), or None if it can: the one place settings are checked."""
    if not isinstance(config, dict):
        return f"settings must be a mapping, got {config!r}"
    unknown = sorted(map(str, set(config) - set(SETTING_NAMES)))
    if unknown:
        return f"unknown settings {', '.join(unknown)}"
    problem = _model_problem(config)
    if problem is not None:
        return problem
    for setting in dataclasses.fields(RunSettings):
        check = setting.metadata["check"]
        if check is not None and setting.name in config:
            problem = check(config[setting.name])
            if problem is not None:
                return f"setting {setting.name} {problem}, got {config[setting.name]!r}"
    return None
