"""charlm.training.resume: ``resume=`` continues a stopped run exactly (weights, every loss, the
learning rate, validations, best-k files, samples), refuses a changed config or corpus unless
``allow_changes=true``, moves a newer last.ckpt aside, follows a moved or copied run dir; and
``init_from=`` starts a new run from another run's weights."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from charlm.cli.train import train
from charlm.errors import CharLMError
from conftest import FULL_STEPS, assert_same_run, assert_same_weights, last_ckpt, logged, resumable_train, weights


@pytest.mark.parametrize("stop", [9, 20, 21, 25], ids=["mid-epoch", "validation-step", "epoch-end", "second-epoch"])
def test_stopped_and_resumed_equals_uninterrupted(compose, tmp_path, full_run, stop):
    """stop_after_steps then resume= gives the run never stopped: no validation, best-k file or
    sample block at a stop step that is not a validation step; at a validation step (20) the
    stopped run validates it and the resumed one does not again; save_top_k files stay 3."""
    corpus, full = full_run
    cut = tmp_path / "cut"
    train(compose("train", cut, resumable_train(corpus, FULL_STEPS, f"stop_after_steps={stop}")))
    ck = torch.load(last_ckpt(cut), map_location="cpu", weights_only=True)
    assert ck["global_step"] == stop and (stop >= 21 or ck["epoch"] == 0)  # within the first epoch of 21 batches
    full_vals = logged(full, "val/loss")
    assert logged(cut, "val/loss") == {k: v for k, v in full_vals.items() if k < stop}  # the stop added no validation
    assert not (cut / "visualize").exists()  # nor the end-of-training page
    # the resumed run writes into the original run dir, whatever output dir this invocation got
    train(compose("train", tmp_path / "elsewhere", [f"resume={cut}"]))
    assert_same_run(full, cut, FULL_STEPS)  # mid-epoch: the rest of the epoch, the same learning rates
    assert torch.load(last_ckpt(cut), weights_only=True)["epoch"] == torch.load(last_ckpt(full), weights_only=True)["epoch"]
    assert not (tmp_path / "elsewhere" / "checkpoints").exists()


def test_resume_refuses_changes_and_allows_extension(compose, tmp_path, tiny_corpus, caplog):
    run = tmp_path / "run"
    train(compose("train", run, resumable_train(tiny_corpus, 12, "stop_after_steps=6")))
    with pytest.raises(CharLMError) as e:
        train(compose("train", tmp_path / "x", [f"resume={run}", "optimizer.lr=0.01", "data.seq_len=16"]))
    assert "optimizer.lr: " in str(e.value) and "-> 0.01" in str(e.value) and "data.seq_len: 32 -> 16" in str(e.value)
    assert "allow_changes=true" in str(e.value)
    caplog.set_level("INFO", logger="charlm")
    train(compose("train", tmp_path / "x", [f"resume={run}", "trainer.max_steps=16"]))
    assert "trainer.max_steps: 12 -> 16" in caplog.text and "spans 16 steps instead of 12" in caplog.text
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 16
    # a new line order is refused, saying what it does to val and test
    with pytest.raises(CharLMError) as e:
        train(compose("train", tmp_path / "x", [f"resume={run}", "data.shuffle_lines=3", "trainer.max_steps=20"]))
    assert "data.shuffle_lines: None -> 3" in str(e.value) and "val and test would hold text the run has trained on" in str(e.value)


def test_a_run_from_before_shuffle_lines_is_told_how_to_resume_in_its_line_order():
    from charlm.training.resume import split_change_note

    note = split_change_note(["data.shuffle_lines: '<unset>' -> 0"])  # data=names, begun before the option
    assert "began before data.shuffle_lines existed" in note and "add data.shuffle_lines=null" in note
    assert split_change_note(["optimizer.lr: 0.003 -> 0.01"]) == ""


def test_resume_from_an_earlier_best_checkpoint_moves_a_newer_last_ckpt_aside(compose, tmp_path, tiny_corpus, caplog):
    run = tmp_path / "run"
    train(compose("train", run, resumable_train(tiny_corpus, 20)))  # best-k at steps 10 and 20, last.ckpt at 20
    ckdir = run / "checkpoints"
    best10 = next(ckdir.glob("step000010-*.ckpt"))
    last_bytes = (ckdir / "last.ckpt").read_bytes()
    with caplog.at_level("WARNING"):
        train(compose("train", tmp_path / "x", [f"resume={best10}", "trainer.max_steps=12"]))
    aside = ckdir / "last-step20.ckpt"
    assert aside.read_bytes() == last_bytes  # the newer checkpoint is kept, untouched
    assert "step 10" in caplog.text and "newer (step 20)" in caplog.text and str(aside) in caplog.text
    assert torch.load(ckdir / "last.ckpt", weights_only=True)["global_step"] == 12


def test_resume_without_checkpoint_is_an_error(compose, tmp_path, tiny_corpus):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CharLMError, match="no checkpoint found"):
        train(compose("train", tmp_path / "x", [f"resume={tmp_path / 'empty'}"]))
    with pytest.raises(CharLMError, match="does not exist|no such"):
        train(compose("train", tmp_path / "y", resumable_train(tiny_corpus, 4, f"ckpt={tmp_path / 'nope.ckpt'}")))


def test_init_from_starts_a_new_run_from_the_weights_only(compose, tmp_path, tiny_corpus):
    """(A checkpoint of another vocabulary is refused: test_checkpoint.py.)"""
    src = tmp_path / "src"
    train(compose("train", src, resumable_train(tiny_corpus, 5)))
    w = weights(src)
    new = tmp_path / "new"
    # a new run: its own step counter, optimizer and schedule; weights start from the checkpoint
    train(compose("train", new, resumable_train(tiny_corpus, 3, f"init_from={src}", "optimizer.lr=0")))
    ck = torch.load(new / "checkpoints" / "last.ckpt", weights_only=True)
    assert ck["global_step"] == 3
    for k, v in w.items():
        assert torch.equal(v, ck["state_dict"][k]), k  # lr 0: the weights are exactly the source's


@pytest.mark.parametrize("how", ["moved", "copied"])
def test_a_moved_or_copied_run_dir_resumes_exactly_with_last_ckpt_the_newest(compose, tmp_path, tiny_corpus, how):
    total = 30
    full = tmp_path / "full"
    train(compose("train", full, resumable_train(tiny_corpus, total)))

    first = tmp_path / "first"
    train(compose("train", first, resumable_train(tiny_corpus, total, "stop_after_steps=9")))
    second = tmp_path / "second"
    if how == "moved":
        first.rename(second)
    else:
        import shutil

        shutil.copytree(first, second)
        kept = {p: p.read_bytes() for p in sorted(first.rglob("*")) if p.is_file()}
    # resumed twice: the second resume must continue from the first resume's state, not step 9
    train(compose("train", tmp_path / "x", [f"resume={second}", "stop_after_steps=21"]))
    assert torch.load(second / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 21
    train(compose("train", tmp_path / "x", [f"resume={second}"]))

    ckdir = second / "checkpoints"
    assert not [p.name for p in ckdir.iterdir() if re.search(r"-v\d+$", p.stem)], sorted(p.name for p in ckdir.iterdir())
    last = torch.load(ckdir / "last.ckpt", weights_only=True)
    assert last["global_step"] == total
    assert_same_weights(full, second)
    assert logged(second, "train/loss", once=True) == logged(full, "train/loss", once=True)
    # the best-k bookkeeping inside the checkpoint lives in the new dir and names files there
    for key, state in last["callbacks"].items():
        if "dirpath" not in state:
            continue
        assert state["dirpath"] == str(ckdir.resolve()), key
        for path in [*state["best_k_models"], state["best_model_path"], state["last_model_path"]]:
            if path:
                assert Path(path).parent == ckdir.resolve() and Path(path).is_file(), (key, path)
    if how == "copied":  # the original is left as it was
        assert {p: p.read_bytes() for p in sorted(first.rglob("*")) if p.is_file()} == kept


def test_resume_onto_a_changed_corpus_is_refused_unless_allow_changes(compose, tmp_path, tiny_corpus):
    run = tmp_path / "run"
    train(compose("train", run, resumable_train(tiny_corpus, 12, "stop_after_steps=6")))
    ckpt = run / "checkpoints" / "last.ckpt"
    stored = torch.load(ckpt, weights_only=True)["charlm"]["data"]["sha256"]
    text = tiny_corpus.read_text(encoding="utf-8")
    tiny_corpus.write_text(text[::-1], encoding="utf-8")  # same characters, same length, other text
    with pytest.raises(CharLMError) as e:
        train(compose("train", tmp_path / "x", [f"resume={run}"]))
    msg = str(e.value)
    assert "changed since the checkpoint" in msg and stored[:16] in msg and "allow_changes=true" in msg
    ck = torch.load(ckpt, weights_only=True)
    assert ck["global_step"] == 6 and ck["charlm"]["data"]["sha256"] == stored  # nothing written
    # allow_changes=true: continues on the changed text, and the checkpoint then names it
    train(compose("train", tmp_path / "x", [f"resume={run}", "allow_changes=true", "stop_after_steps=9"]))
    ck = torch.load(ckpt, weights_only=True)
    assert ck["global_step"] == 9 and ck["charlm"]["data"]["sha256"] != stored
    # another vocabulary is refused even with allow_changes: the ids would mean other characters
    tiny_corpus.write_text(text[::-1] + "@", encoding="utf-8")
    assert "@" not in text
    with pytest.raises(CharLMError, match=r"no longer has the run's vocabulary.*only in the file now: \['@'\]"):
        train(compose("train", tmp_path / "x", [f"resume={run}", "allow_changes=true"]))


def test_resume_from_an_earlier_checkpoint_keeps_each_sample_block_once(compose, tmp_path, tiny_corpus):
    """samples.txt and the samples of the checkpoint (the W&B table's rows) after a resume from an
    earlier checkpoint are those of a run never resumed: blocks written after that checkpoint are
    dropped (those steps run again), blocks before it kept."""
    from charlm.sampling.samples_file import read_samples

    extra = ("callbacks.samples.length=30",)
    full = tmp_path / "full"
    train(compose("train", full, resumable_train(tiny_corpus, 20, *extra)))
    run = tmp_path / "run"
    train(compose("train", run, resumable_train(tiny_corpus, 20, *extra)))
    (best10,) = (run / "checkpoints").glob("step000010-*.ckpt")
    train(compose("train", tmp_path / "x", [f"resume={best10}"]))
    assert (run / "samples.txt").read_text(encoding="utf-8") == (full / "samples.txt").read_text(encoding="utf-8")
    assert [b["step"] for b in read_samples(run / "samples.txt")] == [10, 10, 20, 20]
    (best20,) = (run / "checkpoints").glob("step000020-*.ckpt")  # written after the validation of step 20
    rows = torch.load(best20, weights_only=True)["callbacks"]["SampleText"]["rows"]
    assert [(r[0], r[1]) for r in rows] == [(10, 1.0), (10, 0.6), (20, 1.0), (20, 0.6)]
