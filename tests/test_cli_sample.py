"""charlm-sample (charlm.cli.sample): text printed as UTF-8 whatever the locale, the prime as typed
or from a file, its unknown characters listed or dropped, ``length`` new characters, one header
per sample, the same text in every process."""

from __future__ import annotations

import pytest

from charlm.checkpoint import load_checkpoint, model_from_checkpoint
from charlm.cli.overrides import quote_overrides
from charlm.data.cache import prepare_corpus
from conftest import assert_checked_before_any_work, assert_user_error, last_ckpt, train_tiny


@pytest.mark.parametrize("typed,message", [
    ("top_k=2.5", "top_k=2.5 must be an integer >= 1 (or null: all characters)"),
    ("top_k=abc", "top_k=abc must be an integer >= 1"),
    ("length=2.7", "length=2.7 must be an integer >= 0"),
    ("length=true", "length=true must be an integer >= 0"),
    ("num_samples=0", "num_samples=0 must be an integer >= 1"),
    ("seed=abc", "seed=abc must be an integer"),
    ("device=gpu7", "device=gpu7 is not a device: use auto, cpu, cuda, cuda:<index> or mps"),
    ("escapes=maybe", "escapes=maybe must be true or false"),
])
def test_every_option_is_checked_before_any_work(tmp_path, typed, message):
    assert_checked_before_any_work("sample", tmp_path, typed, message)


MIXED = "Привет, мир! Γειά σου κόσμε. 你好，世界。 😀🎉 café cafe\u0301 naïve\n"


def test_mixed_script_utf8_trains_and_samples_as_utf8_under_c_locale(tmp_path, run_app):
    f = tmp_path / "mixed.txt"
    f.write_text(MIXED * 300, encoding="utf-8")
    c = prepare_corpus(f)
    # vocabulary by code point: the combining accent is its own character, the emoji one each
    assert "\u0301" in c.vocab and "😀" in c.vocab and "你" in c.vocab and "é" in c.vocab
    assert c.vocab.chars == sorted(set(MIXED)) and int(c.ids.max()) < len(c.vocab)
    assert c.vocab.decode(c.ids[: len(MIXED)]) == MIXED

    out = tmp_path / "run"
    train_tiny(out, "data=file", f"data.path={f}")
    c_locale = {"LC_ALL": "C", "LANG": "C", "PYTHONIOENCODING": ""}
    # an unquoted non-ASCII value works (Hydra alone rejects it with LexerNoViableAltException)
    r = run_app("sample", f"ckpt={last_ckpt(out)}", "prime=Привет", "length=40", f"hydra.run.dir={tmp_path / 's1'}", env=c_locale)
    assert r.returncode == 0, r.stderr
    text = r.stdout  # decoded strictly: fails unless the bytes are UTF-8
    assert text.startswith("Привет") and "\\u" not in text and len(text) == len("Привет") + 40 + 1
    assert set(text[:-1]) <= set(c.vocab.chars)
    # any prime, emoji and combining accents included, from a file (no quoting at all)
    pf = tmp_path / "prime.txt"
    pf.write_text("😀 cafe\u0301", encoding="utf-8")
    r = run_app("sample", f"ckpt={last_ckpt(out)}", f"prime_file={pf}", "length=10", f"hydra.run.dir={tmp_path / 's2'}", env=c_locale)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("😀 cafe\u0301")
    # backslash escapes keep non-Latin-1 characters intact
    from omegaconf import OmegaConf

    from charlm.cli.sample import read_prime

    assert read_prime(OmegaConf.create({"prime": "κόσμε\\n😀", "escapes": True})) == "κόσμε\n😀"
    # the quoting rule itself: structure, existing quotes and sweeps are left to Hydra
    assert quote_overrides(["prime=Привет", "a=x", "b='é'", "c=[é]", "-m", "d=é,ö", "e=a\\é\\"]) == [
        "prime='Привет'", "a=x", "b='é'", "c=[é]", "-m", "d=é,ö", "e='a\\é\\\\'"]


@pytest.mark.slow
def test_a_checkpoint_samples_the_same_text_in_every_process(tmp_path, shakespeare_run, run_app):
    """Different hash seeds and thread counts stand in for "another machine" (both CPU); a GPU
    machine is not covered (its kernels differ from the CPU's). The ids a corpus gets in every
    process: test_data_corpus.py."""
    samples = set()
    for i, (seed, threads) in enumerate([("0", "1"), ("12345", "2")]):
        r = run_app("sample", f"ckpt={last_ckpt(shakespeare_run)}", "length=200", "seed=7", "num_samples=2",
                    f"hydra.run.dir={tmp_path / f's{i}'}", env={"PYTHONHASHSEED": seed, "OMP_NUM_THREADS": threads})
        assert r.returncode == 0, r.stderr
        samples.add(r.stdout)
    assert len(samples) == 1


def test_model_trained_without_space_samples_with_the_default_prime(tmp_path, shared_data, run_app):
    names = shared_data / "names" / "names.txt"
    out = tmp_path / "names"
    train_tiny(out, "data=names")
    net, vocab = model_from_checkpoint(load_checkpoint(last_ckpt(out)))
    assert " " not in vocab and "\n" in vocab  # the default prime is a newline
    r = run_app("sample", f"ckpt={last_ckpt(out)}", "length=60", f"hydra.run.dir={tmp_path / 's'}")
    assert r.returncode == 0, r.stderr
    text = r.stdout
    assert len(text) == 1 + 60 + 1 and set(text) <= set(vocab.chars)
    assert names.is_file()


def test_prime_with_unknown_characters_is_an_error_listing_them_or_dropped_with_a_count(tmp_path, shakespeare_run, run_app):
    ck = last_ckpt(shakespeare_run)
    r = run_app("sample", f"ckpt={ck}", "prime='ROMEO€: ☃☃'", "length=5", f"hydra.run.dir={tmp_path / 'a'}")
    assert_user_error(r, "2 character(s) not in the model's vocabulary", "'€' (U+20AC)", "'☃' (U+2603)", "drop_unknown=true")
    r = run_app("sample", f"ckpt={ck}", "prime='ROMEO€: ☃☃'", "drop_unknown=true", "length=5", f"hydra.run.dir={tmp_path / 'b'}")
    assert r.returncode == 0, r.stderr
    assert "dropped 3 prime character(s)" in r.stderr
    assert r.stdout.startswith("ROMEO: ")


def test_length_counts_new_characters_even_when_shorter_than_the_prime(tmp_path, shakespeare_run, run_app):
    for length in (0, 3):
        r = run_app("sample", f"ckpt={last_ckpt(shakespeare_run)}", "prime='ROMEO and JULIET:'", f"length={length}",
                    f"hydra.run.dir={tmp_path / str(length)}")
        assert r.returncode == 0, r.stderr
        out = r.stdout
        assert out.startswith("ROMEO and JULIET:") and len(out) == len("ROMEO and JULIET:") + length + 1


def test_samples_are_printed_with_a_header_each_and_saved(trained_run, tmp_path, run_app):
    out, _ = trained_run
    ckpt = out / "checkpoints" / "last.ckpt"
    r = run_app("sample", f"ckpt={ckpt}", "prime=ROMEO:", "length=120", "seed=3", "num_samples=2", f"hydra.run.dir={tmp_path}/s")
    assert r.returncode == 0, r.stderr
    text = r.stdout
    parts = text.split("--- sample ")
    assert parts[0] == "" and parts[1].startswith("1/2 ---\nROMEO:") and parts[2].startswith("2/2 ---\nROMEO:")
    assert len(text) >= 2 * 126 and (tmp_path / "s" / "samples.txt").read_text(encoding="utf-8") == text
    one = run_app("sample", f"ckpt={ckpt}", "prime=ROMEO:", "length=20", "seed=3", f"hydra.run.dir={tmp_path}/s1")
    assert one.stdout.startswith("ROMEO:") and "--- sample" not in one.stdout  # one sample: no header
    r2 = run_app("sample", f"ckpt={ckpt}", "prime=ROMEO:", "length=120", "seed=3", "num_samples=2", f"hydra.run.dir={tmp_path}/s2")
    assert r2.stdout == r.stdout and len(parts) == 3
