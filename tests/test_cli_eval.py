"""charlm-eval (charlm.cli.eval): a checkpoint's loss over a split or a file, printed with how the
text was scored (the number its training run printed), the \\r\\n count, and errors that name
charlm-eval's own options."""

from __future__ import annotations

import contextlib
import io
import json
import re

import pytest

from charlm.data.streams import split_bounds
from charlm.errors import CharLMError
from conftest import FAST_TRAIN, assert_checked_before_any_work, assert_user_error, compose_cfg, last_ckpt


@pytest.mark.parametrize("typed,message", [
    ("batch_size=0", "batch_size=0 must be an integer >= 1"),
    ("seq_len=2.5", "seq_len=2.5 must be an integer >= 1"),
    ("split=dev", "split=dev must be one of train, val, test"),
    ("device=gpu7", "device=gpu7 is not a device"),
])
def test_every_option_is_checked_before_any_work(tmp_path, typed, message):
    assert_checked_before_any_work("eval", tmp_path, typed, message)


def test_charlm_eval_of_a_checkpoint_prints_the_val_loss_its_training_run_printed(tmp_path, run_main, small_corpus):
    """The numbers of the README's Results table: the training summary's final val loss is the
    loss ``charlm-eval`` prints for the run's ``last.ckpt`` (same split, whole of it, printed to
    the same 4 decimals), although evaluation reads the split as another number of streams."""
    run = tmp_path / "run"
    code, out, err = run_main("train", *FAST_TRAIN, "data=file", f"data.path={small_corpus}",
                              "trainer.max_steps=30", "trainer.limit_val_batches=null", "data.eval_batch_size=4",
                              "callbacks.samples.length=0", "~callbacks.visualize", f"hydra.run.dir={run}")
    assert code == 0, err
    reported = re.search(r"final val loss \(step 30\): (\d+\.\d{4}) nats/char, bpc (\d+\.\d{4})", out)
    assert reported, out
    code, out, err = run_main("eval", f"ckpt={run / 'checkpoints' / 'last.ckpt'}", "split=val", "batch_size=16",
                              f"hydra.run.dir={tmp_path / 'eval'}")
    assert code == 0, err
    evaluated = re.search(r"\[val\]: loss (\d+\.\d{4}) nats/char \| bpc (\d+\.\d{4}) \| .* \| 16 streams", out)
    assert evaluated, out
    assert evaluated.groups() == reported.groups()


def test_eval_prints_the_loss_and_how_the_text_was_scored(trained_run, tmp_path, run_app):
    out, _ = trained_run
    ckpt = out / "checkpoints" / "last.ckpt"
    r = run_app("eval", f"ckpt={ckpt}", "split=val", f"hydra.run.dir={tmp_path}/e")
    assert r.returncode == 0, r.stderr
    assert "bpc" in r.stdout and (tmp_path / "e" / "metrics.json").is_file()
    # the output line names how the text was scored: streams and burn-in
    assert "| 111,538 characters | 32 streams, burn-in 128 characters" in r.stdout
    f = tmp_path / "t.txt"
    f.write_text("First Citizen:\nBefore we proceed any further, hear me speak.\n", encoding="utf-8")
    r = run_app("eval", f"ckpt={ckpt}", f"file={f}", "batch_size=1", "burn_in=0", f"hydra.run.dir={tmp_path}/e2")
    assert r.returncode == 0 and "nats/char" in r.stdout
    assert "| 60 characters | 1 stream, burn-in 0 characters" in r.stdout, r.stdout
    bad = tmp_path / "bad.txt"
    bad.write_text("Ça va? ½", encoding="utf-8")
    r = run_app("eval", f"ckpt={ckpt}", f"file={bad}", f"hydra.run.dir={tmp_path}/e3")
    assert_user_error(r, "'Ç'", "'½'")


def test_eval_errors_name_eval_options_and_a_text_under_2_characters_is_an_error(tmp_path, shakespeare_run, run_app):
    from charlm.cli.eval import run as eval_run

    def ev(*overrides):
        return eval_run(compose_cfg("eval", tmp_path / "e", [f"ckpt={last_ckpt(shakespeare_run)}", *overrides]))

    with pytest.raises(CharLMError, match=r"nonexist.txt does not exist; set file=<a text file>") as e:
        ev(f"file={tmp_path / 'nonexist.txt'}")
    assert "data." not in str(e.value)
    with pytest.raises(CharLMError, match="is not a regular file; set file="):
        ev(f"file={tmp_path}")
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("First Citizen: café".encode("latin-1"))
    with pytest.raises(CharLMError, match=r"byte offset 18 .*Set encoding=<the file's encoding> \(for example encoding=latin-1") as e:
        ev(f"file={latin}")
    assert "data." not in str(e.value)
    for text in ["a", "\r\n"]:  # \r\n is one character once newlines are normalised
        f = tmp_path / "short.txt"
        f.write_bytes(text.encode())
        with pytest.raises(CharLMError, match=r"has 1 character\(s\); evaluation needs at least 2 characters"):
            ev(f"file={f}")
    f.write_text("ab", encoding="utf-8")
    assert ev(f"file={f}", "batch_size=32", "seq_len=256")["chars"] == 1  # 2 characters: one prediction
    r = run_app("eval", f"ckpt={last_ckpt(shakespeare_run)}", f"file={latin}", f"hydra.run.dir={tmp_path / 'e2'}")
    assert_user_error(r, "byte offset 18", "encoding=latin-1")


def test_crlf_true_prints_both_counts(compose, tmp_path, small_corpus):
    from charlm.cli.eval import run
    from charlm.cli.train import train

    out = tmp_path / "run"
    train(compose("train", out, FAST_TRAIN + ["data=file", f"data.path={small_corpus}", "trainer.max_steps=5",
                                              "trainer.val_check_interval=5", "callbacks.samples.length=0"]))
    cfg = compose("eval", tmp_path / "eval", [f"ckpt={out}/checkpoints/last.ckpt", "split=val", "crlf=true",
                                             "device=cpu"])
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        res = run(cfg)
    text = small_corpus.read_text(encoding="utf-8")
    b, e = split_bounds(len(text), (0.9, 0.05, 0.05))[1]
    newlines = text[b + 1 : e].count("\n")
    assert res["crlf"]["chars"] == res["chars"] + newlines and newlines > 100
    assert res["crlf"]["loss"] == pytest.approx(res["loss"] * res["chars"] / (res["chars"] + newlines))
    lines = buf.getvalue().splitlines()
    assert lines[0].endswith(f"loss {res['loss']:.4f} nats/char | bpc {res['bpc']:.4f} | "
                             f"perplexity {res['ppl']:.4f} | {res['chars']:,} characters | "
                             f"{res['streams']} streams, burn-in {res['burn_in']} characters")
    assert lines[1].endswith(f"[val], each newline counted as \\r\\n: loss {res['crlf']['loss']:.4f} nats/char | "
                             f"bpc {res['crlf']['bpc']:.4f} | {res['crlf']['chars']:,} characters")
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["crlf"] == res["crlf"]
