"""InstructGPT's three steps as configs: each step's default recipe for the demo-sized model (RECIPES; the base of
configs/{sft,rm,ppo}.py) and the overrides of their arguments: `:demo` (DEMO), lm-human-preferences' offline task
"continue positively" on the bundled corpus, ranked by the VADER labeler, which the demo's `rlhf` stage
(gptx/demo/rlhf.py) runs; `:hh` (HH), the human-data path sized to train on 2 CPU cores in about half an hour:
SFT on the self-instruct demonstrations, the RM on HH-RLHF comparisons, PPO on HH-RLHF prompts (README,
"InstructGPT").
"""

from __future__ import annotations

import ml_collections

from gptx.config import default

# The three steps' defaults for the demo-sized model (configs/{sft,rm,ppo}.py start from them). InstructGPT's own
# numbers (App. C) are for 1.3B-175B models: SFT 16 epochs, cosine decay, residual dropout 0.2, lr 9.65e-6; RM
# one epoch, lr 9e-6; PPO lr 9.65e-6 (1.3B), β = 0.02, ptx_coef 27.8. A tiny model needs larger steps.
RECIPES = {
    "sft": {
        "model": {"dropout": 0.2, "attn_dropout": 0.0},  # the paper's residual dropout
        "train": {
            "batch_size": 32,
            "lr": 1e-4,
            "warmup_steps": 10,
            "min_lr_ratio": 0.0,
            "weight_decay": 0.0,
            "log_every": 10,
            "eval_every": 50,
            "eval_batches": 4,
            "ckpt_every": 50,
            "keep_ckpts": 4,
        },
        "rlhf": {"epochs": 16.0, "max_prompt_len": 80, "max_response_len": 48},
    },
    "rm": {
        "model": {"dropout": 0.0, "attn_dropout": 0.0},
        "train": {
            "batch_size": 16,
            "lr": 1e-4,
            "warmup_steps": 5,
            "min_lr_ratio": 0.1,
            "weight_decay": 0.0,
            "log_every": 10,
            "eval_every": 50,
            "eval_batches": 8,
            "ckpt_every": 1000,
            "keep_ckpts": 1,
        },
        "rlhf": {
            "comparisons": "hh_rlhf",
            "prompts": "hh_rlhf",
            "epochs": 1.0,
            "max_prompt_len": 80,
            "max_response_len": 48,
            "rollout_batch": 64,
            "norm_samples": 256,
        },
    },
    "ppo": {
        "model": {"dropout": 0.0, "attn_dropout": 0.0},  # PPO runs every network deterministically
        "train": {
            "lr": 2e-5,
            "warmup_steps": 0,
            "min_lr_ratio": 1.0,
            "b2": 0.999,
            "eps": 1e-5,
            "weight_decay": 0.0,
            "log_every": 5,
            "ckpt_every": 25,
            "keep_ckpts": 2,
        },
        "rlhf": {
            "prompts": "hh_rlhf",
            "comparisons": "hh_rlhf",
            "iterations": 100,
            "rollout_batch": 64,
            "minibatch": 16,
            "ppo_epochs": 4,
            "temperature": 0.7,
            "kl_coef": 0.15,
            "adaptive_kl": True,
            "kl_target": 6.0,
            "kl_horizon": 10000,
            "value_lr": 1e-4,
            "ptx_coef": 0.0,
            "ptx_batch": 8,
            "max_prompt_len": 80,
            "max_response_len": 48,
            "eval_prompts": 128,
        },
    },
}
_CORPUS = {"corpus": "bundled:tinyshakespeare", "doc_separator": "blank_line"}
_LENGTHS = {"max_prompt_len": 32, "max_response_len": 24}
# `:demo`: the offline sentiment task on the bundled corpus.
DEMO = {
    "sft": {
        "data": {**_CORPUS, "seq_len": 56},
        "rlhf": {"demonstrations": "corpus", "prompts": "corpus", "corpus_prompt_lines": 2, "epochs": 1.0, **_LENGTHS},
    },
    "rm": {
        "data": {**_CORPUS, "seq_len": 56},
        "train": {"lr": 3e-4},
        "rlhf": {
            "comparisons": "labeler",
            "labeler": "vader",
            "prompts": "corpus",
            "k": 4,
            "label_prompts": 2048,
            "epochs": 2.0,
            "temperature": 0.7,
            **_LENGTHS,
        },
    },
    "ppo": {
        "data": {**_CORPUS, "seq_len": 64},
        "train": {"lr": 1e-4},
        "rlhf": {
            "prompts": "corpus",
            "comparisons": "labeler",
            "labeler": "vader",
            "iterations": 30,
            "kl_coef": 0.2,
            "kl_target": 6.0,
            "kl_horizon": 1000,
            **_LENGTHS,
        },
    },
}
# `:hh`: the human-data path at the demo model's size (4 layers x 128), pretrained on a plain-text corpus
# (config.data.corpus, also PPO-ptx's pretraining data). Lengths fit HH-RLHF's last turns into 128 tokens.
_HH_LENGTHS = {"max_prompt_len": 80, "max_response_len": 48}
HH = {
    "sft": {
        "data": {"seq_len": 128},
        "train": {"batch_size": 16, "lr": 3e-4, "eval_every": 40, "ckpt_every": 40, "log_every": 10},
        "rlhf": {"demonstrations": "self_instruct", "prompts": "self_instruct", "epochs": 8.0, **_HH_LENGTHS},
    },
    "rm": {
        "data": {"seq_len": 128},
        "train": {"batch_size": 16, "lr": 5e-5, "eval_every": 65, "log_every": 10},
        "rlhf": {"comparisons": "hh_rlhf", "epochs": 1.0, "norm_samples": 128, "rollout_batch": 64, **_HH_LENGTHS},
    },
    "ppo": {
        "data": {"seq_len": 128},
        "train": {"lr": 1e-5, "log_every": 1, "ckpt_every": 10},
        "rlhf": {
            "prompts": "hh_rlhf",
            "comparisons": "hh_rlhf",
            "iterations": 30,
            "rollout_batch": 64,
            "minibatch": 16,
            "kl_coef": 0.1,
            "kl_target": 6.0,
            "kl_horizon": 2000,
            "value_lr": 5e-5,
            "ptx_batch": 8,
            "eval_prompts": 128,
            **_HH_LENGTHS,
        },
    },
}
ARGS = {"demo": DEMO, "hh": HH}
DEMO_MODEL = {
    "name": "demo",
    "arch": "gpt2",
    "vocab_size": 1024,
    "block_size": 128,
    "n_layer": 4,
    "n_head": 4,
    "d_model": 128,
}


def apply(c: ml_collections.ConfigDict, overrides: dict) -> ml_collections.ConfigDict:
    """Updates each config section named in `overrides` with its values; returns `c`."""
    for section, values in overrides.items():
        c[section].update(values)
    return c


def step_config(step: str, arg: str = "") -> ml_collections.ConfigDict:
    """The config of `configs/{step}.py[:arg]`: the demo model, the step's recipe, and the overrides of `arg`
    ("demo": the offline sentiment task; "hh": the human-data path sized for 2 CPU cores)."""
    if arg and arg not in ARGS:
        raise ValueError(f"configs/{step}.py takes no argument or one of {', '.join(ARGS)}, got {arg!r}")
    c = default()
    c.model.update(DEMO_MODEL)
    c.tokenizer.vocab_size = DEMO_MODEL["vocab_size"]
    c.mesh.update(data=-1, fsdp=1, tensor=1)
    c.rlhf.stage = step
    apply(c, RECIPES[step])
    return apply(c, ARGS[arg][step]) if arg else c
