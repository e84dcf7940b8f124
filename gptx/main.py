"""The one entry point: `python -m gptx.main <command> --config=configs/x.py[:arg] --workdir=DIR`.

Any config field can be overridden on the command line, e.g. `--config.train.steps=100`.
"""

from __future__ import annotations

import re
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from gptx import config as config_lib
from gptx import mesh as mesh_lib
from gptx.data.sources import DataError
from gptx.interop import InteropError
from gptx.train.loop import NonFiniteLossError

_CONFIG = config_flags.DEFINE_config_file("config", None, "A config file: configs/NAME.py[:ARG].")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and reports.")
_STAGES = flags.DEFINE_list("stages", None, "demo: the stages to run, in order (default: all).")
_HF_DIR = flags.DEFINE_string("hf_dir", None, "convert: a Hugging Face GPT-2 / OpenAI GPT checkpoint directory.")
_DIRECTION = flags.DEFINE_enum(
    "direction", "import", ["import", "export"], "convert: import (HF -> workdir) or export (workdir -> HF)."
)
_ALLOW_PICKLE = flags.DEFINE_bool(
    "allow_pickle", False, "convert: read pickled pytorch_model.bin weights (pickles run code; trust the source)."
)


def _train(cfg, workdir: str) -> None:
    from gptx.train import pretrain

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


def _scaling(cfg, workdir: str, action: str) -> None:
    from gptx import scaling

    scaling.run_command(cfg, workdir, action)


def _convert(cfg, workdir: str) -> None:
    from gptx.interop import hf

    if not _HF_DIR.value:
        raise FileNotFoundError("convert needs --hf_dir=PATH (the Hugging Face checkpoint directory)")
    if _DIRECTION.value == "export":
        info = hf.export_checkpoint(cfg, workdir, _HF_DIR.value)
        if jax.process_index() == 0:
            print(f"exported the latest checkpoint of {workdir} as {info['architecture']} -> {_HF_DIR.value}")
        return
    new, info = hf.import_checkpoint(cfg, _HF_DIR.value, workdir, allow_pickle=_ALLOW_PICKLE.value)
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
    "scaling": _scaling,  # takes an action: sweep | fit | predict
    "convert": _convert,
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
        mesh_lib.initialize_distributed(cfg.mesh)
        config_lib.validate(cfg, jax.device_count())
        COMMANDS[argv[1]](cfg, _WORKDIR.value, *argv[2:])
    except (config_lib.ConfigError, FileNotFoundError, DataError, InteropError, NonFiniteLossError) as e:
        # Expected failures get one line naming what is wrong, not a traceback.
        logging.error("%s", e)
        print(f"gptx: error: {e}", file=sys.stderr)
        sys.exit(1 if isinstance(e, NonFiniteLossError) else 2)


def run() -> None:
    """Console-script entry point (`gptx <command> ...`)."""
    try:
        app.run(main)
    except (AttributeError, KeyError) as e:
        # ml_collections rejects an override of a key the config does not have while flags are parsed.
        if "Did you mean" not in str(e) and "has no attribute" not in str(e):
            raise
        key = re.search(r"'([^'\\]+)\\?'", str(e))
        hint = re.search(r"Did you mean [^?]*\?", str(e))
        print(
            f"gptx: error: unknown config key {key.group(1) if key else str(e)!r} in a --config.* override"
            + (f"; {hint.group(0)}" if hint else ""),
            file=sys.stderr,
        )
        sys.exit(2)


if __name__ == "__main__":
    run()
