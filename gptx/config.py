"""The config schema every gptx run shares, and its validation.

Config files in `configs/` start from `default()` and change fields, big_vision style. `validate()` runs before
anything compiles and turns a wrong key, a wrong type or an impossible shape into one `ConfigError` line that
names the key.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import ml_collections

from gptx.config_data_prep import defaults as data_prep_defaults
from gptx.errors import ConfigError  # noqa: F401  (re-exported: `config.ConfigError` predates gptx.errors)

ARCHS = ("gpt1", "gpt2", "gpt3")
ATTENTION_PATTERNS = ("dense", "alternating")
# config.model.remat -> the `jax.checkpoint_policies` attribute it selects (None: no rematerialisation). The one
# list of remat names: validation checks against its keys, gptx/models/gpt.py looks the policies up from it.
REMAT_POLICIES = {
    "none": None,
    "full": "nothing_saveable",
    "dots": "checkpoint_dots",
    "dots_no_batch": "checkpoint_dots_with_no_batch_dims",
}
DTYPES = ("float32", "bfloat16", "float16")
ATTENTION_IMPLS = ("auto", "xla", "cudnn", "splash")
MESH_AXES = ("data", "fsdp", "tensor")  # the device mesh's axes (gptx/mesh.py), in mesh order


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
    # auto: splash on TPUs, else jax.nn.dot_product_attention's choice (cuDNN on GPUs, xla on CPUs); xla | cudnn;
    # splash: Pallas splash attention (gptx/models/splash.py; interpreted, slowly, off TPU; no attn_dropout)
    c.model.attention_impl = "auto"
    c.model.splash_block_q = 0  # splash's query tile (a multiple of 128); 0: 512
    c.model.splash_block_kv = 0  # splash's key/value tile; 0: 512
    c.model.layer_norm_eps = 1e-5
    c.model.init_std = 0.02
    c.model.dtype = "float32"  # compute dtype (bfloat16 on accelerators)
    c.model.param_dtype = "float32"
    c.model.remat = "none"  # none | full | dots | dots_no_batch
    # Vocab tiling: losses and scores compute the [tokens x vocab] logits this many positions at a time and
    # recompute them in the backward pass (gptx/models/vocab_tiling.py); 0: the whole sequence at once.
    c.model.logits_chunk = 512
    c.model.scan_layers = False

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1  # -1: all devices left after the other axes
    c.mesh.fsdp = 1
    c.mesh.tensor = 1
    c.mesh.dcn_data = 1  # multi-slice TPU: `data` spans this many slices over the data-centre network
    c.mesh.multihost = "auto"  # auto: from the environment; "yes"; "no"
    c.mesh.coordinator_address = ""  # host:port of process 0, for GPU clusters and CPU tests
    c.mesh.num_processes = 0
    c.mesh.process_id = -1

    c.data = ml_collections.ConfigDict()
    c.data.corpus = "bundled:tinyshakespeare"  # a text file (optionally .gz/.xz/.bz2) or bundled:NAME
    c.data.doc_separator = "blank_line"  # how a text file splits into documents: blank_line | line | none
    # A SentencePiece .model, a tokenizer.json, or a directory with one or with vocab.json + merges.txt (GPT-2's);
    # "": the workdir's own (tokenizer.model / tokenizer.json), trained on the corpus if missing.
    c.data.tokenizer = ""
    c.data.seq_len = 0  # 0: model.block_size
    c.data.val_fraction = 0.1  # the last documents form the validation split
    c.data.seed = 0
    c.data.worker_count = 0  # grain worker processes; 0 reads in the main process

    c.tokenizer = ml_collections.ConfigDict()
    c.tokenizer.kind = "sentencepiece"  # sentencepiece (GPT-1-style) | bpe (GPT-2/3's byte-level BPE)
    c.tokenizer.vocab_size = 2048
    c.tokenizer.model_type = "bpe"  # SentencePiece's algorithm: bpe | unigram
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
    c.scaling.d_models = ()  # explicit widths, ascending, n_sizes of them (replace the geometric d_model_min..max)
    c.scaling.head_dim = 8  # n_head = d_model // head_dim; d_model is rounded to a multiple of it
    c.scaling.tokens_per_param = 20.0  # tokens of each run = this x its parameters (Chinchilla: ~20)
    c.scaling.compute_budget = 0.0  # when tokens_per_param is 0: training FLOPs of every run
    # ratios: each size trained once per ratio (a sizes x token-budgets grid, as Chinchilla's L(N, D) fit needs);
    # () trains each size once at tokens_per_param
    c.scaling.tokens_per_param_grid = ()
    c.scaling.min_steps = 20
    c.scaling.smooth_evals = 1  # final loss = mean of the last k eval losses
    c.scaling.holdout = 1  # the largest runs (by compute) left out of the fit and predicted
    c.scaling.law = "compute"  # compute: L(C) = a C^b + c (GPT-4); chinchilla: L(N, D) = E + A/N^alpha + B/D^beta
    c.scaling.exclude_highest = 0  # drop the k highest-loss runs before an L(N, D) fit (the replication drops 5)
    c.scaling.huber_delta = 1e-3
    c.scaling.bootstrap = 200  # case-bootstrap resamples (reported beside the delta-t interval; 0: none)
    c.scaling.ci = 0.9
    c.scaling.seed = 0
    c.scaling.target = ""  # a config to predict, configs/NAME.py[:ARG]; "": the sweep's held-out runs
    c.scaling.measured = 0.0  # the target's measured final loss, once trained (0: not yet)
    # Capability (GPT-4 report, Fig. 2): every run is evaluated at the end of training on these tasks (config.eval's
    # settings: samples, temperature, limit, sandbox), per-task metrics and per-problem pass counts stored beside
    # its loss; "" evaluates nothing. −E_P[log pass_rate] = alpha C^-k is fitted on capability_task ("": the first
    # code or generation task of eval_tasks) and predicted for the held-out runs.
    c.scaling.eval_tasks = ""
    c.scaling.eval_shots = 0
    c.scaling.capability_task = ""
    c.scaling.eval_at = ()  # fractions of each run's steps at which it is also evaluated, e.g. (0.25, 0.5)
    # Generated training data of a capability task mixed into data.corpus (gptx/scaling/capability_data.py):
    # "" none; "max_digit" | "arithmetic" (evaluated by the builtin tasks max_digit_code | arithmetic_code), at this
    # share of the mixed corpus's bytes.
    c.scaling.task_data = ""
    c.scaling.task_data_weight = 0.2

    # GPT-3 data preparation (`prepare` command, gptx/data/prepare.py): gptx/config_data_prep.py.
    c.data_prep = data_prep_defaults()

    # Decoding (gptx/sample.py) for `sample` and the demo; prompts come from --prompt.
    c.sample = ml_collections.ConfigDict()
    c.sample.max_new_tokens = 128
    c.sample.temperature = 0.8  # 0: greedy
    c.sample.top_k = 40  # 0: off
    c.sample.top_p = 1.0  # nucleus mass; 1: off
    c.sample.stop = ("\n\n",)  # stop strings; () for none. EOS always stops a row
    c.sample.seed = 0
    c.sample.cache_segment = 32  # decode the first N new tokens over a short KV cache, doubling after; 0: off
    c.sample.batch_size = 0  # prompts decoded together; 0: all

    # GPT-4V-style vision (gptx/train/vision.py): `train` with vision.task = "clip" aligns a ViT to a GPT text tower
    # (config.model); "multimodal" projects the ViT's patch features into a GPT decoder's (config.model) token stream.
    c.vision = ml_collections.ConfigDict()
    c.vision.task = ""  # "": not a vision run; clip | multimodal
    c.vision.data_dir = "../shared/data"  # a relative path is taken from the repository root
    c.vision.sources = "digits,photos"  # image_text/sklearn_digits (captions made from labels), skimage_clip8
    c.vision.test_fraction = 0.2  # held-out digits (seeded split by data.seed)
    c.vision.image_size = 16  # digits (8x8) are upscaled to this, photos resized
    c.vision.channels = 3
    c.vision.patch_size = 4
    c.vision.width = 64  # ViT
    c.vision.depth = 2
    c.vision.n_head = 4
    c.vision.mlp_dim = 0  # 0: 4 * width
    c.vision.dropout = 0.0
    c.vision.max_rotation = 10.0  # training digits are rotated up to this many degrees
    c.vision.max_shift = 1  # and shifted up to this many pixels
    c.vision.loss = "clip"  # clip: symmetric cross-entropy | siglip: pairwise sigmoid
    c.vision.embed_dim = 64  # joint image-text space
    c.vision.init_temperature = 0.07  # CLIP's initial temperature (SigLIP starts at t = 10, b = -10)
    c.vision.max_logit_scale = 100.0  # the learned logit scale is clamped here
    c.vision.text_len = 16  # caption tokens, BOS and EOS included
    c.vision.encoder_init = ""  # multimodal: a clip workdir whose image tower encodes images (frozen); "": random
    c.vision.decoder_init = ""  # multimodal: a `train` workdir whose GPT is the decoder; "": random init
    c.vision.projector_steps = 100  # stage 1: only the projector trains (LLaVA); then train.steps of stage 2
    c.vision.projector_lr = 1e-3
    c.vision.train_decoder = True  # stage 2 trains projector + decoder; False: the projector only
    c.vision.max_interleaved = 4  # images per interleaved training sequence
    c.vision.photo_repeats = 10  # copies of each captioned photo per epoch
    c.vision.few_shot = 3  # image/answer examples before the query in few-shot prompts
    c.vision.eval_limit = 0  # score at most this many held-out digits at the end; 0 = all

    # Ahead-of-time memory check (gptx/aot.py): the train step compiled for a topology this machine need not have.
    c.aot = ml_collections.ConfigDict()
    c.aot.topology = ""  # v5e:4x4, v4:2x2x2 (TPU chips per slice), h100:2x8 (GPUs), cpu:N, abstract:N
    c.aot.num_slices = 1  # TPU slices joined over the data-centre network (with config.mesh.dcn_data)
    c.aot.device_memory_gib = 0.0  # per device; 0: the chip's nominal memory

    # InstructGPT (gptx/rlhf/): SFT, the K-choose-2 reward model and PPO-ptx. The optimizer of `sft`, `rm` and of
    # the PPO policy reads config.train; sequences are config.data.seq_len (0: model.block_size) long.
    c.rlhf = ml_collections.ConfigDict()
    c.rlhf.stage = ""  # sft | rm | ppo: the step a config file is for (`aot` compiles the PPO step for "ppo")
    c.rlhf.init_from = ""  # sft: pretrained workdir; rm and ppo: the SFT workdir ("" = random init)
    c.rlhf.allow_random_init = False  # rm: train from random weights when init_from is "" (else an error)
    c.rlhf.reward_from = ""  # ppo: the reward model's workdir (reward, value init, normalisation)
    # The reward (and so the value) model's own shape: name = "" (the shape saved with reward_from, else the
    # policy's), a paper size ("gpt3:6.7b", "gpt2:355m", "gpt1:117m") or a workdir whose config.json gives it;
    # nonzero fields below override the named shape (gptx/rlhf/sizes.py).
    c.rlhf.reward_model = ml_collections.ConfigDict()
    c.rlhf.reward_model.name = ""
    c.rlhf.reward_model.n_layer = 0
    c.rlhf.reward_model.n_head = 0
    c.rlhf.reward_model.d_model = 0
    c.rlhf.reward_model.d_head = 0
    c.rlhf.reward_model.d_ff = 0
    # rm: "reference" (lm-human-preferences: gain and bias give SFT samples mean 0, std 1) or "demonstrations"
    # (InstructGPT: gain 1, a bias that gives the demonstrations of config.rlhf.demonstrations mean 0).
    c.rlhf.reward_norm = "reference"
    c.rlhf.data_dir = "../shared/data"  # a relative path is taken from the repository root
    c.rlhf.demonstrations = "self_instruct"  # sft: self_instruct | corpus (next-line continuations of data.corpus)
    c.rlhf.comparisons = "hh_rlhf"  # rm: hh_rlhf | labeler (K SFT samples per prompt ranked by rlhf.labeler)
    c.rlhf.prompts = "hh_rlhf"  # ppo and labeler prompts: hh_rlhf | self_instruct | corpus
    c.rlhf.labeler = "vader"  # the scorer that stands in for human labelers (vader: VADER compound sentiment)
    c.rlhf.test_fraction = 0.1  # held-out share of prompts (seeded split by prompt)
    c.rlhf.seed = 0
    c.rlhf.epochs = 1.0  # sft / rm passes over the training set; 0: train.steps steps
    c.rlhf.max_prompt_len = 48  # tokens; a longer prompt keeps its end (the latest turn)
    c.rlhf.max_response_len = 32  # tokens, EOS included
    c.rlhf.corpus_prompt_lines = 2  # corpus prompts: this many lines; the next line is the demonstration
    c.rlhf.k = 4  # responses per prompt the labeler ranks
    c.rlhf.label_prompts = 256  # prompts the labeler ranks K SFT samples of
    c.rlhf.norm_samples = 256  # SFT samples that set the reward model's gain and bias
    c.rlhf.select_from = ""  # sft: an RM workdir; keep the kept checkpoint whose samples it scores highest
    c.rlhf.temperature = 0.7  # sampling temperature of rollouts; log-probs use the same one
    c.rlhf.iterations = 100  # ppo: rollout + update rounds
    c.rlhf.rollout_batch = 64  # episodes per rollout
    c.rlhf.minibatch = 16  # episodes per PPO minibatch
    c.rlhf.ppo_epochs = 4  # passes over each rollout
    c.rlhf.kl_coef = 0.2  # β of r_t = -β (log π - log π_ref); the adaptive controller's starting value
    c.rlhf.adaptive_kl = True  # Ziegler et al. (2019) controller
    c.rlhf.kl_target = 6.0  # nats per episode
    c.rlhf.kl_horizon = 10000  # episodes
    c.rlhf.gamma = 1.0
    c.rlhf.lam = 0.95
    c.rlhf.cliprange = 0.2
    c.rlhf.cliprange_value = 0.2
    c.rlhf.whiten_advantages = True
    c.rlhf.whiten_rewards = False  # lm-human-preferences' whiten_rewards: per-token rewards scaled to unit variance
    c.rlhf.value_lr = 1e-5  # Adam of the value model (the policy uses train.lr)
    c.rlhf.ptx_coef = 0.0  # γ of PPO-ptx (InstructGPT: 27.8); 0 = plain PPO
    c.rlhf.ptx_batch = 8  # pretraining sequences per PPO minibatch
    c.rlhf.missing_eos_penalty = 0.0  # subtracted from the score of a response that never emits EOS
    c.rlhf.eval_prompts = 64  # held-out prompts whose samples ppo scores at the end

    # In-context learning evaluation (gptx/eval/): the `eval` command and the demo's fewshot stage.
    c.eval = ml_collections.ConfigDict()
    # Comma-separated built-in task or group names (the task files of gptx/eval/builtin) and task/group file
    # paths.
    c.eval.tasks = "lambada,hellaswag,two_digit_addition"
    c.eval.shots = "0,1,8"  # demonstrations per prompt, one evaluation per value
    c.eval.limit = 0  # evaluate the first N docs of each task; 0 = all
    c.eval.batch_size = 16  # sequences per forward pass (scores change only by float rounding)
    c.eval.seed = 1234  # draws the demonstrations
    c.eval.data_dir = "../shared/data"  # task files; a relative path is taken from the repository root
    c.eval.max_new_tokens = 0  # generation length of generate tasks; 0 = each task's own
    c.eval.rolling_stride = 0  # perplexity windows predict this many new tokens each; 0 = the context length
    c.eval.grader = ""  # model-graded metric: "" none, "self", or a workdir holding a grader of config.model
    c.eval.examples = 0  # keep this many prompts (and generations) per task and shot count in the JSON
    # What a request is conditioned on before its text (the model's training convention): "auto" = the
    # tokenizer's (BOS for gptx-trained models; for GPT-2, no BOS and <|endoftext|> before empty contexts and
    # rolling texts, as lm-evaluation-harness), or "bos", "eos", "none" (see gptx.eval.requests.ContextPrefix).
    c.eval.context_prefix = "auto"
    c.eval.output = ""  # results JSON; "" = WORKDIR/eval_results.json
    # Keep log-likelihood scores in WORKDIR/eval_cache/ (per checkpoint step), so a rerun with more tasks or shots
    # scores only new requests; one process, local workdirs.
    c.eval.cache = True
    # Code tasks (kind "code"): samples per problem and how they are drawn (0 / -1: each task's own), and the
    # sandbox each program runs in (gptx/eval/sandbox.py).
    c.eval.samples = 0  # n completions per problem; pass@k is reported for the task's k <= n
    c.eval.temperature = -1.0  # sampling temperature; < 0 = the task's (0 = greedy)
    c.eval.top_p = 0.0  # nucleus; 0 = the task's
    c.eval.sandbox_timeout = 10.0  # wall-clock seconds per program
    c.eval.sandbox_memory_mb = 1024  # address space per program
    c.eval.sandbox_workers = 0  # programs run at once; 0 = one per CPU core
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


def _choice(cfg, key: str, choices: Iterable[str]) -> None:
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
    if m.logits_chunk < 0:
        raise ConfigError(f"config.model.logits_chunk={m.logits_chunk} must be >= 0 (0: no vocab tiling)")
    if m.attention == "alternating" and m.local_window <= 0:
        raise ConfigError(f"config.model.local_window={m.local_window} must be positive for banded attention")
    if m.scan_layers and m.attention == "alternating" and m.n_layer % 2:
        raise ConfigError(f"config.model.n_layer={m.n_layer} must be even to scan alternating dense/banded layers")
    for key in ("dropout", "attn_dropout"):
        if not 0.0 <= m[key] < 1.0:
            raise ConfigError(f"config.model.{key}={m[key]} must be in [0, 1)")
    _validate_splash(m)


def _validate_splash(m: ml_collections.ConfigDict) -> None:
    """Splash attention never forms the attention probabilities, so it cannot drop them; its tiles are whole
    multiples of the TPU's 128 lanes (0: the default)."""
    if m.attention_impl == "splash" and m.attn_dropout > 0.0:
        raise ConfigError(
            f"config.model.attn_dropout={m.attn_dropout} needs the attention probabilities, which "
            "config.model.attention_impl=splash never forms: set attn_dropout=0 (or attention_impl=xla)"
        )
    for key in ("splash_block_q", "splash_block_kv"):
        block = m[key]
        if block < 0 or block % 128:
            raise ConfigError(f"config.model.{key}={block} must be a multiple of 128 (0: the default, 512)")


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
    _choice(cfg, "tokenizer.kind", ("sentencepiece", "bpe"))
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
        shape = resolve_mesh_shape(cfg.mesh, num_devices)
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


def resolve_mesh_shape(mesh_cfg: ml_collections.ConfigDict, num_devices: int) -> dict[str, int]:
    """Mesh axis sizes with the one -1 filled in; raises ConfigError when the product misses num_devices.

    Pure Python (no jax), so `validate` can check a mesh before any device starts; gptx/mesh.py re-exports it.
    """
    sizes = {axis: int(mesh_cfg[axis]) for axis in MESH_AXES}
    free = [axis for axis, n in sizes.items() if n == -1]
    if len(free) > 1:
        raise ConfigError(f"only one of config.mesh.{{data,fsdp,tensor}} may be -1, got {sizes}")
    for axis, n in sizes.items():
        if n == 0 or n < -1:
            raise ConfigError(f"config.mesh.{axis}={n} must be positive or -1")
    fixed = math.prod(n for n in sizes.values() if n != -1)
    if free:
        if num_devices % fixed:
            raise ConfigError(
                f"config.mesh {sizes}: the fixed axes ({fixed} devices) do not divide {num_devices} devices"
            )
        sizes[free[0]] = num_devices // fixed
    elif fixed != num_devices:
        raise ConfigError(f"config.mesh {sizes} needs {fixed} devices but {num_devices} are available")
    dcn = int(mesh_cfg.get("dcn_data", 1))
    if dcn < 1 or sizes["data"] % dcn:
        raise ConfigError(f"config.mesh.dcn_data={dcn} must be positive and divide config.mesh.data={sizes['data']}")
    return sizes


def seq_len(cfg: ml_collections.ConfigDict) -> int:
    """Training sequence length: data.seq_len, or the model's context when 0."""
    return cfg.data.seq_len or cfg.model.block_size
