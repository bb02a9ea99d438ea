"""Sampling speed: one stream and many streams, against the memory-bandwidth floor.

Floor for one stream: every character must read the weights once, so
``chars/s <= bandwidth / bytes_per_char``. Two byte counts are given: all weight matrices of
the 2-layer LSTM and decoder (the issue's 16.8 MB for 2x512), and what :class:`FastStep`
actually reads (layer 0's input projection becomes a table row, so less).
"""

from __future__ import annotations

import time

import torch

from benchmarks.common import copy_bandwidth, median
from charlm.data.vocab import Vocab
from charlm.model.rnn import CharRNN
from charlm.sampling import sample
from charlm.model.step import FastStep


def _nn_per_char(net: CharRNN, chars: int) -> float:
    """chars/s of one stream calling ``nn.LSTM`` once per character (the old way)."""
    state = net.init_state(1)
    x = torch.zeros(1, 1, dtype=torch.long)
    with torch.inference_mode():
        net(x, state)
        t = time.perf_counter()
        for _ in range(chars):
            logits, state = net(x, state)
    return chars / (time.perf_counter() - t)


def _fast_steps(fast: FastStep, n: int, chars: int) -> float:
    """chars/s (all streams together) of the bare FastStep, no sampling."""
    state = fast.init_state(n)
    x = torch.zeros(n, dtype=torch.long)
    for _ in range(3):
        fast.step(x, state)
    t = time.perf_counter()
    for _ in range(chars):
        _, state = fast.step(x, state)
    return n * chars / (time.perf_counter() - t)


def _sample(net: CharRNN, vocab: Vocab, n: int, chars: int) -> float:
    """chars/s (all streams together) of the product ``charlm.sampling.sample``, prime excluded."""
    sample(net, vocab, "A", 2, num_samples=n, seed=0)
    t = time.perf_counter()
    sample(net, vocab, "A", chars, num_samples=n, seed=0)
    return n * chars / (time.perf_counter() - t)


def bench_sampling(hidden_size: int, num_layers: int, chars: int, rounds: int, bw_bytes: int, streams: int = 64) -> dict:
    torch.manual_seed(0)
    vocab = Vocab([chr(c) for c in range(32, 97)])  # 65 characters, like Tiny Shakespeare
    net = CharRNN(len(vocab), hidden_size, num_layers).eval()
    fast32 = FastStep(net)
    all_weights = sum(p.numel() * p.element_size() for n_, p in net.named_parameters() if p.dim() == 2 and "embedding" not in n_)
    res: dict = {k: [] for k in ("bandwidth", "nn_per_char_1", "sample_1", "sample_n", "fast32_1", "fast32_n")}
    for _ in range(rounds):
        res["bandwidth"].append(copy_bandwidth(bw_bytes))
        res["nn_per_char_1"].append(_nn_per_char(net, max(chars // 4, 10)))
        res["sample_1"].append(_sample(net, vocab, 1, chars))
        res["sample_n"].append(_sample(net, vocab, streams, max(chars // 4, 10)))
        res["fast32_1"].append(_fast_steps(fast32, 1, chars))
        res["fast32_n"].append(_fast_steps(fast32, streams, max(chars // 4, 10)))
    m = {k: median(v) for k, v in res.items()}
    bw = m["bandwidth"]
    floor_all = bw / all_weights
    floor_fast = bw / fast32.weight_bytes_per_char()
    return {
        "model": f"lstm {num_layers}x{hidden_size}, vocab {len(vocab)}",
        "streams": streams,
        "copy_bandwidth_GBps": bw / 1e9,
        "weight_bytes_per_char_all": all_weights,
        "weight_bytes_per_char_fast": fast32.weight_bytes_per_char(),
        "floor_chars_per_sec_all": floor_all,
        "floor_chars_per_sec_fast": floor_fast,
        "chars_per_sec": m,
        "sample_1_over_floor_all": m["sample_1"] / floor_all,
        "sample_1_over_floor_fast": m["sample_1"] / floor_fast,
        "speedup_over_nn_per_char": m["sample_1"] / m["nn_per_char_1"],
        "raw": res,
    }
