"""README.md is true: every command a user would paste runs, and the output it quotes has the
shape the product prints.

The tests read README.md itself, so they follow it as it changes. What they rely on:

- A ```` ```bash ```` block is a list of commands run in order in one fresh folder (``\\``
  continues a line, ``&&`` chains, ``#`` starts a comment). Commands of the charlm apps
  (``charlm-*``, ``python -m charlm...``) run; the others must match one of :data:`SKIPPED`
  (installing, the network, a cluster, GPUs) or the test fails, so a new kind of command needs
  a decision here.
- A ```` ```text ```` block whose first line is ``$ <command>`` quotes that command's output. The
  command runs after the nearest ``bash`` block above it, in the same folder, and each quoted line
  must appear in the output, in order, with the same shape: numbers, the text of ``code``
  spans and the generated sample text (charlm-sample's output, the summary's sample section) are
  not compared, a line ending in ``...`` is compared up to there, and a line ``...`` stands for
  any lines.
- Placeholders: ``<run>``/``<time>``/``<names run>`` (a run folder's name), ``<run dir>``, a run
  or sweep path that does not exist here (``outputs/train/runs/2026-...``,
  ``outputs/train/multiruns/<sweep>``) and a bare ``...`` value (``ckpt=...``) stand for the
  latest run or sweep in the folder (an earlier command's, else a tiny run made once for the
  module); ``checkpoints/<best>.ckpt`` for that run's best-k checkpoint. A ``*.txt`` file named
  in an option that does not exist is created from Tiny Shakespeare. ``VAR=value`` before a
  command sets its environment.
- Commands are shrunk by overrides the test adds (:data:`SHRINK`, only for keys the command does
  not set) and step counts over 100 are divided by 250, so ``trainer.max_steps=5000`` becomes
  20; a resume adds nothing (the run's settings come from its checkpoint).

The fast tests check that every command is known, that every charlm command composes (its keys
exist), and that the config-group table and the Architecture section list what is there; the slow ones
run every block.
"""

from __future__ import annotations

import math
import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import REPO, SHARED_DATA

README = REPO / "README.md"


def _scripts() -> dict[str, str]:
    import tomllib

    return dict(tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"])


#: Console scripts and their entry points (pyproject.toml's [project.scripts]): ``charlm-train``
#: -> ``charlm.cli.train:main``.
APPS = _scripts()
#: ``python -m <module>`` forms of the apps: ``charlm.cli.train``.
MODULES = {e.split(":")[0]: a for a, e in APPS.items()}
#: The Hydra config each app composes (conf/<name>.yaml), for the apps that have one.
CONFIG = {a: a.split("-", 1)[1] for a in APPS if (REPO / "conf" / f"{a.split('-', 1)[1]}.yaml").is_file()}

#: Added to every new charlm-train run, for each key the command does not set (a tiny model and
#: run on 2 CPU cores; what is left to the defaults, e.g. the intervals, stays as documented).
SHRINK = [
    "model.hidden_size=32",
    "model.num_layers=1",
    "data.batch_size=4",
    "data.seq_len=16",
    "trainer.max_steps=8",
    "trainer.limit_val_batches=2",
    "trainer.enable_model_summary=false",
    "callbacks.samples.length=40",
    "callbacks.visualize.max_chars=200",
    "logger=csv",  # not for a command whose quoted output shows the W&B line
]
#: Step counts scaled down (value > 100 -> ceil(value / 250)).
STEP_KEYS = ("trainer.max_steps", "stop_after_steps", "trainer.val_check_interval", "trainer.log_every_n_steps",
             "callbacks.last_checkpoint.every_n_train_steps")
#: Trials of an Optuna search.
N_TRIALS = "hydra.sweeper.n_trials=2"
#: Upper bounds on other apps' options (a 20-gram of War and Peace takes 1.35 GB).
CAPS = {"charlm-ngram": {"order": 5}}


def _needs_gpus(argv: list[str]) -> bool:
    if not any(a in ("trainer=ddp", "trainer=gpu") for a in argv):
        return False
    import torch

    devices = next((a.split("=", 1)[1] for a in argv if a.startswith("trainer.devices=")), "1")
    need = int(devices) if devices.isdigit() else 1
    return torch.cuda.device_count() < max(need, 1)


#: Commands that are not run, with the reason; every other command must be a charlm app.
SKIPPED = [
    (lambda a: a[0] == "pip", "installs packages (the test environment has them)"),
    (lambda a: a[:3] == ["python", "-m", "pytest"], "runs the test suite itself"),
    (lambda a: a[:2] == ["python", "-m"] and a[2].split(".")[0] == "benchmarks", "the benchmarks (tests/test_benchmarks.py)"),
    (lambda a: a[0] == "wandb", "needs a W&B account and the network"),
    (lambda a: a[0] in ("torchrun", "srun", "sbatch"), "needs a cluster (several machines, SLURM)"),
    (lambda a: any(x.startswith(("hydra/launcher=submitit", "launcher=slurm")) for x in a), "needs SLURM"),
    (lambda a: a[0] == "export" or any("$" in x for x in a), "needs the user's shell environment"),
    (_needs_gpus, "needs GPUs"),
]


# ----------------------------------------------------------------------------- reading README.md
@dataclass
class Block:
    lang: str
    line: int  # 1-based line of the opening fence
    heading: str
    lines: list[str]


@dataclass
class Command:
    line: int
    text: str  # as written (continuations joined, comment kept out)
    quoted: list[str] | None = None  # the output a ``$`` block quotes for it


@dataclass
class Unit:
    """A ``bash`` block and the ``$`` commands quoted after it, run in one folder."""

    block: Block
    commands: list[Command] = field(default_factory=list)

    @property
    def id(self) -> str:
        slug = re.sub(r"[^a-z0-9]+", "-", self.block.heading.lower()).strip("-")
        return f"L{self.block.line}-{slug}"


def readme_blocks(text: str) -> list[Block]:
    blocks, heading, current = [], "", None
    for i, line in enumerate(text.split("\n"), 1):
        if current is None:
            if line.startswith("#"):
                heading = line.lstrip("#").strip()
            m = re.match(r"^```(\w*)\s*$", line)
            if m:
                current = Block(m.group(1), i, heading, [])
        elif line.startswith("```"):
            blocks.append(current)
            current = None
        else:
            current.lines.append(line)
    return blocks


def block_commands(block: Block) -> list[Command]:
    """The commands of a bash block: continuation lines joined, comments dropped, ``&&`` split."""
    out, pending, start = [], "", 0
    for i, line in enumerate(block.lines):
        if not pending:
            start = block.line + 1 + i
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        full = one_word_placeholders((pending + line).strip())
        pending = ""
        if not full or full.startswith("#"):
            continue
        for part in _split_and(full):
            out.append(Command(start, part))
    return out


def _split_and(line: str) -> list[str]:
    """Split at ``&&`` outside quotes, dropping a trailing ``# comment``."""
    lex = shlex.shlex(line, posix=True, punctuation_chars="&")
    lex.whitespace_split = True
    lex.commenters = "#"
    parts, cur = [], []
    # shlex gives tokens; rebuild each part by quoting tokens back so placeholders survive
    for tok in lex:
        if tok == "&&":
            parts.append(cur)
            cur = []
        else:
            cur.append(tok)
    parts.append(cur)
    return [shlex.join(p) for p in parts if p]


def readme_units(text: str | None = None) -> list[Unit]:
    units: list[Unit] = []
    for b in readme_blocks(text if text is not None else README.read_text(encoding="utf-8")):
        if b.lang == "bash":
            units.append(Unit(b, block_commands(b)))
        elif b.lines and b.lines[0].startswith("$ "):
            assert units, f"README.md line {b.line}: a quoted output with no bash block above it"
            cmd = one_word_placeholders(b.lines[0][2:].strip())
            units[-1].commands.append(Command(b.line + 1, shlex.join(shlex.split(cmd, comments=True)), quoted=b.lines[1:]))
    return units


def all_commands() -> list[tuple[Unit, Command]]:
    return [(u, c) for u in readme_units() for c in u.commands]


def one_word_placeholders(line: str) -> str:
    """``<run dir>`` -> ``<run_dir>``, so that a placeholder stays one word for the shell."""
    return re.sub(r"<([a-z]+(?: [a-z]+)+)>", lambda m: "<" + m.group(1).replace(" ", "_") + ">", line)


def argv_of(cmd: str) -> list[str]:
    """A command's words as the shell gives them, without leading ``VAR=value`` assignments."""
    return split_env(shlex.split(cmd))[1]


def split_env(words: list[str]) -> tuple[dict[str, str], list[str]]:
    """``(environment, argv)`` of ``VAR=value ... command args``."""
    env: dict[str, str] = {}
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
        k, _, v = words[0].partition("=")
        env[k] = v
        words = words[1:]
    return env, words


def app_of(argv: list[str]) -> str | None:
    """``charlm-train`` for ``charlm-train ...`` or ``python -m charlm.cli.train ...``; else ``None``."""
    if argv[0] in APPS:
        return argv[0]
    if argv[0] in ("python", "python3") and len(argv) > 2 and argv[1] == "-m":
        return MODULES.get(argv[2])
    return None


def app_args(argv: list[str]) -> list[str]:
    return argv[1:] if argv[0] in APPS else argv[3:]


def skip_reason(argv: list[str]) -> str | None:
    for pred, reason in SKIPPED:
        if pred(argv):
            return reason
    return None


# ----------------------------------------------------------------------------- placeholders, shrinking
_PLACEHOLDER = re.compile(r"<[a-z_]+>")
#: Placeholders for a run folder's name.
_RUN = re.compile(r"<(?:run|time|[a-z_]*_run)>")


def latest(folder: Path) -> Path | None:
    dirs = sorted((p for p in folder.iterdir() if p.is_dir()), key=lambda p: p.name) if folder.is_dir() else []
    return dirs[-1] if dirs else None


def substitute(cmd: str, cwd: Path, ensure_run) -> str:
    """Fill the README's placeholders with the latest run / sweep under ``cwd`` (see the module
    docstring); ``ensure_run()`` provides a run when there is none yet."""
    runs, sweeps = cwd / "outputs" / "train" / "runs", cwd / "outputs" / "train" / "multiruns"

    def run_name() -> str:
        if latest(runs) is None:
            ensure_run(cwd)
        return latest(runs).name

    def fix_path(m: re.Match) -> str:
        kind, name = m.group(1), m.group(2)
        base = runs if kind == "runs" else sweeps
        if (base / name).exists():
            return m.group(0)
        target = run_name() if kind == "runs" else latest(sweeps).name
        return f"outputs/train/{kind}/{target}"

    def best(m: re.Match) -> str:
        ckpts = {p: float(re.search(r"val_loss([\d.]+)\.ckpt$", p.name).group(1))
                 for p in (cwd / m.group(1)).glob("step*-val_loss*.ckpt")}
        assert ckpts, f"{m.group(1)} has no best-k checkpoint for <best>"
        return f"{m.group(1)}/{min(ckpts, key=ckpts.get).stem}"

    cmd = cmd.replace("<run_dir>", "outputs/train/runs/<run>")
    cmd = _RUN.sub("<run>", cmd)
    cmd = re.sub(r"outputs/train/(runs|multiruns)/(<[a-z_]+>|\d[\w-]*)", fix_path, cmd)
    cmd = cmd.replace("<run>", run_name()) if "<run>" in cmd else cmd
    cmd = re.sub(r"(?<==)\.\.\.(?=\s|$)", lambda m: f"outputs/train/runs/{run_name()}/checkpoints/last.ckpt", cmd)
    cmd = re.sub(r"(outputs/train/runs/[^/\s'\"]+/checkpoints)/<best>", best, cmd)
    left = _PLACEHOLDER.findall(cmd)
    assert not left, f"unknown placeholder(s) {left} in README command: {cmd} (teach tests/test_readme.py about it)"
    return cmd


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _touches(a: str, b: str) -> bool:
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


def shrink(app: str, args: list[str], quoted: bool) -> list[str]:
    """The README command's arguments with the test's shrinking overrides (see :data:`SHRINK`)."""
    out = []
    for a in args:
        k, sep, v = a.partition("=")
        if sep and _key(a) in STEP_KEYS and v.isdigit() and int(v) > 100:
            a = f"{k}={math.ceil(int(v) / 250)}"
        cap = CAPS.get(app, {}).get(_key(a))
        if sep and cap is not None and v.isdigit() and int(v) > cap:
            a = f"{k}={cap}"
        if sep and _key(a) == "hydra.sweeper.n_trials":
            a = N_TRIALS
        out.append(a)
    if app != "charlm-train" or "--help" in args or any(_key(a) == "resume" for a in args):
        return out
    keys = [_key(a) for a in out if "=" in a or a.startswith("~")]
    for s in SHRINK:
        if s == "logger=csv" and quoted:
            continue
        if not any(_touches(_key(s), k) for k in keys):
            out.append(s)
    if any(_key(a) == "hparams_search" for a in out) and "hydra.sweeper.n_trials" not in keys:
        out.append(N_TRIALS)
    return out


def make_text_files(args: list[str], cwd: Path) -> None:
    """Create the ``*.txt`` files a command names (``data.path=my_corpus.txt``) from Tiny Shakespeare."""
    for a in args:
        _, sep, v = a.partition("=")
        if sep and v.endswith(".txt") and not (cwd / v).exists() and not os.path.isabs(v):
            (cwd / v).parent.mkdir(parents=True, exist_ok=True)
            text = (SHARED_DATA / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
            (cwd / v).write_text(text[:30_000], encoding="utf-8")


# ----------------------------------------------------------------------------- output shapes
_NUMBER = re.compile(r"[-+]?(?:\d[\d,]*\.?\d*|\.\d+)(?:e[-+]?\d+)?")
_RULE = "─"


def shape(line: str) -> str:
    line = re.sub(r"`[^`]*`", "`_`", line)
    line = _NUMBER.sub("#", line)
    line = re.sub(r"([^\s,]+)(, \1)+", r"\1", line)  # a list of same-shaped items (best-k files) is one item
    return " ".join(line.replace(_RULE, " ").split())


def quoted_lines(app: str, lines: list[str]) -> list[str | None]:
    """The lines of a quoted output to compare (``None``: any lines), in order."""
    if app == "charlm-sample":
        return []  # generated text
    out: list[str | None] = []
    in_sample = False
    for line in lines:
        if _RULE in line:
            in_sample = "sample" in line
            out.append(line)
        elif in_sample or not line.strip():
            continue
        elif line.strip() == "...":
            out.append(None)
        else:
            out.append(line)
    return out


def shape_pattern(line: str) -> re.Pattern:
    """A quoted line's shape as a pattern: each ``...`` stands for any text (at the end: the rest
    of the line; ``.../warpeace/input.txt``: any folder)."""
    return re.compile(".*?".join(re.escape(part) for part in shape(line).split("...")))


def assert_same_shape(expected: list[str | None], output: str, where: str) -> None:
    """Every expected line's shape appears in ``output``'s lines, in order (see the module docstring)."""
    actual = [shape(a) for a in output.replace(str(SHARED_DATA), "data").split("\n")]
    pos = 0
    for line in expected:
        if line is None:
            continue
        want = shape_pattern(line)
        for i in range(pos, len(actual)):
            if want.fullmatch(actual[i]):
                pos = i + 1
                break
        else:
            raise AssertionError(
                f"{where}: the README quotes a line of this shape that the command does not print (in this order):\n"
                f"  README: {line}\n  shape:  {shape(line)}\nactual output:\n{output[-4000:]}"
            )


# ----------------------------------------------------------------------------- running
def run_readme_app(run_app, app: str, args: list[str], cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run console script ``app`` (``charlm-train``) with ``args`` as a user does: the installed
    script beside this Python when there is one, else ``python -m``."""
    return run_app(app.removeprefix("charlm-"), *args, cwd=cwd, env=env, timeout=900, script=True)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, run_app) -> Path:
    """A tiny run of ``charlm-train`` (shrunk, with W&B offline) that commands without a run of
    their own use: a copy goes into their folder."""
    cwd = tmp_path_factory.mktemp("readme-run")
    res = run_readme_app(run_app, "charlm-train", shrink("charlm-train", [], quoted=True), cwd)
    assert res.returncode == 0, res.stderr[-3000:]
    return latest(cwd / "outputs" / "train" / "runs")


# ============================================================================= fast: README is parsed
def test_every_readme_command_is_run_or_skipped_for_a_stated_reason():
    units = readme_units()
    assert len(units) >= 10, "README.md has fewer bash blocks than expected: is it parsed?"
    ran = set()
    for u, c in all_commands():
        argv = argv_of(c.text)
        app = app_of(argv)
        if app is None:
            assert skip_reason(argv) is not None, (
                f"README.md line {c.line}: `{c.text}` is neither a charlm app nor a kind of command "
                "tests/test_readme.py skips (SKIPPED): decide how to test it"
            )
        else:
            ran.add(app)
        for p in _PLACEHOLDER.findall(c.text):
            assert _RUN.fullmatch(p) or p in ("<run_dir>", "<sweep>", "<best>"), f"README.md line {c.line}: unknown placeholder {p}"
    assert set(APPS) <= ran, f"no README command runs {set(APPS) - ran}: show how to use it"
    quoted = [c for _, c in all_commands() if c.quoted is not None]
    assert {app_of(argv_of(c.text)) for c in quoted} >= {"charlm-train", "charlm-eval", "charlm-report"}


def _compose_args(args: list[str]) -> tuple[list[str], list[str]]:
    """(overrides Hydra's compose takes, keys to check separately: sweeps, and free text that the
    app quotes for Hydra itself)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    plain, other = [], []
    for a in args:
        if a.startswith("-"):
            continue
        try:
            (o,) = parser.parse_overrides([a])
        except Exception:
            other.append(_key(a))
            continue
        key = o.get_key_element()
        if o.is_sweep_override():
            other.append(key)
        elif not key.startswith("hydra.") and not key.startswith("hydra/"):
            plain.append(a)
    return plain, other


def _fake_run(cwd: Path) -> None:
    ckpts = cwd / "outputs" / "train" / "runs" / "run" / "checkpoints"
    ckpts.mkdir(parents=True)
    (ckpts / "step000001-val_loss1.0000.ckpt").touch()


def test_every_readme_charlm_command_composes(tmp_path):
    """Every option a README command gives exists (Hydra composes it), without running it."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from charlm.config import config_dir

    checked = 0
    for _, c in all_commands():
        argv = argv_of(c.text)
        app = app_of(argv)
        if app not in CONFIG or "--help" in argv or skip_reason(argv) not in (None, "needs GPUs"):
            continue
        cmd = substitute(c.text, tmp_path, _fake_run)
        args = shrink(app, app_args(argv_of(cmd)), quoted=c.quoted is not None)
        if any(a.startswith("hparams_search=") for a in args):
            pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
        overrides, swept = _compose_args(args)
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            try:
                cfg = compose(CONFIG[app], overrides=overrides, return_hydra_config=True)
            except Exception as e:
                raise AssertionError(f"README.md line {c.line}: `{c.text}` does not compose: {e}") from None
        for key in swept:
            assert OmegaConf.select(cfg, key, default="<missing>") != "<missing>", f"README.md line {c.line}: no key {key}"
        checked += 1
    GlobalHydra.instance().clear()
    assert checked >= 15


def _section(name: str) -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index(f"## {name}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else None]


def test_config_group_table_lists_every_option_of_every_group():
    """The Configuration table lists each config group's options as ``--help`` does (conf/<group>/)."""
    rows: dict[str, set[str]] = {}
    for line in _section("Configuration").split("\n"):
        m = re.match(r"^\| `(\w+)` [^|]*\| ([^|]*)\|", line)
        if m:
            rows.setdefault(m.group(1), set()).update(re.findall(r"`([\w-]+)`", m.group(2)))
    conf = REPO / "conf"
    groups = {p.name: {f.stem for f in p.glob("*.yaml")} for p in conf.iterdir() if p.is_dir() and p.name != "hydra"}
    assert set(rows) == set(groups), f"groups in the README table {sorted(rows)} vs conf/ {sorted(groups)}"
    for g, options in groups.items():
        assert rows[g] == options, f"README's `{g}` row lists {sorted(rows[g])}, conf/{g}/ has {sorted(options)}"


def test_layout_names_every_module():
    layout = _section("Architecture")
    src = REPO / "src" / "charlm"
    missing = [str(p.relative_to(src)) for p in sorted(src.rglob("*.py"))
               if p.name not in ("__init__.py", "__main__.py") and p.name not in layout]
    assert not missing, f"README's Architecture section leaves out {missing}"


def _imports(path: Path) -> set[str]:
    """The ``charlm`` modules a source file imports, at any depth (inside functions too)."""
    import ast

    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("charlm"):
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("charlm"))
    return out


def test_imports_only_go_down_the_layers_the_architecture_section_gives():
    """The "Layers" paragraph is true: no module imports one of a higher layer (nor, so, in a
    circle), counting every import, the lazy ones inside functions too."""
    para = _section("Architecture").split("**Layers.**", 1)[1].split("\n\n", 1)[0]
    chain = para.split(":", 1)[1].split(". ", 1)[0]
    layer = {name: i for i, group in enumerate(chain.split("→")) for name in re.findall(r"`(\w+)`", group)}
    src = REPO / "src" / "charlm"
    mods = {".".join(p.relative_to(src.parent).with_suffix("").parts).removesuffix(".__init__"): p
            for p in src.rglob("*.py")}

    def level(mod: str) -> int:  # a module's layer: its first name under charlm
        top = mod.split(".")[1] if "." in mod else ""
        assert top == "" or top in layer, f"README's Layers leave out charlm.{top}"
        return layer.get(top, -1)

    upward = [f"{m} -> {d}" for m, p in sorted(mods.items()) if m.count(".") and not m.endswith("__main__")
              for d in sorted(_imports(p) & mods.keys()) if level(d) > level(m)]
    assert not upward, f"imports from a lower layer to a higher one: {upward}"
    assert len(layer) > 10  # the paragraph was read

def test_shapes_ignore_numbers_and_code_but_not_fields():
    exp = ["steps: 1,800 in 11.5 min", "final val loss: 1.4840 nats/char, bpc 2.1409, perplexity 4.410",
           "- `1_a=1~ab` FAILED: CharLMError: bad thing at step 2: more ..."]
    out = "noise\nsteps: 8 in 0.1 min\nfinal val loss: 4.0000 nats/char, bpc 5.7700, perplexity 54.600\n" \
          "- `0_x` FAILED: CharLMError: bad thing at step 3: more and more\n"
    assert_same_shape(exp, out, "test")
    with pytest.raises(AssertionError, match="does not print"):
        assert_same_shape(["final val loss: 1.4840 nats/char, bpc 2.1409"], "final val loss: 1.4840 nats/char", "test")
    with pytest.raises(AssertionError, match="does not print"):  # order matters
        assert_same_shape(list(reversed(exp[:2])), out, "test")
    assert_same_shape([".../warpeace/input.txt [val]: loss 1.2 nats/char"], "/x/y/warpeace/input.txt [val]: loss 3.1 nats/char", "t")
    # a list of same-shaped items has the shape of one item, however long (three best-k files vs one)
    assert_same_shape(["best by val/loss: step001500-val_loss1.4908.ckpt, step001750-val_loss1.4824.ckpt"],
                      "best by val/loss: step000008-val_loss4.1453.ckpt", "t")
    with pytest.raises(AssertionError, match="does not print"):
        assert_same_shape(["best by val/loss: step001500-val_loss1.4908.ckpt"], "best by val/loss: none", "t")


def test_shrink_scales_steps_and_keeps_what_the_command_sets():
    args = shrink("charlm-train", ["model=gru", "model.hidden_size=512", "trainer.max_steps=5000", "callbacks=none"], False)
    assert "model.hidden_size=512" in args and "trainer.max_steps=20" in args and "model.hidden_size=32" not in args
    assert not any(a.startswith("callbacks.") for a in args) and "logger=csv" in args
    assert shrink("charlm-train", ["resume=x", "trainer.max_steps=8000"], False) == ["resume=x", "trainer.max_steps=32"]
    assert "logger=csv" not in shrink("charlm-train", [], quoted=True)
    assert N_TRIALS in shrink("charlm-train", ["hparams_search=optuna"], False)


# ============================================================================= slow: README runs
def _copy_tiny_run(tiny_run: Path):
    def ensure(cwd: Path) -> None:
        dest = cwd / "outputs" / "train" / "runs" / tiny_run.name
        if not dest.exists():
            shutil.copytree(tiny_run, dest, ignore=shutil.ignore_patterns("wandb"))
    return ensure


@pytest.mark.slow
@pytest.mark.parametrize("unit", readme_units(), ids=lambda u: u.id)
def test_readme_block_runs_as_documented(unit: Unit, tmp_path, tiny_run, run_app):
    ran = 0
    for c in unit.commands:
        argv = argv_of(c.text)
        app = app_of(argv)
        if app is None or skip_reason(argv):
            continue
        cmd = substitute(c.text, tmp_path, _copy_tiny_run(tiny_run))
        args = shrink(app, app_args(argv_of(cmd)), quoted=c.quoted is not None)
        make_text_files(args, tmp_path)
        sweeps = tmp_path / "outputs" / "train" / "multiruns"
        before = set(sweeps.iterdir()) if sweeps.is_dir() else set()
        res = run_readme_app(run_app, app, args, tmp_path, env=split_env(shlex.split(cmd))[0])
        where = f"README.md line {c.line}: `{c.text}` (run as `{app} {shlex.join(args)}`)"
        out = res.stdout + res.stderr
        new = (set(sweeps.iterdir()) if sweeps.is_dir() else set()) - before
        failed = sum("status: FAILED" in p.read_text() for d in new for p in d.glob("*/job_status.yaml"))
        if new:  # a sweep: one line per failed job; with one, it exits 1 as the README says
            assert out.count(" FAILED (") == failed, f"{where}: {failed} failed job(s), lines:\n{out[-4000:]}"
        if res.returncode != 0 and failed:
            assert res.returncode == 1, f"{where} exited {res.returncode}:\n{out[-4000:]}"
        else:
            assert res.returncode == 0, f"{where} exited {res.returncode}:\n{out[-4000:]}"
        for noise in ("Traceback", "Error executing job", "setup plugin"):
            assert noise not in out, f"{where} printed {noise!r}:\n{out[-4000:]}"
        if c.quoted is not None:
            assert_same_shape(quoted_lines(app, c.quoted), res.stdout, where)
        ran += 1
    if not ran:
        pytest.skip(f"nothing in this block runs here: {[skip_reason(argv_of(c.text)) for c in unit.commands]}")
