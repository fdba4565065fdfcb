"""The character-level GPT against PyTorch 2.13 (CPU): a training step, attention alone,
sampling, and the memory plan of the training graph.

- **Training step** of the default GPT (``dlsys train --model gpt``'s model: context 128,
  width 128, 4 heads, 4 layers; a 96-character vocabulary; batch ``--batch``): forward,
  cross-entropy, every gradient and AdamW, the same weights and batches on both sides
  (``dlsys.testing.torch_gpt`` is the same model in PyTorch).
- **Attention alone** (B=8, H=4, D=32, causal, T=128 and 512): ``F.scaled_dot_product_attention``
  forward and backward, dlsys's graph against PyTorch's, with the GFLOPS of the four
  products (the masked half counted too, as PyTorch's kernel computes it).
- **Sampling**: tokens per second of ``--tokens`` new tokens after a one-character prompt,
  dlsys with its key/value cache (one position per token) and without (the whole context
  again per token), against a PyTorch loop with its own cache.
- **Memory plan** of the GPT training graph: planned bytes against the peak of values alive
  at once (the lower bound of any plan).

Each system runs in a process of its own with ``--threads`` threads (default
``os.cpu_count()``; ``torch.set_num_threads`` and ``TVM_NUM_THREADS``), so that one's
spinning thread pool does not steal the other's cores; the two take turns for ``--rounds``
rounds and each figure is the median of its rounds.

    python benchmarks/bench_transformer.py [--rounds 3] [--batch 32] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

VOCAB, CONTEXT, WIDTH, HEADS, LAYERS = 96, 128, 128, 4, 4
ATTENTION = [(8, 4, 128, 32), (8, 4, 512, 32)]  # (B, H, T, D)


def seconds(call, repeats: int) -> float:
    """Median seconds of ``repeats`` calls after one warm-up call."""
    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def batches(batch: int, count: int):
    rng = np.random.default_rng(0)
    return [(rng.integers(0, VOCAB, (batch, CONTEXT)), rng.integers(0, VOCAB, (batch, CONTEXT)))
            for _ in range(count)]


def initial_state() -> dict:
    import dlsys
    from dlsys.nn.gpt import GPT
    dlsys.manual_seed(0)
    return GPT(VOCAB, CONTEXT, WIDTH, HEADS, LAYERS).state_dict()


# --------------------------------------------------------------------------------- dlsys
def dlsys_train(batch: int, repeats: int) -> dict:
    import dlsys.autodiff as ad
    from dlsys import optim
    from dlsys.nn import functional as F
    from dlsys.nn.gpt import GPT
    from dlsys.ops import reshape_op
    model = GPT(VOCAB, CONTEXT, WIDTH, HEADS, LAYERS)
    model.load_state_dict(initial_state())
    ids, positions, targets = ad.Variable("ids"), ad.Variable("positions"), ad.Variable("t")
    logits = model(ids, positions)
    loss = F.cross_entropy(reshape_op(logits, (-1, VOCAB)), reshape_op(targets, (-1,)))
    step = optim.AdamW(model.parameters(), lr=1e-3).minimize(loss)
    data = iter(batches(batch, repeats + 1))

    def call():
        x, y = next(data)
        step({ids: x, positions: np.arange(CONTEXT), targets: y})

    result = {"train": seconds(call, repeats)}
    stats = step.executor.memory_stats()
    result["planned_bytes"], result["peak_live_bytes"] = (stats["planned_bytes"],
                                                          stats["peak_live_bytes"])
    return result


def dlsys_attention(b: int, h: int, t: int, d: int, repeats: int) -> float:
    import dlsys.autodiff as ad
    from dlsys.nn import functional as F
    from dlsys.ops import sum_op
    q, k, v, g = (ad.Variable(n) for n in "qkvg")
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    grads = ad.gradients(sum_op(out * g), [q, k, v])
    executor = ad.Executor([out, *grads])
    rng = np.random.default_rng(1)
    feeds = {n: rng.standard_normal((b, h, t, d)).astype(np.float32) for n in (q, k, v, g)}
    return seconds(lambda: executor.run(feeds), repeats)


def dlsys_sampling(tokens: int, cached: bool) -> float:
    """Tokens per second of ``dlsys generate``'s sampler, with its key/value cache (one
    position per token) or without (the whole window per token)."""
    from dlsys.frontend.generate import CachedDecoder, FullDecoder, sample
    from dlsys.nn.gpt import GPT
    model = GPT(VOCAB, CONTEXT, WIDTH, HEADS, LAYERS)
    model.load_state_dict(initial_state())
    decoder = (CachedDecoder if cached else FullDecoder)(model)
    prompt = np.array([0])
    sample(decoder, prompt, 4, 1.0, None, 0)  # compile
    start = time.perf_counter()
    sample(decoder, prompt, tokens, 1.0, None, 0)
    return tokens / (time.perf_counter() - start)


# --------------------------------------------------------------------------------- torch
def torch_train(batch: int, repeats: int) -> dict:
    import torch

    from dlsys.testing.torch_gpt import TorchGPT
    model = TorchGPT(VOCAB, CONTEXT, WIDTH, HEADS, LAYERS)
    model.load_numpy(initial_state())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    data = iter([(torch.from_numpy(x), torch.from_numpy(y)) for x, y in
                 batches(batch, repeats + 1)])

    def call():
        x, y = next(data)
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x).reshape(-1, VOCAB), y.reshape(-1))
        loss.backward()
        optimizer.step()

    return {"train": seconds(call, repeats)}


def torch_attention(b: int, h: int, t: int, d: int, repeats: int) -> float:
    import torch
    rng = np.random.default_rng(1)
    q, k, v, g = (torch.from_numpy(rng.standard_normal((b, h, t, d)).astype(np.float32))
                  for _ in range(4))
    for x in (q, k, v):
        x.requires_grad_(True)

    def call():
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        torch.autograd.grad(out, (q, k, v), g)

    return seconds(call, repeats)


def torch_sampling(tokens: int) -> float:
    """A PyTorch loop with its own key/value cache, on the same weights."""
    import torch

    from dlsys.testing.torch_gpt import TorchGPT, sample_with_cache
    model = TorchGPT(VOCAB, CONTEXT, WIDTH, HEADS, LAYERS)
    model.load_numpy(initial_state())
    with torch.inference_mode():
        sample_with_cache(model, [0], 4, seed=0)
        start = time.perf_counter()
        sample_with_cache(model, [0], tokens, seed=0)
    return tokens / (time.perf_counter() - start)


# --------------------------------------------------------------------------------- driver
def measure(system: str, args: argparse.Namespace) -> dict:
    if system == "torch":
        import torch
        torch.set_num_threads(args.threads)
        result = torch_train(args.batch, args.repeats)
        result["attention"] = [torch_attention(*shape, args.repeats) for shape in ATTENTION]
        result["sampling"] = torch_sampling(args.tokens)
        return result
    result = dlsys_train(args.batch, args.repeats)
    result["attention"] = [dlsys_attention(*shape, args.repeats) for shape in ATTENTION]
    result["sampling"] = dlsys_sampling(args.tokens, cached=True)
    result["sampling_uncached"] = dlsys_sampling(args.tokens, cached=False)
    return result




def run_child(system: str, args: argparse.Namespace) -> dict:
    env = dict(os.environ, TVM_NUM_THREADS=str(args.threads))
    command = [sys.executable, __file__, "--child", system, "--batch", str(args.batch),
               "--threads", str(args.threads), "--repeats", str(args.repeats),
               "--tokens", str(args.tokens)]
    out = subprocess.run(command, capture_output=True, text=True, env=env)
    if out.returncode:
        raise SystemExit(f"the {system} process failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def attention_gflops(b: int, h: int, t: int, d: int) -> float:
    # Forward: Q K^T and P V; backward: dV, dP, dQ, dK: six products of 2*T*T*D each.
    return 6 * 2.0 * b * h * t * t * d / 1e9


def report(rounds: dict[str, list[dict]], args: argparse.Namespace) -> None:
    def median(system, key, index=None):
        values = [r[key] if index is None else r[key][index] for r in rounds[system]]
        return statistics.median(values)

    from dlsys.testing.machine import cpu_description
    print(f"CPU: {cpu_description()}; {args.threads} threads; medians of {args.rounds} "
          f"rounds")
    d_train, t_train = median("dlsys", "train"), median("torch", "train")
    print(f"\nGPT training step (batch {args.batch}, context {CONTEXT}, width {WIDTH}, "
          f"{HEADS} heads, {LAYERS} layers, AdamW)")
    print(f"  dlsys {d_train * 1e3:8.1f} ms   PyTorch {t_train * 1e3:8.1f} ms   "
          f"dlsys/PyTorch {d_train / t_train:.2f}x")
    print("\nAttention alone, causal, forward + backward")
    for i, shape in enumerate(ATTENTION):
        d_time, t_time = median("dlsys", "attention", i), median("torch", "attention", i)
        work = attention_gflops(*shape)
        print(f"  B,H,T,D={shape}: dlsys {d_time * 1e3:7.2f} ms ({work / d_time:5.1f} GFLOPS)"
              f"   PyTorch {t_time * 1e3:7.2f} ms ({work / t_time:5.1f} GFLOPS)   "
              f"{d_time / t_time:.2f}x")
    cached, uncached = median("dlsys", "sampling"), median("dlsys", "sampling_uncached")
    torch_rate = median("torch", "sampling")
    print(f"\nSampling {args.tokens} tokens: dlsys {cached:.0f} tokens/s with its cache, "
          f"{uncached:.0f} without; PyTorch with a cache {torch_rate:.0f} tokens/s "
          f"(dlsys/PyTorch time {torch_rate / cached:.2f}x)")
    planned, peak = median("dlsys", "planned_bytes"), median("dlsys", "peak_live_bytes")
    print(f"\nMemory plan of the training graph: {planned / 2**20:.1f} MiB planned, live peak "
          f"{peak / 2**20:.1f} MiB ({planned / peak:.2f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=100)
    parser.add_argument("--child", choices=("dlsys", "torch"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args)))
        return
    rounds: dict[str, list[dict]] = {"dlsys": [], "torch": []}
    for _ in range(args.rounds):
        for system in ("dlsys", "torch"):
            rounds[system].append(run_child(system, args))
    report(rounds, args)


if __name__ == "__main__":
    main()
