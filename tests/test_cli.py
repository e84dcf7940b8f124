"""The command line as a user and a job scheduler meet it: help that exits 0, one line per user error naming what
is wrong (exit 2), a workdir refused before devices start, exit codes 3 and 75, library INFO lines off by default.

Every call here is a real `python -m gptx.main` process from the repo root; none of them trains.
"""

import os
import subprocess
import sys
import textwrap

import pytest
from conftest import REPO, load_config

from gptx import config as config_lib
from gptx import errors
from gptx import main as main_lib

ENV = {"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}


def gptx(*argv: str, cwd=REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gptx.main", *argv], cwd=cwd, capture_output=True, text=True, timeout=300, env=ENV
    )


def one_error_line(out: subprocess.CompletedProcess) -> str:
    """The single stderr line of a user error (exit 2), without its `gptx: error: ` prefix."""
    lines = out.stderr.strip().splitlines()
    assert out.returncode == errors.EXIT_USER_ERROR, out.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("gptx: error: "), out.stderr[-3000:]
    assert out.stdout == ""
    return lines[0][len("gptx: error: ") :]


# ------------------------------------------------------------------------------------------------------ help


def test_help_lists_every_command_with_one_line_each():
    out = gptx("--help")
    assert out.returncode == 0 and out.stderr == "", out.stderr
    lines = out.stdout.splitlines()
    for name in main_lib.COMMANDS:
        described = [line for line in lines if line.split()[:1] == [name]]
        assert len(described) == 1 and main_lib.HELP[name][0] in described[0], name
    assert "--verbosity" in out.stdout and "Exit codes" in out.stdout


def test_command_help_describes_the_command():
    out = gptx("train", "--help")
    assert out.returncode == 0 and out.stderr == "", out.stderr
    assert out.stdout.startswith(f"train: {main_lib.HELP['train'][0]}")
    assert "configs/gpt3.py:125m|350m" in out.stdout and "exits 75" in out.stdout


@pytest.mark.parametrize("command", sorted(main_lib.COMMANDS))
def test_every_command_has_its_own_help(monkeypatch, capsys, command):
    """`CMD --help` (and `help CMD`) print that command's usage and config files, and exit 0, for every command."""
    assert set(main_lib.HELP) == set(main_lib.COMMANDS)
    monkeypatch.chdir(REPO)
    for argv in (["gptx", command, "--help"], ["gptx", "help", command]):
        monkeypatch.setattr(sys, "argv", argv)
        with pytest.raises(SystemExit) as exit_:
            main_lib.run()
        assert exit_.value.code == 0
        text = capsys.readouterr().out
        assert text.startswith(f"{command}: ") and f"python -m gptx.main {command}" in text
        assert "config" in text.split("usage:", 1)[1]


# ------------------------------------------------------------------------------------------ one-line errors


def test_unknown_command_is_one_line_listing_the_commands():
    line = one_error_line(gptx("trian", "--config=configs/demo.py", "--workdir=/tmp/unused"))
    assert line.startswith("unknown command 'trian' (did you mean 'train'?)")
    assert f"<{'|'.join(main_lib.COMMANDS)}>" in line


def test_no_command_is_one_line():
    assert one_error_line(gptx("--config=configs/demo.py")).startswith("no command given")


def test_missing_config_file_is_one_line_naming_it(tmp_path):
    line = one_error_line(gptx("train", "--config=configs/demoo.py", f"--workdir={tmp_path}"))
    assert line.startswith("--config=configs/demoo.py: no such config file configs/demoo.py")
    assert "demo.py" in line.split("config files in configs/:")[1]
    assert list(tmp_path.iterdir()) == []


def test_unknown_size_is_one_line_listing_the_sizes(tmp_path):
    line = one_error_line(gptx("train", "--config=configs/gpt3.py:350M", f"--workdir={tmp_path}"))
    assert line == "configs/gpt3.py has no size '350M'; sizes: 125m, 350m, 760m, 1.3b, 2.7b, 6.7b, 13b, 175b"


@pytest.mark.parametrize(("name", "arg"), [("gpt1", "gpt-1"), ("gpt2", "124M"), ("gpt3", "350"), ("scaling", "huge")])
def test_every_size_table_names_its_keys(name, arg):
    """A size or preset a config file lacks is a ConfigError listing the valid ones, not a bare KeyError."""
    with pytest.raises(errors.ConfigError, match=rf"configs/{name}.py has no (size|preset) '{arg}'; (sizes|presets): "):
        load_config(name, arg)


def test_config_error_is_printed_once(tmp_path):
    out = gptx("train", "--config=configs/demo.py", f"--workdir={tmp_path}", "--config.train.steps=0")
    assert one_error_line(out) == "config.train.steps=0 must be positive"


def test_missing_workdir_is_one_line():
    assert one_error_line(gptx("train", "--config=configs/demo.py")) == (
        "train needs --workdir (python -m gptx.main train --help)"
    )


# ---------------------------------------------------------------------------------------------------- config


def test_config_prints_every_key_after_overrides():
    out = gptx("config", "--config=configs/gpt3.py:350m", "--config.train.steps=7")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("# configs/gpt3.py:350m")
    values = dict(line.split(" = ", 1) for line in lines[1:])
    schema = dict(main_lib._flat(config_lib.default().to_dict()))
    assert set(schema) <= set(values)  # every key, not only the ones the file sets
    assert values["train.steps"].startswith("7  # default: ")
    assert values["model.n_layer"].startswith("24  # default: ")
    assert values["model.arch"].startswith("'gpt3'")
    assert values["data.seed"] == repr(schema["data.seed"])  # a default value carries no note


def test_config_validates_before_printing():
    assert one_error_line(gptx("config", "--config=configs/demo.py", "--config.model.n_head=5")).startswith(
        "config.model.d_model="
    )


# --------------------------------------------------------------------------------------------------- workdir


def test_workdir_that_is_a_file_is_one_line(tmp_path):
    file = tmp_path / "run"
    file.write_text("not a directory")
    assert one_error_line(gptx("train", "--config=configs/demo.py", f"--workdir={file}")) == (
        f"--workdir={file} is a file, not a directory"
    )
    # under a file: mkdir fails (for root too), and the line names the file in the way
    assert one_error_line(gptx("train", "--config=configs/demo.py", f"--workdir={file}/sub/run")) == (
        f"--workdir={file}/sub/run cannot be created: {file} is a file"
    )
    assert file.read_text() == "not a directory"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a chmod 0o555 directory; see the /proc test below")
def test_read_only_workdir_is_one_line(tmp_path):
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o555)
    try:
        line = one_error_line(gptx("train", "--config=configs/demo.py", f"--workdir={tmp_path}/ro"))
        assert line == f"--workdir={tmp_path}/ro is not writable: Permission denied"
        line = one_error_line(gptx("train", "--config=configs/demo.py", f"--workdir={tmp_path}/ro/run"))
        assert line == f"--workdir={tmp_path}/ro/run cannot be created: Permission denied"
    finally:
        (tmp_path / "ro").chmod(0o755)


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux procfs")
def test_directory_that_refuses_new_files_is_one_line():
    """/proc/self exists and is a directory, but no one (root included) can create a file in it."""
    assert one_error_line(gptx("train", "--config=configs/demo.py", "--workdir=/proc/self")).startswith(
        "--workdir=/proc/self is not writable: "
    )


@pytest.mark.parametrize("url", ["gs://bucket/run", "ftp://bucket/run"])
def test_remote_workdir_that_cannot_be_used_is_one_line_not_created_locally(tmp_path, url):
    """gs:// workdirs are used in place (tests/test_gcs.py); here no endpoint answers (or the scheme is unknown)."""
    env = {**ENV, "STORAGE_EMULATOR_HOST": "http://127.0.0.1:9"}  # the discard port: nothing listens
    out = subprocess.run(
        [sys.executable, "-m", "gptx.main", f"--config={REPO}/configs/demo.py", "train", f"--workdir={url}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert one_error_line(out).startswith(f"--workdir={url}: ")
    assert list(tmp_path.iterdir()) == []  # no ./gs:/bucket/run


def test_config_needs_no_workdir(tmp_path):
    out = gptx("config", f"--config={REPO}/configs/demo.py", f"--workdir={tmp_path}/run", cwd=tmp_path)
    assert out.returncode == 0 and "model.n_layer = " in out.stdout, out.stderr
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------------------- exit codes, logs


def run_command(body: str, *argv: str) -> subprocess.CompletedProcess:
    """`gptx.main` with its `train` command replaced by `def train(cfg, workdir): BODY`."""
    code = f"from gptx import main, errors\n\ndef train(cfg, workdir):\n{textwrap.indent(body, '    ')}\n\n"
    code += 'main.COMMANDS["train"] = train\nmain.run()\n'
    return subprocess.run(
        [sys.executable, "-c", code, "train", "--config=configs/demo.py", *argv],
        cwd=REPO, capture_output=True, text=True, timeout=300, env=ENV,
    )  # fmt: skip


def test_diverged_run_exits_3_and_preempted_run_exits_75(tmp_path):
    diverge = 'raise errors.NonFiniteLossError("loss is nan at step 5; kept checkpoint 4")'
    out = run_command(diverge, f"--workdir={tmp_path}")
    assert out.returncode == errors.EXIT_DIVERGED == 3
    assert out.stderr.strip().splitlines() == ["gptx: error: loss is nan at step 5; kept checkpoint 4"]

    out = run_command("raise errors.Preempted(12)", f"--workdir={tmp_path}")
    assert out.returncode == errors.EXIT_PREEMPTED == 75
    assert out.stderr.strip().splitlines() == ["gptx: stopped at step 12 by SIGTERM; rerun the same command to resume"]


LOG_LINES = """
import logging
from absl import logging as absl_logging
from gptx import scaling

absl_logging.info("library info line")  # this file is not gptx's: as orbax's and jax's INFO lines
absl_logging.warning("library warning line")
record = logging.makeLogRecord(dict(levelno=logging.INFO, levelname="INFO", msg="gptx info line",
                                    pathname=scaling.__file__, name="absl"))
logging.getLogger("absl").handle(record)
print("done")
"""


def test_library_info_lines_are_off_unless_verbosity_is_set(tmp_path):
    quiet = run_command(LOG_LINES, f"--workdir={tmp_path}")
    assert quiet.returncode == 0 and quiet.stdout == "done\n", quiet.stderr
    assert "library info line" not in quiet.stderr
    assert "library warning line" in quiet.stderr and "gptx info line" in quiet.stderr

    verbose = run_command(LOG_LINES, f"--workdir={tmp_path}", "--verbosity=0")
    assert verbose.returncode == 0, verbose.stderr
    assert all(line in verbose.stderr for line in ("library info line", "library warning line", "gptx info line"))


def test_scaling_fit_with_too_few_runs_is_one_line(tmp_path):
    line = one_error_line(gptx("scaling", "fit", "--config=configs/scaling.py:tiny", f"--workdir={tmp_path}"))
    assert line.startswith(f"scaling fit: 0 finished runs in {tmp_path}/results.jsonl, the compute law has 3 ")
