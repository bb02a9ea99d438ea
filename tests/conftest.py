"""Shared test machinery: the real corpora, composed Hydra configs, the one way to run an app in a
subprocess, the tiny-run overrides, and the runs trained once per test session.

Where a test lives: the tests of ``src/charlm/<module>.py`` are in ``tests/test_<module>.py``, and
those of ``src/charlm/<package>/<module>.py`` in ``tests/test_<package>_<module>.py``
(``checkpoint.py`` -> ``test_checkpoint.py``, ``data/corpus.py`` -> ``test_data_corpus.py``,
``cli/train.py`` -> ``test_cli_train.py``). A test lives with the module whose behaviour it checks,
also when it drives that behaviour through an app; ``test_cli_<app>.py`` holds what the app itself
does (its options, output and exit status). Three files test something other than one module:
``test_config.py`` (``config.py`` and the configs in ``conf/``), ``test_readme.py`` (README.md) and
``test_benchmarks.py`` (the ``benchmarks/`` package). Two helper modules hold no tests:
``plugins.py`` (Lightning callbacks a test adds to a real ``charlm-train`` run) and
``wandb_files.py`` (W&B's offline run files read back).
"""

from __future__ import annotations

import atexit
import contextlib
import csv
import importlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from charlm.config import config_dir

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"
SHARED_DATA = Path(os.environ.get("CHARLM_DATA_DIR") or REPO.parent / "shared" / "data").resolve()

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("WANDB_DISABLE_GIT", "true")
os.environ["CHARLM_DATA_DIR"] = str(SHARED_DATA)
# Corpora are prepared into a cache of this test session (never into the repo's data/), set
# before any fixture so module-scoped fixtures and subprocesses use it too.
os.environ["CHARLM_CACHE_DIR"] = tempfile.mkdtemp(prefix="charlm-test-cache-")
atexit.register(shutil.rmtree, os.environ["CHARLM_CACHE_DIR"], True)


# ============================================================================= corpora
@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only corpora folder (``$CHARLM_DATA_DIR`` or ``../shared/data``)."""
    if not (SHARED_DATA / "tinyshakespeare" / "input.txt").is_file():
        pytest.fail(f"corpora not found at {SHARED_DATA}: set CHARLM_DATA_DIR to the shared data folder")
    return SHARED_DATA


@pytest.fixture
def shakespeare_path(shared_data) -> Path:
    return shared_data / "tinyshakespeare" / "input.txt"


def shakespeare_prefix(path: Path, n: int) -> Path:
    """Write the first ``n`` characters of Tiny Shakespeare to ``path``; returns ``path``."""
    path.write_text((SHARED_DATA / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")[:n], encoding="utf-8")
    return path


def shakespeare_excerpt(n: int = 300, start: int = 1000) -> str:
    """``n`` characters of Tiny Shakespeare from ``start``."""
    return (SHARED_DATA / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")[start : start + n]


@pytest.fixture
def small_corpus(tmp_path, shared_data) -> Path:
    """The first 60,000 characters of Tiny Shakespeare, as a file of its own."""
    return shakespeare_prefix(tmp_path / "small.txt", 60_000)


@pytest.fixture
def tiny_corpus(tmp_path, shared_data) -> Path:
    """The first 6,000 characters of Tiny Shakespeare: with 8 streams x 32 characters (FAST_TRAIN)
    and a 90/10 split, an epoch is 21 training batches."""
    return shakespeare_prefix(tmp_path / "tiny.txt", 6_000)


# ============================================================================= configs
def compose_cfg(config_name: str, output_dir: Path, overrides: list[str] | None = None) -> DictConfig:
    """Compose one of the real configs (``train``, ``sample``, ``eval``) as the app would,
    with the Hydra runtime set so ``${hydra:...}`` resolves, and the output dir pointed at
    ``output_dir``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = hydra_compose(config_name, overrides=list(overrides or []), return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.job.num = 0
        cfg.hydra.job.name = config_name
        cfg.paths.output_dir = str(output_dir)
    HydraConfig.instance().set_config(cfg)
    output_dir.mkdir(parents=True, exist_ok=True)
    return cfg


@pytest.fixture
def compose():
    """``compose(config_name, output_dir, overrides)`` -> composed config (see :func:`compose_cfg`)."""
    yield compose_cfg
    GlobalHydra.instance().clear()


# ============================================================================= tiny runs
# Every list below is FAST_TRAIN with a few named changes (Hydra takes the last value given for
# a key). A key can be deleted (~key) only once: a list that drops a callback says so in its name.


def without(overrides: list[str], *keys: str) -> list[str]:
    """``overrides`` less those that set or delete one of ``keys`` (``logger`` drops ``logger=csv``)."""
    return [o for o in overrides if o.lstrip("~+").split("=", 1)[0] not in keys]


#: The base of every tiny run: a small model, few steps, CSV only; a training run takes seconds.
FAST_TRAIN = [
    "model.hidden_size=64",
    "model.num_layers=1",
    "data.batch_size=8",
    "data.seq_len=32",
    "trainer.max_steps=40",
    "trainer.val_check_interval=20",
    "trainer.limit_val_batches=10",
    "trainer.num_sanity_val_steps=0",
    "trainer.enable_model_summary=false",
    "trainer.log_every_n_steps=5",
    "callbacks.last_checkpoint.every_n_train_steps=20",
    "~callbacks.rich_progress_bar",
    "logger=csv",
]

#: A run whose checkpoint a test reads, samples or breaks: hidden 32, 10 steps (last.ckpt at steps 5
#: and 10), one validation at the end; no samples and no visualiser (they are not under test).
TINY_TRAIN = FAST_TRAIN + [
    "model.hidden_size=32",
    "trainer.max_steps=10",
    "trainer.val_check_interval=10",
    "trainer.limit_val_batches=2",
    "callbacks.last_checkpoint.every_n_train_steps=5",
    "callbacks.samples.length=0",
    "~callbacks.visualize",
]

#: ``charlm-train`` as a command whose logger the test picks (``logger=default``: W&B offline and
#: CSV, for the W&B and sweep tests): 4 streams x 16, hidden 32, 20 steps, validations at 10 and
#: 20, samples of 40 characters (the W&B samples table).
CLI_TRAIN = without(FAST_TRAIN, "logger") + [
    "model.hidden_size=32",
    "data.batch_size=4",
    "data.seq_len=16",
    "trainer.max_steps=20",
    "trainer.val_check_interval=10",
    "trainer.limit_val_batches=5",
    "callbacks.samples.length=40",
]

#: An experiment recipe (``experiment=<name>``) shrunk to 2 steps of a narrow model: the recipe
#: keeps its own number of layers, cell and regularisers.
RECIPE_TRAIN = without(FAST_TRAIN, "model.num_layers") + [
    "model.hidden_size=32",
    "data.batch_size=4",
    "data.seq_len=16",
    "trainer.max_steps=2",
    "trainer.val_check_interval=2",
    "trainer.limit_val_batches=2",
    "trainer.log_every_n_steps=1",
    "callbacks.last_checkpoint.every_n_train_steps=2",
    "callbacks.samples.length=0",
    "~callbacks.visualize",
]


def resumable_train(corpus: Path, steps: int, *extra: str) -> list[str]:
    """A run on ``corpus`` (e.g. :func:`tiny_corpus`) that stop and resume tests compare step by
    step: every train loss logged, validations every 10 steps, last.ckpt every 7, dropout on (the
    RNG state must be restored for dropout masks to match)."""
    return FAST_TRAIN + [
        f"data.path={corpus}",
        "data.splits=[0.9,0.1,0.0]",
        f"trainer.max_steps={steps}",
        "trainer.log_every_n_steps=1",
        "trainer.val_check_interval=10",
        "trainer.limit_val_batches=2",
        "callbacks.last_checkpoint.every_n_train_steps=7",
        "model.dropout=0.2",
        *extra,
    ]


#: Long enough to learn (the val loss falls well below uniform): 150 steps of 16 x 64 characters of
#: a 2 x 128 LSTM on the whole of Tiny Shakespeare, validated on the whole val split at 75 and 150.
SHORT_TRAIN = FAST_TRAIN + [
    "model.hidden_size=128",
    "data.batch_size=16",
    "data.seq_len=64",
    "optimizer.lr=1e-2",
    "scheduler.warmup_steps=10",
    "trainer.max_steps=150",
    "trainer.val_check_interval=75",
    "trainer.limit_val_batches=null",
    "callbacks.last_checkpoint.every_n_train_steps=75",
    "callbacks.samples.length=80",
]

#: Training on several CPU processes (the test adds ``trainer=ddp_cpu``, the devices, the corpus and
#: the streams per process): 20 steps, every train loss logged, whole-split validations at 10 and
#: 20, last.ckpt every 5 steps, no dropout (the runs compare to a single process).
DDP_TRAIN = FAST_TRAIN + [
    "data.seq_len=16",
    "data.splits=[0.9,0.1,0.0]",
    "model.hidden_size=32",
    "model.dropout=0.0",
    "trainer.max_steps=20",
    "trainer.val_check_interval=10",
    "trainer.limit_val_batches=null",
    "trainer.log_every_n_steps=1",
    "callbacks.last_checkpoint.every_n_train_steps=5",
    "callbacks.samples.length=0",
]

#: A run the visualiser pages are made from: W&B offline too (the pages go there as wandb.Html),
#: 2 x 32 LSTM, 20 steps, samples of 60 characters, a 400-character page of the 20% val split.
VISUALIZED_TRAIN = without(FAST_TRAIN, "logger") + [
    "logger=default",
    "model.hidden_size=32",
    "model.num_layers=2",
    "trainer.max_steps=20",
    "trainer.val_check_interval=10",
    "trainer.limit_val_batches=4",
    "callbacks.samples.length=60",
    "callbacks.visualize.max_chars=400",
    "data.splits=[0.8,0.2,0.0]",
]


def train_tiny(out: Path, *overrides: str) -> dict:
    """Train a :data:`TINY_TRAIN` run (plus ``overrides``) into ``out`` in this process, as
    charlm-train would; returns its final metrics."""
    from charlm.cli.train import train

    return train(compose_cfg("train", out, [*TINY_TRAIN, *overrides]))


# ============================================================================= the command line
#: The primes users reported (Hydra: "Ambiguous value", "mismatched input", LexerNoViableAltException).
REPORTED = ["ROMEO: Hello, world", "KING: O (my lord)", "It's here", "I#a"]
#: Text holding the reported primes and every character that breaks free text: appended to a
#: corpus, the model knows their characters, so that samples can start from any of them.
EXTRA_TEXT = ("\n".join(REPORTED) + '\n[Exit] He said "a=b" #1, Все: (yes)\n') * 40


def composed(app: str, tmp_path: Path, *typed: str) -> DictConfig:
    """The config ``app`` composes from the arguments as typed in the shell (after charlm's own
    rewriting and checks, as in ``main()``)."""
    from charlm.cli.overrides import check_overrides, quote_overrides

    args = quote_overrides(list(typed))
    check_overrides(args)
    return compose_cfg(app, tmp_path / "compose", args)


def assert_checked_before_any_work(app: str, tmp_path: Path, typed: str, message: str) -> None:
    """``charlm-<app> ckpt=<missing file> <typed>`` fails on the option typed, with ``message``
    (its start), before it looks for the checkpoint: every option is checked before any work."""
    from charlm.errors import CharLMError

    run = importlib.import_module(f"charlm.cli.{app}").run
    with pytest.raises(CharLMError) as e:
        run(composed(app, tmp_path, f"ckpt={tmp_path / 'missing.ckpt'}", typed))
    assert str(e.value) == message or str(e.value).startswith(message)


# ============================================================================= the apps, run as a user runs them
def app_env(env: dict | None = None, plugins: bool = False) -> dict[str, str]:
    """The environment of a subprocess: this checkout's ``src`` first on ``PYTHONPATH`` (``tests/``
    too with ``plugins``, for :mod:`plugins`), one OpenMP thread, the shared corpora, W&B
    offline, Hydra's short errors; then ``env`` on top."""
    path = [str(REPO / "src"), *([str(TESTS)] if plugins else []), *filter(None, [os.environ.get("PYTHONPATH")])]
    e = dict(os.environ, PYTHONPATH=os.pathsep.join(path), OMP_NUM_THREADS="1", CHARLM_DATA_DIR=str(SHARED_DATA),
             WANDB_MODE="offline", WANDB_SILENT="true", WANDB_DISABLE_GIT="true", HYDRA_FULL_ERROR="0")
    e.update(env or {})
    return e


def _run(argv: list[str], cwd: Path | None, env: dict | None, plugins: bool, timeout: float, text: bool,
         **kwargs) -> subprocess.CompletedProcess:
    if "stdout" not in kwargs and "stderr" not in kwargs:
        kwargs["capture_output"] = True
    if text:
        kwargs["encoding"] = "utf-8"  # strict: output that is not UTF-8 fails the test
    return subprocess.run(argv, cwd=cwd, env=app_env(env, plugins), timeout=timeout, **kwargs)


@pytest.fixture(scope="session")
def run_app():
    """``run_app(app, *args, cwd=None, env=None, plugins=False, timeout=600, text=True, script=False,
    **subprocess_kwargs)`` runs ``python -m charlm.cli.<app> args...`` in a subprocess, as a user
    runs ``charlm-<app>``, and returns the ``CompletedProcess`` (stdout and stderr captured, as
    UTF-8 text, or bytes with ``text=False``; pass ``stdout=``/``stderr=`` to send them elsewhere).

    ``env`` is added to :func:`app_env`'s environment; ``plugins`` puts ``tests/`` on the path for a
    ``+callbacks.x._target_=plugins.<Callback>`` override; ``script`` runs the installed console
    script ``charlm-<app>`` beside this Python when there is one."""

    def run_app(app: str, *args: str, cwd: Path | None = None, env: dict | None = None, plugins: bool = False,
                timeout: float = 600, text: bool = True, script: bool = False, **kwargs) -> subprocess.CompletedProcess:
        installed = Path(sys.executable).parent / f"charlm-{app}"
        cmd = [str(installed)] if script and installed.is_file() else [sys.executable, "-m", f"charlm.cli.{app}"]
        return _run([*cmd, *args], cwd, env, plugins, timeout, text, **kwargs)

    return run_app


@pytest.fixture(scope="session")
def run_python():
    """``run_python(*args, ...)``: ``python args...`` (a ``-c`` script, a file) with the same
    environment and options as :func:`run_app`."""

    def run_python(*args: str, cwd: Path | None = None, env: dict | None = None, plugins: bool = False,
                   timeout: float = 600, text: bool = True, **kwargs) -> subprocess.CompletedProcess:
        return _run([sys.executable, *args], cwd, env, plugins, timeout, text, **kwargs)

    return run_python


@pytest.fixture
def run_main(capfd):
    """``run_main(app, *args)`` runs ``charlm-<app> args...`` through its real entry point
    (``charlm.cli.<app>.main``, which Hydra drives from ``sys.argv``) in this process; returns
    ``(exit status, stdout, stderr)``."""

    def run_main(app: str, *args: str) -> tuple[int, str, str]:
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

    return run_main


def assert_user_error(result: subprocess.CompletedProcess | tuple[int, str], *needles: str) -> str:
    """A user error as charlm reports it: exit status 2 and exactly one ``error:`` line, holding
    every needle; no traceback, no Hydra wrapper. ``result`` is a finished process or
    ``(exit status, stderr)``; returns the ``error:`` line."""
    code, err = (result.returncode, result.stderr) if isinstance(result, subprocess.CompletedProcess) else result
    err = err.decode("utf-8") if isinstance(err, bytes) else err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, (code, err[-3000:])
    assert len([ln for ln in lines if ln.startswith("error: ")]) == 1, err[-3000:]
    for bad in ("Traceback", "Error in call to target", "JobReport", "MissingMandatoryValue", "HYDRA_FULL_ERROR"):
        assert bad not in err, (bad, err[-3000:])
    line = next(ln for ln in lines if ln.startswith("error: "))
    for n in needles:
        assert n in line, (n, line)
    return line


# ============================================================================= a run dir read back
def last_ckpt(run_dir: Path) -> Path:
    return run_dir / "checkpoints" / "last.ckpt"


def logged(run_dir: Path, key: str, once: bool = False) -> dict[int, float]:
    """``{step: value}`` of ``key`` in a run's ``csv/metrics.csv`` (the step column is Lightning's
    logging step: what optimizer step n did is logged under n - 1); ``once``: fail if a step is
    logged twice."""
    out: dict[int, float] = {}
    with open(run_dir / "csv" / "metrics.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row.get(key):
                step = int(row["step"])
                assert not (once and step in out), f"step {step} logged twice"
                out[step] = float(row[key])
    return out


def validations(run_dir: Path) -> list[tuple[int, float]]:
    """``[(optimizer step, val/loss)]`` of a run's validations, in order (Lightning logs a
    validation at step N under the logging step N - 1); each step once."""
    return [(step + 1, loss) for step, loss in logged(run_dir, "val/loss", once=True).items()]


def weights(run_dir: Path) -> dict:
    """The ``state_dict`` of a run's last.ckpt."""
    import torch

    return torch.load(last_ckpt(run_dir), map_location="cpu", weights_only=True)["state_dict"]


def assert_same_weights(a: Path, b: Path) -> None:
    import torch

    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), f"{k} differs"


def best_files(run_dir: Path) -> list[str]:
    """The best-k checkpoint files on disk (everything but last*.ckpt)."""
    return sorted(p.name for p in (run_dir / "checkpoints").glob("*.ckpt") if not p.name.startswith("last"))


def assert_same_run(full: Path, cut: Path, total: int) -> None:
    """A stopped-and-resumed run equals the run never stopped: weights, every train loss, the
    learning rate of every step, the validation rows, the best-k files and the sample blocks."""
    from charlm.sampling.samples_file import read_samples

    assert_same_weights(full, cut)
    lf, lc = logged(full, "train/loss", once=True), logged(cut, "train/loss", once=True)
    assert sorted(lc) == sorted(lf) and len(lf) == total
    assert lc == lf  # identical floats at every step
    assert logged(cut, "lr") == logged(full, "lr")  # the schedule continued where it was
    assert logged(cut, "val/loss") == logged(full, "val/loss")
    assert best_files(cut) == best_files(full)
    assert read_samples(cut / "samples.txt") == read_samples(full / "samples.txt")


# ============================================================================= runs trained once per session
@contextlib.contextmanager
def one_torch_thread():
    """One intra-op torch thread: on a small shared machine, thread over-subscription makes tiny
    runs many times slower (and no result depends on it)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _train(out: Path, overrides: list[str]) -> dict:
    from charlm.cli.train import train

    with one_torch_thread():
        metrics = train(compose_cfg("train", out, overrides))
    GlobalHydra.instance().clear()
    return metrics


@pytest.fixture(scope="session")
def shakespeare_run(tmp_path_factory, shared_data) -> Path:
    """A tiny model (:data:`TINY_TRAIN`) trained on the first 60,000 characters of Tiny Shakespeare;
    its run dir (``checkpoints/last.ckpt`` at step 10). Tests only read it."""
    root = tmp_path_factory.mktemp("shakespeare-run")
    corpus = shakespeare_prefix(root / "small.txt", 60_000)
    _train(root / "run", [*TINY_TRAIN, "data=file", f"data.path={corpus}"])
    return root / "run"


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> tuple[Path, dict]:
    """A model that learnt something (:data:`SHORT_TRAIN`, seed 1, on the whole of Tiny
    Shakespeare): ``(run dir, final metrics)``. Tests only read it."""
    out = tmp_path_factory.mktemp("trained-run")
    return out, _train(out, SHORT_TRAIN + ["seed=1"])


#: Steps of :func:`full_run`: an epoch of :func:`tiny_corpus` is 21 batches, so runs cross an epoch boundary.
FULL_STEPS = 40


@pytest.fixture(scope="session")
def full_run(tmp_path_factory, shared_data) -> tuple[Path, Path]:
    """``(corpus, run dir)`` of the :func:`resumable_train` run of :data:`FULL_STEPS` steps never
    stopped that stopped runs are compared to (validations at steps 10, 20, 30, 40; save_top_k=3
    keeps 3 of them)."""
    base = tmp_path_factory.mktemp("full")
    corpus = shakespeare_prefix(base / "tiny.txt", 6_000)
    _train(base / "run", resumable_train(corpus, FULL_STEPS))
    assert len(logged(base / "run", "val/loss")) == 4 and len(best_files(base / "run")) == 3
    return corpus, base / "run"


#: Lines with quotes, brackets and comments, so that every visualiser feature varies over a page's text.
CODE_LINES = (
    'def f(x):  # "quoted" (in a comment)\n'
    '    return g(x[0], {"k": (1, 2)})  // done\n'
    '/* a block\n   comment */ print("hello (world)")\n'
)


@pytest.fixture(scope="session")
def visualized_run(tmp_path_factory, shared_data) -> Path:
    """A 20-step run (:data:`VISUALIZED_TRAIN`, seed 3) on Tiny Shakespeare plus lines of
    code-like text (so quotes, brackets and comments occur), with the default callbacks: samples
    and the end-of-training visualiser pages. Tests only read it."""
    corpus = tmp_path_factory.mktemp("corpus") / "mixed.txt"
    play = (shared_data / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    tail = "".join(CODE_LINES + play[36_000 + 200 * i : 36_200 + 200 * i] for i in range(40))
    corpus.write_text(play[:36_000] + tail, encoding="utf-8")  # the val split (last 20%) is mixed
    out = tmp_path_factory.mktemp("run")
    _train(out, VISUALIZED_TRAIN + ["data=file", f"data.path={corpus}", "seed=3"])
    return out


def page_data(html: str) -> dict:
    """The data a visualiser page embeds (its ``charlm-data`` JSON script)."""
    import json
    import re

    m = re.search(r'<script type="application/json" id="charlm-data">(.*?)</script>', html, re.S)
    assert m, "the page embeds its data"
    return json.loads(m.group(1).replace("<\\/", "</"))


# ============================================================================= every test
@pytest.fixture(autouse=True)
def _own_wandb_service(monkeypatch):
    """Each command a test runs starts its own wandb-core, as a user's command does. A W&B run
    started inside this pytest process sets ``WANDB_SERVICE``, which subprocesses would inherit and
    then share one core: a run SIGKILLed by a test would stay registered there, and resuming it
    would fail with 'run ID ... is in use'."""
    monkeypatch.delenv("WANDB_SERVICE", raising=False)


@pytest.fixture(autouse=True)
def _one_thread():
    """Every test runs torch on one intra-op thread (see :func:`one_torch_thread`)."""
    with one_torch_thread():
        yield
