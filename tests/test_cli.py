"""The command line as users type and paste it (charlm.cli.overrides, charlm.shell and the apps' entry points):
free text and paths go in verbatim, every override is checked before Hydra reads it, a user error
is one ``error:`` line with exit status 2, each app's --help shows its own options, and every
command charlm prints runs when pasted back.

Most cases run the real entry point (``charlm.cli.<app>.main``, which Hydra drives from
``sys.argv``) in this process, or compose the real config from the rewritten overrides, as the
app does; a real subprocess is used where the process boundary matters (argv decoding, output
redirected to a file, pasting a printed command).
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from charlm.cli.overrides import check_overrides, decode_argv, hydra_quote, quote_overrides
from charlm.cli.train import train
from charlm.errors import CharLMError
from charlm.shell import command, shell_arg
from conftest import FAST_TRAIN, REPO, compose_cfg

#: Every character the issue lists as breaking free text, and a space.
SPECIAL = [",", "'", "(", ")", "[", "]", "=", "#", '"', ":", " "]
#: The primes users reported (Hydra: "Ambiguous value", "mismatched input", LexerNoViableAltException).
REPORTED = ["ROMEO: Hello, world", "KING: O (my lord)", "It's here", "I#a"]
#: Text the test model knows, so that samples can start from any of these primes.
EXTRA_TEXT = ("\n".join(REPORTED) + '\n[Exit] He said "a=b" #1, Все: (yes)\n') * 40

TINY = FAST_TRAIN + [
    "model.hidden_size=32",
    "trainer.max_steps=10",
    "trainer.val_check_interval=10",
    "trainer.limit_val_batches=2",
    "callbacks.samples.length=0",
    "~callbacks.visualize",
]


def composed(app: str, tmp_path: Path, *typed: str):
    """The config ``app`` composes from the arguments as typed in the shell (after charlm's own
    rewriting and checks, as in ``main()``)."""
    args = quote_overrides(list(typed))
    check_overrides(args)
    return compose_cfg(app, tmp_path / "compose", args)


def run_app(app: str, capfd, *args: str) -> tuple[int, str, str]:
    """Run ``charlm-<app> args...`` through its real entry point in this process; returns
    ``(exit status, stdout, stderr)``."""
    module = importlib.import_module(f"charlm.cli.{app}")
    GlobalHydra.instance().clear()
    argv, sys.argv = sys.argv, [f"charlm-{app}", *args]
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    code = 0
    try:
        module.main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = argv
        GlobalHydra.instance().clear()
        for h in root.handlers:  # Hydra's console and <task>.log handlers for this run
            if h not in handlers:
                h.close()
        root.handlers[:] = handlers
        root.setLevel(level)
    out, err = capfd.readouterr()
    return code, out, err


def subprocess_app(app: str, *args: str, cwd: Path, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    e = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO / "src"), WANDB_MODE="offline", WANDB_SILENT="true")
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", f"charlm.cli.{app}", *args], cwd=cwd, env=e, timeout=600, **kw)


def assert_one_line_error(code: int, err: str, *needles: str) -> str:
    """Exit status 2 and exactly one ``error:`` line, holding every needle; no traceback, no
    Hydra wrapper, no callback warning."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, (code, err[-3000:])
    assert len([ln for ln in lines if ln.startswith("error: ")]) == 1, err[-3000:]
    for bad in ("Traceback", "Error in call to target", "JobReport", "MissingMandatoryValue", "HYDRA_FULL_ERROR"):
        assert bad not in err, (bad, err[-3000:])
    line = next(ln for ln in lines if ln.startswith("error: "))
    for n in needles:
        assert n in line, (n, line)
    return line


@pytest.fixture(scope="module")
def model_run(tmp_path_factory, shared_data) -> Path:
    """A tiny model whose vocabulary holds every special character and Cyrillic (the first
    30,000 characters of Tiny Shakespeare plus lines holding them); returns its run dir."""
    root = tmp_path_factory.mktemp("cli")
    corpus = root / "corpus.txt"
    corpus.write_text((shared_data / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")[:30_000] + EXTRA_TEXT,
                      encoding="utf-8")
    train(compose_cfg("train", root / "run", [*TINY, "data=file", f"data.path={corpus}"]))
    GlobalHydra.instance().clear()
    return root / "run"


# ============================================================== free text and paths, verbatim
@pytest.mark.parametrize("char", SPECIAL)
def test_free_text_with_each_special_character_reaches_the_app_verbatim(tmp_path, char):
    for text in (f"{char}x", f"KING{char} O (my{char} lord) {char}{char}"):
        assert composed("sample", tmp_path, f"prime={text}").prime == text
    assert composed("visualize", tmp_path, f"text=a{char}b").text == f"a{char}b"
    cfg = composed("train", tmp_path, f"logger.wandb.name=x{char}", f"callbacks.samples.prime={char}")
    assert (cfg.logger.wandb.name, cfg.callbacks.samples.prime) == (f"x{char}", char)


@pytest.mark.parametrize("text", REPORTED + [
    'He said "Go"', "[Exit]", "a=b", "x,y", "  two spaces  ", "1234", "true", "${oc.env:HOME}", "\\${x}", "ends\\",
    "it's \\' both\" quotes", "Все, мир (да)", "",
])
def test_reported_and_awkward_primes_are_taken_as_typed(tmp_path, text):
    assert composed("sample", tmp_path, f"prime={text}").prime == text
    # quoting is stable: a rewritten command line (a DDP rank re-runs it) is left as it is
    once = quote_overrides([f"prime={text}"])
    assert quote_overrides(once) == once


def test_paths_with_equals_commas_spaces_and_quotes_are_taken_as_typed(tmp_path):
    job = "outputs/train/multiruns/2026-01-01_00-00-00_000000/0_data.batch_size=4,model.hidden_size=64"
    for path in [f"{tmp_path}/epoch=1-step=100.ckpt", f"{job}/checkpoints/last.ckpt", "/tmp/my runs/it's (1)/last.ckpt",
                 "runs/#3/[best].ckpt"]:
        assert composed("sample", tmp_path, f"ckpt={path}").ckpt == path
        assert composed("eval", tmp_path, f"file={path}").file == path
        assert composed("visualize", tmp_path, f"out={path}", f"samples={path}").out == path
        cfg = composed("train", tmp_path, f"resume={path}", f"init_from={path}", f"ckpt={path}", f"ckpt_path={path}", f"data.path={path}")
        assert (cfg.resume, cfg.init_from, cfg.ckpt, cfg.ckpt_path, cfg.data.path) == (path, path, path, path, path)
    # a path keeps Hydra's interpolations (free text does not: see above)
    cfg = composed("train", tmp_path, "data.path=${paths.data_dir}/a=b.txt")
    assert cfg.data.path == f"{cfg.paths.data_dir}/a=b.txt"


def test_quoting_by_hand_as_the_readme_shows_keeps_working(tmp_path):
    assert composed("sample", tmp_path, "prime='KING: Hark, who'").prime == "KING: Hark, who"
    assert composed("sample", tmp_path, "prime=\"It's (here)\"").prime == "It's (here)"
    assert composed("sample", tmp_path, "prime='Привет, мир'").prime == "Привет, мир"
    assert composed("sample", tmp_path, "prime=null").prime is None
    # a prime that only starts with a quote is text, not quoting
    assert composed("sample", tmp_path, "prime='Tis the season").prime == "'Tis the season"


def test_a_multirun_sweeps_over_commas_unless_the_value_is_an_existing_path(tmp_path):
    job = tmp_path / "0_data.batch_size=4,model.hidden_size=64"
    job.mkdir()
    assert quote_overrides(["-m", "prime=a,b", f"ckpt={job}"]) == ["-m", "prime=a,b", f"ckpt='{job}'"]
    assert quote_overrides(["-m", "prime='a, b'"]) == ["-m", "prime='a, b'"]  # one value, quoted by hand
    # values Hydra cannot read unquoted are each quoted, and still swept
    from hydra.core.override_parser.overrides_parser import OverridesParser

    (arg,) = quote_overrides(["-m", "data.path=my corpus.txt,x=y.txt"])[1:]
    parser = OverridesParser.create()
    sweep = parser.parse_override(arg)
    assert sweep.is_sweep_override()
    assert [parser.parse_override(f"data.path={v}").value() for v in sweep.sweep_string_iterator()] == ["my corpus.txt", "x=y.txt"]


def test_non_ascii_argv_from_a_non_utf8_locale_is_decoded_as_utf8(tmp_path):
    escaped = "prime=Все".encode("utf-8").decode("ascii", "surrogateescape")  # how Python hands it over under LC_ALL=C
    assert escaped != "prime=Все" and decode_argv([escaped, "a=b"]) == ["prime=Все", "a=b"]
    latin1_file = "ckpt=caf\xe9.ckpt".encode("latin-1").decode("ascii", "surrogateescape")  # not UTF-8: left alone
    assert decode_argv([latin1_file]) == [latin1_file]
    # the real thing: Python without UTF-8 mode under the C locale
    r = subprocess_app("sample", "prime=Все, мир", "--cfg", "job", cwd=tmp_path, capture_output=True,
                       env={"LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONIOENCODING": ""})
    assert r.returncode == 0, r.stderr.decode()
    assert OmegaConf.create(r.stdout.decode("utf-8")).prime == "Все, мир"


# ============================================================== other options: one-line errors
@pytest.mark.parametrize("typed", ["data.name=my corpus (v2)", "temperature=0.5)", "logger.wandb.tags=[a", "optimizer.lr=1e-3#x",
                                   "model.cell=it's"])
def test_an_option_hydra_cannot_read_is_one_error_naming_it_and_showing_the_quoting(tmp_path, typed):
    key, _, value = typed.partition("=")
    with pytest.raises(CharLMError) as e:
        check_overrides(quote_overrides([typed]), "train")
    msg = str(e.value)
    assert msg.startswith(f"cannot read the option {typed}:")
    fix = shell_arg(f"{key}={hydra_quote(value)}")
    assert msg.endswith(fix)
    (pasted,) = shlex.split(fix)  # the suggestion, typed into a shell, gives the value as one string
    check_overrides([pasted], None)
    from hydra.core.override_parser.overrides_parser import OverridesParser

    assert OverridesParser.create().parse_override(pasted).value() == value


def test_a_comma_without_multirun_a_typo_and_an_unknown_config_are_one_line_errors(tmp_path):
    with pytest.raises(CharLMError, match=r"optimizer.lr=1e-3,3e-3: a ',' .* needs -m \(--multirun\).*\"optimizer.lr='1e-3,3e-3'\""):
        check_overrides(["optimizer.lr=1e-3,3e-3"], "train")
    check_overrides(["-m", "optimizer.lr=1e-3,3e-3"], "train")  # a sweep in a multirun
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    # a config that asks for a multirun itself needs no -m (README: Optuna search)
    check_overrides(["hparams_search=optuna", "optimizer.lr=tag(log, interval(1e-4, 1e-2))"], "train")
    with pytest.raises(CharLMError, match=r"charlm-sample has no option top_kk \(charlm-sample --help lists its options"):
        check_overrides(["top_kk=5"], "sample")
    with pytest.raises(CharLMError, match="model=lstmm: charlm-train has no such model config; choose one of gru, lstm, rnn"):
        check_overrides(["model=lstmm"], "train")


def test_a_parse_error_on_the_command_line_is_one_line_and_exit_2(capfd):
    code, _, err = run_app("sample", capfd, "ckpt=x.ckpt", "temperature=0.5)")
    assert_one_line_error(code, err, "temperature=0.5)", "\"temperature='0.5)'\"")
    code, _, err = run_app("train", capfd, "optimizer.lr=1e-3,3e-3")
    assert_one_line_error(code, err, "needs -m (--multirun)")


@pytest.mark.parametrize("app,typed,message", [
    ("sample", "top_k=2.5", "top_k=2.5 must be an integer >= 1 (or null: all characters)"),
    ("sample", "top_k=abc", "top_k=abc must be an integer >= 1"),
    ("sample", "length=2.7", "length=2.7 must be an integer >= 0"),
    ("sample", "length=true", "length=true must be an integer >= 0"),
    ("sample", "num_samples=0", "num_samples=0 must be an integer >= 1"),
    ("sample", "seed=abc", "seed=abc must be an integer"),
    ("sample", "device=gpu7", "device=gpu7 is not a device: use auto, cpu, cuda, cuda:<index> or mps"),
    ("sample", "escapes=maybe", "escapes=maybe must be true or false"),
    ("eval", "batch_size=0", "batch_size=0 must be an integer >= 1"),
    ("eval", "seq_len=2.5", "seq_len=2.5 must be an integer >= 1"),
    ("eval", "split=dev", "split=dev must be one of train, val, test"),
    ("eval", "device=gpu7", "device=gpu7 is not a device"),
    ("visualize", "max_chars=2.5", "max_chars=2.5 must be an integer >= 1"),
    ("visualize", "top_k=0", "top_k=0 must be an integer >= 1"),
    ("visualize", "offset=-1", "offset=-1 must be an integer >= 0"),
    ("visualize", "device=gpu7", "device=gpu7 is not a device"),
])
def test_every_option_of_sample_eval_and_visualize_is_checked_before_any_work(tmp_path, app, typed, message):
    run = importlib.import_module(f"charlm.cli.{app}").run
    with pytest.raises(CharLMError) as e:  # the checkpoint does not exist: the options are checked first
        run(composed(app, tmp_path, f"ckpt={tmp_path / 'missing.ckpt'}", typed))
    assert str(e.value) == message or str(e.value).startswith(message)


@pytest.mark.parametrize("typed,message", [
    (["seed=abc"], "seed=abc must be an integer"),
    (["data.batch_size=2.5"], "data.batch_size=2.5 must be an integer >= 1"),
    (["trainer.max_steps=abc"], "trainer.max_steps=abc must be an integer >= -1"),
    (["stop_after_steps=1.5"], "stop_after_steps=1.5 must be an integer >= 1 (or null: train to the end)"),
    (["model.dropout=1"], "model.dropout=1 must be a finite number >= 0 and < 1"),
    (["optimizer.lr=abc"], "optimizer.lr=abc must be a finite number >= 0"),
    (["trainer.val_check_interval=2.5"], "trainer.val_check_interval=2.5 must be an integer >= 1, or a fraction in (0, 1]"),
    (["trainer.accelerator=gpu7"], "trainer: You selected an invalid accelerator name: `accelerator='gpu7'`"),
    (["trainer.devices=gpu7"], "trainer: `devices` selected with `CPUAccelerator` should be an int > 0"),
    (["data=file"], "no corpus given: set data.path=<text file>"),
])
def test_every_option_of_train_is_checked(tmp_path, typed, message):
    with pytest.raises(CharLMError) as e:
        train(composed("train", tmp_path, *TINY, *typed))
    assert str(e.value).startswith(message), str(e.value)


def test_a_user_error_of_a_single_run_is_one_line_exit_2_and_recorded_as_failed(tmp_path, capfd):
    run_dir = tmp_path / "s"
    code, out, err = run_app("sample", capfd, f"ckpt={tmp_path / 'x.ckpt'}", "top_k=2.5", f"hydra.run.dir={run_dir}")
    assert_one_line_error(code, err, "top_k=2.5 must be an integer")
    status = OmegaConf.load(run_dir / "job_status.yaml")
    assert status.status == "FAILED" and status.error == "CharLMError: top_k=2.5 must be an integer >= 1 (or null: all characters)"
    # charlm's own message, not Hydra's "Error in call to target" wrapper around it
    code, out, err = run_app("train", capfd, "data=file", "logger=csv", f"hydra.run.dir={tmp_path / 't'}")
    assert_one_line_error(code, err, "no corpus given: set data.path=<text file>")
    code, out, err = run_app("eval", capfd, "ckpt=x", "batch_size=0", f"hydra.run.dir={tmp_path / 'e'}")
    assert_one_line_error(code, err, "batch_size=0 must be an integer >= 1")
    code, out, err = run_app("visualize", capfd, "ckpt=x", "device=gpu7", f"hydra.run.dir={tmp_path / 'v'}")
    assert_one_line_error(code, err, "device=gpu7 is not a device")
    code, out, err = run_app("sample", capfd, "top_kk=5")
    assert_one_line_error(code, err, "charlm-sample has no option top_kk")


def test_each_app_help_shows_its_own_options(capfd):
    for app, own in [("sample", ["top_k:", "prime_file:", "temperature:"]), ("eval", ["split:", "batch_size:"]),
                     ("visualize", ["max_chars:", "samples:"])]:
        code, out, _ = run_app(app, capfd, "--help")
        assert code == 0 and out.startswith(f"charlm-{app}:")
        for o in own:
            assert o in out, (app, o)
        for other in ("optimizer:", "trainer:", "Configuration groups", "hparams_search", "callbacks"):
            assert other not in out, (app, other)
        assert "Free text and paths" in out
        if app == "sample":  # greedy decoding is documented where temperature is
            assert "0 = greedy, which loops" in out and "top_k" in out
    code, out, _ = run_app("train", capfd, "--help")
    assert code == 0 and "model: gru, lstm, rnn" in out and "stop_after_steps:" in out


# ============================================================== free text through the real app
def test_each_reported_prime_samples_as_typed(model_run, tmp_path, capfd):
    ckpt = model_run / "checkpoints" / "last.ckpt"
    for i, prime in enumerate(REPORTED + ['[Exit] He said "a=b" #1, Все: (yes)']):
        code, out, err = run_app("sample", capfd, f"ckpt={ckpt}", f"prime={prime}", "length=5", f"hydra.run.dir={tmp_path / str(i)}")
        assert code == 0, err[-2000:]
        assert out.startswith(prime) and len(out) == len(prime) + 5 + 1, out


# ============================================================== printed commands paste back
def test_printed_commands_quote_paths_for_the_shell():
    job = "outputs/train/multiruns/2026-01-01_00-00-00_000000/0_data.batch_size=4,model.hidden_size=64"
    assert command("charlm-sample", ckpt=f"{job}/checkpoints/last.ckpt") == f"charlm-sample ckpt={job}/checkpoints/last.ckpt"
    for path in ["/tmp/my runs/it's/last.ckpt", "/tmp/$HOME/`x`/a\"b", "/tmp/~x/!bang"]:
        line = command("charlm-sample", ckpt=path)
        assert shlex.split(line) == ["charlm-sample", f"ckpt={path}"]
        assert quote_overrides(shlex.split(line)[1:]) == [f"ckpt={hydra_quote(path, interpolate=True)}"]


def _printed(pattern: str, text: str) -> list[str]:
    return [m.group(1).strip() for m in re.finditer(pattern, text)]


def _paste(line: str, cwd: Path, *extra: str) -> subprocess.CompletedProcess:
    """Run a printed ``charlm-<app> ...`` line as a shell would split it."""
    argv = shlex.split(line)
    assert argv[0].startswith("charlm-")
    return subprocess_app(argv[0].removeprefix("charlm-"), *argv[1:], *extra, cwd=cwd, capture_output=True, text=True)


@pytest.mark.slow
def test_a_multirun_redirected_to_a_file_shows_progress_and_its_printed_commands_paste_back(tmp_path, shared_data):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text((shared_data / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")[:30_000] + EXTRA_TEXT,
                      encoding="utf-8")
    log = tmp_path / "run.log"
    args = ["-m", "data=file", f"data.path={corpus}", "data.batch_size=4", "data.seq_len=16", "model.hidden_size=32",
            "model.num_layers=1", "trainer.max_steps=40", "trainer.val_check_interval=10", "trainer.limit_val_batches=2",
            "callbacks.progress_log.every_n_steps=5", "callbacks.samples.length=0", "~callbacks.visualize",
            "stop_after_steps=20", "seed=3"]
    with open(log, "w") as f:  # charlm-train > run.log 2>&1: no terminal
        r = subprocess_app("train", *args, cwd=tmp_path, stdout=f, stderr=subprocess.STDOUT, env={"WANDB_SILENT": "false"})
    text = log.read_text(encoding="utf-8")
    assert r.returncode == 0, text[-3000:]
    (job,) = [p for p in (tmp_path / "outputs" / "train" / "multiruns").glob("*/*") if p.is_dir()]
    assert "data.batch_size=4," in job.name
    # progress: every 5 steps and at each validation, with what each number is
    steps = re.findall(r"step (\d+)/40 \(epoch \d+\) \| train loss \d+\.\d{4} nats/char \| [\d,]+ tokens/s \| elapsed \d+:\d\d:\d\d \| ETA", text)
    assert steps == ["5", "10", "15", "20"], text[-3000:]
    assert len(re.findall(r"step (10|20)/40 \(epoch \d+\) \| val loss \d\.\d{4} nats/char, bpc \d\.\d{4} \| elapsed", text)) == 2
    assert len(re.findall(r"\| train loss .* tokens/s", (job / "train.log").read_text(encoding="utf-8"))) == 4
    assert "Total params" in text  # the model summary, without its column of zero FLOPs
    for noise in ("anonymous setting", "FLOPs", "Total Flops", "Tip:", "sync_dist", "/-2", "Trainer already configured"):
        assert noise not in text, noise
    # every command it printed runs as printed
    (sample_line,) = _printed(r"sample it:\s+(charlm-sample .*)", text)
    (resume_line,) = _printed(r"Continue with: (charlm-train .*)", text)
    rel = str(job.relative_to(tmp_path))  # printed relative to the current directory
    assert rel in sample_line and rel in resume_line and str(tmp_path) not in sample_line + resume_line
    s = _paste(sample_line, tmp_path)
    assert s.returncode == 0 and len(s.stdout) == 500 + 2, s.stderr[-2000:]  # default prime "\n" + 500 + "\n"
    prime = "KING: O (my lord), It's here"
    s = _paste(sample_line, tmp_path, f"prime={prime}", "length=3")
    assert s.returncode == 0 and s.stdout.startswith(prime) and len(s.stdout) == len(prime) + 3 + 1, s.stderr[-2000:]
    r = _paste(resume_line, tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert OmegaConf.load(job / "job_status.yaml").status == "COMPLETED"
    assert "charlm: training finished" in r.stdout and "steps: 40" in r.stdout


def test_lightning_product_tips_are_not_printed(tmp_path):
    import lightning as L

    from charlm.cli.train import quiet_third_party

    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    filters, level = rank_zero.filters[:], rank_zero.level
    rank_zero.filters.clear()
    rank_zero.addHandler(handler)
    rank_zero.setLevel(logging.INFO)
    try:
        L.Trainer(logger=False, default_root_dir=tmp_path, enable_progress_bar=False)
        assert any(m.startswith("💡 Tip") for m in seen)  # Lightning's litlogger advert
        seen.clear()
        quiet_third_party()  # charlm-train and the benchmarks call it
        L.Trainer(logger=False, default_root_dir=tmp_path, enable_progress_bar=False)
        assert seen and not any("Tip" in m for m in seen), seen
    finally:
        rank_zero.removeHandler(handler)
        rank_zero.filters[:] = filters
        rank_zero.setLevel(level)


def test_charlm_eval_of_a_checkpoint_prints_the_val_loss_its_training_run_printed(tmp_path, capfd, small_corpus):
    """The numbers of the README's Results table: the training summary's final val loss is the
    loss ``charlm-eval`` prints for the run's ``last.ckpt`` (same split, whole of it, printed to
    the same 4 decimals), although evaluation reads the split as another number of streams."""
    run = tmp_path / "run"
    code, out, err = run_app("train", capfd, *FAST_TRAIN, "data=file", f"data.path={small_corpus}",
                             "trainer.max_steps=30", "trainer.limit_val_batches=null", "data.eval_batch_size=4",
                             "callbacks.samples.length=0", "~callbacks.visualize", f"hydra.run.dir={run}")
    assert code == 0, err
    reported = re.search(r"final val loss \(step 30\): (\d+\.\d{4}) nats/char, bpc (\d+\.\d{4})", out)
    assert reported, out
    code, out, err = run_app("eval", capfd, f"ckpt={run / 'checkpoints' / 'last.ckpt'}", "split=val", "batch_size=16",
                             f"hydra.run.dir={tmp_path / 'eval'}")
    assert code == 0, err
    evaluated = re.search(r"\[val\]: loss (\d+\.\d{4}) nats/char \| bpc (\d+\.\d{4}) \| .* \| 16 streams", out)
    assert evaluated, out
    assert evaluated.groups() == reported.groups()
