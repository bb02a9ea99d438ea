"""charlm.checkpoint: the checkpoint's format (plain tensors and values, loadable with
weights_only), its atomic write (a kill mid-write leaves the previous file), the permissions the
user's umask gives, safe and clear loading (truncated, foreign, malicious or GPU files), and a new
run's weights from another run's checkpoint (init_from)."""

from __future__ import annotations

import os
import re
import signal
import stat
from pathlib import Path

import pytest
import torch

from charlm.checkpoint import AtomicCheckpointIO, atomic_torch_save, load_checkpoint, load_initial_weights
from charlm.cli.train import train
from charlm.data.cache import prepare_corpus
from charlm.errors import CharLMError
from charlm.training.module import CharLM
from conftest import FAST_TRAIN, REPO, TINY_TRAIN, assert_user_error, last_ckpt, train_tiny


@pytest.fixture
def umask():
    """``umask(mask)`` sets the process umask for the test; the old one is restored after."""
    old = os.umask(0o022)
    os.umask(old)
    yield os.umask
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077, 0o027], ids=oct)
def test_checkpoint_and_cache_files_get_the_mode_the_umask_gives(tmp_path, umask, mask, shakespeare_path):
    umask(mask)
    atomic_torch_save({"x": torch.zeros(2)}, tmp_path / "a.ckpt")
    AtomicCheckpointIO().save_checkpoint({"x": torch.zeros(2)}, tmp_path / "b.ckpt")
    assert mode(tmp_path / "a.ckpt") == mode(tmp_path / "b.ckpt") == 0o666 & ~mask
    # replacing an existing checkpoint gives the same mode (a new file is renamed over it)
    atomic_torch_save({"x": torch.ones(2)}, tmp_path / "a.ckpt")
    assert mode(tmp_path / "a.ckpt") == 0o666 & ~mask
    # the corpus cache: the entry folder and its files, as mkdir/open give them
    c = prepare_corpus(shakespeare_path, cache_dir=tmp_path / "cache")
    assert mode(c.cache_dir) == 0o777 & ~mask
    assert {mode(p) for p in c.cache_dir.iterdir()} == {0o666 & ~mask}


def test_a_training_writes_checkpoints_others_may_read_under_umask_022(compose, tmp_path, umask, small_corpus):
    umask(0o022)
    out = tmp_path / "run"
    train(compose("train", out, FAST_TRAIN + ["data=file", f"data.path={small_corpus}", "trainer.max_steps=20",
                                              "trainer.limit_val_batches=2", "callbacks.samples.length=0",
                                              "~callbacks.visualize"]))
    ckpts = sorted((out / "checkpoints").glob("*.ckpt"))
    assert len(ckpts) == 2  # last.ckpt and the best one at step 20
    assert {mode(p) for p in ckpts} == {0o644}, {p.name: oct(mode(p)) for p in ckpts}


# ----------------------------------------------------------------------------- format and atomic write
def test_checkpoint_is_plain_and_complete(trained_run):
    out, _ = trained_run
    raw = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    entry = raw["charlm"]
    assert len(entry["vocab"]) == 65 and entry["model"]["hidden_size"] == 128
    assert entry["data"]["encoding"] == "utf-8" and raw["global_step"] == 150


@pytest.mark.slow
def test_sigkill_during_a_checkpoint_write_keeps_the_previous_last_ckpt_resumable(tmp_path, small_corpus, run_app):
    """Deterministic: the test plugin ``plugins.KillDuringWrite`` SIGKILLs the process half-way
    through the temporary file of the step-10 write (the step-5 one is on disk)."""
    args = [*TINY_TRAIN, "data=file", f"data.path={small_corpus}", "trainer.val_check_interval=100"]
    run = tmp_path / "run"
    ckdir = run / "checkpoints"
    p = run_app("train", *args, "trainer.max_steps=15", f"hydra.run.dir={run}", "+callbacks.kill._target_=plugins.KillDuringWrite",
                "+callbacks.kill.step=10", plugins=True, cwd=tmp_path, timeout=300)
    assert p.returncode == -signal.SIGKILL, (p.returncode, p.stderr[-3000:])
    (tmp,) = ckdir.glob(".last.ckpt.*.tmp")  # the write that was cut: half of the file is on disk
    assert 0 < tmp.stat().st_size
    assert load_checkpoint(ckdir / "last.ckpt")["global_step"] == 5  # the previous one, untouched and loadable
    p = run_app("train", *args, "trainer.max_steps=7", f"resume={run}", plugins=True, cwd=tmp_path, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert load_checkpoint(ckdir / "last.ckpt")["global_step"] == 7


# ----------------------------------------------------------------------------- loading
def test_truncated_or_foreign_checkpoint_is_a_clear_error_naming_the_file(tmp_path, shakespeare_run, small_corpus, run_app):
    good = last_ckpt(shakespeare_run).read_bytes()
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(good[: len(good) // 2])
    text = tmp_path / "notes.ckpt"
    text.write_text("this is not a checkpoint\n")
    tensor = tmp_path / "tensor.ckpt"
    torch.save(torch.zeros(3), tensor)
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    for bad, needle in [(truncated, "is not a readable checkpoint"), (text, "is not a checkpoint file (neither a zip"),
                        (REPO / "README.md", "is not a checkpoint file"), (empty, "is not a checkpoint file (it is empty)"),
                        (tensor, "is not a Lightning checkpoint"), (Path("/dev/null"), "is not a regular file")]:
        with pytest.raises(CharLMError, match=re.escape(f"{bad} {needle}")) as e:
            load_checkpoint(bad)
        assert "weights_only" not in str(e.value) and "refused" not in str(e.value) and len(str(e.value)) < 400
    # a damaged pickle inside a zip is damaged, not refused; torch's reason is one short line
    damaged = bytearray(good)
    i = damaged.index(b"charlm")
    damaged[i : i + 6] = b"\xff\xfe\xfd\xfc\xfb\xfa"
    dmg = tmp_path / "damaged.ckpt"
    dmg.write_bytes(bytes(damaged))
    with pytest.raises(CharLMError) as e:
        load_checkpoint(dmg)
    assert str(dmg) in str(e.value) and "refused" not in str(e.value) and "\n" not in str(e.value)
    # every way a user hands over a checkpoint: sample, eval, resume=, init_from=, ckpt=
    for app, extra in [("sample", []), ("eval", ["split=val"])]:
        r = run_app(app, f"ckpt={truncated}", *extra, f"hydra.run.dir={tmp_path / 'x'}")
        assert_user_error(r, str(truncated), "is not a readable checkpoint")
        r = run_app(app, f"ckpt={tmp_path / 'missing.ckpt'}", *extra, f"hydra.run.dir={tmp_path / 'x'}")
        assert_user_error(r, str(tmp_path / "missing.ckpt"), "does not exist")
    for key in ("resume", "init_from", "ckpt"):
        with pytest.raises(CharLMError, match=re.escape(str(truncated))):
            train_tiny(tmp_path / f"t-{key}", "data=file", f"data.path={small_corpus}", f"{key}={truncated}")


class _Payload:
    """Pickles as a call of ``open(marker, "w")``: loading it with a full unpickler creates the file."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_checkpoint_whose_pickle_runs_code_is_refused_and_the_code_never_runs(tmp_path, shakespeare_run, small_corpus, run_app):
    marker = tmp_path / "PWNED"
    ck = torch.load(last_ckpt(shakespeare_run), weights_only=True)
    ck["charlm"]["payload"] = _Payload(str(marker))
    evil = tmp_path / "checkpoints" / "last.ckpt"  # a run dir layout, for resume=<run dir> too
    evil.parent.mkdir()
    torch.save(ck, evil)
    with pytest.raises(CharLMError, match=f"refused to load {re.escape(str(evil))}") as e:
        load_checkpoint(evil)
    # torch's own reason in one line (the blocked GLOBAL), without its general advice paragraph
    assert re.search(r"GLOBAL \S*open\b", str(e.value)) and "weights_only" not in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(CharLMError, match="refused to load"):
        AtomicCheckpointIO().load_checkpoint(evil)  # Lightning's path for ckpt=
    for app, extra in [("sample", []), ("eval", ["split=val"])]:
        assert_user_error(run_app(app, f"ckpt={evil}", *extra, f"hydra.run.dir={tmp_path / 'x'}"), "refused to load", str(evil))
    for key, value in [("resume", tmp_path), ("init_from", evil), ("ckpt", evil)]:
        with pytest.raises(CharLMError, match="refused to load"):
            train_tiny(tmp_path / f"t-{key}", "data=file", f"data.path={small_corpus}", f"{key}={value}")
    assert not marker.exists()
    # the payload is real: an unsafe load would have run it
    torch.load(evil, weights_only=False)
    assert marker.exists()


_GPU_TAG = """
import sys, torch
# Tag every CPU storage as 'cuda:0' when saving: the file then claims GPU tensors, exactly as a
# checkpoint written by a GPU run does (torch.save records each storage's location).
torch.serialization.register_package(0, lambda obj: "cuda:0" if obj.device.type == "cpu" else None, lambda obj, loc: None)
ck = torch.load(sys.argv[1], map_location="cpu", weights_only=True)
ck["hyper_parameters"]["device"] = "cuda:0"
torch.save(ck, sys.argv[2])
"""


@pytest.mark.slow
def test_checkpoint_saved_on_a_gpu_samples_evaluates_and_resumes_on_cpu(tmp_path, shakespeare_run, run_app, run_python):
    """No GPU here: the checkpoint is made GPU-like by tagging every stored tensor with the
    location ``cuda:0`` (what torch.save records on a GPU machine); a plain ``torch.load`` of it
    fails on this CPU-only torch, which proves the file claims CUDA tensors. Not covered: CUDA
    RNG states and anything else only a real GPU run writes."""
    gpu = tmp_path / "gpu.ckpt"
    p = run_python("-c", _GPU_TAG, str(last_ckpt(shakespeare_run)), str(gpu), timeout=120)
    assert p.returncode == 0, p.stderr
    with pytest.raises(RuntimeError, match="CUDA"):
        torch.load(gpu, weights_only=True)
    assert load_checkpoint(gpu)["state_dict"]["net.decoder.weight"].device.type == "cpu"
    args = ["prime=ROMEO:", "length=80", "seed=5"]
    a = run_app("sample", f"ckpt={last_ckpt(shakespeare_run)}", *args, f"hydra.run.dir={tmp_path / 'a'}")
    b = run_app("sample", f"ckpt={gpu}", *args, "device=auto", f"hydra.run.dir={tmp_path / 'b'}")
    assert a.returncode == 0 and b.returncode == 0, b.stderr
    assert a.stdout == b.stdout
    r = run_app("eval", f"ckpt={gpu}", "split=val", f"hydra.run.dir={tmp_path / 'e'}")
    assert r.returncode == 0 and "bpc" in r.stdout, r.stderr
    # Lightning's own loading (ckpt=) reads it onto the CPU too
    corpus = load_checkpoint(gpu)["charlm"]["data"]["source"]
    train_tiny(tmp_path / "cont", "data=file", f"data.path={corpus}", f"ckpt={gpu}", "trainer.max_steps=12")
    assert torch.load(last_ckpt(tmp_path / "cont"), weights_only=True)["global_step"] == 12


def test_init_from_with_a_different_vocabulary_lists_the_differing_characters(tmp_path, shakespeare_run, small_corpus, run_app):
    src = load_checkpoint(last_ckpt(shakespeare_run))
    chars = list(src["charlm"]["vocab"])
    model = dict(src["charlm"]["model"])
    a, b = chars[-2], chars[-1]
    n = len(chars)
    cases = {
        "superset": (chars + ["é", "ß"], r"only in the checkpoint: \[\]; only in this corpus: \['ß', 'é'\]"),
        "subset": (chars[:-2], rf"only in the checkpoint: \[{a!r}, {b!r}\]; only in this corpus: \[\]"),
        "same size": (chars[:-1] + ["é"], rf"\({n} vs {n} characters\); only in the checkpoint: \[{b!r}\]; only in this corpus: \['é'\]"),
    }
    for name, (vocab, pattern) in cases.items():
        with pytest.raises(CharLMError, match=pattern):
            load_initial_weights(CharLM(vocab=vocab, model=model), last_ckpt(shakespeare_run))
    # the same vocabulary loads
    load_initial_weights(CharLM(vocab=chars, model=model), last_ckpt(shakespeare_run))
    # on the command line: a corpus with two extra characters
    f = tmp_path / "more.txt"
    f.write_text(small_corpus.read_text(encoding="utf-8") + "\nCafé ½\n", encoding="utf-8")
    r = run_app("train", *TINY_TRAIN, "data=file", f"data.path={f}", f"init_from={shakespeare_run}", f"hydra.run.dir={tmp_path / 'r'}")
    assert_user_error(r, "vocabulary differs", "only in this corpus: ['½', 'é']")
