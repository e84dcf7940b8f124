"""`gptx.main`: a bad override or a user error is one line and an exit status; a bug keeps its traceback."""

import subprocess
import sys
import textwrap

import pytest
from conftest import REPO

from gptx import errors
from gptx import main as main_lib


def run_python(code: str, *argv: str) -> subprocess.CompletedProcess:
    """`python -c CODE ARGV...` from the repo root, one CPU device."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)},
    )


def test_typo_override_is_one_line_exit_2(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "gptx.main", "train", "--config=configs/demo.py", f"--workdir={tmp_path}",
         "--config.train.stepz=3"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
        env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines() == [
        "gptx: error: unknown config key 'stepz' in the override --config.train.stepz; "
        'Did you mean "steps" instead of "stepz"?'
    ]
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize(
    ("override", "key"),
    [("--config.trian.steps=3", "'trian'"), ("--config.model.n_layer.x=3", "'model.n_layer.x'")],
)
def test_other_bad_overrides_are_one_line(monkeypatch, capsys, tmp_path, override, key):
    monkeypatch.setattr(sys, "argv", ["gptx", "train", "--config=configs/demo.py", f"--workdir={tmp_path}", override])
    monkeypatch.chdir(REPO)
    with pytest.raises(SystemExit) as exit_:
        main_lib.run()
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"gptx: error: unknown config key {key} in the override"), err


# A bug inside a command: ml_collections-like wording must not turn it into a config-key message.
BUGS = [
    "AttributeError('boom')",
    "AttributeError(\"'NoneType' object has no attribute 'shape'\")",
    "KeyError('\\'tokens\\'\\nDid you mean \"token\" instead of \"tokens\"?')",
]


@pytest.mark.parametrize("bug", BUGS)
def test_bug_in_a_command_keeps_its_traceback(monkeypatch, tmp_path, bug):
    def command(cfg, workdir):
        raise eval(bug)

    monkeypatch.setitem(main_lib.COMMANDS, "train", command)
    monkeypatch.setattr(sys, "argv", ["gptx", "train", "--config=configs/demo.py", f"--workdir={tmp_path}"])
    monkeypatch.chdir(REPO)
    with pytest.raises(type(eval(bug))) as raised:
        main_lib.run()
    assert raised.value.args == eval(bug).args
    assert raised.traceback[-1].name == "command"


def test_bug_in_a_command_prints_its_traceback_on_the_cli(tmp_path):
    out = run_python(
        f"""
        import sys
        from gptx import main

        def train(cfg, workdir):
            raise {BUGS[1]}

        main.COMMANDS["train"] = train
        main.run()
        """,
        "train",
        "--config=configs/demo.py",
        f"--workdir={tmp_path}",
    )
    assert out.returncode == 1
    assert "Traceback (most recent call last)" in out.stderr
    assert out.stderr.strip().splitlines()[-1] == "AttributeError: 'NoneType' object has no attribute 'shape'"
    assert "gptx: error" not in out.stderr and "unknown config key" not in out.stderr


def test_bug_in_a_config_file_keeps_its_traceback(tmp_path):
    config = tmp_path / "buggy.py"
    config.write_text(
        "from gptx import config\n\n\ndef get_config():\n    c = config.default()\n    c.model.n_layers += 1\n"
        "    return c\n"
    )
    out = run_python(
        "from gptx import main; main.run()", "train", f"--config={config}", f"--workdir={tmp_path}",
        "--config.model.n_layer=3",
    )  # fmt: skip
    assert out.returncode == 1 and "Traceback (most recent call last)" in out.stderr, out.stderr
    assert "n_layers" in out.stderr and "unknown config key" not in out.stderr


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (errors.ConfigError("config.train.steps=0 must be positive"), 2),
        (errors.DataError("corpus.txt: line 3 (byte 7) is not valid UTF-8"), 2),
        (errors.InteropError("hf/config.json: activation_function='relu' is not supported"), 2),
        (FileNotFoundError("no checkpoint in /tmp/nowhere/checkpoints"), 2),
        (errors.NonFiniteLossError("loss is nan at step 12; kept checkpoint 10"), 3),
    ],
)
def test_user_error_in_a_command_is_one_line(monkeypatch, capsys, tmp_path, error, status):
    def command(cfg, workdir):
        raise error

    monkeypatch.setitem(main_lib.COMMANDS, "train", command)
    monkeypatch.setattr(sys, "argv", ["gptx", "train", "--config=configs/demo.py", f"--workdir={tmp_path}"])
    monkeypatch.chdir(REPO)
    with pytest.raises(SystemExit) as exit_:
        main_lib.run()
    assert exit_.value.code == status
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == f"gptx: error: {error}"
    assert "Traceback" not in err


def test_config_error_in_a_command_on_the_cli(tmp_path):
    out = run_python(
        """
        from gptx import main
        from gptx.errors import ConfigError

        def train(cfg, workdir):
            raise ConfigError("config.train.steps=0 must be positive")

        main.COMMANDS["train"] = train
        main.run()
        """,
        "train",
        "--config=configs/demo.py",
        f"--workdir={tmp_path}",
    )
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert [line for line in out.stderr.splitlines() if "gptx: error:" in line] == [
        "gptx: error: config.train.steps=0 must be positive"
    ]
    assert out.stderr.strip().splitlines()[-1] == "gptx: error: config.train.steps=0 must be positive"
    assert out.stderr.count("config.train.steps=0 must be positive") == 1  # printed once, not logged as well


def test_preempted_run_says_how_to_resume_and_exits_75(monkeypatch, capsys, tmp_path):
    def command(cfg, workdir):
        raise errors.Preempted(31)

    monkeypatch.setitem(main_lib.COMMANDS, "train", command)
    monkeypatch.setattr(sys, "argv", ["gptx", "train", "--config=configs/demo.py", f"--workdir={tmp_path}"])
    monkeypatch.chdir(REPO)
    with pytest.raises(SystemExit) as exit_:
        main_lib.run()
    assert exit_.value.code == errors.EXIT_PREEMPTED == 75
    assert capsys.readouterr().err.strip().splitlines() == [
        "gptx: stopped at step 31 by SIGTERM; rerun the same command to resume"
    ]


def test_error_types_live_in_one_module():
    from gptx import config, interop
    from gptx.data import sources

    assert config.ConfigError is errors.ConfigError and issubclass(errors.ConfigError, ValueError)
    assert sources.DataError is errors.DataError and issubclass(errors.DataError, ValueError)
    assert interop.InteropError is errors.InteropError and issubclass(errors.InteropError, ValueError)
    assert issubclass(errors.NonFiniteLossError, RuntimeError)
    user_errors = set(main_lib.USER_ERRORS)  # exit 2; a diverged run (3) and a preempted one (75) are not mistakes
    assert user_errors == {errors.ConfigError, errors.DataError, errors.InteropError, FileNotFoundError}
    assert (errors.EXIT_BUG, errors.EXIT_USER_ERROR, errors.EXIT_DIVERGED, errors.EXIT_PREEMPTED) == (1, 2, 3, 75)
