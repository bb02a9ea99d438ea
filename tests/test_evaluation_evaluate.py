"""charlm.evaluation.evaluate: the loss over a text read as streams; with a burn-in they give the
loss of one pass over the text, and the loss training's validation logged."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from charlm.checkpoint import load_checkpoint, model_from_checkpoint
from charlm.data.cache import prepare_corpus
from charlm.data.streams import split_bounds
from charlm.evaluation.evaluate import evaluate
from charlm.model.rnn import CharRNN


@pytest.fixture(scope="module")
def text_ids(shared_data, tmp_path_factory):
    c = prepare_corpus(shared_data / "tinyshakespeare" / "input.txt", cache_dir=tmp_path_factory.mktemp("cache"))
    return np.asarray(c.ids[:3_000], dtype=np.int64), len(c.vocab)


@pytest.fixture(scope="module")
def net(text_ids):
    torch.manual_seed(0)
    return CharRNN(text_ids[1], hidden_size=24, num_layers=2, cell="lstm").double().eval()


def one_pass(net: CharRNN, ids: np.ndarray, first: int = 0) -> float:
    """Mean NLL of one forward pass over all of ``ids``, scoring the targets after position ``first``."""
    with torch.no_grad():
        logits, _ = net(torch.from_numpy(ids)[None])
    return F.cross_entropy(logits[0, first:-1].float(), torch.from_numpy(ids[first + 1 :])).item()


@pytest.mark.parametrize("streams", [1, 3, 8, 64, 512])
def test_a_burn_in_longer_than_the_text_gives_exactly_one_pass(net, text_ids, streams):
    # every stream then reads everything before its segment, from a zero state at the text's
    # start: each one's state equals that of a single pass, however short its own burn-in is
    ids, _ = text_ids
    r = evaluate(net, ids, batch_size=streams, seq_len=37, burn_in=len(ids))
    assert r["chars"] == len(ids) - 1 and r["streams"] == streams and r["burn_in"] == len(ids)
    assert r["loss"] == pytest.approx(one_pass(net, ids), abs=1e-6)


@pytest.mark.parametrize("streams", [1, 7, 100])
def test_the_first_stream_reads_the_text_before_the_split(net, text_ids, streams):
    ids, _ = text_ids
    b = 1_000  # "val" = ids[b:], "train" = ids[:b] before it
    want = one_pass(net, ids, first=b)
    r = evaluate(net, ids[b:], batch_size=streams, seq_len=50, burn_in=len(ids), context=ids[:b])
    assert r["chars"] == len(ids) - b - 1
    assert r["loss"] == pytest.approx(want, abs=1e-6)


def test_without_burn_in_every_stream_starts_from_zeros(net, text_ids):
    ids, _ = text_ids
    zero = evaluate(net, ids, batch_size=64, seq_len=37, burn_in=0)
    by_hand = 0.0
    bounds = np.linspace(0, 64 * 47, 65).astype(int)  # 64 streams of ceil(2999 / 64) = 47 targets
    with torch.no_grad():
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            seg = ids[lo : min(hi, len(ids) - 1) + 1]
            if len(seg) > 1:
                logits, _ = net(torch.from_numpy(seg)[None])
                by_hand += F.cross_entropy(logits[0, :-1].float(), torch.from_numpy(seg[1:]), reduction="sum").item()
    assert zero["loss"] == pytest.approx(by_hand / (len(ids) - 1), abs=1e-6)
    assert zero["burn_in"] == 0


# ----------------------------------------------------------------------------- a trained model
def test_eval_matches_training_validation(trained_run, shared_data):
    out, metrics = trained_run
    net, vocab = model_from_checkpoint(load_checkpoint(out / "checkpoints" / "last.ckpt"))
    c = prepare_corpus(shared_data / "tinyshakespeare" / "input.txt")
    b, e = split_bounds(c.num_chars, (0.9, 0.1, 0.0))[1]
    # the same stream layout as training's validation (batch 16, the default burn-in, the train
    # split read before val) gives the same number
    r = evaluate(net, c.ids[b:e], batch_size=16, seq_len=64, context=c.ids[:b])
    assert r["chars"] == e - b - 1
    assert r["loss"] == pytest.approx(metrics["val/loss"], abs=1e-4)


def test_val_loss_does_not_depend_on_the_number_of_streams(trained_run, shared_data):
    # the whole val split (111,538 targets) of a trained model, scored as 1, 8, 64 and 512 streams:
    # with the default burn-in every count gives the single pass's loss to 1e-3 nats
    # (without it, 512 streams each starting from zeros cost several 1e-3 nats more)
    out, _ = trained_run
    net, _ = model_from_checkpoint(load_checkpoint(out / "checkpoints" / "last.ckpt"))
    c = prepare_corpus(shared_data / "tinyshakespeare" / "input.txt")
    b, e = split_bounds(c.num_chars, (0.9, 0.1, 0.0))[1]
    val, before = c.ids[b:e], c.ids[:b]
    losses = {g: evaluate(net, val, batch_size=g, seq_len=256, context=before)["loss"] for g in (1, 8, 64, 512)}
    assert max(losses.values()) - min(losses.values()) < 1e-3, losses
