"""The shapes of InstructGPT's models: the reward model (and so the value model) has a size of its own.

InstructGPT trained 1.3B, 6B and 175B policies against one 6B reward model and initialised the value function
from it; the policy and its frozen reference share the SFT model's shape. `config.rlhf.reward_model` names the
reward model's shape:

  name ""            the shape saved with the reward model's workdir (config.rlhf.reward_from), else the policy's
  name "gpt3:6.7b"   a row of a paper's size table (configs/gpt1.py, gpt2.py, gpt3.py; "gpt3-6.7b" too)
  name WORKDIR       the model a run in WORKDIR saved (its config.json)
  n_layer, n_head, d_model, d_head, d_ff   nonzero values override the named shape

The token table and context come from the policy (the reward model reads the policy's tokens), except that a
trained reward model keeps the ones its checkpoint was saved with.
"""

from __future__ import annotations

import importlib.util
import os
import re

import ml_collections

from gptx import config as config_lib
from gptx.config import ConfigError
from gptx.train import integrity

PAPERS = ("gpt1", "gpt2", "gpt3")
# What a size names: the network, not how it is computed (dtype, remat) nor what it reads (vocabulary, context).
NETWORK_KEYS = ("arch", "n_layer", "n_head", "d_model", "d_head", "d_ff", "attention", "local_window")
OVERRIDES = ("n_layer", "n_head", "d_model", "d_head", "d_ff")
CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "configs")


def paper_model(name: str) -> ml_collections.ConfigDict | None:
    """The model section of a paper size "gpt3:6.7b" / "gpt3-6.7b" (configs/gpt3.py:6.7b), or None when `name`
    is not of that form."""
    m = re.fullmatch(r"(gpt[123])[:-](.+)", name.strip().lower())
    if not m:
        return None
    path = os.path.join(CONFIGS, f"{m.group(1)}.py")
    if not os.path.exists(path):
        raise ConfigError(f"config.rlhf.reward_model.name={name!r}: the size tables ({path}) are not installed")
    spec = importlib.util.spec_from_file_location(f"gptx_sizes_{m.group(1)}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    try:
        return module.get_config(m.group(2)).model
    except ConfigError as e:
        raise ConfigError(f"config.rlhf.reward_model.name={name!r}: {e}") from None


def reward_model_config(cfg: ml_collections.ConfigDict, reward_from: str = "") -> ml_collections.ConfigDict:
    """The model section of the reward (and value) model: the policy's (`cfg.model`) with the shape that
    config.rlhf.reward_model names; reward_from, the RM's workdir, gives it when the name is ""."""
    rm = cfg.rlhf.reward_model
    out = cfg.model.copy_and_resolve_references()
    name = rm.name or reward_from
    paper = paper_model(name) if name else None
    if paper is not None:
        out.update({k: paper[k] for k in NETWORK_KEYS})
        out.name = f"{paper.name}-rm"
    elif name:
        if integrity.saved_config(name) is None and rm.name:
            raise ConfigError(
                f"config.rlhf.reward_model.name={name!r} is neither a paper size ({', '.join(PAPERS)}:SIZE) nor a "
                f"workdir with a {integrity.CONFIG}"
            )
        saved = integrity.with_model_of(cfg, name, grow_vocab=True).model
        out.update({k: saved[k] for k in (*NETWORK_KEYS, "vocab_size", "block_size", "param_dtype", "scan_layers")})
    overrides = {key: rm[key] for key in OVERRIDES if rm[key]}
    out.update(overrides)
    if overrides and paper is None:
        out.name = f"{cfg.model.name}-rm"
    try:
        config_lib.validate_model(out)
    except ConfigError as e:
        raise ConfigError(f"config.rlhf.reward_model: {e}") from None
    length = cfg.rlhf.max_prompt_len + cfg.rlhf.max_response_len
    if out.block_size < length:
        raise ConfigError(
            f"the reward model's context ({out.block_size}) is shorter than config.rlhf.max_prompt_len + "
            f"max_response_len = {length}"
        )
    return out


def describe(m: ml_collections.ConfigDict) -> str:
    """`n_layer x d_model (n_head heads)`, for logs and reports."""
    return f"{m.n_layer} layers x {m.d_model} ({m.n_head} heads)"
