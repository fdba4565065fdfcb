"""dlsys's own exception family: every user mistake raises one of these, with a message
that names the node, shape, dtype, argument or file involved.

Each class also derives from the built-in exception a Python user would expect
(``ValueError``, ``TypeError``, ``KeyError``), so ``except ValueError`` keeps working.
"""


class DlsysError(Exception):
    """Base class of every error dlsys raises for bad input."""


class ShapeError(DlsysError, ValueError):
    """Shapes that do not fit an operator, found by shape inference before any kernel runs."""


class ArgumentError(DlsysError, ValueError):
    """An argument whose value a function does not accept: an unknown target, op, name or mode."""


class ArgumentTypeError(DlsysError, TypeError):
    """An argument of the wrong Python type: a string where a number or a shape belongs."""


class DtypeError(DlsysError, TypeError):
    """A tensor or argument of a dtype dlsys does not support here."""


class FeedError(DlsysError, KeyError):
    """A feed_dict that misses a placeholder, feeds a node that is not one, or holds bad data."""

    def __str__(self) -> str:  # KeyError would repr() the message, quotes and all
        return str(self.args[0]) if self.args else ""


class GradientError(DlsysError, ValueError):
    """A gradient asked of an operator that has none."""


class DataError(DlsysError, ValueError):
    """A data file that is missing, truncated, corrupt or inconsistent."""


class TrainingError(DlsysError, RuntimeError):
    """Training that cannot go on (a loss that became NaN or infinite)."""


class MemoryBudgetError(DlsysError, ValueError):
    """A memory budget no plan of the graph fits, even recomputing what can be recomputed.
    ``smallest_bytes`` is the smallest budget that this graph, at these shapes, can reach."""

    def __init__(self, message: str, smallest_bytes: int):
        super().__init__(message)
        self.smallest_bytes = smallest_bytes
