"""charlm.cli.common: the command line as users type it, for every app: free text and paths go in
verbatim, every override is checked before Hydra reads it, backslash escapes decode, a user error
is one ``error:`` line with exit status 2 (recorded as FAILED), and each app's --help shows its own
options.

Most cases run the real entry point (``charlm.cli.<app>.main``, which Hydra drives from
``sys.argv``) in this process (``run_main``), or compose the real config from the rewritten
overrides, as the app does (``composed``); a real subprocess (``run_app``) is used where the process
boundary matters (argv decoding under another locale). Each app's own options: test_cli_<app>.py.
"""

from __future__ import annotations

import re
import shlex

import pytest
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from charlm.cli.overrides import check_overrides, decode_argv, hydra_quote, quote_overrides
from charlm.cli.train import train
from charlm.errors import CharLMError
from charlm.shell import shell_arg
from conftest import EXTRA_TEXT, REPORTED, TINY_TRAIN, assert_user_error, compose_cfg, composed, last_ckpt


#: Every character the issue lists as breaking free text, and a space.
SPECIAL = [",", "'", "(", ")", "[", "]", "=", "#", '"', ":", " "]


@pytest.fixture(scope="module")
def model_run(tmp_path_factory, shared_data) -> Path:
    """A tiny model whose vocabulary holds every special character and Cyrillic (the first
    30,000 characters of Tiny Shakespeare plus lines holding them); returns its run dir."""
    root = tmp_path_factory.mktemp("cli")
    corpus = root / "corpus.txt"
    corpus.write_text((shared_data / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")[:30_000] + EXTRA_TEXT,
                      encoding="utf-8")
    train(compose_cfg("train", root / "run", [*TINY_TRAIN, "data=file", f"data.path={corpus}"]))
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


def test_non_ascii_argv_from_a_non_utf8_locale_is_decoded_as_utf8(tmp_path, run_app):
    escaped = "prime=Все".encode("utf-8").decode("ascii", "surrogateescape")  # how Python hands it over under LC_ALL=C
    assert escaped != "prime=Все" and decode_argv([escaped, "a=b"]) == ["prime=Все", "a=b"]
    latin1_file = "ckpt=caf\xe9.ckpt".encode("latin-1").decode("ascii", "surrogateescape")  # not UTF-8: left alone
    assert decode_argv([latin1_file]) == [latin1_file]
    # the real thing: Python without UTF-8 mode under the C locale
    r = run_app("sample", "prime=Все, мир", "--cfg", "job", cwd=tmp_path,
                env={"LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONIOENCODING": ""})
    assert r.returncode == 0, r.stderr
    assert OmegaConf.create(r.stdout).prime == "Все, мир"


def test_backslash_escapes_keep_non_ascii_and_a_bad_escape_is_a_clean_error(tmp_path, shakespeare_run, run_app):
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
    r = run_app("sample", f"ckpt={last_ckpt(shakespeare_run)}", "prime='\\xZZ'", "escapes=true", f"hydra.run.dir={tmp_path / 's'}")
    assert_user_error(r, "invalid backslash escape '\\xZZ' at character 0", "escapes=false")


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


def test_a_parse_error_on_the_command_line_is_one_line_and_exit_2(run_main):
    code, _, err = run_main("sample", "ckpt=x.ckpt", "temperature=0.5)")
    assert_user_error((code, err), "temperature=0.5)", "\"temperature='0.5)'\"")
    code, _, err = run_main("train", "optimizer.lr=1e-3,3e-3")
    assert_user_error((code, err), "needs -m (--multirun)")


def test_a_user_error_of_a_single_run_is_one_line_exit_2_and_recorded_as_failed(tmp_path, run_main):
    run_dir = tmp_path / "s"
    code, out, err = run_main("sample", f"ckpt={tmp_path / 'x.ckpt'}", "top_k=2.5", f"hydra.run.dir={run_dir}")
    assert_user_error((code, err), "top_k=2.5 must be an integer")
    status = OmegaConf.load(run_dir / "job_status.yaml")
    assert status.status == "FAILED" and status.error == "CharLMError: top_k=2.5 must be an integer >= 1 (or null: all characters)"
    # charlm's own message, not Hydra's "Error in call to target" wrapper around it
    code, out, err = run_main("train", "data=file", "logger=csv", f"hydra.run.dir={tmp_path / 't'}")
    assert_user_error((code, err), "no corpus given: set data.path=<text file>")
    code, out, err = run_main("eval", "ckpt=x", "batch_size=0", f"hydra.run.dir={tmp_path / 'e'}")
    assert_user_error((code, err), "batch_size=0 must be an integer >= 1")
    code, out, err = run_main("visualize", "ckpt=x", "device=gpu7", f"hydra.run.dir={tmp_path / 'v'}")
    assert_user_error((code, err), "device=gpu7 is not a device")
    code, out, err = run_main("sample", "top_kk=5")
    assert_user_error((code, err), "charlm-sample has no option top_kk")


def test_each_app_help_shows_its_own_options(run_main):
    for app, own in [("sample", ["top_k:", "prime_file:", "temperature:"]), ("eval", ["split:", "batch_size:"]),
                     ("visualize", ["max_chars:", "samples:"])]:
        code, out, _ = run_main(app, "--help")
        assert code == 0 and out.startswith(f"charlm-{app}:")
        for o in own:
            assert o in out, (app, o)
        for other in ("optimizer:", "trainer:", "Configuration groups", "hparams_search", "callbacks"):
            assert other not in out, (app, other)
        assert "Free text and paths" in out
        if app == "sample":  # greedy decoding is documented where temperature is
            assert "0 = greedy, which loops" in out and "top_k" in out
    code, out, _ = run_main("train", "--help")
    assert code == 0 and "model: gru, lstm, rnn" in out and "stop_after_steps:" in out


# ============================================================== free text through the real app
def test_each_reported_prime_samples_as_typed(model_run, tmp_path, run_main):
    ckpt = model_run / "checkpoints" / "last.ckpt"
    for i, prime in enumerate(REPORTED + ['[Exit] He said "a=b" #1, Все: (yes)']):
        code, out, err = run_main("sample", f"ckpt={ckpt}", f"prime={prime}", "length=5", f"hydra.run.dir={tmp_path / str(i)}")
        assert code == 0, err[-2000:]
        assert out.startswith(prime) and len(out) == len(prime) + 5 + 1, out
