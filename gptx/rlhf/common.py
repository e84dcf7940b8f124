"""Token-level helpers shared by SFT, the reward model and PPO, and loading of the stages' checkpoints.

Sequences are [B, T] token arrays with a boolean (or 0/1) mask of real tokens. Right padding (SFT, reward model
training) and left padding (PPO prompts) both occur, so positions and "the last real token" are always computed
from the mask, never assumed.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from gptx import mesh as mesh_lib
from gptx.data import tokenizer as tokenizer_lib

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SELECTED = "selected_step.json"  # written by `sft` when it selects a checkpoint by reward


def data_path(cfg: ml_collections.ConfigDict, rel: str) -> str:
    """A file under config.rlhf.data_dir (relative data dirs are taken from the repository root)."""
    root = cfg.rlhf.data_dir
    root = root if os.path.isabs(root) else os.path.join(REPO, root)
    return os.path.normpath(os.path.join(root, rel))


def last_index(mask: jax.Array) -> jax.Array:
    """Index [B] of the last real token of each row (0 for an empty row), for any padding side."""
    t = mask.shape[-1]
    idx = jnp.where(mask.astype(bool), jnp.arange(t), -1)
    return jnp.maximum(jnp.max(idx, axis=-1), 0).astype(jnp.int32)


def gather_last(x: jax.Array, mask: jax.Array) -> jax.Array:
    """x [B, T] read at each row's last real token: [B]."""
    return jnp.take_along_axis(x, last_index(mask)[:, None], axis=-1)[:, 0]


def token_logprobs(logits: jax.Array, tokens: jax.Array, temperature: float = 1.0) -> tuple[jax.Array, jax.Array]:
    """(log π(token), entropy) [B, N] of the temperature-scaled distribution softmax(logits / temperature).

    Rollouts sample at `temperature`, so the policy and reference log-probs of PPO are taken from the same
    scaled distribution (lm-human-preferences); otherwise the KL and the ratio measure a different policy.
    """
    logp_all = jax.nn.log_softmax(logits.astype(jnp.float32) / temperature, axis=-1)  # [B, N, V]
    logp = jnp.take_along_axis(logp_all, tokens[..., None], axis=-1)[..., 0]
    entropy = -jnp.sum(jnp.exp(logp_all) * logp_all, axis=-1)
    return logp, entropy


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


def checkpoint_step(workdir: str) -> int:
    """The step to load from WORKDIR: the one `sft` selected by reward if any, else the latest."""
    path = os.path.join(os.path.abspath(workdir), "checkpoints")
    selected = os.path.join(workdir, SELECTED)
    if os.path.exists(selected):
        with open(selected) as f:
            return int(json.load(f)["step"])
    mngr = ocp.CheckpointManager(path, item_handlers={"state": ocp.StandardCheckpointHandler()})
    step = mngr.latest_step()
    mngr.close()
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {path}: run the previous stage first")
    return step


def load_params(workdir: str, mesh: Mesh, key: str = "") -> Any:
    """Params of a stage's checkpoint in WORKDIR (`key`: a sub-state such as "policy" of a PPO run), shapes and
    dtypes read from the checkpoint itself, replicated on `mesh` (callers reshard with `jax.device_put`)."""
    from gptx.train import loop

    step = checkpoint_step(workdir)
    state, _ = loop.restore_saved_state(workdir, mesh, step)
    if not key and "params" not in state and "policy" in state:
        key = "policy"  # a PPO run's workdir: its policy
    if key:
        if key not in state:
            raise FileNotFoundError(f"{workdir} step {step} has no {key!r} state: is it the right stage's workdir?")
        state = state[key]
    logging.info("loaded params of step %d from %s", step, workdir)
    return state["params"]


def resolve_tokenizer(cfg: ml_collections.ConfigDict, workdir: str) -> tokenizer_lib.Tokenizer:
    """config.data.tokenizer, else the init workdir's tokenizer.model, else WORKDIR's own (trained on
    config.data.corpus when missing). The one used is copied to WORKDIR/tokenizer.model, where the next stage,
    whose init_from is this WORKDIR, finds it."""
    from gptx.train import pretrain

    own = os.path.join(workdir, "tokenizer.model")
    src = cfg.data.tokenizer
    if not src and cfg.rlhf.init_from and os.path.exists(os.path.join(cfg.rlhf.init_from, "tokenizer.model")):
        src = os.path.join(cfg.rlhf.init_from, "tokenizer.model")
    if not src:
        return pretrain.load_tokenizer(cfg, workdir)
    tok = tokenizer_lib.Tokenizer.load(src)
    os.makedirs(workdir, exist_ok=True)
    if jax.process_index() == 0 and os.path.abspath(src) != os.path.abspath(own):
        shutil.copyfile(src, own)
    return tok


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
    *,
    max_prompt_len: int,
    max_response_len: int,
    temperature: float,
    seed: int,
    batch_size: int,
    mesh: Mesh,
) -> tuple[list[list[int]], list[str]]:
    """Samples one response per prompt with the KV-cache decoder: (response ids up to and including the first
    EOS, response texts). Prompts are encoded as in training (data.encode_prompt) and left-padded."""
    from gptx import sample
    from gptx.rlhf import data

    sampling = sample.SamplingConfig(
        max_new_tokens=max_response_len, temperature=temperature, eos_id=tok.eos_id, pad_id=tok.pad_id
    )
    encoded = [data.encode_prompt(tok, p, max_prompt_len) for p in prompts]
    ids: list[list[int]] = []
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start : start + batch_size]
        chunk = chunk + [chunk[0]] * (batch_size - len(chunk))  # fixed shapes: one compilation
        tokens, mask = sample.left_pad(chunk, tok.pad_id)
        tokens, mask = _pad_to(tokens, mask, max_prompt_len, tok.pad_id)
        dev = put_rows(mesh, {"tokens": tokens, "mask": mask})
        out = sample.decode(model, params, dev["tokens"], dev["mask"], jax.random.key(seed + start), sampling)
        toks, keep = to_host(out.tokens), to_host(out.mask)
        ids += [row[m].tolist() for row, m in zip(toks, keep, strict=True)][: len(encoded) - start]
    return ids, [tok.decode(r) for r in ids]


def _pad_to(tokens: np.ndarray, mask: np.ndarray, length: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Left-pads [B, P] prompts to [B, length], so every batch of prompts has the same shape."""
    extra = length - tokens.shape[1]
    if extra <= 0:
        return tokens, mask
    tokens = np.concatenate([np.full((len(tokens), extra), pad_id, tokens.dtype), tokens], axis=1)
    return tokens, np.concatenate([np.zeros((len(mask), extra), bool), mask.astype(bool)], axis=1)
