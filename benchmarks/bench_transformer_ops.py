"""The transformer's row-wise operators, forward and backward: dlsys against PyTorch.

Cases (float32, the sizes of the default GPT: batch 8, context 128, width 128, 4 heads):
layer norm over (8*128, 128) with its three gradients; softmax over the last axis of
attention scores (8, 4, 128, 128) and its gradient, alone, after the causal mask (two more
kernels) and as the fused ``softmax_op(x, causal=True)`` (PyTorch: ``masked_fill`` then
``softmax`` in both causal rows); GELU
(exact) over (8*128, 512), forward alone and with its gradient. dlsys runs a graph of the
forward node and its adjoint nodes with the upstream gradient fed (what reverse mode builds
inside a training graph); PyTorch the forward call and ``torch.autograd.grad`` with the same
upstream gradient.

dlsys and PyTorch each run in a process of their own, with the same thread count, taking
turns for several rounds; each figure is the median over repeats of a call, and the median
of its rounds, so that a busy spell of a shared machine weighs on both sides alike.

    python benchmarks/bench_transformer_ops.py [--repeats 50] [--rounds 3] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

import numpy as np

from dlsys.testing.machine import call_times, cpu_description

ROWS, WIDTH, HEADS, CONTEXT, HIDDEN = 8 * 128, 128, 4, 128, 512
SCORES = (8, HEADS, CONTEXT, CONTEXT)
CASES = ["layernorm fwd+bwd", "softmax fwd+bwd", "causal softmax fwd+bwd",
         "causal fused fwd+bwd", "gelu fwd", "gelu fwd+bwd"]
WARMUP = 5




def inputs(case: str) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    shape = {"layernorm": (ROWS, WIDTH), "gelu": (ROWS, HIDDEN)}.get(case.split()[0], SCORES)
    arrays = {"x": rng.normal(size=shape), "g": rng.normal(size=shape),
              "gamma": rng.normal(size=shape[-1:]), "beta": rng.normal(size=shape[-1:])}
    return {k: v.astype(np.float32) for k, v in arrays.items()}


def time_call(call, repeats: int) -> float:
    """Median microseconds of ``call()`` over ``repeats`` calls, after warm-up calls."""
    return statistics.median(call_times(call, repeats, WARMUP))


def dlsys_graph(case: str, ad):
    """The nodes dlsys evaluates for ``case`` and its placeholders by input name."""
    from dlsys.ops.layernorm import layernorm_gradient_op, layernorm_scale_gradient_op
    from dlsys.ops.softmax import softmax_gradient_op

    x, g, gamma, beta = (ad.Variable(n) for n in ("x", "g", "gamma", "beta"))
    feeds = {"x": x, "g": g}
    if case.startswith("layernorm"):
        feeds.update(gamma=gamma, beta=beta)
        y = ad.layernorm_op(x, gamma, beta)
        return [y, layernorm_gradient_op(g, x, gamma, 1e-5),
                layernorm_scale_gradient_op(g, x, 1e-5), ad.reducesumto_op(g, beta)], feeds
    if case.startswith("causal fused"):
        y = ad.softmax_op(x, causal=True)
        return [y, softmax_gradient_op(g, y, -1, False, causal=True)], feeds
    if "softmax" in case:
        y = ad.softmax_op(ad.causal_mask_op(x) if case.startswith("causal") else x)
        grad = softmax_gradient_op(g, y, -1, False)
        if case.startswith("causal"):
            grad = ad.causal_mask_op(grad, fill=0.0)
        return [y, grad], feeds
    y = ad.gelu_op(x)
    if case == "gelu fwd":
        del feeds["g"]
        return [y], feeds
    from dlsys.ops.elementwise import gelu_gradient_op
    return [y, gelu_gradient_op(x, g)], feeds


def measure_dlsys(repeats: int) -> dict:
    from dlsys import autodiff as ad

    results = {}
    for case in CASES:
        nodes, placeholders = dlsys_graph(case, ad)
        arrays = inputs(case)
        feeds = {node: arrays[name] for name, node in placeholders.items()}
        executor = ad.Executor(nodes, dtype="float32")
        results[case] = time_call(lambda e=executor, f=feeds: e.run(f), repeats)
    return {"threads": int(os.environ["TVM_NUM_THREADS"]), "rows": {"dlsys": results}}


def torch_call(case: str, torch, arrays: dict):
    F = torch.nn.functional
    t = {k: torch.from_numpy(v) for k, v in arrays.items()}
    x = t["x"].requires_grad_()
    if case.startswith("layernorm"):
        gamma, beta = t["gamma"].requires_grad_(), t["beta"].requires_grad_()
        return lambda: torch.autograd.grad(F.layer_norm(x, (WIDTH,), gamma, beta), [x, gamma,
                                                                                    beta], t["g"])
    if "softmax" in case or "causal" in case:
        keep = torch.ones(CONTEXT, CONTEXT, dtype=torch.bool).tril()

        def scores():
            return x.masked_fill(~keep, float("-inf")) if case.startswith("causal") else x
        return lambda: torch.autograd.grad(torch.softmax(scores(), -1), [x], t["g"])
    if case == "gelu fwd":
        plain = t["x"]
        return lambda: F.gelu(plain)
    return lambda: torch.autograd.grad(F.gelu(x), [x], t["g"])


def measure_torch(repeats: int, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    results = {case: time_call(torch_call(case, torch, inputs(case)), repeats) for case in CASES}
    return {"threads": torch.get_num_threads(),
            "rows": {f"PyTorch {torch.__version__}": results}}


def child(system: str, repeats: int, threads: int = 0) -> dict:
    command = [sys.executable, __file__, "--system", system, "--repeats", str(repeats),
               "--threads", str(threads)]
    env = dict(os.environ)
    if threads:
        env["TVM_NUM_THREADS"] = str(threads)
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        reason = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "?"
        return {"error": reason}
    return json.loads(done.stdout.strip().splitlines()[-1])


def report(rounds: list[dict], threads: int, args) -> None:
    rows = {system: {c: statistics.median(r[system][c] for r in rounds) for c in CASES}
            for system in rounds[0]}
    print(f"CPU: {cpu_description()}, {threads} threads for dlsys and PyTorch")
    print(f"float32, median of {args.repeats} calls, median of {args.rounds} rounds, "
          f"microseconds per call; layer norm ({ROWS}, {WIDTH}), softmax {SCORES}, "
          f"GELU ({ROWS}, {HIDDEN})")
    print(f"{'':28s}" + "".join(f"{c:>24s}" for c in CASES))
    for system, results in rows.items():
        print(f"{system:28s}" + "".join(f"{results[c]:24.1f}" for c in CASES))
    base = rows["dlsys"]
    for system, results in rows.items():
        if system != "dlsys":
            print(f"{'dlsys / ' + system:28s}"
                  + "".join(f"{base[c] / results[c]:23.2f}x" for c in CASES))
    print("(a ratio below 1: dlsys takes that fraction of PyTorch's time)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=50, help="calls; the median is shown")
    parser.add_argument("--rounds", type=int, default=3, help="turns of each process")
    parser.add_argument("--system", choices=("dlsys", "torch"), help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=0,
                        help="threads for both (default: dlsys's choice)")
    args = parser.parse_args()
    if args.system == "dlsys":
        print(json.dumps(measure_dlsys(args.repeats)))
        return
    if args.system == "torch":
        print(json.dumps(measure_torch(args.repeats, args.threads)))
        return
    rounds = []
    threads = args.threads
    for _ in range(args.rounds):
        ours = child("dlsys", args.repeats, args.threads)
        if "error" in ours:
            sys.exit(f"dlsys failed: {ours['error']}")
        threads = ours["threads"]
        theirs = child("torch", args.repeats, threads)
        if "error" in theirs:
            sys.exit(f"PyTorch failed: {theirs['error']}")
        rounds.append({**ours["rows"], **theirs["rows"]})
    report(rounds, threads, args)


if __name__ == "__main__":
    main()
