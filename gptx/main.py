"""The one entry point: `python -m gptx.main <command> --config=configs/x.py[:arg] --workdir=DIR`.

Any config field can be overridden on the command line, e.g. `--config.train.steps=100`;
`python -m gptx.main --help` lists the commands, `python -m gptx.main CMD --help` describes one.
Exit status (README, "Exit codes"): 0 done, 1 a bug (traceback), 2 a user error (one line), 3 a diverged run,
75 stopped by SIGTERM after saving (rerun the same command to resume).
"""

from __future__ import annotations

import difflib
import logging as std_logging
import os
import re
import sys
import tempfile
import typing

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from gptx import config as config_lib
from gptx import fs, usage
from gptx import mesh as mesh_lib
from gptx.errors import (
    EXIT_BUG,
    EXIT_DIVERGED,
    EXIT_PREEMPTED,
    EXIT_USER_ERROR,
    ConfigError,
    DataError,
    InteropError,
    NonFiniteLossError,
    Preempted,
)

# Failures a user can fix (a bad config, unreadable data, an unconvertible checkpoint, a missing file): each ends
# the command with one line, `gptx: error: ...`, and exit status 2. A diverged run is one line and exit status 3,
# a run stopped by SIGTERM (after saving) one line and 75. Any other exception is a bug and keeps its traceback.
USER_ERRORS = (ConfigError, DataError, InteropError, FileNotFoundError)

_CONFIG = config_flags.DEFINE_config_file("config", None, "A config file: configs/NAME.py[:ARG].")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and reports.")
_STAGES = flags.DEFINE_list("stages", None, "demo: the stages to run, in order (default: all).")
_HF_DIR = flags.DEFINE_string("hf_dir", None, "convert: a Hugging Face GPT-2 / OpenAI GPT checkpoint directory.")
_DIRECTION = flags.DEFINE_enum(
    "direction", "import", ["import", "export"], "convert: import (HF -> workdir) or export (workdir -> HF)."
)
_PROMPTS = flags.DEFINE_multi_string("prompt", [], "sample: a prompt to continue (repeat the flag for a batch).")
flags.DEFINE_alias("checkpoint", "workdir")  # `sample --checkpoint=DIR` reads the latest checkpoint of a run
_ALLOW_PICKLE = flags.DEFINE_bool(
    "allow_pickle", False, "convert: read pickled pytorch_model.bin weights (pickles run code; trust the source)."
)


def _train(cfg, workdir: str) -> None:
    from gptx.train import pretrain

    if cfg.vision.task:  # configs/vision.py: contrastive or multimodal training
        from gptx.train import vision

        vision.run(cfg, workdir)  # prints accuracies, writes WORKDIR/vision_results.json
        return
    result = pretrain.run(cfg, workdir)
    if jax.process_index():
        return
    last = {k: v for row in result.history for k, v in row.items()}
    print(
        f"trained to step {int(result.state.step)}: loss {last.get('loss', float('nan')):.4f}, "
        f"eval loss {last.get('eval_loss', float('nan')):.4f}; checkpoints in {workdir}/checkpoints"
    )


def _tokenizer(cfg, workdir: str) -> None:
    from gptx.train import pretrain

    tok = pretrain.train_tokenizer(cfg, workdir)
    print(f"tokenizer with {tok.vocab_size} pieces -> {pretrain.tokenizer_path(cfg, workdir)}")


def _demo(cfg, workdir: str) -> None:
    from gptx import demo

    demo.run(cfg, workdir, _STAGES.value)


def _finetune(cfg, workdir: str) -> None:
    from gptx.train import finetune

    finetune.validate_finetune(cfg)
    finetune.run(cfg, workdir)  # prints dev accuracy per task, writes WORKDIR/finetune_results.json


def _sample(cfg, workdir: str) -> None:
    from gptx import sample
    from gptx.train import pretrain

    if not _PROMPTS.value:
        raise ConfigError("sample needs at least one --prompt=TEXT")
    model, params, tok = pretrain.load_trained(cfg, workdir)
    prompts = [tok.prompt(p) for p in _PROMPTS.value]
    longest = max(len(p) for p in prompts)
    if longest + cfg.sample.max_new_tokens > model.cfg.block_size:  # the run's own context (its config.json)
        raise ConfigError(
            f"a prompt of {longest} tokens + config.sample.max_new_tokens={cfg.sample.max_new_tokens} exceed "
            f"the model's context of {model.cfg.block_size} tokens"
        )
    sampling = sample.sampling_from_config(cfg.sample, tok.eos_id, tok.pad_id)
    mesh = mesh_lib.make_mesh(cfg.mesh)
    out = sample.generate(model, params, prompts, sampling, tokenizer=tok, batch_size=cfg.sample.batch_size, mesh=mesh)
    if jax.process_index() == 0:
        for prompt, text in zip(_PROMPTS.value, out.texts, strict=True):
            print(f"--- {prompt!r}\n{prompt}{text}")


def _prepare(cfg, workdir: str) -> None:
    from gptx.data import prepare

    if jax.process_index():  # one process prepares; the others would race on the same files
        return
    report = prepare.run(cfg, workdir)  # writes shards, report.json and summary.md to the output directory
    sh = report["shards"]
    print(
        f"prepared {sh['train_docs']:,} training and {sh['val_docs']:,} validation documents in "
        f"{sh['train_shards'] + sh['val_shards']} shards -> {report['output_dir']} (summary.md, report.json); "
        f"train with --config.data.corpus={report['output_dir']}"
    )


def _sft(cfg, workdir: str) -> None:
    from gptx.rlhf import sft

    sft.run(cfg, workdir)  # prints the validation loss, writes WORKDIR/sft_results.json


def _rm(cfg, workdir: str) -> None:
    from gptx.rlhf import reward

    reward.run(cfg, workdir)  # prints held-out pairwise accuracy, writes WORKDIR/rm_results.json


def _ppo(cfg, workdir: str) -> None:
    from gptx.rlhf import ppo_run

    ppo_run.run(cfg, workdir)  # prints RM/labeler scores of PPO vs SFT samples, writes WORKDIR/ppo_results.json


def _scaling(cfg, workdir: str, action: str) -> None:
    from gptx import scaling

    scaling.run_command(cfg, workdir, action)


def _aot(cfg, workdir: str) -> None:
    from gptx import aot

    analyze = None
    if cfg.rlhf.stage == "ppo":  # InstructGPT's PPO iteration: four models, scoring and the update
        from gptx.rlhf import aot as rlhf_aot

        analyze = rlhf_aot.analyze
    aot.run(
        cfg, workdir, analyze
    )  # prints the memory table, writes WORKDIR/aot_report.json; ConfigError when it won't fit


def _eval(cfg, workdir: str) -> None:
    from gptx.eval import command

    command.run(cfg, workdir)  # prints the table, writes WORKDIR/eval_results.json (config.eval.output)


def _convert(cfg, workdir: str) -> None:
    from gptx.interop import workdir as convert

    if not _HF_DIR.value:
        raise FileNotFoundError("convert needs --hf_dir=PATH (the Hugging Face checkpoint directory)")
    if _DIRECTION.value == "export":
        info = convert.export_checkpoint(cfg, workdir, _HF_DIR.value)
        if jax.process_index() == 0:
            print(f"exported the latest checkpoint of {workdir} as {info['architecture']} -> {_HF_DIR.value}")
        return
    new, info = convert.import_checkpoint(cfg, _HF_DIR.value, workdir, allow_pickle=_ALLOW_PICKLE.value)
    if jax.process_index():
        return
    m, tok = new.model, info["tokenizer"]
    print(
        f"imported {info['architecture']} ({m.n_layer} layers, d_model {m.d_model}, vocab {m.vocab_size}; "
        f"bos {info['bos_token_id']}, eos {info['eos_token_id']}) -> {workdir}/checkpoints"
    )
    differs = f" (differs from --config in {' '.join(info['overrides'])})" if info["overrides"] else ""
    print(f"config: model from {_HF_DIR.value}/config.json{differs} -> {workdir}/config.json, read by later commands")
    if tok is None:
        print(f"tokenizer: none in {_HF_DIR.value}; pass --config.data.tokenizer=PATH to sample, eval or train")
        return
    bos = "BOS before each prompt and document" if tok["add_bos"] else "no BOS before prompts or documents"
    print(f"tokenizer: {tok['kind']}, {tok['vocab_size']} ids, {bos}, from {tok['source']} -> {tok['path']}")


def _flat(d: dict, prefix: str = "") -> typing.Iterator[tuple[str, object]]:
    for key, value in d.items():
        if isinstance(value, dict) and value:
            yield from _flat(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _config(cfg, workdir: str | None) -> None:
    """Prints every key of the validated config, `key = value`, noting the schema default where it differs."""
    defaults = dict(_flat(config_lib.default().to_dict()))
    print(f"# {_config_spec(sys.argv) or 'config'}, validated; override any key with --config.KEY=VALUE")
    for key, value in _flat(cfg.to_dict()):
        differs = key in defaults and defaults[key] != value
        print(f"{key} = {value!r}" + (f"  # default: {defaults[key]!r}" if differs else ""))


COMMANDS = {
    "train": _train,
    "tokenizer": _tokenizer,
    "demo": _demo,
    "finetune": _finetune,
    "prepare": _prepare,  # GPT-3 data pipeline: config.data_prep -> ArrayRecord shards
    "sample": _sample,
    "scaling": _scaling,  # takes an action: sweep | fit | predict
    "convert": _convert,
    "eval": _eval,  # in-context learning: config.eval.tasks at config.eval.shots demonstrations
    "aot": _aot,  # compiles for config.aot.topology, not for this machine's devices
    "sft": _sft,  # InstructGPT: supervised fine-tuning on demonstrations
    "rm": _rm,  # InstructGPT: reward model on K-choose-2 comparisons
    "ppo": _ppo,  # InstructGPT: PPO-ptx against the reward model
    "config": _config,  # prints the resolved config; starts no devices, needs no workdir
}
NO_WORKDIR = {"config"}  # commands that neither read nor write a workdir
NO_DEVICES = {"config", "aot"}  # aot checks the mesh against its target topology instead of this machine's devices
USAGE, HELP = usage.USAGE, usage.HELP


def main(argv: list[str]) -> None:
    command, args = (argv[1], argv[2:]) if len(argv) > 1 else (None, [])
    _check_command(command)
    if command == "scaling" and len(args) != 1:
        _fail("scaling takes one action: sweep | fit | predict", EXIT_USER_ERROR)
    if command != "scaling" and args:
        _fail(f"{command} takes no positional arguments, got {' '.join(args)}", EXIT_USER_ERROR)
    missing = ["--config"] if _CONFIG.value is None else []
    missing += ["--workdir"] if command not in NO_WORKDIR and not _WORKDIR.value else []
    if missing:
        _fail(f"{command} needs {' and '.join(missing)} (python -m gptx.main {command} --help)", EXIT_USER_ERROR)
    _quiet_library_logs()
    cfg = _CONFIG.value
    try:
        config_lib.validate(cfg)  # keys and shapes first: a typo should not wait for device start-up
        if command not in NO_WORKDIR:
            check_workdir(_WORKDIR.value)
        if command not in NO_DEVICES:
            mesh_lib.initialize_distributed(cfg.mesh)
            config_lib.validate(cfg, jax.device_count())
        COMMANDS[command](cfg, _WORKDIR.value, *args)
    except Preempted as e:
        print(f"gptx: {e}", file=sys.stderr)
        sys.exit(EXIT_PREEMPTED)
    except NonFiniteLossError as e:
        _fail(e, EXIT_DIVERGED)
    except USER_ERRORS as e:
        _fail(e, EXIT_USER_ERROR)


def _fail(e: BaseException | str, status: int) -> typing.NoReturn:
    """Ends the process with one line naming what is wrong, not a traceback."""
    print(f"gptx: error: {e}", file=sys.stderr)
    sys.exit(status)


def _check_command(command: str | None) -> None:
    """One line listing the commands for a missing or unknown command (not absl's help dump)."""
    line = f"usage: python -m gptx.main <{'|'.join(COMMANDS)}> --config=configs/NAME.py[:ARG] --workdir=DIR"
    if command is None:
        _fail(f"no command given; {line}", EXIT_USER_ERROR)
    if command not in COMMANDS:
        close = difflib.get_close_matches(command, COMMANDS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        _fail(f"unknown command {command!r}{hint}; {line}", EXIT_USER_ERROR)


def check_workdir(workdir: str) -> None:
    """ConfigError naming the workdir when it is a file, or cannot be created or written (locally or in a bucket).

    Runs before devices start: an unusable workdir should not cost the start-up, nor fail at the first save.
    """
    if fs.is_remote(workdir):
        _check_remote_workdir(workdir)
        return
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ConfigError(f"--workdir={workdir} is a file, not a directory")
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as e:
        files = [p for p in _parents(workdir) if os.path.exists(p) and not os.path.isdir(p)]
        why = f"{files[0]} is a file" if files else e.strerror
        raise ConfigError(f"--workdir={workdir} cannot be created: {why}") from e
    try:
        fd, probe = tempfile.mkstemp(prefix=".gptx-write-check-", dir=workdir)  # os.access() is no proof as root
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise ConfigError(f"--workdir={workdir} is not writable: {e.strerror}") from e


def _check_remote_workdir(workdir: str) -> None:
    """A URL workdir (gs://bucket/run): its endpoint answers, its bucket exists, and an object can be written
    there; each failure is one line within seconds (fs.check_endpoint), not a hang at the first checkpoint."""
    if fs.scheme(workdir) not in fs.SCHEMES:
        raise ConfigError(f"--workdir={workdir}: {fs.scheme(workdir)}:// is not supported; use gs:// or a local path")
    try:
        is_object = fs.isfile(workdir)
        probe = fs.join(workdir, f".gptx-write-check-{os.getpid()}")
        if not is_object:
            fs.write_atomic(probe, b"")
            fs.remove(probe)
    except FileNotFoundError as e:  # the bucket: "<probe> not found: bucket gs://b does not exist"
        raise ConfigError(f"--workdir={workdir}: {str(e).split(': ', 1)[-1]}") from None
    except (PermissionError, fs.StorageError) as e:
        raise ConfigError(f"--workdir={workdir}: {str(e).removeprefix(f'{workdir}: ')}") from None
    if is_object:
        raise ConfigError(f"--workdir={workdir} is an object, not a directory")


def _parents(path: str) -> list[str]:
    """The directories above `path`, nearest first."""
    out, path = [], os.path.abspath(path)
    while os.path.dirname(path) != path:
        path = os.path.dirname(path)
        out.append(path)
    return out


# Library INFO lines (orbax, absl, jax: hundreds per command) would bury the progress bar. Unless the user sets
# --verbosity, they are dropped; gptx's own INFO lines and every WARNING or worse still reach stderr.
_GPTX_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


class _LibraryInfoFilter(std_logging.Filter):
    def filter(self, record: std_logging.LogRecord) -> bool:
        return record.levelno >= std_logging.WARNING or os.path.abspath(record.pathname).startswith(_GPTX_DIR)


_LIBRARY_INFO_FILTER = _LibraryInfoFilter()


def _quiet_library_logs() -> None:
    handler = logging.get_absl_handler()
    if flags.FLAGS["verbosity"].present:
        handler.removeFilter(_LIBRARY_INFO_FILTER)
    else:
        handler.addFilter(_LIBRARY_INFO_FILTER)  # no-op when already there


def _unknown_override(e: AttributeError | KeyError, argv: list[str]) -> str | None:
    """The message for a `--config.*` override of a key the config lacks, or None when `e` is something else.

    ml_collections raises AttributeError (`'stepz'\\nDid you mean "steps" ...`) or KeyError (`'trian'` ...,
    `... Attempting to lookup: model.n_layer.x`) for these; `e` counts only when the key it names is part of an
    override on the command line, so that a bug in a config file's `get_config` keeps its traceback.
    """
    text = str(e.args[0]) if e.args else ""
    overrides = [a[len("--config.") :].split("=", 1)[0] for a in argv if a.startswith("--config.")]
    found = re.search(r"Attempting to lookup: (\S+)", text) or re.search(r"'([^'\\]+)\\?'", text)
    if found is None:
        return None
    key = found.group(1)
    override = next((o for o in overrides if key == o or key in o.split(".")), None)
    if override is None:
        return None
    hint = re.search(r"Did you mean [^?]*\?", text)
    return f"unknown config key {key!r} in the override --config.{override}" + (f"; {hint.group(0)}" if hint else "")


_HELP_FLAGS = ("-h", "-help", "--help", "--helpshort", "-?")


def _config_spec(argv: list[str]) -> str | None:
    """The value of the last --config flag in argv (`--config=X` or `--config X`), or None."""
    spec = None
    for i, arg in enumerate(argv):
        if re.fullmatch(r"--?config", arg) and i + 1 < len(argv):
            spec = argv[i + 1]
        elif re.match(r"--?config=", arg):
            spec = arg.split("=", 1)[1]
    return spec


def _before_parsing(argv: list[str]) -> None:
    """Help, an unknown command and a missing config file, before absl parses flags and loads the config."""
    args = argv[1 : argv.index("--")] if "--" in argv else argv[1:]
    first = args[0] if args and not args[0].startswith("-") else None
    if first == "help":  # `gptx help [CMD]`
        args, first = [*args[1:], "--help"], (args[1] if len(args) > 1 else None)
    if any(a in _HELP_FLAGS for a in args):
        if first is None:
            print(usage.overview(COMMANDS))
        else:
            _check_command(first)
            print(f"{first}: {HELP[first][0]}\n\n{HELP[first][1]}")
        sys.exit(0)
    if first is not None:
        _check_command(first)
    spec = _config_spec(argv)
    if spec:
        path = spec.split(":", 1)[0]
        if not os.path.isfile(path):
            here = sorted(f for f in os.listdir("configs") if f.endswith(".py")) if os.path.isdir("configs") else []
            listed = f"; config files in configs/: {', '.join(here)}" if here else ""
            _fail(f"--config={spec}: no such config file {path}{listed}", EXIT_USER_ERROR)


def _config_error(e: BaseException) -> ConfigError | None:
    """The innermost ConfigError that a config file's get_config raised, under absl's and ml_collections' wrappers."""
    found = None
    while e is not None:
        if isinstance(e, ConfigError):
            found = e
        e = e.__cause__ or e.__context__
    return found


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing (which loads --config and applies its overrides), with user errors in one line.

    Only this phase maps AttributeError/KeyError to a config message; raised inside a command they are bugs.
    """
    _before_parsing(argv)
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        config_error = _config_error(e)
        if config_error is not None:  # e.g. a size the config file's table lacks
            _fail(config_error, EXIT_USER_ERROR)
        if str(e).startswith("flag --config="):  # any other failure inside a config file: a bug, with its traceback
            print(f"FATAL Flags parsing error: {e}", file=sys.stderr)
            sys.exit(EXIT_BUG)
        _fail(e, EXIT_USER_ERROR)  # an unknown flag, a bad flag value
    except (AttributeError, KeyError) as e:
        message = _unknown_override(e, argv)
        if message is None:
            raise
        _fail(message, EXIT_USER_ERROR)


def run() -> None:
    """Console-script entry point (`gptx <command> ...`)."""
    app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    run()
