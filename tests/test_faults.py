"""Bad input and faults (issue 5): one test per case reported by users of char-rnn, torch-rnn,
char-rnn-tensorflow, PyTorch's examples, Lightning, Hydra and W&B.

Each test drives the real product on real corpora (``$CHARLM_DATA_DIR``); where the user meets
the behaviour on the command line it runs the real CLI in a subprocess and checks the exit
status (2 for bad input), the message, and that no traceback is printed.
"""

from __future__ import annotations

import math
import os
import pickle
import re
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import lightning as L

from charlm.checkpoint import AtomicCheckpointIO, load_checkpoint, load_initial_weights, model_from_checkpoint
from charlm.cli.overrides import quote_overrides
from charlm.cli.train import train
from charlm.data.cache import prepare_corpus
from charlm.data.datamodule import CharDataModule
from charlm.errors import CharLMError
from charlm.model.rnn import CharRNN
from charlm.sampling.sampler import default_prime, next_ids, sample
from charlm.training.module import CharLM
try:  # tests/ as a folder of modules (main) or as a package
    from conftest import FAST_TRAIN, compose_cfg
except ImportError:  # pragma: no cover
    from tests.conftest import FAST_TRAIN, compose_cfg

REPO = Path(__file__).resolve().parents[1]

#: A few seconds of training, no samples/visualisation callbacks (they are not under test here).
TINY = FAST_TRAIN + [
    "model.hidden_size=32",
    "trainer.max_steps=10",
    "trainer.val_check_interval=10",
    "trainer.limit_val_batches=2",
    "callbacks.last_checkpoint.every_n_train_steps=5",
    "callbacks.samples.length=0",
    "~callbacks.visualize",
]


#: One intra-op thread for every test here (conftest's ``one_thread``).
pytestmark = pytest.mark.usefixtures("one_thread")


def cli(app: str, *args: str, env: dict | None = None, timeout: int = 300, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m charlm.cli.<app> args...`` as a user would; stdout/stderr as bytes."""
    e = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO / "src"))
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", f"charlm.cli.{app}", *args], capture_output=True, env=e,
                          timeout=timeout, cwd=cwd)


def assert_clean_error(r: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit status 2, each needle in stderr, no traceback; returns stderr."""
    err = r.stderr.decode("utf-8")
    assert r.returncode == 2, (r.returncode, err[-3000:])
    assert "Traceback" not in err, err[-3000:]
    for n in needles:
        assert n in err, (n, err[-3000:])
    return err


def run_train(out: Path, *overrides: str) -> dict:
    return train(compose_cfg("train", out, [*TINY, *overrides]))


@pytest.fixture(scope="module")
def shakes_run(tmp_path_factory, shared_data) -> Path:
    """A tiny model trained once on the first 60,000 characters of Tiny Shakespeare; returns
    its run dir (``checkpoints/last.ckpt`` at step 10)."""
    root = tmp_path_factory.mktemp("shakes")
    corpus = root / "small.txt"
    corpus.write_text((shared_data / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")[:60_000], encoding="utf-8")
    torch.set_num_threads(1)
    run_train(root / "run", "data=file", f"data.path={corpus}")
    return root / "run"


def ckpt_of(run: Path) -> Path:
    return run / "checkpoints" / "last.ckpt"


# ================================================================================== Data
def test_empty_input_file_is_an_error_not_an_empty_vocabulary(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    r = cli("train", "data=file", f"data.path={empty}", f"hydra.run.dir={tmp_path / 'run'}", "logger=csv")
    assert_clean_error(r, "input is empty", str(empty))
    bom_only = tmp_path / "bom.txt"
    bom_only.write_bytes(b"\xef\xbb\xbf")
    with pytest.raises(CharLMError, match="input is empty.*only a byte-order mark"):
        prepare_corpus(bom_only)


def test_corpus_shorter_than_one_batch_names_length_minimum_and_options(tmp_path, shakespeare_path):
    text = shakespeare_path.read_text(encoding="utf-8")
    short = tmp_path / "short.txt"
    short.write_text(text[:200], encoding="utf-8")  # train split 180 < 8 x (32 + 1) = 264
    r = cli("train", "data=file", f"data.path={short}", "data.batch_size=8", "data.seq_len=32",
            f"hydra.run.dir={tmp_path / 'r0'}", "logger=csv")
    assert_clean_error(r, "the train split has 180 characters", "264", "data.batch_size", "data.seq_len")

    # an enabled val split too small for its streams: an error before the first training step
    corpus = tmp_path / "c.txt"
    corpus.write_text(text[:3000], encoding="utf-8")
    out = tmp_path / "r1"
    with pytest.raises(CharLMError, match=r"the val split has 15 characters.*17.*data.eval_batch_size"):
        run_train(out, "data=file", f"data.path={corpus}", "data.splits=[0.995,0.005,0.0]", "data.eval_batch_size=16")
    assert not (out / "checkpoints").exists()  # nothing was trained

    # a split fraction that rounds to zero characters is an error, not a silent skip
    with pytest.raises(CharLMError, match=r"the val split is 0.0001 of a 3,000-character corpus, which leaves 0"):
        run_train(tmp_path / "r2", "data=file", f"data.path={corpus}", "data.splits=[0.9999,0.0001,0.0]")


def test_logger_none_trains_without_the_learning_rate_monitor(tmp_path, small_corpus):
    cfg = compose_cfg("train", tmp_path / "run", [*(o for o in TINY if o != "logger=csv"), "logger=none",
                                                  "data=file", f"data.path={small_corpus}"])
    assert "lr_monitor" in cfg.callbacks and not cfg.logger
    metrics = train(cfg)  # LearningRateMonitor with no logger made Lightning refuse to start
    assert math.isfinite(metrics["val/loss"])
    assert ckpt_of(tmp_path / "run").is_file()


def test_end_of_training_summary_prints_the_sample_and_paths_verbatim(tmp_path, small_corpus, capsys, monkeypatch):
    import charlm.sampling.sampler as sampler

    generated = "FOO :x: [bold]BAR[/bold] :smile:"
    monkeypatch.setattr(sampler, "sample", lambda *a, **k: [generated])  # text a model could generate
    out = tmp_path / "run[red]:x:"
    run_train(out, "data=file", f"data.path={small_corpus}")
    printed = capsys.readouterr().out
    assert generated in printed  # no emoji for :x:, no markup eaten
    assert f"run dir:     {out}" in printed and "\u274c" not in printed


MIXED = "Привет, мир! Γειά σου κόσμε. 你好，世界。 😀🎉 café cafe\u0301 naïve\n"


def test_mixed_script_utf8_trains_and_samples_as_utf8_under_c_locale(tmp_path):
    f = tmp_path / "mixed.txt"
    f.write_text(MIXED * 300, encoding="utf-8")
    c = prepare_corpus(f)
    # vocabulary by code point: the combining accent is its own character, the emoji one each
    assert "\u0301" in c.vocab and "😀" in c.vocab and "你" in c.vocab and "é" in c.vocab
    assert c.vocab.chars == sorted(set(MIXED)) and int(c.ids.max()) < len(c.vocab)
    assert c.vocab.decode(c.ids[: len(MIXED)]) == MIXED

    out = tmp_path / "run"
    run_train(out, "data=file", f"data.path={f}")
    c_locale = {"LC_ALL": "C", "LANG": "C", "PYTHONIOENCODING": ""}
    # an unquoted non-ASCII value works (Hydra alone rejects it with LexerNoViableAltException)
    r = cli("sample", f"ckpt={ckpt_of(out)}", "prime=Привет", "length=40", f"hydra.run.dir={tmp_path / 's1'}", env=c_locale)
    assert r.returncode == 0, r.stderr.decode()
    text = r.stdout.decode("utf-8")  # strict: fails unless the bytes are UTF-8
    assert text.startswith("Привет") and "\\u" not in text and len(text) == len("Привет") + 40 + 1
    assert set(text[:-1]) <= set(c.vocab.chars)
    # any prime, emoji and combining accents included, from a file (no quoting at all)
    pf = tmp_path / "prime.txt"
    pf.write_text("😀 cafe\u0301", encoding="utf-8")
    r = cli("sample", f"ckpt={ckpt_of(out)}", f"prime_file={pf}", "length=10", f"hydra.run.dir={tmp_path / 's2'}", env=c_locale)
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode("utf-8").startswith("😀 cafe\u0301")
    # backslash escapes keep non-Latin-1 characters intact
    from omegaconf import OmegaConf

    from charlm.cli.sample import read_prime

    assert read_prime(OmegaConf.create({"prime": "κόσμε\\n😀", "escapes": True})) == "κόσμε\n😀"
    # the quoting rule itself: structure, existing quotes and sweeps are left to Hydra
    assert quote_overrides(["prime=Привет", "a=x", "b='é'", "c=[é]", "-m", "d=é,ö", "e=a\\é\\"]) == [
        "prime='Привет'", "a=x", "b='é'", "c=[é]", "-m", "d=é,ö", "e='a\\é\\\\'"]


@pytest.mark.slow
def test_wrong_encoding_is_an_error_with_byte_offset_and_the_right_one_travels_with_the_checkpoint(tmp_path, shakespeare_path):
    base = shakespeare_path.read_text(encoding="utf-8")[:20_000]
    text = base + "\nCafé, naïve señor, à bientôt.\n" + base[:5_000]
    latin = tmp_path / "latin1.txt"
    latin.write_bytes(text.encode("latin-1"))
    offset = len(base) + len("\nCaf")  # ASCII before it: characters == bytes
    r = cli("train", "data=file", f"data.path={latin}", f"hydra.run.dir={tmp_path / 'x'}", "logger=csv")
    assert_clean_error(r, f"byte offset {offset}", "byte 0xe9", "data.encoding")
    gbk = tmp_path / "gbk.txt"
    gbk.write_bytes(("ab\n" * 1000 + "你好，世界\n").encode("gbk"))
    with pytest.raises(CharLMError, match=r"byte offset 3000 .*Set encoding="):
        prepare_corpus(gbk)
    assert prepare_corpus(gbk, encoding="gbk").vocab.chars[-1] == "，"

    out = tmp_path / "run"
    run_train(out, "data=file", f"data.path={latin}", "data.encoding=latin-1", "data.splits=[0.7,0.3,0.0]")
    entry = load_checkpoint(ckpt_of(out))["charlm"]
    assert entry["data"]["encoding"] == "iso8859-1" and "é" in entry["vocab"]
    # charlm-eval reads the training corpus (and any other file) with the checkpoint's encoding
    r = cli("eval", f"ckpt={ckpt_of(out)}", "split=val", f"hydra.run.dir={tmp_path / 'e'}")
    assert r.returncode == 0 and "bpc" in r.stdout.decode(), r.stderr.decode()
    other = tmp_path / "other.txt"
    other.write_bytes("Señor, à bientôt.\n".encode("latin-1"))
    r = cli("eval", f"ckpt={ckpt_of(out)}", f"file={other}", f"hydra.run.dir={tmp_path / 'e2'}")
    assert r.returncode == 0 and "nats/char" in r.stdout.decode(), r.stderr.decode()
    # sampling prints the model's characters as UTF-8
    r = cli("sample", f"ckpt={ckpt_of(out)}", "prime=Café", "length=5", f"hydra.run.dir={tmp_path / 's'}")
    assert r.returncode == 0 and r.stdout.decode("utf-8").startswith("Café")


def test_eval_errors_name_eval_options_and_a_text_under_2_characters_is_an_error(tmp_path, shakes_run):
    from charlm.cli.eval import run as eval_run

    def ev(*overrides):
        return eval_run(compose_cfg("eval", tmp_path / "e", [f"ckpt={ckpt_of(shakes_run)}", *overrides]))

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
    r = cli("eval", f"ckpt={ckpt_of(shakes_run)}", f"file={latin}", f"hydra.run.dir={tmp_path / 'e2'}")
    assert_clean_error(r, "byte offset 18", "encoding=latin-1")


def test_visualize_reads_a_text_file_with_the_checkpoint_encoding_or_a_clean_error(tmp_path, shakes_run):
    from charlm.cli.visualize import run as vis_run

    latin = tmp_path / "latin1.txt"
    latin.write_bytes("First Citizen:\r\nBefore we proceed \xe9".encode("latin-1"))
    cfg = compose_cfg("visualize", tmp_path / "v", [f"ckpt={ckpt_of(shakes_run)}", f"text={latin}"])
    with pytest.raises(CharLMError, match=r"not valid utf-8: byte 0xe9 at byte offset 34 .*Set encoding=<the file's encoding>"):
        vis_run(cfg)
    # encoding= reads it; the newline handling is the checkpoint's (\r\n -> \n), so 'é' is the only unknown
    cfg = compose_cfg("visualize", tmp_path / "v", [f"ckpt={ckpt_of(shakes_run)}", f"text={latin}", "encoding=latin-1"])
    with pytest.raises(CharLMError, match=r"1 character\(s\) are not in the model's vocabulary: 'é'"):
        vis_run(cfg)
    r = cli("visualize", f"ckpt={ckpt_of(shakes_run)}", f"text={latin}", f"out={tmp_path / 'p'}", f"hydra.run.dir={tmp_path / 'h'}")
    assert_clean_error(r, "byte offset 34", "encoding=latin-1")


def test_cr_and_crlf_line_endings_are_normalised_with_a_count_and_can_be_kept(tmp_path, shakespeare_path, caplog):
    lines = shakespeare_path.read_text(encoding="utf-8")[:20_000].split("\n")
    f = tmp_path / "mixed_eol.txt"
    # first half CRLF (Windows), second half lone CR (classic Mac OS)
    half = len(lines) // 2
    f.write_bytes(("\r\n".join(lines[:half]) + "\r\n" + "\r".join(lines[half:])).encode("utf-8"))
    caplog.set_level("INFO", logger="charlm")
    dm = CharDataModule(path=str(f), batch_size=4, seq_len=16)
    c = dm.prepare()
    assert "\r" not in c.vocab and c.newline_replacements == len(lines) - 1
    assert f"{len(lines) - 1:,} line endings normalised to \\n" in caplog.text
    assert c.vocab.decode(c.ids) == "\n".join(lines)
    kept = CharDataModule(path=str(f), newline="keep", batch_size=4, seq_len=16).prepare()
    assert "\r" in kept.vocab and kept.newline_replacements == 0 and kept.num_chars == f.stat().st_size


_IDS_DIGEST = """
import hashlib, sys
from charlm.data.cache import prepare_corpus
c = prepare_corpus(sys.argv[1])
print(hashlib.sha256("".join(c.vocab.chars).encode() + c.ids.tobytes()).hexdigest())
"""


@pytest.mark.slow
def test_same_corpus_gives_same_ids_and_same_samples_in_every_process(tmp_path, shared_data, shakes_run):
    """Different hash seeds and thread counts stand in for "another machine" (both CPU); a GPU
    machine is not covered (its kernels differ from the CPU's)."""
    digests, samples = set(), set()
    for i, (seed, threads) in enumerate([("0", "1"), ("12345", "2")]):
        env = dict(os.environ, PYTHONHASHSEED=seed, OMP_NUM_THREADS=threads, PYTHONPATH=str(REPO / "src"),
                   CHARLM_CACHE_DIR=str(tmp_path / f"cache{i}"))  # each process prepares from scratch
        p = subprocess.run([sys.executable, "-c", _IDS_DIGEST, str(shared_data / "warpeace" / "input.txt")],
                           capture_output=True, text=True, env=env, timeout=300)
        assert p.returncode == 0, p.stderr
        digests.add(p.stdout.strip())
        r = cli("sample", f"ckpt={ckpt_of(shakes_run)}", "length=200", "seed=7", "num_samples=2",
                f"hydra.run.dir={tmp_path / f's{i}'}", env={"PYTHONHASHSEED": seed, "OMP_NUM_THREADS": threads})
        assert r.returncode == 0, r.stderr.decode()
        samples.add(r.stdout)
    assert len(digests) == 1 and len(samples) == 1


# ================================================================================== Sampling
def test_model_trained_without_space_samples_with_the_default_prime(tmp_path, shared_data):
    names = shared_data / "names" / "names.txt"
    out = tmp_path / "names"
    run_train(out, "data=names")
    net, vocab = model_from_checkpoint(load_checkpoint(ckpt_of(out)))
    assert " " not in vocab
    r = cli("sample", f"ckpt={ckpt_of(out)}", "length=60", f"hydra.run.dir={tmp_path / 's'}")
    assert r.returncode == 0, r.stderr.decode()
    text = r.stdout.decode("utf-8")
    assert len(text) == 1 + 60 + 1 and set(text) <= set(vocab.chars)
    # neither space nor newline: the default prime is the vocabulary's first character
    from charlm.data.vocab import Vocab

    v = Vocab("abcxyz")
    assert default_prime(v) == "a"
    assert len(sample(CharRNN(len(v), hidden_size=8, num_layers=1), v, length=5, seed=0)[0]) == 6
    assert names.is_file()


def test_prime_with_unknown_characters_is_an_error_listing_them_or_dropped_with_a_count(tmp_path, shakes_run):
    ck = ckpt_of(shakes_run)
    r = cli("sample", f"ckpt={ck}", "prime='ROMEO€: ☃☃'", "length=5", f"hydra.run.dir={tmp_path / 'a'}")
    assert_clean_error(r, "2 character(s) not in the model's vocabulary", "'€' (U+20AC)", "'☃' (U+2603)", "drop_unknown=true")
    r = cli("sample", f"ckpt={ck}", "prime='ROMEO€: ☃☃'", "drop_unknown=true", "length=5", f"hydra.run.dir={tmp_path / 'b'}")
    assert r.returncode == 0, r.stderr.decode()
    assert "dropped 3 prime character(s)" in r.stderr.decode("utf-8")
    assert r.stdout.decode("utf-8").startswith("ROMEO: ")


def test_backslash_escapes_keep_non_ascii_and_a_bad_escape_is_a_clean_error(tmp_path, shakes_run):
    from omegaconf import OmegaConf

    from charlm.cli.sample import read_prime
    from charlm.cli.visualize import resolve_text

    def prime(p):
        return read_prime(OmegaConf.create({"prime": p, "escapes": True}))

    for typed, want in [("hé\\n", "hé\n"), ("Привет\\t😀", "Привет\t😀"), ("\\u00e9 é \\x41\\\\", "é é A\\"),
                        ("\\N{GREEK SMALL LETTER ALPHA}\\101", "αA"), ("\\'q\\'", "'q'")]:
        assert prime(typed) == want, typed
    for bad in ["\\xZZ", "\\u12", "\\q", "ab\\", "\\N{NO SUCH NAME}", "\\U00110000"]:
        shown = bad[bad.index("\\"):]
        with pytest.raises(CharLMError, match=re.escape(f"invalid backslash escape '{shown}'")):
            prime(bad)
    # visualize's literal text= decodes the same way
    text, _ = resolve_text(OmegaConf.create({"text": "é\\nПривет", "escapes": True}), {"charlm": {"data": {}}})
    assert text == "é\nПривет"
    r = cli("sample", f"ckpt={ckpt_of(shakes_run)}", "prime='\\xZZ'", "escapes=true", f"hydra.run.dir={tmp_path / 's'}")
    assert_clean_error(r, "invalid backslash escape '\\xZZ' at character 0", "escapes=false")


def test_length_counts_new_characters_even_when_shorter_than_the_prime(tmp_path, shakes_run):
    for length in (0, 3):
        r = cli("sample", f"ckpt={ckpt_of(shakes_run)}", "prime='ROMEO and JULIET:'", f"length={length}",
                f"hydra.run.dir={tmp_path / str(length)}")
        assert r.returncode == 0, r.stderr.decode()
        out = r.stdout.decode("utf-8")
        assert out.startswith("ROMEO and JULIET:") and len(out) == len("ROMEO and JULIET:") + length + 1


def test_temperature_zero_is_greedy_tiny_is_finite_and_negative_or_nan_is_an_error(tmp_path, shakes_run):
    net, vocab = model_from_checkpoint(load_checkpoint(ckpt_of(shakes_run)))
    greedy = sample(net, vocab, "ROMEO:", 100, temperature=0, seed=1)[0]
    assert greedy == sample(net, vocab, "ROMEO:", 100, temperature=0, seed=2)[0]
    tiny = sample(net, vocab, "ROMEO:", 100, temperature=1e-3, seed=3, num_samples=3)
    assert all(t == greedy for t in tiny)  # 1e-3 is greedy up to ties, with no overflow or NaN
    # extreme logits, in every dtype, at tiny temperatures: valid ids, the arg-max
    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        logits = (torch.randn(64, 300, generator=g) * 1e3).to(dtype)
        for t in (1e-3, 1e-30, 1e-45):
            ids = next_ids(logits, t, None, g)
            lf = logits.float()  # a most likely character (bfloat16 rounding makes ties)
            assert torch.equal(lf.gather(1, ids)[:, 0], lf.max(-1).values)
        assert ids.dtype == torch.int64
    for bad in ("-1", "nan"):
        r = cli("sample", f"ckpt={ckpt_of(shakes_run)}", f"temperature={bad}", "length=5", f"hydra.run.dir={tmp_path / 't'}")
        assert_clean_error(r, "temperature=", "must be a finite number >= 0")


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
def test_checkpoint_saved_on_a_gpu_samples_evaluates_and_resumes_on_cpu(tmp_path, shakes_run):
    """No GPU here: the checkpoint is made GPU-like by tagging every stored tensor with the
    location ``cuda:0`` (what torch.save records on a GPU machine); a plain ``torch.load`` of it
    fails on this CPU-only torch, which proves the file claims CUDA tensors. Not covered: CUDA
    RNG states and anything else only a real GPU run writes."""
    gpu = tmp_path / "gpu.ckpt"
    p = subprocess.run([sys.executable, "-c", _GPU_TAG, str(ckpt_of(shakes_run)), str(gpu)], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=str(REPO / "src")), timeout=120)
    assert p.returncode == 0, p.stderr
    with pytest.raises(RuntimeError, match="CUDA"):
        torch.load(gpu, weights_only=True)
    assert load_checkpoint(gpu)["state_dict"]["net.decoder.weight"].device.type == "cpu"
    args = ["prime=ROMEO:", "length=80", "seed=5"]
    a = cli("sample", f"ckpt={ckpt_of(shakes_run)}", *args, f"hydra.run.dir={tmp_path / 'a'}")
    b = cli("sample", f"ckpt={gpu}", *args, "device=auto", f"hydra.run.dir={tmp_path / 'b'}")
    assert a.returncode == 0 and b.returncode == 0, b.stderr.decode()
    assert a.stdout == b.stdout
    r = cli("eval", f"ckpt={gpu}", "split=val", f"hydra.run.dir={tmp_path / 'e'}")
    assert r.returncode == 0 and "bpc" in r.stdout.decode(), r.stderr.decode()
    # Lightning's own loading (ckpt=) reads it onto the CPU too
    corpus = load_checkpoint(gpu)["charlm"]["data"]["source"]
    run_train(tmp_path / "cont", "data=file", f"data.path={corpus}", f"ckpt={gpu}", "trainer.max_steps=12")
    assert torch.load(ckpt_of(tmp_path / "cont"), weights_only=True)["global_step"] == 12


# ================================================================================== Training
class PoisonGradient(L.Callback):
    """Test fault injection: turn one gradient NaN after the backward pass of step ``step``."""

    def __init__(self, step: int):
        self.step = step

    def on_after_backward(self, trainer, pl_module):
        if trainer.global_step == self.step:
            next(pl_module.parameters()).grad.view(-1)[0] = float("nan")


class PoisonWeight(L.Callback):
    """Test fault injection: set one decoder bias to +Inf before step ``step`` (a diverged
    weight), so the loss of that step and every later one is non-finite."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            with torch.no_grad():
                pl_module.net.decoder.bias[0] = float("inf")


def _all_finite(path: Path) -> bool:
    ck = torch.load(path, weights_only=True)
    return all(torch.isfinite(v).all() for v in ck["state_dict"].values() if v.is_floating_point())


def test_nonfinite_loss_or_gradient_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path, small_corpus, caplog):
    data = ["data=file", f"data.path={small_corpus}", "trainer.max_steps=10", "trainer.val_check_interval=20"]
    here = PoisonGradient.__module__  # "test_faults" or "tests.test_faults", as pytest imported it
    grad = [f"+callbacks.poison._target_={here}.PoisonGradient", "+callbacks.poison.step=6"]
    weight = [f"+callbacks.poison._target_={here}.PoisonWeight", "+callbacks.poison.step=6"]
    # a NaN gradient: stop, naming the step; last.ckpt is still the good one of step 5
    out = tmp_path / "grad"
    with pytest.raises(CharLMError, match=r"non-finite gradient norm \(nan\) at step 6"):
        run_train(out, *data, *grad)
    assert torch.load(ckpt_of(out), weights_only=True)["global_step"] == 5 and _all_finite(ckpt_of(out))
    # ... or skip that one optimizer step and go on
    caplog.set_level("WARNING", logger="charlm")
    out = tmp_path / "grad_skip"
    run_train(out, *data, *grad, "nonfinite=skip")
    assert "step 6: non-finite gradient norm" in caplog.text
    assert torch.load(ckpt_of(out), weights_only=True)["global_step"] == 10 and _all_finite(ckpt_of(out))
    # a diverged weight: the loss is non-finite; stop naming the step, last good checkpoint kept
    out = tmp_path / "weight"
    with pytest.raises(CharLMError, match=r"non-finite training loss \((nan|inf)\) at step 6"):
        run_train(out, *data, *weight)
    assert torch.load(ckpt_of(out), weights_only=True)["global_step"] == 5 and _all_finite(ckpt_of(out))
    # skipping cannot heal an Inf weight: the next checkpoint is refused, the good one stays
    out = tmp_path / "weight_skip"
    with pytest.raises(CharLMError, match=r"refusing to write a checkpoint at step 10: parameters \['net.decoder.bias'\]"):
        run_train(out, *data, *weight, "nonfinite=skip")
    assert "step 6: non-finite training loss" in caplog.text
    assert torch.load(ckpt_of(out), weights_only=True)["global_step"] == 5 and _all_finite(ckpt_of(out))
    assert not list((tmp_path / "weight_skip" / "checkpoints").glob("*.tmp"))
    # on the command line: exit status 2, the message, no traceback
    r = cli("train", *TINY, *data, *grad, f"hydra.run.dir={tmp_path / 'cli'}", cwd=REPO,
            env={"PYTHONPATH": os.pathsep.join(str(p) for p in (REPO / "src", REPO, REPO / "tests"))})
    assert_clean_error(r, "non-finite gradient norm (nan) at step 6", "nonfinite=skip")


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_dropout_with_one_layer_applies_without_a_pytorch_warning(cell):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nn.LSTM(dropout>0, num_layers=1) warns: this fails on it
        net = CharRNN(vocab_size=20, hidden_size=16, num_layers=1, cell=cell, dropout=0.5)
        x = torch.randint(0, 20, (4, 12))
        net.train()
        a, _ = net(x)
        b, _ = net(x)
    assert not torch.equal(a, b)  # dropout acts in training
    net.eval()
    assert torch.equal(net(x)[0], net(x)[0])  # and not in evaluation
    no_drop = CharRNN(vocab_size=20, hidden_size=16, num_layers=1, cell=cell, dropout=0.0).train()
    assert torch.equal(no_drop(x)[0], no_drop(x)[0])


def test_init_from_with_a_different_vocabulary_lists_the_differing_characters(tmp_path, shakes_run, small_corpus):
    src = load_checkpoint(ckpt_of(shakes_run))
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
            load_initial_weights(CharLM(vocab=vocab, model=model), ckpt_of(shakes_run))
    # the same vocabulary loads
    load_initial_weights(CharLM(vocab=chars, model=model), ckpt_of(shakes_run))
    # on the command line: a corpus with two extra characters
    f = tmp_path / "more.txt"
    f.write_text(small_corpus.read_text(encoding="utf-8") + "\nCafé ½\n", encoding="utf-8")
    r = cli("train", *TINY, "data=file", f"data.path={f}", f"init_from={shakes_run}", f"hydra.run.dir={tmp_path / 'r'}")
    assert_clean_error(r, "vocabulary differs", "only in this corpus: ['½', 'é']")


def _csv(run: Path, key: str) -> dict[int, float]:
    import csv

    with open(run / "csv" / "metrics.csv", newline="") as f:
        return {int(r["step"]): float(r[key]) for r in csv.DictReader(f) if r.get(key)}


def test_resume_mid_epoch_trains_the_rest_of_the_epoch_and_continues_step_and_lr(tmp_path, shakespeare_path):
    corpus = tmp_path / "tiny.txt"
    corpus.write_text(shakespeare_path.read_text(encoding="utf-8")[:6_000], encoding="utf-8")  # 21 batches/epoch
    o = ["data=file", f"data.path={corpus}", "data.splits=[0.9,0.1,0.0]", "trainer.max_steps=16",
         "trainer.log_every_n_steps=1", "trainer.val_check_interval=8", "scheduler.warmup_steps=4"]
    full, cut = tmp_path / "full", tmp_path / "cut"
    run_train(full, *o)
    run_train(cut, *o, "stop_after_steps=7")
    ck = torch.load(ckpt_of(cut), weights_only=True)
    assert ck["global_step"] == 7 and ck["epoch"] == 0  # mid-epoch
    train(compose_cfg("train", tmp_path / "elsewhere", [f"resume={cut}"]))
    ck = torch.load(ckpt_of(cut), weights_only=True)
    assert ck["global_step"] == 16 and ck["epoch"] == 0  # 16 < 21: the epoch was not cut short
    loss_f, loss_c = _csv(full, "train/loss"), _csv(cut, "train/loss")
    lr_f, lr_c = _csv(full, "lr"), _csv(cut, "lr")
    assert sorted(loss_c) == list(range(16)) and loss_c == loss_f  # the same batches, in order
    assert lr_c == lr_f and len(set(lr_f.values())) > 8  # the schedule continued where it was


def _wandb_runs(run_dir: Path) -> list[Path]:
    return sorted(p for p in (run_dir / "wandb").glob("offline-run-*") if p.is_dir())


def _wandb_finished(run: Path) -> bool:
    """An offline W&B run that was finished (``wandb.finish``): its debug log records it."""
    log = (run / "logs" / "debug.log").read_text(encoding="utf-8", errors="replace")
    run_id = run.name.rsplit("-", 1)[1]
    return f"finishing run charlm/{run_id}" in log and "got exitcode: 0" in log


W_SMALL = ["data.batch_size=4", "data.seq_len=16", "model.hidden_size=16", "model.num_layers=1", "trainer.max_steps=4",
           "trainer.val_check_interval=4", "trainer.limit_val_batches=2", "trainer.num_sanity_val_steps=0",
           "trainer.enable_model_summary=false", "callbacks.samples.length=0", "~callbacks.rich_progress_bar",
           "~callbacks.visualize", "logger=wandb"]


@pytest.mark.slow
def test_wandb_gives_one_run_under_ddp_and_one_finished_run_per_multirun_job(tmp_path, small_corpus):
    env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DISABLE_GIT": "true"}
    ddp = tmp_path / "ddp"
    r = cli("train", *W_SMALL, "trainer=ddp_cpu", "trainer.devices=2", "data=file", f"data.path={small_corpus}",
            f"hydra.run.dir={ddp}", env=env, cwd=tmp_path, timeout=400)
    assert r.returncode == 0, r.stderr.decode()[-3000:]
    runs = _wandb_runs(ddp)
    assert len(runs) == 1 and _wandb_finished(runs[0]), runs
    sweep = tmp_path / "sweep"
    r = cli("train", "-m", "seed=1,2", *W_SMALL, "data=file", f"data.path={small_corpus}", f"hydra.sweep.dir={sweep}",
            "hydra.sweep.subdir=${hydra.job.num}", env=env, cwd=tmp_path, timeout=400)
    assert r.returncode == 0, r.stderr.decode()[-3000:]
    per_job = [_wandb_runs(sweep / str(j)) for j in (0, 1)]
    assert [len(x) for x in per_job] == [1, 1]
    assert per_job[0][0].name.rsplit("-", 1)[1] != per_job[1][0].name.rsplit("-", 1)[1]
    assert all(_wandb_finished(x[0]) for x in per_job)


# ================================================================================== Faults and security
@pytest.mark.slow
def test_sigkill_during_a_checkpoint_write_keeps_the_previous_last_ckpt_resumable(tmp_path, small_corpus):
    """Deterministic: the test plugin ``interrupt_plugin.KillDuringWrite`` SIGKILLs the process
    half-way through the temporary file of the step-10 write (the step-5 one is on disk)."""
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(REPO / "src"), str(REPO / "tests")]))
    cmd = [sys.executable, "-m", "charlm.cli.train", *TINY, "data=file", f"data.path={small_corpus}",
           "trainer.val_check_interval=100"]
    run = tmp_path / "run"
    ckdir = run / "checkpoints"
    p = subprocess.run([*cmd, "trainer.max_steps=15", f"hydra.run.dir={run}",
                        "+callbacks.kill._target_=interrupt_plugin.KillDuringWrite", "+callbacks.kill.step=10"],
                       env=env, cwd=REPO, capture_output=True, timeout=300)
    assert p.returncode == -signal.SIGKILL, (p.returncode, p.stderr.decode()[-3000:])
    (tmp,) = ckdir.glob(".last.ckpt.*.tmp")  # the write that was cut: half of the file is on disk
    assert 0 < tmp.stat().st_size
    assert load_checkpoint(ckdir / "last.ckpt")["global_step"] == 5  # the previous one, untouched and loadable
    p = subprocess.run([*cmd, "trainer.max_steps=7", f"resume={run}"], env=env, cwd=REPO, capture_output=True, timeout=300)
    assert p.returncode == 0, p.stderr.decode()[-3000:]
    assert load_checkpoint(ckdir / "last.ckpt")["global_step"] == 7


def test_truncated_or_foreign_checkpoint_is_a_clear_error_naming_the_file(tmp_path, shakes_run, small_corpus):
    good = ckpt_of(shakes_run).read_bytes()
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
        r = cli(app, f"ckpt={truncated}", *extra, f"hydra.run.dir={tmp_path / 'x'}")
        assert_clean_error(r, str(truncated), "is not a readable checkpoint")
    for key in ("resume", "init_from", "ckpt"):
        with pytest.raises(CharLMError, match=re.escape(str(truncated))):
            run_train(tmp_path / f"t-{key}", "data=file", f"data.path={small_corpus}", f"{key}={truncated}")


class _Payload:
    """Pickles as a call of ``open(marker, "w")``: loading it with a full unpickler creates the file."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_checkpoint_whose_pickle_runs_code_is_refused_and_the_code_never_runs(tmp_path, shakes_run, small_corpus):
    marker = tmp_path / "PWNED"
    ck = torch.load(ckpt_of(shakes_run), weights_only=True)
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
        assert_clean_error(cli(app, f"ckpt={evil}", *extra, f"hydra.run.dir={tmp_path / 'x'}"), "refused to load", str(evil))
    for key, value in [("resume", tmp_path), ("init_from", evil), ("ckpt", evil)]:
        with pytest.raises(CharLMError, match="refused to load"):
            run_train(tmp_path / f"t-{key}", "data=file", f"data.path={small_corpus}", f"{key}={value}")
    assert not marker.exists()
    # the payload is real: an unsafe load would have run it
    torch.load(evil, weights_only=False)
    assert marker.exists()


_PREPARE = """
import resource, sys
from charlm.data.cache import prepare_corpus  # imports torch: a baseline of a few hundred MB
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
c = prepare_corpus(sys.argv[1])
print(c.num_chars, base, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, c.cache_dir)
"""

_EVALUATE = """
import resource, sys
import numpy as np, torch
from charlm.evaluation.evaluate import evaluate
from charlm.model.rnn import CharRNN
torch.manual_seed(0)
ids = np.load(sys.argv[1], mmap_mode="r")
n = int(sys.argv[2])
net = CharRNN(vocab_size=int(ids[:1_000_000].max()) + 1, hidden_size=4, num_layers=1)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
r = evaluate(net, ids[:n], batch_size=1024, seq_len=128)
print(r["chars"], base, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


@pytest.mark.slow
def test_preparing_a_large_corpus_and_evaluating_a_100mb_split_keep_memory_bounded(tmp_path, shakespeare_path):
    """Peak RSS of real processes, measured above the baseline after imports (torch alone is
    ~400 MB): preparing a 200 MB corpus grows it by less than one copy of the text (a 1 GB corpus
    is prepared the same way, chunk by chunk; not run here, for time); evaluating a 100 MB split
    (100 M uint8 ids, memory mapped) grows it far less than the split as int64 (800 MB)."""
    big = tmp_path / "big.txt"
    block = shakespeare_path.read_bytes()
    with open(big, "wb") as f:
        while f.tell() < 200_000_000:
            f.write(block)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO / "src"), CHARLM_CACHE_DIR=str(tmp_path / "cache"))
    p = subprocess.run([sys.executable, "-c", _PREPARE, str(big)], capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    n, base, peak, cache = p.stdout.split()
    n, grew = int(n), int(peak) - int(base)
    # less than one copy of the text: bytes, str and ids of the whole corpus would each be >= 200 MB
    assert n >= 200_000_000 and grew < 200e6, f"preparing grew the peak RSS by {grew / 1e6:.0f} MB"
    big.unlink()
    p = subprocess.run([sys.executable, "-c", _EVALUATE, str(Path(cache) / "ids.npy"), "100000000"], capture_output=True,
                       text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    chars, base, peak = map(int, p.stdout.split())
    assert chars == 100_000_000 - 1
    # 100 M ids as int64 would be 800 MB; the growth is the memory-mapped pages read (<= 100 MB,
    # reclaimable page cache) plus one window's activations
    assert peak - base < 250e6, f"evaluating 100 MB grew the peak RSS by {(peak - base) / 1e6:.0f} MB"
