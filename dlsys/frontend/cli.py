"""The ``dlsys`` command line: ``dlsys train``, ``dlsys eval MODEL``, ``dlsys predict MODEL``,
``dlsys inspect TARGET``, ``dlsys generate MODEL``.

Exit status: 0 on success; 2 for bad flags (argparse), bad data, an unusable output directory
or checkpoint, or a failed write; 1 when training itself fails (a loss that became NaN or
infinite); 130 when interrupted. Every failure is one line on stderr, without a traceback.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import shlex
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

from dlsys.checks import parse_bytes
from dlsys.data.mnist import DATA_ENV_VAR, DEFAULT_DATA_DIR, DEFAULT_VAL_CAP
from dlsys.data.text import DEFAULT_TEXT_DIR
from dlsys.data.text import DEFAULT_VAL_CAP as TEXT_VAL_CAP
from dlsys.errors import DlsysError, TrainingError
from dlsys.frontend.arguments import Parser
from dlsys.frontend.images import INVERT_CHOICES, photo_options
from dlsys.frontend.settings import (
    DEFAULT_HIDDEN,
    DEFAULT_LR,
    DEFAULT_MODEL,
    GPT_DEFAULTS,
    GPT_SETTING_NAMES,
    IMAGE_MODELS,
    MODELS,
    RUNS_DIR,
    given_settings,
    learning_rate_problem,
    model_size_problem,
)
from dlsys.frontend.settings import OPTIMIZER_NAMES as OPTIMIZERS
from dlsys.frontend.settings import SCHEDULE_NAMES as LR_SCHEDULES

PROG = "dlsys"
MODEL_HELP = "model file (.npz from dlsys train or dlsys.save, or .onnx), or a run folder"
CLASSES_HELP = ("the classes' names, comma-separated or a file of one per line (default: the "
                "names the model file records, else the indices)")


def _bounded(convert: Callable[[str], float], what: str,
             accept: Callable[[float], bool]) -> Callable[[str], float]:
    """An argparse ``type`` converting a flag's text and refusing values outside a range."""
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
        return value
    return parse


_positive_int = _bounded(int, "a positive integer", lambda v: v > 0)
_non_negative_int = _bounded(int, "a non-negative integer", lambda v: v >= 0)
_non_negative_float = _bounded(float, "a non-negative number",
                               lambda v: 0 <= v < float("inf"))
_probability = _bounded(float, "a probability in [0, 1)", lambda v: 0 <= v < 1)


def _learning_rate(text: str) -> float:
    """``--lr``: a positive number that float32, the dtype of the update, holds as one.
    Checked by RunSettings' own rule as the flag is parsed, so that a bad rate is refused
    with the command's usage line before anything is loaded."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}") from None
    problem = learning_rate_problem(value)
    if problem is not None:
        raise argparse.ArgumentTypeError(f"{problem}, got {text}")
    return value


def _package_version() -> str:
    """dlsys's installed version (pyproject.toml's), or a word that it is not installed."""
    try:
        return importlib.metadata.version("dlsys")
    except importlib.metadata.PackageNotFoundError:
        # Run from a source tree that pip never installed: there is no metadata to read.
        return "(not installed)"


def build_parser() -> Parser:
    """The argument parser of the ``dlsys`` command."""
    parser = Parser(prog=PROG, description="Train models with dlsys, a deep learning stack "
                                           "whose every operator is TVM-compiled.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_package_version()}")
    # Not required: a bare ``dlsys`` gets the whole help from main(), not argparse's one line.
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    _add_train(parser, commands)
    _add_eval_predict(parser, commands)
    _add_inspect(parser, commands)
    _add_generate(parser, commands)
    _add_compile(parser, commands)
    return parser


def _add_train(parser: Parser, commands) -> None:
    """``dlsys train``'s flags: one per RunSettings field (same names), then the run's."""
    train = parser.add_command(
        commands, "train", help="train a model on MNIST-format data (or a GPT on text)",
        description="Train a model with mini-batch SGD, SGD with momentum, Adam or AdamW "
                    "(--optimizer), checkpointing after every epoch. --model gpt trains a "
                    "character-level transformer on a text corpus (Debian's fortunes by "
                    "default), an epoch being --steps-per-epoch steps. Without --out, each run "
                    f"gets a folder of its own: {RUNS_DIR}/<model>, then {RUNS_DIR}/<model>-2, "
                    f"{RUNS_DIR}/<model>-3, ... With --resume, options left out take the "
                    "recorded run's values. Under mpirun -n N it trains data-parallel over the "
                    "N ranks, --batch-size being the global batch (pip install "
                    "'dlsys[distributed]').")
    _add_setting_flags(train)
    _add_run_flags(train)


def _add_setting_flags(train: Parser) -> None:
    """``dlsys train``'s flags that set the run's RunSettings, one per field and named as it;
    left out (None), they take the recorded run's value on --resume, else the default."""
    train.add_argument("--model", choices=MODELS, default=None,
                       help=f"model to train (default {DEFAULT_MODEL})")
    train.add_argument("--hidden", type=_widths, default=None,
                       help="the MLP's hidden layer widths, comma-separated (default "
                            f"{','.join(map(str, DEFAULT_HIDDEN))})")
    train.add_argument("--data", default=None,
                       help="directory of the four MNIST IDX files (plain or .gz), or a "
                            f"mnist.pkl.gz (default ${DATA_ENV_VAR}, else {DEFAULT_DATA_DIR}); "
                            f"for gpt a UTF-8 text file or a folder of fortune files (default "
                            f"{DEFAULT_TEXT_DIR})")
    train.add_argument("--epochs", type=_positive_int, default=None,
                       help="total number of epochs, counting those of a resumed run "
                            "(default 10; 70 for gpt)")
    train.add_argument("--batch-size", type=_positive_int, default=None,
                       help="mini-batch size (default 1000; 256 for lenet and cnn; 16 "
                            "windows of --context characters for gpt)")
    train.add_argument("--optimizer", choices=OPTIMIZERS, default=None,
                       help="sgd, momentum (SGD with momentum 0.9), adam or adamw "
                            "(default sgd; adamw for gpt)")
    train.add_argument("--lr", type=_learning_rate, default=None,
                       help="learning rate (default: " + ", ".join(
                           f"{name} {rate:g}" for name, rate in DEFAULT_LR.items())
                       + "; for cnn, sgd 0.05 and momentum 0.005; for gpt, adam(w) 0.006)")
    train.add_argument("--weight-decay", type=_non_negative_float, default=None,
                       help="L2 penalty (decoupled for adamw; default 0; 0.01 for gpt)")
    train.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=None,
                       help="constant, step (x0.1 after each third of the epochs) or cosine "
                            "(default constant; cosine for gpt, whose rate moves every step)")
    train.add_argument("--warmup", type=_non_negative_int, default=None,
                       help="epochs of linear learning-rate warm-up (default 0; 1 for gpt)")
    train.add_argument("--seed", type=_non_negative_int, default=None,
                       help="seed of initialisation and data order (default 0)")
    train.add_argument("--val-size", type=_non_negative_int, default=None,
                       help="images held out from the end of the training set for validation; "
                            "0 trains on all of them and reports no validation accuracy "
                            f"(default a sixth of them, at most {DEFAULT_VAL_CAP}); for gpt, "
                            f"characters held out from the end of the corpus (default a "
                            f"tenth, at most {TEXT_VAL_CAP})")
    _add_gpt_flags(train)


def _add_gpt_flags(train: Parser) -> None:
    """``dlsys train``'s flags of the GPT's shape and epochs (``--model gpt`` alone)."""
    gpt = GPT_DEFAULTS
    train.add_argument("--context", type=_positive_int, default=None,
                       help=f"gpt: characters the model sees at once, its position table "
                            f"(default {gpt['context']})")
    train.add_argument("--width", type=_positive_int, default=None,
                       help=f"gpt: features per position (default {gpt['width']})")
    train.add_argument("--heads", type=_positive_int, default=None,
                       help=f"gpt: attention heads, dividing the width (default {gpt['heads']})")
    train.add_argument("--layers", type=_positive_int, default=None,
                       help=f"gpt: transformer blocks (default {gpt['layers']})")
    train.add_argument("--dropout", type=_probability, default=None,
                       help=f"gpt: dropout probability (default {gpt['dropout']:g})")
    train.add_argument("--steps-per-epoch", type=_positive_int, default=None,
                       help=f"gpt: optimiser steps between evaluations and checkpoints "
                            f"(default {gpt['steps_per_epoch']})")


def _add_run_flags(train: Parser) -> None:
    """``dlsys train``'s flags about the run rather than what it learns: where its files go,
    whether it continues or replaces a run, and what it prints while training."""
    train.add_argument("--out", type=Path, default=None,
                       help=f"output folder (default: the first of {RUNS_DIR}/<model>, "
                            f"{RUNS_DIR}/<model>-2, ... that holds no run)")
    train.add_argument("--resume", action="store_true",
                       help="continue a run with its recorded settings: the one in --out, "
                            f"else the latest run in {RUNS_DIR}/ (of --model, when given)")
    train.add_argument("--overwrite", action="store_true",
                       help="replace an earlier run's files in --out")
    # Off without a terminal: a log or a pipe would get every redrawn frame, joined by \r.
    train.add_argument("--progress", action=argparse.BooleanOptionalAction,
                       default=sys.stderr.isatty(),
                       help="show a progress bar during each epoch (default: only when "
                            "stderr is a terminal)")
    train.add_argument("--debug-memory", action="store_true",
                       help="print each training step's node, shape and storage id, and "
                            "under --memory-budget what is kept, what is recomputed and the "
                            "extra work")
    train.add_argument("--memory-budget", type=_memory_size, default=None, metavar="SIZE",
                       help="the most memory a training step may hold (e.g. 64MiB; units "
                            "KiB, MiB, GiB): parameters, optimiser state, the batch and the "
                            "working memory. Activations are recomputed in the backward pass "
                            "to fit it, with identical results; a budget no plan reaches is "
                            "an error naming the smallest that does")


def _memory_size(text: str) -> int:
    """``--memory-budget``'s value in bytes (argparse reports the error with the flag)."""
    try:
        return parse_bytes("the size", text)
    except DlsysError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _add_eval_predict(parser: Parser, commands) -> None:
    """``dlsys eval``'s and ``dlsys predict``'s flags."""
    evaluate = parser.add_command(
        commands, "eval", help="evaluate a saved model on a data set",
        description="Loss, accuracy, per-class accuracy and the confusion matrix of a model "
                    "file (model.npz, as dlsys train writes it, or an .onnx file) on a data "
                    "set's test split.")
    evaluate.add_argument("model", type=Path, help=MODEL_HELP)
    evaluate.add_argument("--data", default=None,
                          help=f"MNIST-format data as for train (default ${DATA_ENV_VAR}, "
                               f"else {DEFAULT_DATA_DIR})")
    evaluate.add_argument("--batch-size", type=_positive_int, default=1000,
                          help="images per kernel call (default 1000)")
    evaluate.add_argument("--confusion-png", type=Path, default=None,
                          help="also draw the confusion matrix into this PNG")
    evaluate.add_argument("--classes", default=None, help=CLASSES_HELP)
    predict = parser.add_command(
        commands, "predict", help="classify images with a saved model",
        description="Print each image's most probable class and its probability. Images are "
                    "PNG or JPEG (grey-scaled and resized to the model's input) or .npy "
                    "arrays of pixels in [0, 1]. For a model taking colour images of at "
                    "least 64x64 (N, 3, H, W: ImageNet-style), photos are resized, "
                    "center-cropped and normalised as torchvision's ImageNet preset (see "
                    "--resize, --crop, --mean, --std), and the 5 most probable classes "
                    "printed.")
    predict.add_argument("model", type=Path, help=MODEL_HELP)
    predict.add_argument("images", type=Path, nargs="+", help="image files")
    predict.add_argument("--invert", choices=INVERT_CHOICES, default="auto",
                         help="read PNG/JPEG images as dark on light and invert them: auto "
                              "(default) when most of an image's border is light, as on a "
                              "photo of a shoe on white paper; the models learnt light on "
                              "dark, as in MNIST")
    predict.add_argument("--classes", default=None, help=CLASSES_HELP)
    # Photos for ImageNet-style models (input N x 3 x H x W, H and W at least 64).
    predict.add_argument("--resize", type=_positive_int, default=None,
                         help="for models taking colour images of at least 64x64: resize "
                              "each photo's shorter side to this many pixels, bilinear "
                              "(default: 256 for a 224 crop, in that proportion otherwise)")
    predict.add_argument("--crop", default=None,
                         help="the central N or HxW pixels kept after resizing (default: "
                              "the model's input size; 224 where the model leaves it free)")
    predict.add_argument("--mean", default=None,
                         help="per-channel R,G,B means subtracted from pixels in [0, 1] "
                              "(default ImageNet's 0.485,0.456,0.406)")
    predict.add_argument("--std", default=None,
                         help="per-channel R,G,B standard deviations the pixels are divided "
                              "by (default ImageNet's 0.229,0.224,0.225)")


def _add_inspect(parser: Parser, commands) -> None:
    """``dlsys inspect``'s flags (a function of its own: build_parser is long enough)."""
    inspect = parser.add_command(
        commands, "inspect", help="print a model's compiled program and memory plan",
        description="Compile a model as dlsys runs it and print the program's steps (kernel, "
                    "fused operators, inputs, outputs, storage, bytes) and the memory plan; "
                    "--plot draws the plan's buffers over the steps.")
    inspect.add_argument("target", metavar="TARGET",
                         help=f"a built-in model ({', '.join(IMAGE_MODELS)}), or a "
                              f"{MODEL_HELP}")
    inspect.add_argument("--train", action="store_true",
                         help="the training step's program (loss and gradients) instead of "
                              "inference's")
    inspect.add_argument("--batch-size", type=_positive_int, default=None,
                         help="images per run (default: the batch an ONNX file fixes, else 1; "
                              "with --train, a built-in model's training batch)")
    inspect.add_argument("--plot", type=Path, default=None,
                         help="draw the memory plan's buffers over the steps into this PNG")
    inspect.add_argument("--memory-budget", type=_memory_size, default=None, metavar="SIZE",
                         help="with --train: plan the step within this many bytes (e.g. "
                              "4MiB), recomputing activations, and say what is recomputed")


def _add_compile(parser: Parser, commands) -> None:
    """``dlsys compile``'s flags."""
    compile_ = parser.add_command(
        commands, "compile", help="compile an ONNX model into one shared library",
        description="Compile an ONNX model for fixed input shapes into one shared library "
                    "holding its kernels and weights, which runs with apache-tvm-ffi alone "
                    "(libtvm_runtime.so is copied beside it); see docs/deployment.md.")
    compile_.add_argument("model", type=Path, metavar="MODEL", help="an ONNX file")
    compile_.add_argument("-o", "--output", type=Path, required=True, metavar="OUT.so",
                          help="the library to write")
    compile_.add_argument("--input-shape", action="append", type=_input_shape, default=None,
                          metavar="NAME=D0,D1,...",
                          help="an input's shape (repeat for each input; default: the shapes "
                               "the file fixes)")
    compile_.add_argument("--batch-sizes", type=_batch_sizes, default=None, metavar="N,N,...",
                          help="compile one entry run_b<N> per batch size (the first axis of "
                               "every input); run is the first")
    compile_.add_argument("--target", default=None,
                          help="the CPU the kernels are built for: native (default: this "
                               "CPU), an x86-64 level such as x86-64-v3, or an LLVM CPU name")


def _input_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """``x=1,3,224,224`` -> ("x", (1, 3, 224, 224))."""
    name, equals, dims = text.rpartition("=")
    try:
        shape = tuple(int(d) for d in dims.split(","))
    except ValueError:
        shape = ()
    if not equals or not name or not shape or any(d <= 0 for d in shape):
        raise argparse.ArgumentTypeError(f"expected NAME=D0,D1,... with positive sizes, got "
                                         f"{text!r}")
    return name, shape


def _batch_sizes(text: str) -> list[int]:
    """``--batch-sizes 1,32``: positive sizes."""
    try:
        sizes = [int(part) for part in text.split(",")]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) <= 0:
        raise argparse.ArgumentTypeError(f"must be comma-separated positive integers, got "
                                         f"{text!r}")
    return sizes


def _add_generate(parser: Parser, commands) -> None:
    """``dlsys generate``'s flags."""
    generate = parser.add_command(
        commands, "generate", help="sample text from a character-level GPT",
        description="Sample characters from a model that dlsys train --model gpt wrote, "
                    "after a prompt, with a key/value cache (each new character costs one "
                    "position), and print the text; the rate with and without the cache "
                    "goes to stderr.")
    generate.add_argument("model", type=Path, help="a GPT's model.npz, or its run folder")
    generate.add_argument("--prompt", default="\n",
                          help="the text to continue (default a new line)")
    generate.add_argument("--tokens", type=_positive_int, default=300,
                          help="characters to sample (default 300)")
    generate.add_argument("--temperature", type=_non_negative_float, default=0.8,
                          help="divides the logits: lower is more predictable, 0 takes the "
                               "most likely character (default 0.8)")
    generate.add_argument("--top-k", type=_positive_int, default=None,
                          help="sample among the k most likely characters only (default all)")
    generate.add_argument("--seed", type=_non_negative_int, default=0,
                          help="seed of the draws (default 0)")
    generate.add_argument("--cache", action=argparse.BooleanOptionalAction, default=True,
                          help="decode with the key/value cache (default); --no-cache "
                               "recomputes the whole context for every character")


def _widths(text: str) -> tuple[int, ...]:
    """``--hidden 256,100``: positive layer widths."""
    try:
        widths = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated positive integers, got "
                                         f"{text!r}") from None
    if not widths or min(widths) <= 0:
        raise argparse.ArgumentTypeError(f"must be positive integers, got {text!r}")
    problem = model_size_problem("mlp", widths)  # refused here, before anything is built
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
    return widths


def _check_run_folder(directory: Path) -> None:
    """Refuse an output folder that is clearly not one for a run's files.

    The trainer writes several files there and cleans up its own temporary files: the file
    system root, the home folder or one above it (``/home``), or the shared temporary folder
    itself (where others may plant files under the names it writes) holds other files than a
    run's.
    """
    resolved = directory.expanduser().resolve()
    home = Path.home().resolve()
    if resolved.parent == resolved:
        what = "the file system root"
    elif resolved == home:
        what = "your home folder"
    elif resolved in home.parents:
        what = "a folder above your home folder"
    elif resolved == Path(tempfile.gettempdir()).resolve():
        what = "the shared temporary folder"
    else:
        return
    raise DlsysError(f"output directory {directory} is {what}, not a run folder; name a "
                     f"folder of its own, such as {directory / 'runs' / 'mlp'}")


def _check_writable(directory: Path) -> None:
    """Fail now, not after an epoch of training, if ``directory`` cannot take our files."""
    if directory.exists() and not directory.is_dir():
        raise DlsysError(f"output directory {directory} is a file, not a folder")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as e:
        raise DlsysError(f"output directory {directory} is not writable: "
                         f"{e.strerror or e}") from None


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning (a refused cache folder, a replaced thread count) as one line, like errors,
    without the source line Python would print under it."""
    print(f"{PROG}: warning: {message}", file=sys.stderr if file is None else file)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``dlsys`` console script; returns the exit status."""
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras:  # reported with the command's own usage and flags, not the top level's
        parser.commands.get(args.command, parser).unknown_arguments(extras)
    if args.command is None:
        # Exit status 2, as argparse gives for a missing command, but with the whole help.
        parser.print_help(sys.stderr)
        print(f"{PROG}: error: name a COMMAND, such as: {PROG} train", file=sys.stderr)
        return 2
    if args.command == "train":
        _check_train_flags(args, parser.commands["train"])
    run = _Run()
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            _dispatch(args, sys.argv[1:] if argv is None else argv, run)
    except TrainingError as e:
        print(f"{PROG}{_rank()}: training failed: {e}", file=sys.stderr)
        return _exit_status(1, e)
    except DlsysError as e:
        print(f"{PROG}{_rank()}: error: {e}", file=sys.stderr)
        return _exit_status(2, e)
    except OSError as e:
        print(f"{PROG}{_rank()}: error: {e}", file=sys.stderr)
        return _exit_status(2, e)
    except MemoryError as e:
        # Sizes are bounded where they enter (model files, data, flags); this is the machine
        # having less memory than those bounds allow, still said in one line.
        print(f"{PROG}{_rank()}: error: out of memory ({e or 'an allocation failed'})",
              file=sys.stderr)
        return _exit_status(2, e)
    except KeyboardInterrupt as e:
        print(f"{PROG}{_rank()}: interrupted{run.resume_hint()}", file=sys.stderr)
        return _exit_status(130, e)
    return 0


def _dispatch(args: argparse.Namespace, argv: list[str], run: _Run) -> None:
    """Run the command ``args`` names."""
    if args.command == "train":
        _train(args, argv, run)
        return
    if args.command == "inspect":
        # Imported after parsing so that --help and flag errors do not wait for TVM.
        from dlsys.frontend.inspect import inspect_command

        inspect_command(args.target, args.train, args.batch_size, args.plot, log=_print,
                        memory_budget=args.memory_budget)
        return
    if args.command == "compile":
        from dlsys.deploy import compile as compile_model

        shapes = None if args.input_shape is None else dict(args.input_shape)
        path = compile_model(args.model, shapes, args.output, target=args.target,
                             batch_sizes=args.batch_sizes)
        _print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB) and "
               f"{path.parent / 'libtvm_runtime.so'}")
        return
    if args.command == "generate":
        from dlsys.frontend.generate import generate_command

        generate_command(args.model, args.prompt, args.tokens, args.temperature, args.top_k,
                         args.seed, args.cache, log=_print, note=_note)
        return
    from dlsys.frontend import inference

    classes = None if args.classes is None else inference.class_names_option(args.classes)
    if args.command == "eval":
        inference.evaluate_command(args.model, args.data, args.batch_size,
                                   args.confusion_png, log=_print, classes=classes)
    else:
        inference.predict_command(args.model, args.images, log=_print,
                                  invert=args.invert, classes=classes,
                                  photo=photo_options(args.resize, args.crop, args.mean,
                                                      args.std))


class _Run:
    """The run folder a ``dlsys train`` works in, once chosen: an interrupt names the exact
    command that continues the run there."""

    def __init__(self) -> None:
        self.out: Path | None = None

    def resume_hint(self) -> str:
        from dlsys.frontend.run_folder import SETTINGS_FILE, resume_command

        # Only once the run recorded its settings: before that there is nothing to continue.
        if self.out is None or not (self.out / SETTINGS_FILE).is_file():
            return ""
        return f"; continue with: {resume_command(self.out)}"


def _check_train_flags(args: argparse.Namespace, train: Parser) -> None:
    """Flags that contradict each other, refused before anything is loaded."""
    if args.hidden is not None and args.model not in (None, "mlp"):
        train.error(f"--hidden applies to --model mlp only; {args.model} has no hidden "
                    f"widths to set")
    gpt_flags = [name for name in GPT_SETTING_NAMES if getattr(args, name, None) is not None]
    if gpt_flags and args.model != "gpt" and not args.resume:
        flag = "--" + gpt_flags[0].replace("_", "-")
        train.error(f"{flag} applies to --model gpt only; {args.model or DEFAULT_MODEL} has "
                    f"no {gpt_flags[0].replace('_', ' ')}")


def _rank() -> str:
    """`` (rank R of N)`` in an MPI job of several ranks, so a message names its rank."""
    from dlsys.distributed.comm import rank_label

    return rank_label()


def _exit_status(status: int, error: BaseException) -> int:
    """``status``; in an MPI job, a rank that failed alone first ends the others (MPI_Abort),
    which would otherwise wait for it in their next collective."""
    from dlsys.distributed.comm import exit_status

    return exit_status(status, error)


def _print(line: str) -> None:
    print(line, flush=True)


def _note(line: str) -> None:
    """A remark beside a command's output (``dlsys generate``'s rates): on stderr, so that
    the output alone can be redirected."""
    print(line, file=sys.stderr, flush=True)


def _train(args: argparse.Namespace, argv: list[str], run: _Run) -> None:
    from dlsys.distributed.comm import launched_rank
    from dlsys.frontend import run_folder
    from dlsys.frontend.trainer import TrainConfig, run_training

    out = args.out
    if out is None and args.resume:
        out = run_folder.latest_run([args.model] if args.model else MODELS)
    elif out is None:
        out = run_folder.fresh_folder(args.model or DEFAULT_MODEL)
    run.out = out
    # The settings' flags are named as RunSettings' fields: passed on by that one list.
    config = TrainConfig(out=out, resume=args.resume, overwrite=args.overwrite,
                         progress=args.progress, debug_memory=args.debug_memory,
                         memory_budget=args.memory_budget,
                         command=shlex.join([PROG, *argv]), **given_settings(args))
    if launched_rank() == 0:  # in an MPI job, rank 0 alone writes the run folder
        _check_run_folder(out)
        _check_writable(out)
    run_training(config, log=_print)


if __name__ == "__main__":
    sys.exit(main())
