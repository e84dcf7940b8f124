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
from gptx.train.loop import NonFiniteLossError

_CONFIG = config_flags.DEFINE_config_file("config", None, "A config file: configs/NAME.py[:ARG].")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and reports.")
_STAGES = flags.DEFINE_list("stages", None, "demo: the stages to run, in order (default: all).")


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


COMMANDS = {"train": _train, "tokenizer": _tokenizer, "demo": _demo}


def main(argv: list[str]) -> None:
    usage = f"usage: python -m gptx.main <{'|'.join(COMMANDS)}> --config=configs/NAME.py[:ARG] --workdir=DIR"
    if len(argv) != 2 or argv[1] not in COMMANDS:
        raise app.UsageError(usage)
    if _CONFIG.value is None or _WORKDIR.value is None:
        raise app.UsageError(f"--config and --workdir are required\n{usage}")
    cfg = _CONFIG.value
    try:
        config_lib.validate(cfg)  # keys and shapes first: a typo should not wait for device start-up
        mesh_lib.initialize_distributed(cfg.mesh)
        config_lib.validate(cfg, jax.device_count())
        COMMANDS[argv[1]](cfg, _WORKDIR.value)
    except (config_lib.ConfigError, FileNotFoundError, DataError, NonFiniteLossError) as e:
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
