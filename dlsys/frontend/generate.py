"""``dlsys generate MODEL``: text sampled from a character-level GPT that ``dlsys train
--model gpt`` wrote (its model file records the vocabulary).

Two decoders give the logits of the next character: ``CachedDecoder`` runs the model's
one-position graph (``GPT.decode_step``) with the keys and values of the earlier positions
as caches, so a new character costs one position's work; ``FullDecoder`` runs the whole
forward pass over the window each time, the way without a cache. Both see the same window
of characters: the model's context holds ``context`` positions, and when it is full the
window restarts from its last half (re-read into the cache), so both give the same logits
and, from the same seed, the same text; ``dlsys generate`` times both.

Sampling happens on each (vocab,) row of logits after the run: divided by the temperature,
cut to the ``top_k`` largest, softmax, one draw from a seeded numpy generator. Temperature
0 takes the most likely character.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from dlsys import autodiff as ad
from dlsys.data.text import Vocabulary
from dlsys.errors import ArgumentError, DataError
from dlsys.nn.gpt import GPT, decode_inputs

# The no-cache rate is timed over at most this many characters: enough for a steady figure,
# few enough that the comparison does not double a long sample's time.
TIMED_WITHOUT_CACHE = 64


class Decoder:
    """Logits of the next character after each character pushed, over a window of at most
    ``context`` characters that restarts from its last half when full."""

    def __init__(self, model: GPT):
        self.model = model
        self.context = model.context
        self.window: list[int] = []

    def push(self, token: int) -> np.ndarray:
        """Add ``token`` to the window; the (vocab,) logits of the character after it."""
        if len(self.window) == self.context:
            keep = self.window[len(self.window) - self.context // 2:]
            self.reset()
            for kept in keep:
                self._feed(kept)
                self.window.append(kept)
        logits = self._feed(token)
        self.window.append(token)
        return logits

    def reset(self) -> None:
        self.window = []

    def _feed(self, token: int) -> np.ndarray:
        raise NotImplementedError


class CachedDecoder(Decoder):
    """One position per character: ``GPT.decode_step``'s graph, the caches fed in and read
    back after each run."""

    def __init__(self, model: GPT):
        super().__init__(model)
        self.ids, self.position = ad.Variable("ids"), ad.Variable("position")
        self.slot, self.mask = ad.Variable("slot"), ad.Variable("mask")
        self.caches = [ad.Variable(f"{kind}_cache{i}") for i in range(model.num_layers)
                       for kind in ("key", "value")]
        model.eval()
        logits, updated = model.decode_step(self.ids, self.position, self.caches, self.slot,
                                            self.mask)
        self.executor = ad.Executor([logits, *updated])
        self.reset()

    def reset(self) -> None:
        super().reset()
        self.state = [np.zeros(self.model.cache_shape, np.float32) for _ in self.caches]

    def _feed(self, token: int) -> np.ndarray:
        where = len(self.window)
        slot, mask = decode_inputs(where, self.context)
        feeds = {self.ids: np.array([[token]], np.int64),
                 self.position: np.array([where], np.int64), self.slot: slot, self.mask: mask,
                 **dict(zip(self.caches, self.state))}
        logits, *self.state = self.executor.run(feeds, convert_to_numpy_ret_vals=True)
        return logits.reshape(-1)


class FullDecoder(Decoder):
    """The whole forward pass over the window, padded to the context (causal attention: the
    padding after the last character changes nothing before it), for every character."""

    def __init__(self, model: GPT):
        super().__init__(model)
        self.ids, self.positions = ad.Variable("ids"), ad.Variable("positions")
        model.eval()
        self.executor = ad.Executor([model(self.ids, self.positions)])
        self.padded = np.zeros((1, self.context), np.int64)

    def _feed(self, token: int) -> np.ndarray:
        where = len(self.window)
        self.padded[0, :where] = self.window
        self.padded[0, where] = token
        (logits,) = self.executor.run({self.ids: self.padded,
                                       self.positions: self.model.positions(self.context)},
                                      convert_to_numpy_ret_vals=True)
        return logits[0, where]


def pick(logits: np.ndarray, temperature: float, top_k: int | None,
         rng: np.random.Generator) -> int:
    """One character id drawn from ``softmax(logits / temperature)`` over the ``top_k``
    largest logits (all when None); the largest when ``temperature`` is 0."""
    logits = logits.astype(np.float64)
    if temperature == 0:
        return int(np.argmax(logits))
    scaled = logits / temperature
    if top_k is not None and top_k < len(scaled):
        threshold = np.partition(scaled, -top_k)[-top_k]
        scaled = np.where(scaled >= threshold, scaled, -np.inf)
    weights = np.exp(scaled - scaled.max())
    return int(rng.choice(len(weights), p=weights / weights.sum()))


def sample(decoder: Decoder, prompt: np.ndarray, tokens: int, temperature: float,
           top_k: int | None, seed: int) -> list[int]:
    """``tokens`` character ids sampled after the ``prompt`` ids, from a fresh window."""
    rng = np.random.default_rng(seed)
    decoder.reset()
    for token in prompt:
        logits = decoder.push(int(token))
    drawn: list[int] = []
    for _ in range(tokens):
        drawn.append(pick(logits, temperature, top_k, rng))
        if len(drawn) < tokens:
            logits = decoder.push(drawn[-1])
    return drawn


def load_gpt(path: Path) -> tuple[GPT, Vocabulary]:
    """A GPT model file and its vocabulary; a DataError for any other model file."""
    import dlsys

    model = dlsys.load(path)
    chars = getattr(model, "metadata", {}).get("vocab")
    if not isinstance(model, GPT) or not isinstance(chars, str):
        raise DataError(f"{path}: not a character-level GPT's model file (one that dlsys "
                        f"train --model gpt writes, with its vocabulary); dlsys generate "
                        f"samples text from those")
    if len(chars) != model.vocab_size or list(chars) != sorted(set(chars)):
        raise DataError(f"{path}: the recorded vocabulary ({len(chars)} characters) is not "
                        f"the sorted distinct characters of the model's {model.vocab_size}")
    return model, Vocabulary(chars)


def _timed(decoder: Decoder, *args) -> tuple[list[int], float]:
    """``sample(decoder, *args)`` and the characters it sampled per second, the prompt's
    reading included (the kernels are built first, outside the time)."""
    sample(decoder, args[0][:1], 1, 0, None, 0)
    started = time.perf_counter()
    drawn = sample(decoder, *args)
    return drawn, len(drawn) / (time.perf_counter() - started)


def generate_command(model_path: Path, prompt: str, tokens: int, temperature: float,
                     top_k: int | None, seed: int, cache: bool = True,
                     log: Callable[[str], None] = print,
                     note: Callable[[str], None] = print) -> str:
    """Sample ``tokens`` characters after ``prompt``, ``log`` the text and ``note`` the
    rates: with the cache (unless ``cache`` is False) and without it (over at most
    ``TIMED_WITHOUT_CACHE`` characters). Returns the sampled text."""
    from dlsys.frontend.inference import model_file

    if not math.isfinite(temperature) or temperature < 0:
        raise ArgumentError(f"--temperature must be a non-negative number, got {temperature}")
    model, vocab = load_gpt(model_file(model_path))
    if not prompt:
        raise ArgumentError("--prompt must hold at least one character to start from")
    ids = vocab.encode(prompt, "the prompt")
    args = (ids, tokens, temperature, top_k, seed)
    if cache:
        drawn, rate = _timed(CachedDecoder(model), *args)
    else:
        drawn, rate = _timed(FullDecoder(model), *args)
    text = prompt + vocab.decode(drawn)
    log(text)
    if cache:
        timed = min(tokens, TIMED_WITHOUT_CACHE)
        _, without = _timed(FullDecoder(model), ids, timed, temperature, top_k, seed)
        note(f"{rate:.0f} characters/s with the key/value cache, {without:.0f}/s without it "
             f"(the whole context recomputed per character, timed over {timed} characters)")
    else:
        note(f"{rate:.0f} characters/s without the key/value cache")
    return text


__all__ = ["CachedDecoder", "FullDecoder", "Decoder", "generate_command", "load_gpt", "pick",
           "sample"]
