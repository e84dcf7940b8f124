"""What makes a checkpoint trustworthy: per-leaf fingerprints, a run's saved config, damaged steps moved aside.

Fingerprints. Every save records, for each leaf of the state, two 32-bit checksums of its bit pattern computed
on device (the wrapping sum of the bits, and the sum weighted by (flat index mod 65521) + 1, which also catches
swapped values). They are integer sums, so the result does not depend on sharding or reduction order, and they
cost one pass over the state per save. A restore recomputes them: a flipped byte that the storage layer did not
notice is a mismatch, and the step counts as damaged.

The run's config. Every run writes its resolved config to WORKDIR/config.json. Resuming with a config whose
model, batch or data-position settings differ is a ConfigError naming the keys, before anything is restored.
"""

from __future__ import annotations

import json
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from gptx import fs
from gptx.errors import ConfigError
from gptx.train import logs

CONFIG = "config.json"
DAMAGED = "damaged_checkpoints"
# Settings a resumed run must share with the saved one: the state's shapes, and what the saved data position
# means (a grain iterator state is only valid for the same batching, packing and worker count).
RESUME_KEYS = ("model", "data.seq_len", "data.worker_count", "data.corpus", "train.batch_size")
# Model keys that choose how the same model is computed, not what it is: a resumed run may change them (e.g.
# more rematerialisation or vocab tiling after running out of memory).
EXECUTION_KEYS = (
    "model.remat", "model.logits_chunk", "model.attention_impl", "model.splash_block_q", "model.splash_block_kv",
    "model.name",
)  # fmt: skip


def path_name(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def _bits(x: jax.Array) -> jax.Array:
    """The bit pattern of x as uint32 values, same shape (64-bit values: an extra trailing axis of 2)."""
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    width = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[x.dtype.itemsize]
    return jax.lax.bitcast_convert_type(x, width).astype(jnp.uint32)


def _leaf_fingerprint(x: jax.Array) -> jax.Array:
    """[2] uint32: the wrapping sum of x's bits and their sum weighted by position. Elementwise ops and one
    reduction, so a sharded leaf is never gathered."""
    bits = _bits(x)
    index = jnp.zeros(bits.shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(bits.ndim)):
        index = index + jax.lax.broadcasted_iota(jnp.uint32, bits.shape, axis) * jnp.uint32(stride)
        stride = (stride * bits.shape[axis]) % (1 << 32)
    weight = index % jnp.uint32(65521) + jnp.uint32(1)
    return jnp.stack([jnp.sum(bits, dtype=jnp.uint32), jnp.sum(bits * weight, dtype=jnp.uint32)])


@jax.jit
def _tree_fingerprints(tree: Any) -> Any:
    return jax.tree.map(_leaf_fingerprint, tree)


def fingerprints(tree: Any) -> dict[str, list[int]]:
    """{leaf path: [sum, weighted sum]} of a state (device arrays or host arrays alike)."""
    prints = jax.device_get(_tree_fingerprints(tree))
    return {path_name(p): [int(v) for v in np.asarray(f)] for p, f in jax.tree_util.tree_leaves_with_path(prints)}


def mismatch(tree: Any, saved: dict[str, list[int]]) -> str | None:
    """Why `tree` is not what was saved (the first leaf whose fingerprint differs), or None. Leaves the saved
    record does not have (an older checkpoint) are not checked."""
    for name, value in fingerprints(tree).items():
        if name in saved and list(saved[name]) != value:
            return f"the fingerprint of {name} does not match the one saved with it"
    return None


def move_aside(checkpoint_dir: str, step: int) -> str:
    """Moves the step's directory to WORKDIR/damaged_checkpoints/ (never deletes it); returns the new path."""
    src = fs.join(checkpoint_dir, str(step))
    dst_root = fs.join(fs.dirname(checkpoint_dir.rstrip("/")), DAMAGED)
    fs.makedirs(dst_root)
    dst = fs.join(dst_root, f"{step}-{time.strftime('%Y%m%d-%H%M%S')}")
    if fs.exists(src):
        fs.move(src, dst)
    return dst


# ------------------------------------------------------------------------------------------------------------
# The run's config


def write_config(workdir: str, cfg: ml_collections.ConfigDict) -> None:
    logs.write_json(fs.join(workdir, CONFIG), cfg.to_dict())


def saved_config(workdir: str) -> dict[str, Any] | None:
    path = fs.join(workdir, CONFIG)
    if not fs.exists(path):
        return None
    try:
        return json.loads(fs.read_text(path))
    except (fs.StorageError, PermissionError):
        raise  # a bucket that cannot be read is not "no record"
    except (OSError, ValueError):
        return None  # an unreadable record is no reason to refuse a resume; the checkpoint itself is checked


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def check_resume(workdir: str, cfg: ml_collections.ConfigDict, data_position: bool = True) -> None:
    """ConfigError naming every RESUME_KEYS setting in which `cfg` differs from the run saved in WORKDIR.

    data_position: whether the checkpoint holds one; without it (converted weights) the data and batch settings
    start afresh and only the model is compared."""
    saved = saved_config(workdir)
    if saved is None:
        return
    before, now = _flat(saved), _flat(json.loads(json.dumps(cfg.to_dict(), default=str)))
    keys = sorted(
        k
        for k in set(before) | set(now)
        if k.startswith(RESUME_KEYS if data_position else ("model",))
        and k not in EXECUTION_KEYS
        and before.get(k) != now.get(k)
    )
    if keys:
        diffs = ", ".join(f"{k}: saved {before.get(k)!r}, now {now.get(k)!r}" for k in keys[:6])
        raise ConfigError(
            f"{workdir} holds a run with other settings ({diffs}{', ...' if len(keys) > 6 else ''}); resume it "
            "with the settings it was saved with, or start the new run in a new workdir"
        )


# The model settings a run's parameters were made with: a command that reads the run takes them from its config,
# so a trained or converted run needs no repeated --config.model.* overrides. Dropout, compute dtype, remat and
# the attention kernel are choices of the reading run, not properties of the parameters.
SHAPE_KEYS = (
    "arch", "vocab_size", "block_size", "n_layer", "n_head", "d_model", "d_head", "d_ff", "attention",
    "local_window", "layer_norm_eps", "param_dtype", "scan_layers",
)  # fmt: skip


def with_model_of(cfg: ml_collections.ConfigDict, run: str, grow_vocab: bool = False) -> ml_collections.ConfigDict:
    """`cfg` with the model shape of the run in directory `run` (its config.json), when it has one.

    grow_vocab: keep cfg's vocab_size when it is larger (a fine-tuning run adds special tokens after the
    pretrained vocabulary, growing the token table).
    """
    saved = saved_config(run) if run else None
    if not saved or "model" not in saved:
        return cfg
    out = cfg.copy_and_resolve_references()
    for key in SHAPE_KEYS:
        if key in saved["model"]:
            out.model[key] = saved["model"][key]
    if grow_vocab:
        out.model.vocab_size = max(out.model.vocab_size, cfg.model.vocab_size)
    changed = [f"{k}={out.model[k]}" for k in SHAPE_KEYS if out.model[k] != cfg.model[k]]
    if changed:
        logging.info("model shape from %s/%s: %s", run, CONFIG, ", ".join(changed))
    return out
