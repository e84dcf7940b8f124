"""The one entry point: `python -m gptx.main <command> --config=configs/x.py[:arg] --workdir=DIR`.

Any config field can be overridden on the command line, e.g. `--config.train.steps=100`.
"""

from __future__ import annotations

import re
import sys
import typing

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from gptx import config as config_lib
from gptx import mesh as mesh_lib
from gptx.errors import ConfigError, DataError, InteropError, NonFiniteLossError

# Failures a user can fix (a bad config, unreadable data, an unconvertible checkpoint, a missing file) and a
# diverged run: each ends the command with one line, `gptx: error: ...`, and exit status 2 (1 for a diverged run).
# Any other exception is a bug and keeps its traceback.
USER_ERRORS = (ConfigError, DataError, InteropError, FileNotFoundError, NonFiniteLossError)

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
    prompts = [[tok.bos_id, *tok.encode(p)] for p in _PROMPTS.value]
    longest = max(len(p) for p in prompts)
    if longest + cfg.sample.max_new_tokens > cfg.model.block_size:
        raise ConfigError(
            f"a prompt of {longest} tokens + config.sample.max_new_tokens={cfg.sample.max_new_tokens} exceed "
            f"the context config.model.block_size={cfg.model.block_size}"
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

    aot.run(cfg, workdir)  # prints the memory table, writes WORKDIR/aot_report.json; ConfigError when it won't fit


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
    overrides = " ".join(info["overrides"]) or "(none)"
    print(
        f"note: config.model was overwritten from {_HF_DIR.value}/config.json; to train or sample from this "
        f"checkpoint pass {overrides}. HF's BPE vocabulary is not converted (gptx tokenizers are SentencePiece)"
    )
    print(
        f"imported {info['architecture']} ({new.model.n_layer} layers, d_model {new.model.d_model}, vocab "
        f"{new.model.vocab_size}; bos {info['bos_token_id']}, eos {info['eos_token_id']}) -> {workdir}/checkpoints"
    )


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
}


def main(argv: list[str]) -> None:
    usage = f"usage: python -m gptx.main <{'|'.join(COMMANDS)}> --config=configs/NAME.py[:ARG] --workdir=DIR"
    takes_action = len(argv) > 1 and argv[1] == "scaling"
    if len(argv) != 2 + takes_action or argv[1] not in COMMANDS:
        raise app.UsageError(usage + ("\n  scaling takes an action: sweep | fit | predict" if takes_action else ""))
    if _CONFIG.value is None or _WORKDIR.value is None:
        raise app.UsageError(f"--config and --workdir are required\n{usage}")
    cfg = _CONFIG.value
    try:
        config_lib.validate(cfg)  # keys and shapes first: a typo should not wait for device start-up
        if argv[1] != "aot":  # aot checks the mesh against its target topology instead
            mesh_lib.initialize_distributed(cfg.mesh)
            config_lib.validate(cfg, jax.device_count())
        COMMANDS[argv[1]](cfg, _WORKDIR.value, *argv[2:])
    except USER_ERRORS as e:
        logging.error("%s", e)  # into the run's log too (absl logging starts once flags are parsed)
        _fail(e, 1 if isinstance(e, NonFiniteLossError) else 2)


def _fail(e: BaseException | str, status: int) -> typing.NoReturn:
    """Ends the process with one line naming what is wrong, not a traceback."""
    print(f"gptx: error: {e}", file=sys.stderr)
    sys.exit(status)


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


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing (which loads --config and applies its overrides), with bad overrides in one line.

    Only this phase maps AttributeError/KeyError to a config message; raised inside a command they are bugs.
    """
    try:
        return app.parse_flags_with_usage(argv)
    except (AttributeError, KeyError) as e:
        message = _unknown_override(e, argv)
        if message is None:
            raise
        _fail(message, 2)


def run() -> None:
    """Console-script entry point (`gptx <command> ...`)."""
    app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    run()
