"""Pallas splash attention: TPU-native causal attention that never materialises the [T, S] scores.

Splash attention (jax.experimental.pallas.ops.tpu.splash_attention, as MaxText and levanter run it) is flash
attention over a block-sparse mask: the mask is split into [block_q, block_kv] tiles once, at trace time, and
tiles that are entirely masked are never visited. For GPT-3's locally banded layers (a causal `LocalMask`) that
skips all but ~window/block_kv + 1 tiles per query block, so their cost grows with T·window, not T².

Off TPU the same kernel runs in Pallas' interpret mode (slow, exact), which is how the CPU tests check it.

Sharding follows MaxText: the kernel sees one device's shard through `shard_map`, batch over the mesh's
data-parallel axes and heads over `tensor` (the specs come from gptx/mesh.py's logical rules); the sequence is
never split, so each device holds whole rows of the mask.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu import splash_attention as sa

from gptx import mesh as mesh_lib

# MaxText's default tiles for v4/v5e/v5p/v6e (sa_block_* = 512); tiles must be multiples of the TPU lane width.
DEFAULT_BLOCK = 512
LANES = 128
PAD_SEGMENT = -1  # segment id of the rows added to reach a whole number of tiles: they see only each other
Q_AXES = ("batch", "act_heads", "length", "kv")  # logical names of q, k, v as the kernel takes them
SEGMENT_AXES = ("batch", "length")


def target_platform() -> str:
    """The platform attention is being compiled for ("tpu", "gpu", "cpu", ...): the context mesh's devices (so
    `aot`, compiling for a TPU topology from a CPU host, gets the real kernel) or else the default backend."""
    device = jax.sharding.get_abstract_mesh().abstract_device  # None: no mesh, or one without devices
    platform = device.platform if device is not None else jax.default_backend()
    return "gpu" if platform == "cuda" else platform


def on_tpu() -> bool:
    """True when attention is being compiled for TPUs (`target_platform`)."""
    return target_platform() == "tpu"


def padded_length(t: int, block_q: int, block_kv: int) -> tuple[int, int, int]:
    """(padded length, block_q, block_kv) for t tokens: tiles shrink to the (lane-rounded) sequence, and the
    sequence grows to a whole number of both tiles."""
    for name, b in (("block_q", block_q), ("block_kv", block_kv)):
        if b <= 0 or b % LANES:
            raise ValueError(f"splash attention {name}={b} must be a positive multiple of {LANES}")
    t_lanes = -(-t // LANES) * LANES
    block_q, block_kv = min(block_q, t_lanes), min(block_kv, t_lanes)
    step = math.lcm(block_q, block_kv)
    return -(-t // step) * step, block_q, block_kv


def make_kernel(
    t: int, n_head: int, window: int | None, block_q: int, block_kv: int, interpret: bool
) -> sa.SplashAttentionKernel:
    """The splash kernel for one device's shard: n_head heads of t tokens, causal (dense) or causal banded.

    Forward and backward tiles are the same; the mask info (which tiles to visit) is computed here, in numpy.
    """
    # Banded: a query sees itself and the window - 1 tokens before it; (left, right) count from the diagonal.
    mask = sa.CausalMask((t, t)) if window is None else sa.LocalMask((t, t), window_size=(window - 1, 0), offset=0)
    blocks = sa.BlockSizes(
        block_q=block_q,
        block_kv=block_kv,
        block_q_dkv=block_q,
        block_kv_dkv=block_kv,
        block_q_dq=block_q,
        block_kv_dq=block_kv,
    )
    return sa.make_splash_mha(
        sa.MultiHeadMask([mask] * n_head),
        block_sizes=blocks,
        head_shards=1,
        q_seq_shards=1,
        interpret=interpret,
    )


def _local_attention(q, k, v, segment_ids, *, window, block_q, block_kv, interpret):
    """One shard: q, k, v [b, n, T, H] (T a whole number of tiles), segment_ids [b, T] or None -> [b, n, T, H]."""
    kernel = make_kernel(q.shape[2], q.shape[1], window, block_q, block_kv, interpret)
    if segment_ids is None:
        return jax.vmap(kernel)(q, k, v)
    segments = sa.SegmentIds(q=segment_ids, kv=segment_ids)
    return jax.vmap(lambda q, k, v, s: kernel(q, k, v, segment_ids=s))(q, k, v, segments)


def splash_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    segment_ids: jax.Array | None = None,
    window: int | None = None,
    block_q: int = DEFAULT_BLOCK,
    block_kv: int = DEFAULT_BLOCK,
    interpret: bool | None = None,
) -> jax.Array:
    """Causal attention over q, k, v [B, T, N, H] -> [B, T, N, H], the semantics of
    `attention.dot_product_attention`: same segment (segment_ids [B, T]), and within `window` tokens if set.

    Softmax scale 1/sqrt(H), as the rest of the model. `interpret` None: Pallas' interpreter unless on a TPU.
    """
    b, t, n, h = q.shape
    interpret = not on_tpu() if interpret is None else interpret
    t_pad, block_q, block_kv = padded_length(t, block_q, block_kv)
    # The kernel has no scale argument; scaling q is the same logits (MaxText does the same).
    q = q * jnp.asarray(1.0 / math.sqrt(h), q.dtype)
    q, k, v = (_to_kernel_layout(x, t_pad) for x in (q, k, v))  # [B, N, T_pad, H]
    if segment_ids is not None and t_pad > t:
        segment_ids = jnp.pad(segment_ids, ((0, 0), (0, t_pad - t)), constant_values=PAD_SEGMENT)
    # Causal masking already hides the trailing padded keys from real queries, with or without segments.

    def attend(q, k, v, segment_ids):
        return _local_attention(
            q, k, v, segment_ids, window=window, block_q=block_q, block_kv=block_kv, interpret=interpret
        )

    y = _sharded(attend, q, k, v, segment_ids)  # [B, N, T_pad, H]
    return y[:, :, :t].transpose(0, 2, 1, 3)  # [B, T, N, H]


def _to_kernel_layout(x: jax.Array, t_pad: int) -> jax.Array:
    x = x.transpose(0, 2, 1, 3)  # [B, N, T, H]: the kernel wants each head's tokens contiguous
    return jnp.pad(x, ((0, 0), (0, 0), (0, t_pad - x.shape[2]), (0, 0)))


def _sharded(attend, q, k, v, segment_ids):
    """`attend` on each device's shard (batch over data/fsdp, heads over tensor) under the context mesh that
    `gptx.mesh.activation_rules` sets; called directly when there is none (a plain single-device call)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return attend(q, k, v, segment_ids)
    qkv_spec = mesh_lib.shard_map_spec(mesh, Q_AXES, q.shape)
    in_specs = (qkv_spec, qkv_spec, qkv_spec)
    args = (q, k, v)
    if segment_ids is not None:
        in_specs += (mesh_lib.shard_map_spec(mesh, SEGMENT_AXES, segment_ids.shape),)
        args += (segment_ids,)

    def body(q, k, v, *segment_ids):
        return attend(q, k, v, segment_ids[0] if segment_ids else None)

    # check_vma off: the Pallas call carries no varying-axes annotations (MaxText: check_rep=False).
    return jax.shard_map(body, mesh=mesh, in_specs=in_specs, out_specs=qkv_spec, check_vma=False)(*args)
