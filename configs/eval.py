"""In-context learning evaluation of a trained checkpoint (GPT-2 zero-shot, GPT-3 few-shot).

Usage: python -m gptx.main eval --config=configs/eval.py --workdir=CHECKPOINT_WORKDIR \
           --config.eval.tasks=lambada,hellaswag,two_digit_addition --config.eval.shots=0,1,8
The argument names the config the checkpoint was trained with, for its model section: `demo` (default),
`gpt2:124m`, `gpt3:350m`, ... (configs/NAME.py[:ARG]). Pass the --config.model.* overrides the checkpoint was
trained or imported with. The tokenizer is config.data.tokenizer, else WORKDIR/tokenizer.model, else the one
in WORKDIR's parent (a demo run: --workdir=DEMO_WORKDIR/pretrain).
Tasks: gptx/eval/tasks.py (lambada, hellaswag, sst2, rte, snli, mnli, gsm8k, the GPT-3 arithmetic and word
scrambling sets, tinyshakespeare perplexity, shakespeare_speaker); data from ../shared/data (config.eval.data_dir).
"""

import importlib.util
import os

from gptx import config as gptx_config


def _base(arg: str):
    name, _, size = arg.partition(":")
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.py")
    if not os.path.exists(path):
        raise FileNotFoundError(f"configs/eval.py:{arg}: no config file {path}")
    spec = importlib.util.spec_from_file_location(f"configs_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(size) if size else module.get_config()


def get_config(arg: str = "demo"):
    c = gptx_config.default()
    base = _base(arg)
    c.model, c.tokenizer = base.model, base.tokenizer
    c.eval.update(tasks="lambada,hellaswag,two_digit_addition", shots="0,1,8", limit=0, batch_size=16, seed=1234)
    c.mesh.update(data=-1, fsdp=1, tensor=1)
    return c
