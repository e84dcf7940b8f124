"""What SFT, the reward model and PPO share: token-level helpers, sampling responses, and loading the previous
stage's checkpoint and tokenizer.

Sequences are [B, T] token arrays with a boolean (or 0/1) mask of real tokens. Right padding (SFT, reward model
training) and left padding (PPO prompts) both occur, so positions and "the last real token" are always computed
from the mask, never assumed.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from flax import linen as nn
from jax.experimental import multihost_utils
from jax.sharding import Mesh
from tqdm import tqdm

from gptx import config as config_lib
from gptx import mesh as mesh_lib
from gptx import sample
from gptx.data import tokenizer as tokenizer_lib
from gptx.rlhf import data
from gptx.train import checkpoints, pretrain

SELECTED = "selected_step.json"  # written by `sft` when it selects a checkpoint by reward


def last_index(mask: jax.Array) -> jax.Array:
    """Index [B] of the last real token of each row (0 for an empty row), for any padding side."""
    t = mask.shape[-1]
    idx = jnp.where(mask.astype(bool), jnp.arange(t), -1)
    return jnp.maximum(jnp.max(idx, axis=-1), 0).astype(jnp.int32)


def gather_last(x: jax.Array, mask: jax.Array) -> jax.Array:
    """x [B, T] read at each row's last real token: [B]."""
    return jnp.take_along_axis(x, last_index(mask)[:, None], axis=-1)[:, 0]


def masked_mean(x: jax.Array, mask: jax.Array, axis=None) -> jax.Array:
    m = mask.astype(x.dtype)
    return jnp.sum(x * m, axis=axis) / jnp.maximum(jnp.sum(m, axis=axis), 1.0)


def random_params(model, *inputs, seed: int = 0, std: float = 0.02) -> Any:
    """Parameters of a flax `model` drawn on the host with numpy (N(0, std²); LayerNorm scales 1 + N(0, std²)),
    shapes from jax.eval_shape: tests and benchmarks get weights without compiling an init."""
    rng = np.random.default_rng(seed)
    shapes = mesh_lib.strip_annotations(jax.eval_shape(model.init, jax.random.key(0), *inputs)["params"])

    def draw(path, s):
        x = std * rng.standard_normal(s.shape) + (1.0 if str(path[-1].key) == "scale" else 0.0)
        return jnp.asarray(x, s.dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def checkpoint_step(workdir: str) -> int | None:
    """The step to load from a stage's WORKDIR: the one `sft` selected by reward if any, else None (the latest)."""
    selected = os.path.join(workdir, SELECTED)
    if os.path.exists(selected):
        with open(selected) as f:
            return int(json.load(f)["step"])
    return None


def load_params(workdir: str, mesh: Mesh, target: Any, *, key: str = "", what: str = "config.rlhf.init_from") -> Any:
    """Params of a stage's checkpoint in WORKDIR (the step `sft` selected, else the latest), each restored into the
    sharding of `target` (abstract annotated params of the model that uses them; a smaller token table is grown by
    `checkpoints.merge_params`). key: a sub-state such as "policy" of a PPO run."""
    try:
        step = checkpoint_step(workdir)
        params, step = checkpoints.restore_params(workdir, mesh, target, step=step, key=key, strict=False)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{what}: {e}") from None
    logging.info("loaded params of step %d from %s", step, workdir)
    return params


def place(params: Any, shardings: Any) -> Any:
    """`params` in `shardings`: each leaf already there is kept as it is (no copy), the others are moved."""
    keep = lambda x, s: x if getattr(x, "sharding", None) == s else jax.device_put(x, s)
    return jax.tree.map(keep, params, shardings)


def grow_to(model: nn.Module, params: Any, mesh: Mesh, seq_len: int, seed: int = 0) -> Any:
    """`params` of a checkpoint as `model` needs them: a smaller token table grown to the model's vocabulary
    (`checkpoints.merge_params`), every leaf in the model's sharding. Params that already fit are returned as
    they are, without a copy; otherwise the grown tree is computed in one jit whose inputs are its arguments
    (never constants of the program, which would sit whole on every device)."""
    target = checkpoints.abstract_params(model, jnp.zeros((1, seq_len), jnp.int32))
    want = jax.tree.map(lambda x: x.shape, mesh_lib.strip_annotations(target))
    have = jax.tree.map(lambda x: x.shape, params)
    shardings = mesh_lib.tree_shardings(mesh, target)
    if want == have:
        return place(params, shardings)
    std = model.cfg.init_std

    def grow(p, rng):
        return mesh_lib.strip_annotations(checkpoints.merge_params(target, p, rng, std))

    with mesh_lib.activation_rules(mesh):
        return jax.jit(grow, out_shardings=shardings)(params, jax.random.key(seed))


def load_init(cfg: ml_collections.ConfigDict, mesh: Mesh, model: nn.Module, key: str = "") -> Any | None:
    """The params of config.rlhf.init_from (the previous stage) for `model`'s GPT body, or None for a random init.

    `model` is the GPT (SFT, policy) or the RewardModel (its `gpt` trunk is what loads)."""
    if not cfg.rlhf.init_from:
        return None
    target = checkpoints.abstract_params(model, jnp.zeros((1, config_lib.seq_len(cfg)), jnp.int32))
    target = target.get("gpt", target)
    with mesh_lib.activation_rules(mesh):
        return load_params(cfg.rlhf.init_from, mesh, target, key=key)


def steps_for(cfg: ml_collections.ConfigDict, n_train: int) -> int:
    """Optimizer steps of `rlhf.epochs` passes over n_train examples (train.steps when epochs is 0)."""
    if cfg.rlhf.epochs <= 0:
        return cfg.train.steps
    return max(1, math.ceil(cfg.rlhf.epochs * n_train / cfg.train.batch_size))


def resolve_tokenizer(cfg: ml_collections.ConfigDict, workdir: str) -> tokenizer_lib.Tokenizer:
    """The stage's tokenizer (config.data.tokenizer, else the previous stage's, else WORKDIR's), kept in WORKDIR."""
    return pretrain.resolve_tokenizer(cfg, workdir, (cfg.rlhf.init_from,))


def put_rows(mesh: Mesh, arrays: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """Global [B, ...] host arrays (the same on every process) as batch-sharded device arrays."""
    n, i = jax.process_count(), jax.process_index()
    return mesh_lib.put_batch(mesh, {k: v[i * (len(v) // n) : (i + 1) * (len(v) // n)] for k, v in arrays.items()})


def to_host(x: jax.Array) -> np.ndarray:
    """A (possibly multi-process) global array as one numpy array on every process."""
    if jax.process_count() > 1:
        x = multihost_utils.process_allgather(x, tiled=True)
    return np.asarray(jax.device_get(x))


def sample_responses(
    model,
    params,
    tok: tokenizer_lib.Tokenizer,
    prompts: Sequence[str],
    rlhf: ml_collections.ConfigDict,
    *,
    seed: int,
    mesh: Mesh,
    progress: bool = False,
) -> tuple[list[list[int]], list[str]]:
    """Samples one response per prompt with the KV-cache decoder: (response ids up to and including the first
    EOS, response texts). Prompts are encoded as in training (data.encode_prompt) and left-padded; lengths,
    temperature and batch size are config.rlhf's (max_prompt_len, max_response_len, temperature, rollout_batch)."""
    max_prompt_len, batch_size = rlhf.max_prompt_len, rlhf.rollout_batch
    sampling = sample.SamplingConfig(
        max_new_tokens=rlhf.max_response_len, temperature=rlhf.temperature, eos_id=tok.eos_id, pad_id=tok.pad_id
    )
    encoded = [data.encode_prompt(tok, p, max_prompt_len) for p in prompts]
    ids: list[list[int]] = []
    starts = range(0, len(encoded), batch_size)
    for start in tqdm(starts, desc="sampling", disable=not progress or jax.process_index() != 0, leave=False):
        chunk = encoded[start : start + batch_size]
        chunk = chunk + [chunk[0]] * (batch_size - len(chunk))  # fixed shapes: one compilation
        tokens, mask = sample.left_pad(chunk, tok.pad_id)
        tokens, mask = pad_to(tokens, mask, max_prompt_len, tok.pad_id)
        dev = put_rows(mesh, {"tokens": tokens, "mask": mask})
        out = sample.decode(model, params, dev["tokens"], dev["mask"], jax.random.key(seed + start), sampling)
        toks, keep = to_host(out.tokens), to_host(out.mask)
        ids += [row[m].tolist() for row, m in zip(toks, keep, strict=True)][: len(encoded) - start]
    return ids, [tok.decode(r) for r in ids]


def pad_to(tokens: np.ndarray, mask: np.ndarray, length: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Left-pads [B, P] prompts to [B, length], so every batch of prompts has the same shape."""
    extra = length - tokens.shape[1]
    if extra <= 0:
        return tokens, mask
    tokens = np.concatenate([np.full((len(tokens), extra), pad_id, tokens.dtype), tokens], axis=1)
    return tokens, np.concatenate([np.zeros((len(mask), extra), bool), mask.astype(bool)], axis=1)
