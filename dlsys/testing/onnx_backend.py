"""ONNX's own conformance cases run through dlsys's ONNX backend (``dlsys.onnx.backend``).

``onnx.backend.test.case.node.collect_testcases(None)`` gives every node test ONNX ships
(a model of one operator, its input data and the expected outputs, with a tolerance). This
tool runs them all, each in a worker process that is started again after a crash or a
time-out, so that one segfault or endless compile costs one case and not the run; it
prints, per op type, how many pass and why the others fail, and with ``--write`` records
the passing names in ``tests/onnx/backend_expected_pass.txt``, which
``tests/onnx/test_backend_suite.py`` runs in ``make test``:

    python -m dlsys.testing.onnx_backend --write          # all cases, about half an hour
    python -m dlsys.testing.onnx_backend --match relu     # the cases whose name has "relu"

Cases run one after another (the machine's cores go to the kernels); nothing is kept
between cases but what dlsys's kernel disk cache keeps.
"""

from __future__ import annotations

import argparse
import collections
import multiprocessing
import re
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

EXPECTED_PASS_FILE = Path(__file__).resolve().parents[2] / "tests" / "onnx" / \
    "backend_expected_pass.txt"
# Seconds one case may take, compiles included, before its worker is stopped.
CASE_TIMEOUT_S = 120.0
# Consecutive crashed cases after which the run stops: the worker itself is broken.
MAX_CRASHES_IN_A_ROW = 10


def collect_cases() -> list:
    """Every node test case of the installed onnx package (its data generated in numpy)."""
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():  # the cases' own numpy overflows, on purpose
        warnings.simplefilter("ignore")
        with np.errstate(all="ignore"):
            return list(collect_testcases(None))


def assert_outputs_match(expected: Sequence, actual: Sequence, rtol: float, atol: float) -> None:
    """Raise AssertionError unless ``actual`` matches ``expected`` as ONNX's test runner
    checks it: as many outputs, each of the same shape and dtype and within ``rtol`` /
    ``atol`` (strings compared exactly)."""
    if len(actual) != len(expected):
        raise AssertionError(f"{len(actual)} outputs, expected {len(expected)}")
    for i, (want, got) in enumerate(zip(expected, actual)):
        if isinstance(want, (list, tuple)):
            if not isinstance(got, (list, tuple)):
                raise AssertionError(f"output {i} is a {type(got).__name__}, expected a "
                                     f"sequence")
            assert_outputs_match(want, got, rtol, atol)
            continue
        want, got = np.asarray(want), np.asarray(got)
        if got.shape != want.shape:
            raise AssertionError(f"output {i} has shape {got.shape}, expected {want.shape}")
        if want.dtype == object:
            np.testing.assert_array_equal(got, want)
            continue
        if got.dtype != want.dtype:
            raise AssertionError(f"output {i} has dtype {got.dtype}, expected {want.dtype}")
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol,
                                   err_msg=f"output {i} differs")


def run_case(model, data_sets: Sequence, rtol: float, atol: float) -> None:
    """One case through ``dlsys.onnx.backend``: the model prepared once, run on each data
    set and checked against its expected outputs (raises on any difference)."""
    from dlsys.onnx.backend import Backend

    rep = Backend.prepare(model, "CPU")
    for inputs, expected in data_sets:
        assert_outputs_match([_as_array(v) for v in expected],
                             list(rep.run([_as_array(v) for v in inputs])), rtol, atol)


def _as_array(value):
    """A case's input or expected output as ONNX's runner reads it from its files: a
    TensorProto (the cases of types numpy lacks) or a numpy scalar as a numpy array."""
    from onnx import TensorProto, numpy_helper

    if isinstance(value, TensorProto):
        return numpy_helper.to_array(value)
    if isinstance(value, np.generic):
        return np.asarray(value)
    return value


def failure_line(err: BaseException) -> str:
    """The first line of an error, after its type's name."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:300]


# ------------------------------------------------------------ the worker process
def _worker(conn) -> None:
    """Run the cases the parent sends, one at a time, answering (passed, reason) each."""
    import onnx

    from dlsys.kernels.build import clear_memory_cache

    warnings.simplefilter("ignore")
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message is None:
            return
        model_bytes, data_sets, rtol, atol = message
        try:
            run_case(onnx.load_from_string(model_bytes), data_sets, rtol, atol)
            conn.send((True, ""))
        except Exception as err:  # every refusal and mismatch is the case's result
            conn.send((False, failure_line(err)))
        # Each case finds its kernels as a fresh process would: in the disk cache only.
        clear_memory_cache()


class _Worker:
    """A worker process and its pipe, started again when it dies or runs out of time."""

    def __init__(self):
        self._context = multiprocessing.get_context("spawn")  # no TVM threads forked
        self._process = None
        self._conn = None

    def run(self, case, timeout: float) -> tuple[bool, str]:
        if self._process is None or not self._process.is_alive():
            self._start()
        try:
            self._conn.send((case.model.SerializeToString(), case.data_sets,
                             case.rtol, case.atol))
        except (OSError, ValueError) as err:  # a dead pipe, or data pickle cannot send
            self._stop()
            return False, f"harness: cannot send the case ({err})"
        if not self._conn.poll(timeout):
            self._stop()
            return False, f"timeout: over {timeout:g} s"
        try:
            return self._conn.recv()
        except (EOFError, OSError):
            self._process.join(5)  # reaped, so that its exit code (-11: a segfault) is known
            code = self._process.exitcode
            self._stop()
            return False, f"crash: the worker died (exit code {code})"

    def _start(self) -> None:
        parent, child = self._context.Pipe()
        # The worker function by its module's name, also when this module runs as __main__.
        from dlsys.testing.onnx_backend import _worker as target

        self._process = self._context.Process(target=target, args=(child,), daemon=True)
        self._process.start()
        child.close()
        self._conn = parent

    def _stop(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.join()
        self._process, self._conn = None, None

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.send(None)
            except OSError:
                pass
        if self._process is not None:
            self._process.join(10)
        self._stop()


@dataclass
class CaseResult:
    name: str
    op_type: str
    passed: bool
    reason: str
    seconds: float


def run_cases(cases: Sequence, timeout: float = CASE_TIMEOUT_S,
              progress: bool = True) -> list[CaseResult]:
    """Every case of ``cases`` run in the worker, in order."""
    op_types = case_op_types(cases)
    worker = _Worker()
    results = []
    try:
        for i, case in enumerate(cases):
            start = time.perf_counter()
            passed, reason = worker.run(case, timeout)
            results.append(CaseResult(case.name, op_types[case.name], passed, reason,
                                      time.perf_counter() - start))
            if progress:
                mark = "ok  " if passed else "FAIL"
                print(f"[{i + 1}/{len(cases)}] {mark} {case.name} "
                      f"({results[-1].seconds:.1f} s) {reason[:120]}", file=sys.stderr,
                      flush=True)
            recent = results[-MAX_CRASHES_IN_A_ROW:]
            if len(recent) == MAX_CRASHES_IN_A_ROW and all(
                    r.reason.startswith("crash:") for r in recent):
                # A worker that dies on every case (dlsys itself fails to import, say)
                # would cost a restart per case: stop and say so.
                raise RuntimeError(f"the worker crashed on {MAX_CRASHES_IN_A_ROW} cases in a "
                                   f"row (the last {case.name}: {reason}); run "
                                   f"`python -c 'import dlsys.onnx.backend'` to see why")
    finally:
        worker.close()
    return results


# ------------------------------------------------------------ the summary
def case_op_types(cases: Sequence) -> dict[str, str]:
    """The op type each case tests: the graph's op type whose name the case's name starts
    with (``test_reduce_log_sum_exp_...`` -> ReduceLogSumExp); an expanded case (a
    function's body) takes its unexpanded case's."""
    import onnx

    schema_names = {s.name.lower(): s.name for s in onnx.defs.get_all_schemas()}

    def by_name(name: str, candidates) -> str | None:
        tokens = name.removeprefix("test_").split("_")
        for n in range(len(tokens), 0, -1):
            key = "".join(tokens[:n])
            if key in candidates:
                return candidates[key]
        return None

    found = {}
    for case in cases:
        in_graph = {n.op_type.lower(): n.op_type for n in case.model.graph.node}
        found[case.name] = by_name(case.name, in_graph)
    for case in cases:
        if found[case.name] is None:
            base = re.sub(r"_expanded(_ver\d+)?$", "", case.name)
            found[case.name] = (found.get(base) or by_name(case.name, schema_names)
                                or case.model.graph.node[0].op_type)
    return found


def _reason_group(reason: str) -> str:
    """A failure reason with what differs between cases (names, numbers) blanked."""
    reason = reason.replace("<ModelProto>: ", "")
    reason = re.sub(r"; dlsys imports [^;]*", "", reason)  # the list of every op type
    reason = re.sub(r"\b(node|input|output|tensor|value|initializer)\(?s?\)? '[^']*'",
                    r"\1 …", reason)
    reason = re.sub(r"(?<!tensor)\([^()]*\)", "(…)", reason)  # shapes; types kept
    return re.sub(r"\b\d+(\.\d+)?\b", "#", reason)[:160]


def summary(results: Sequence[CaseResult], reasons_per_op: int = 3) -> str:
    """Per op type: cases passed of those run, then the commonest failure reasons."""
    by_op: dict[str, list[CaseResult]] = collections.defaultdict(list)
    for result in results:
        by_op[result.op_type].append(result)
    lines = []
    for op_type in sorted(by_op):
        group = by_op[op_type]
        passed = sum(r.passed for r in group)
        lines.append(f"{op_type}: {passed}/{len(group)}")
        reasons = collections.Counter(_reason_group(r.reason) for r in group if not r.passed)
        for reason, count in reasons.most_common(reasons_per_op):
            lines.append(f"    {count} x {reason}")
    total = sum(r.passed for r in results)
    ops_all = sum(all(r.passed for r in g) for g in by_op.values())
    lines.append(f"passed {total} of {len(results)} cases; {ops_all} of {len(by_op)} op types "
                 f"pass all their cases")
    reasons = collections.Counter(_reason_group(r.reason) for r in results if not r.passed)
    lines.append("commonest failure reasons:")
    lines += [f"    {count} x {reason}" for reason, count in reasons.most_common(15)]
    return "\n".join(lines)


def read_expected_pass(path: Path = EXPECTED_PASS_FILE) -> list[str]:
    """The case names recorded as passing (blank lines and # comments left out)."""
    if not path.is_file():
        return []
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true",
                        help=f"record the passing names in {EXPECTED_PASS_FILE}")
    parser.add_argument("--match", default=None,
                        help="run only the cases whose name matches this regular expression")
    parser.add_argument("--timeout", type=float, default=CASE_TIMEOUT_S,
                        help="seconds one case may take (default %(default)s)")
    parser.add_argument("--quiet", action="store_true", help="no line per case on stderr")
    args = parser.parse_args(argv)
    if args.write and args.match:
        parser.error("--write records a run of every case; leave out --match")
    cases = collect_cases()
    if args.match:
        cases = [c for c in cases if re.search(args.match, c.name)]
    start = time.perf_counter()
    results = run_cases(cases, args.timeout, progress=not args.quiet)
    print(summary(results))
    print(f"{time.perf_counter() - start:.0f} s")
    if args.write:
        names = sorted(r.name for r in results if r.passed)
        EXPECTED_PASS_FILE.write_text("".join(f"{n}\n" for n in names))
        print(f"wrote {len(names)} names to {EXPECTED_PASS_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
