"""The config schema every gptx run shares, and its validation.

Config files in `configs/` start from `default()` and change fields, big_vision style. `validate()` runs before
anything compiles and turns a wrong key, a wrong type or an impossible shape into one `ConfigError` line that
names the key.
"""

from __future__ import annotations

import ml_collections

ARCHS = ("gpt1", "gpt2", "gpt3")
ATTENTION_PATTERNS = ("dense", "alternating")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
DTYPES = ("float32", "bfloat16", "float16")
ATTENTION_IMPLS = ("auto", "xla", "cudnn")


class ConfigError(ValueError):
    """A config that cannot run; the message names the offending key."""


def default() -> ml_collections.ConfigDict:
    """Every key a gptx config may have, with its default. Unknown keys are errors."""
    c = ml_collections.ConfigDict()

    c.model = ml_collections.ConfigDict()
    c.model.name = "custom"
    c.model.arch = "gpt2"  # gpt1: post-LN; gpt2: pre-LN + final LN; gpt3: gpt2 blocks, dense/banded attention
    c.model.vocab_size = 50257
    c.model.block_size = 1024  # context length: rows of the learned position table
    c.model.n_layer = 12
    c.model.n_head = 12
    c.model.d_model = 768
    c.model.d_head = 0  # 0: d_model // n_head. GPT-3 13B has d_model 5140 but 40 heads of 128
    c.model.d_ff = 0  # 0: 4 * d_model
    c.model.dropout = 0.1  # embedding and residual dropout
    c.model.attn_dropout = 0.1  # dropout on attention probabilities
    c.model.attention = "dense"  # "alternating": every second layer is locally banded (GPT-3)
    c.model.local_window = 256  # banded layers see this many most recent tokens, themselves included
    c.model.attention_impl = "auto"  # auto | xla | cudnn, for jax.nn.dot_product_attention
    c.model.layer_norm_eps = 1e-5
    c.model.init_std = 0.02
    c.model.dtype = "float32"  # compute dtype (bfloat16 on accelerators)
    c.model.param_dtype = "float32"
    c.model.remat = "none"  # none | full | dots | dots_no_batch
    c.model.scan_layers = False

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1  # -1: all devices left after the other axes
    c.mesh.fsdp = 1
    c.mesh.tensor = 1
    c.mesh.multihost = "auto"  # auto: from the environment; "yes"; "no"
    c.mesh.coordinator_address = ""  # host:port of process 0, for GPU clusters and CPU tests
    c.mesh.num_processes = 0
    c.mesh.process_id = -1

    c.data = ml_collections.ConfigDict()
    c.data.corpus = "bundled:tinyshakespeare"  # a text file (optionally .gz/.xz/.bz2) or bundled:NAME
    c.data.doc_separator = "blank_line"  # how a text file splits into documents: blank_line | line | none
    c.data.tokenizer = ""  # a sentencepiece .model; "": WORKDIR/tokenizer.model, trained if missing
    c.data.seq_len = 0  # 0: model.block_size
    c.data.val_fraction = 0.1  # the last documents form the validation split
    c.data.seed = 0
    c.data.worker_count = 0  # grain worker processes; 0 reads in the main process

    c.tokenizer = ml_collections.ConfigDict()
    c.tokenizer.vocab_size = 2048
    c.tokenizer.model_type = "bpe"
    c.tokenizer.character_coverage = 1.0
    c.tokenizer.byte_fallback = True

    c.train = ml_collections.ConfigDict()
    c.train.steps = 1000
    c.train.batch_size = 32  # global sequences per optimizer step
    c.train.grad_accum = 1  # micro-batches per step; batch_size must divide by it
    c.train.lr = 6e-4
    c.train.warmup_steps = 100
    c.train.decay_steps = 0  # cosine length including warmup; 0: train.steps
    c.train.min_lr_ratio = 0.1  # GPT-3: cosine decay to 10% of the peak
    c.train.b1 = 0.9
    c.train.b2 = 0.95
    c.train.eps = 1e-8
    c.train.weight_decay = 0.1  # on matrices only
    c.train.grad_clip = 1.0  # global norm
    c.train.seed = 0
    c.train.log_every = 10
    c.train.eval_every = 100
    c.train.eval_batches = 4
    c.train.ckpt_every = 100
    c.train.keep_ckpts = 3
    c.train.async_ckpt = True
    c.train.peak_flops = 0.0  # per device, for MFU; 0: look up the device kind
    c.train.progress = True

    # GPT-1 supervised fine-tuning (gptx/train/finetune.py). The optimizer reads config.train (lr, batch_size,
    # b1, b2, weight_decay, grad_clip, seed); sequences are config.data.seq_len (0: model.block_size) long.
    c.finetune = ml_collections.ConfigDict()
    c.finetune.tasks = "sst2"  # comma-separated names from gptx.data.finetune_tasks.TASKS; several = multi-task model
    c.finetune.data_dir = "../shared/data"  # a relative path is taken from the repository root
    c.finetune.init_from = ""  # workdir whose latest checkpoint holds the pretrained GPT; "" = random init
    c.finetune.epochs = 3.0  # passes over the (combined) training set; 0: run config.train.steps steps
    c.finetune.aux_lm_coef = 0.5  # λ of L3 = L2 + λ·L1
    c.finetune.clf_dropout = 0.1  # dropout on the classifier input
    c.finetune.warmup_fraction = 0.002  # linear warmup over this share of the steps, then linear decay to 0
    c.finetune.eval_fraction = 0.1  # held-out share of the train file for tasks without a dev file (SNLI, HellaSwag)
    c.finetune.train_limit = 0  # use at most this many training examples per task (after a seeded shuffle); 0 = all
    c.finetune.eval_limit = 0  # evaluate on at most this many dev examples per task; 0 = all

    # GPT-4 predictable scaling (gptx/scaling/): the sweep schedule, the fit and the prediction.
    c.scaling = ml_collections.ConfigDict()
    c.scaling.n_sizes = 5  # runs in the sweep, sizes geometric between the min and max below
    c.scaling.d_model_min = 16
    c.scaling.d_model_max = 64
    c.scaling.n_layer_min = 1
    c.scaling.n_layer_max = 3
    c.scaling.head_dim = 8  # n_head = d_model // head_dim; d_model is rounded to a multiple of it
    c.scaling.tokens_per_param = 20.0  # tokens of each run = this x its parameters (Chinchilla: ~20)
    c.scaling.compute_budget = 0.0  # when tokens_per_param is 0: training FLOPs of every run
    c.scaling.min_steps = 20
    c.scaling.smooth_evals = 1  # final loss = mean of the last k eval losses
    c.scaling.holdout = 1  # the largest runs (by compute) left out of the fit and predicted
    c.scaling.law = "compute"  # compute: L(C) = a C^b + c (GPT-4); chinchilla: L(N, D) = E + A/N^alpha + B/D^beta
    c.scaling.exclude_highest = 0  # drop the k highest-loss runs before an L(N, D) fit (the replication drops 5)
    c.scaling.huber_delta = 1e-3
    c.scaling.bootstrap = 200  # resamples for the prediction interval
    c.scaling.ci = 0.9
    c.scaling.seed = 0
    c.scaling.target = ""  # a config to predict, configs/NAME.py[:ARG]; "": the sweep's held-out runs
    c.scaling.measured = 0.0  # the target's measured final loss, once trained (0: not yet)
    return c


def _check_keys(cfg, schema, prefix: str) -> None:
    for key in cfg:
        name = f"{prefix}.{key}"
        if key not in schema:
            close = [k for k in schema if k[:3] == key[:3]]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ConfigError(f"unknown config key {name}{hint}")
        value, want = cfg[key], schema[key]
        if isinstance(want, ml_collections.ConfigDict):
            if not isinstance(value, ml_collections.ConfigDict):
                raise ConfigError(f"{name} must be a section, got {value!r}")
            _check_keys(value, want, name)
        elif isinstance(want, bool) != isinstance(value, bool) or (
            not isinstance(value, type(want)) and not (isinstance(want, float) and isinstance(value, int))
        ):
            raise ConfigError(f"{name}={value!r} should be a {type(want).__name__}")


def _choice(cfg, key: str, choices: tuple[str, ...]) -> None:
    section, field = key.split(".")
    if cfg[section][field] not in choices:
        raise ConfigError(f"config.{key}={cfg[section][field]!r} is not one of {', '.join(choices)}")


def validate_model(m: ml_collections.ConfigDict) -> None:
    """Shape rules of the decoder; errors name the key."""
    for key in ("vocab_size", "block_size", "n_layer", "n_head", "d_model"):
        if m[key] <= 0:
            raise ConfigError(f"config.model.{key}={m[key]} must be positive")
    if m.d_head == 0 and m.d_model % m.n_head:
        raise ConfigError(
            f"config.model.d_model={m.d_model} is not divisible by config.model.n_head={m.n_head} "
            "(set config.model.d_head to decouple them)"
        )
    if m.attention == "alternating" and m.local_window <= 0:
        raise ConfigError(f"config.model.local_window={m.local_window} must be positive for banded attention")
    if m.scan_layers and m.attention == "alternating" and m.n_layer % 2:
        raise ConfigError(f"config.model.n_layer={m.n_layer} must be even to scan alternating dense/banded layers")
    for key in ("dropout", "attn_dropout"):
        if not 0.0 <= m[key] < 1.0:
            raise ConfigError(f"config.model.{key}={m[key]} must be in [0, 1)")


def validate(cfg: ml_collections.ConfigDict, num_devices: int | None = None) -> None:
    """Raises ConfigError for anything that would fail later, before any compilation.

    Args:
      cfg: a full gptx config.
      num_devices: the global device count to check the mesh against; None skips the mesh check.
    """
    _check_keys(cfg, default(), "config")
    _choice(cfg, "model.arch", ARCHS)
    _choice(cfg, "model.attention", ATTENTION_PATTERNS)
    _choice(cfg, "model.remat", REMAT_POLICIES)
    _choice(cfg, "model.dtype", DTYPES)
    _choice(cfg, "model.param_dtype", DTYPES)
    _choice(cfg, "model.attention_impl", ATTENTION_IMPLS)
    _choice(cfg, "mesh.multihost", ("auto", "yes", "no"))
    _choice(cfg, "data.doc_separator", ("blank_line", "line", "none"))
    validate_model(cfg.model)

    t = cfg.train
    for key in ("steps", "batch_size", "grad_accum", "log_every", "eval_every", "ckpt_every", "keep_ckpts"):
        if t[key] <= 0:
            raise ConfigError(f"config.train.{key}={t[key]} must be positive")
    if t.batch_size % t.grad_accum:
        raise ConfigError(
            f"config.train.batch_size={t.batch_size} is not divisible by config.train.grad_accum={t.grad_accum}"
        )
    if t.warmup_steps < 0 or not 0.0 <= t.min_lr_ratio <= 1.0:
        raise ConfigError("config.train.warmup_steps must be >= 0 and config.train.min_lr_ratio in [0, 1]")
    if cfg.data.seq_len > cfg.model.block_size:
        raise ConfigError(
            f"config.data.seq_len={cfg.data.seq_len} exceeds config.model.block_size={cfg.model.block_size}"
        )
    if not 0.0 <= cfg.data.val_fraction < 1.0:
        raise ConfigError(f"config.data.val_fraction={cfg.data.val_fraction} must be in [0, 1)")

    if num_devices is not None:
        from gptx import mesh  # late import: mesh imports jax

        shape = mesh.resolve_mesh_shape(cfg.mesh, num_devices)
        batch_shards = shape["data"] * shape["fsdp"]
        micro = t.batch_size // t.grad_accum
        if micro % batch_shards:
            raise ConfigError(
                f"config.train.batch_size={t.batch_size} / grad_accum={t.grad_accum} = {micro} sequences per "
                f"micro-batch do not split over data*fsdp={batch_shards} devices"
            )
        if cfg.model.n_head % shape["tensor"]:
            raise ConfigError(
                f"config.model.n_head={cfg.model.n_head} is not divisible by config.mesh.tensor={shape['tensor']}"
            )


def seq_len(cfg: ml_collections.ConfigDict) -> int:
    """Training sequence length: data.seq_len, or the model's context when 0."""
    return cfg.data.seq_len or cfg.model.block_size
