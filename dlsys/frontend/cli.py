"""The ``dlsys`` command line: ``dlsys train [options]``.

Exit status: 0 on success; 2 for bad flags (argparse), bad data, an unusable output directory
or checkpoint, or a failed write; 1 when training itself fails (a loss that became NaN or
infinite); 130 when interrupted. Every failure is one line on stderr, without a traceback.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

from dlsys.data.mnist import DATA_ENV_VAR, DEFAULT_DATA_DIR, DEFAULT_VAL_CAP
from dlsys.errors import DlsysError, TrainingError
from dlsys.frontend.checkpoint import learning_rate_problem
from dlsys.frontend.models import DEFAULT_MODEL, MODEL_LAYERS

PROG = "dlsys"


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


def _learning_rate(text: str) -> float:
    """``--lr``: a positive number that float32, the dtype of the update, holds as one."""
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


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``dlsys`` command."""
    parser = argparse.ArgumentParser(prog=PROG, description="Train models with dlsys, a deep "
                                     "learning stack whose every operator is TVM-compiled.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_package_version()}")
    # Not required: a bare ``dlsys`` gets the whole help from main(), not argparse's one line.
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    train = commands.add_parser(
        "train", help="train a model on MNIST-format data",
        description="Train a model with mini-batch SGD, checkpointing after every epoch. "
                    "With --resume, options left out take the checkpoint's values.")
    train.add_argument("--model", choices=sorted(MODEL_LAYERS), default=None,
                       help=f"model to train (default {DEFAULT_MODEL})")
    train.add_argument("--data", default=None,
                       help="directory of the four MNIST IDX files (plain or .gz), or a "
                            f"mnist.pkl.gz (default ${DATA_ENV_VAR}, else {DEFAULT_DATA_DIR})")
    train.add_argument("--epochs", type=_positive_int, default=10,
                       help="total number of epochs, counting those of a resumed checkpoint "
                            "(default 10)")
    train.add_argument("--batch-size", type=_positive_int, default=None,
                       help="mini-batch size (default 1000)")
    train.add_argument("--lr", type=_learning_rate, default=None,
                       help="learning rate (default 0.2, the best of a sweep on Fashion-MNIST)")
    train.add_argument("--seed", type=_non_negative_int, default=None,
                       help="seed of initialisation and data order (default 0)")
    train.add_argument("--val-size", type=_non_negative_int, default=None,
                       help="images held out from the end of the training set for validation; "
                            "0 trains on all of them and reports no validation accuracy "
                            f"(default a sixth of them, at most {DEFAULT_VAL_CAP})")
    train.add_argument("--out", type=Path, default=None,
                       help="output directory (default runs/<model>)")
    train.add_argument("--resume", action="store_true",
                       help="continue from the checkpoint in --out")
    # Off without a terminal: a log or a pipe would get every redrawn frame, joined by \r.
    train.add_argument("--progress", action=argparse.BooleanOptionalAction,
                       default=sys.stderr.isatty(),
                       help="show a progress bar during each epoch (default: only when "
                            "stderr is a terminal)")
    train.add_argument("--debug-memory", action="store_true",
                       help="print each training step's node, shape and storage id")
    return parser


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
    args = parser.parse_args(argv)
    if args.command is None:
        # Exit status 2, as argparse gives for a missing command, but with the whole help.
        parser.print_help(sys.stderr)
        print(f"{PROG}: error: name a COMMAND, such as: {PROG} train", file=sys.stderr)
        return 2
    # Imported after parsing so that --help and flag errors do not wait for TVM to load.
    from dlsys.frontend.trainer import TrainConfig, run_training

    out = args.out if args.out is not None else Path("runs") / (args.model or DEFAULT_MODEL)
    config = TrainConfig(out=out, model=args.model, data=args.data, epochs=args.epochs,
                         batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                         val_size=args.val_size, resume=args.resume, progress=args.progress,
                         debug_memory=args.debug_memory)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            _check_run_folder(out)
            _check_writable(out)
            run_training(config, log=lambda line: print(line, flush=True))
    except TrainingError as e:
        print(f"{PROG}: training failed: {e}", file=sys.stderr)
        return 1
    except DlsysError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; continue with --resume --out {out}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
