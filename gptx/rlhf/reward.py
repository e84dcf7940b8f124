"""The reward model (InstructGPT, Sec. 3.5): the `rm` command.

The SFT model with its unembedding replaced by a scalar head; r(x, y) is the head's output at the last real
token of prompt + response. Labelers rank K responses to a prompt; the paper trains on all C(K, 2) comparisons
of a prompt as ONE batch element,

    loss(θ) = -1/C(K, 2) · Σ_{(y_w, y_l)} log σ(r(x, y_w) - r(x, y_l)),

because the comparisons of a prompt are strongly correlated: shuffled into separate elements they make the model
overfit within one epoch, while one element per prompt needs a single forward pass per response (K passes
instead of K(K-1)) and does not overfit. Each element holds the K responses [K, T] and the winner/loser indices
of its pairs; responses that tie give no pair (the normaliser counts the pairs present).

The RM loss is invariant to a shift of the reward, so after training the reward is normalised, one of two ways
(config.rlhf.reward_norm):

  reference       lm-human-preferences: a gain and bias give the scores of reference samples (SFT samples on
                  training prompts) mean 0 and standard deviation 1, so that PPO's KL coefficient means the same
                  thing for any RM;
  demonstrations  InstructGPT (Sec. 3.5): gain 1 and a bias that gives the labelers' demonstrations (those of
                  config.rlhf.demonstrations, SFT's training data) a mean score of 0; the scale stays the RM's own.

The RM has a shape of its own (config.rlhf.reward_model, gptx/rlhf/sizes.py); its trunk starts from
config.rlhf.init_from, an SFT or pretrained run of that shape, and training from random weights must be asked for
(config.rlhf.allow_random_init). Reported: pairwise accuracy on held-out comparisons with its 95% interval.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from flax import linen as nn
from jax.sharding import Mesh

from gptx import config as config_lib
from gptx import flops as flops_lib
from gptx import mesh as mesh_lib
from gptx import sample
from gptx.config import ConfigError
from gptx.data import tokenizer as tokenizer_lib
from gptx.models import GPT, GPTConfig
from gptx.models.heads import RewardModel
from gptx.rlhf import common, data, labeler, sizes
from gptx.train import checkpoints, integrity, logs, loop
from gptx.train import step as step_lib
from gptx.train.state import TrainState, lr_schedule, make_optimizer

RESULTS = "rm_results.json"
NORM = "reward_norm.json"
COMPARISONS = "comparisons.jsonl"


def sequence_scores(model: RewardModel, params, tokens: jax.Array, mask: jax.Array, deterministic=True, rng=None):
    """r(x, y) [B] of sequences [B, T] whose real tokens are `mask` (any padding side), read at the last one."""
    mask = mask.astype(bool)
    per_token = model.apply(
        {"params": params},
        tokens,
        sample.positions_from_mask(mask),
        mask.astype(jnp.int32),
        deterministic=deterministic,
        rngs=None if deterministic else {"dropout": rng},
    )
    return common.gather_last(per_token, mask)


def comparison_scores(model: RewardModel, params, batch, deterministic=True, rng=None) -> jax.Array:
    """Scores [B, K] of the K responses of each batch element (tokens [B, K, T])."""
    b, k, t = batch["tokens"].shape
    flat = sequence_scores(
        model,
        params,
        batch["tokens"].reshape(b * k, t),
        batch["segment_ids"].reshape(b * k, t) > 0,
        deterministic,
        rng,
    )
    return flat.reshape(b, k)


def pair_terms(scores: jax.Array, batch) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """For scores [B, K]: (per-element loss -1/C · Σ log σ(r_w - r_l) [B], element weight [B], r_w - r_l [B, C],
    pair weight [B, C]). An element's loss averages over its own pairs; elements without pairs or with weight 0
    count for nothing."""
    r_w = jnp.take_along_axis(scores, batch["pair_w"], axis=1)  # [B, C]
    r_l = jnp.take_along_axis(scores, batch["pair_l"], axis=1)
    mask = batch["pair_mask"]
    n_pairs = jnp.sum(mask, axis=1)
    per_element = -jnp.sum(jax.nn.log_sigmoid(r_w - r_l) * mask, axis=1) / jnp.maximum(n_pairs, 1.0)
    w = batch["weight"][:, 0] * (n_pairs > 0)
    return per_element, w, r_w - r_l, mask * w[:, None]


def pair_norms(batch) -> dict[str, jax.Array]:
    """Elements with at least one pair, and pairs, of the whole batch (the loss's and accuracy's normalisers)."""
    mask = batch["pair_mask"]
    w = batch["weight"][:, 0] * (jnp.sum(mask, axis=1) > 0)
    return {"elements": jnp.sum(w), "pairs": jnp.sum(mask * w[:, None])}


def pairwise_loss(scores: jax.Array, batch) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    """(sum over elements of -1/C · Σ log σ(r_w - r_l), number of elements, metrics) for scores [B, K]."""
    per_element, w, gap, pair_w = pair_terms(scores, batch)
    pairs = jnp.maximum(jnp.sum(pair_w), 1.0)
    metrics = {"accuracy": jnp.sum((gap > 0) * pair_w) / pairs, "reward_gap": jnp.sum(gap * pair_w) / pairs}
    return jnp.sum(per_element * w), jnp.sum(w), metrics


def loss(model: RewardModel) -> step_lib.Loss:
    """The K-choose-2 loss averaged over the batch's elements (however the batch is split into micro-batches);
    metrics: pairwise accuracy and mean reward gap r_w - r_l over its pairs."""

    def fn(params, batch, rng, norms):
        scores = comparison_scores(model, params, batch, deterministic=rng is None, rng=rng)
        per_element, w, gap, pair_w = pair_terms(scores, batch)
        pairs = jnp.maximum(norms["pairs"], 1.0)
        metrics = {"accuracy": jnp.sum((gap > 0) * pair_w) / pairs, "reward_gap": jnp.sum(gap * pair_w) / pairs}
        return jnp.sum(per_element * w) / jnp.maximum(norms["elements"], 1.0), metrics

    return step_lib.Loss(fn=fn, norms=pair_norms)


def make_init_fn(model: RewardModel, tx, seq_len: int, sft_params: Any | None):
    """rng -> TrainState; the trunk from the SFT model when given (its unembedding is simply unused)."""

    def init_fn(rng: jax.Array) -> TrainState:
        init_rng, grow_rng = jax.random.split(rng)
        params = model.init(init_rng, jnp.zeros((1, seq_len), jnp.int32))["params"]
        if sft_params is not None:
            trunk = checkpoints.merge_params(params["gpt"], sft_params, grow_rng, model.cfg.init_std)
            params = {**params, "gpt": trunk}
        return TrainState.create(apply_fn=model.apply, params=params, tx=tx)

    return init_fn


def normalisation(raw_scores: np.ndarray, scale: bool = True) -> dict[str, float]:
    """Gain and bias with gain·r + bias of mean 0 over the samples' raw scores, and std 1 when `scale`
    (lm-human-preferences); without `scale` the gain is 1 and only the bias moves (InstructGPT)."""
    mean, std = float(np.mean(raw_scores)), float(np.std(raw_scores))
    gain = 1.0 / max(std, 1e-8) if scale else 1.0
    return {"gain": gain, "bias": -mean * gain, "mean": mean, "std": std, "samples": int(len(raw_scores))}


def wilson_interval(successes: float, n: float, z: float = 1.959964) -> tuple[float, float]:
    """The Wilson score interval (95% by default) of a proportion successes / n; (0, 1) when n is 0."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(centre - half), float(centre + half)


# ------------------------------------------------------------------------------------------------------------
# A trained reward model, as later stages use it


_jit_sequence_scores = jax.jit(sequence_scores, static_argnums=0)


@dataclasses.dataclass
class LoadedReward:
    model: RewardModel
    params: Any
    gain: float
    bias: float

    def raw_scores(self, tokens: np.ndarray, mask: np.ndarray, mesh: Mesh, batch_size: int) -> np.ndarray:
        """r(x, y) of [N, T] host sequences, in batches of `batch_size` rows (the last one padded)."""
        score = functools.partial(_jit_sequence_scores, self.model)  # compiled once per model and shape
        out = []
        for start in range(0, len(tokens), batch_size):
            t, m = tokens[start : start + batch_size], mask[start : start + batch_size]
            pad = batch_size - len(t)
            t, m = np.concatenate([t, t[:1].repeat(pad, 0)]), np.concatenate([m, m[:1].repeat(pad, 0)])
            dev = common.put_rows(mesh, {"t": t, "m": m})
            out.append(common.to_host(score(self.params, dev["t"], dev["m"]))[: batch_size - pad])
        return np.concatenate(out)

    def score_texts(self, policy: GPT, policy_params, tok, prompts, cfg, mesh: Mesh) -> np.ndarray:
        """Normalised scores of one sample of `policy` per prompt."""
        r = cfg.rlhf
        ids, _ = common.sample_responses(
            policy,
            policy_params,
            tok,
            prompts,
            r,
            seed=r.seed,
            mesh=mesh,
        )
        tokens, mask = pack_sequences(tok, prompts, ids, r.max_prompt_len + r.max_response_len, r.max_prompt_len)
        return self.gain * self.raw_scores(tokens, mask, mesh, r.rollout_batch) + self.bias


def pack_sequences(tok, prompts, response_ids, length: int, max_prompt_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded [N, length] prompt + response token arrays and masks."""
    tokens = np.full((len(prompts), length), tok.pad_id, np.int32)
    mask = np.zeros((len(prompts), length), bool)
    for i, (p, ids) in enumerate(zip(prompts, response_ids, strict=True)):
        seq = (data.encode_prompt(tok, p, max_prompt_len) + list(ids))[:length]
        tokens[i, : len(seq)], mask[i, : len(seq)] = seq, True
    return tokens, mask


def load_reward(
    workdir: str, cfg: ml_collections.ConfigDict, mesh: Mesh, model: RewardModel | None = None
) -> LoadedReward:
    """The reward model of an `rm` run: params restored straight into their shardings on `mesh` and its
    normalisation. model: the RewardModel to load into (default: the reward model's shape, sizes.py)."""
    model = model or RewardModel(GPTConfig.from_config(sizes.reward_model_config(cfg, workdir)))
    norm_path = os.path.join(workdir, NORM)
    if not os.path.exists(norm_path):
        raise FileNotFoundError(f"{norm_path} not found: config.rlhf.reward_from must be an `rm` workdir")
    with open(norm_path) as f:
        norm = json.load(f)
    target = checkpoints.abstract_params(model, jnp.zeros((1, config_lib.seq_len(cfg)), jnp.int32))
    with mesh_lib.activation_rules(mesh):
        params = common.load_params(workdir, mesh, target, what="a reward model's workdir")
    params = common.grow_to(model, params, mesh, config_lib.seq_len(cfg))
    return LoadedReward(model, params, float(norm["gain"]), float(norm["bias"]))


def param_shardings(model: nn.Module, mesh: Mesh, seq_len: int) -> Any:
    """NamedShardings of a model's params under the mesh rules."""
    return mesh_lib.tree_shardings(mesh, checkpoints.abstract_params(model, jnp.zeros((1, seq_len), jnp.int32)))


# ------------------------------------------------------------------------------------------------------------
# Comparisons


def labeler_comparisons(cfg, policy: GPT, params, tok, prompts, mesh: Mesh, seed: int) -> list[data.Comparison]:
    """K samples of `policy` per prompt, ranked by config.rlhf.labeler (higher score = preferred)."""
    r = cfg.rlhf
    score = labeler.get(r.labeler)
    repeated = [p for p in prompts for _ in range(r.k)]
    # At rlhf.temperature: the distribution PPO will sample from, which the RM must rank.
    ids, texts = common.sample_responses(
        policy,
        params,
        tok,
        repeated,
        r,
        seed=seed,
        mesh=mesh,
        progress=cfg.train.progress,
    )
    scores = score(texts)
    out = []
    for i, p in enumerate(prompts):
        sl = slice(i * r.k, (i + 1) * r.k)
        out.append(data.Comparison.from_scores(p, texts[sl], scores[sl].tolist()))
    return out


def read_comparisons(cfg, workdir: str, mesh: Mesh, tok) -> tuple[list, list, dict[str, Any]]:
    """(train, test) comparisons of config.rlhf.comparisons and a report of their source."""
    r = cfg.rlhf
    if r.comparisons == "hh_rlhf":
        result = data.read_hh_rlhf(data.data_path(cfg, data.HH_RLHF))
        if result.malformed:
            logging.warning("%s", result.summary())
        train, test = data.split_by_prompt(result.examples, r.test_fraction, r.seed)
        return train, test, {"source": result.path, "malformed": result.malformed}
    if not r.init_from:
        raise ConfigError("config.rlhf.comparisons='labeler' ranks SFT samples: set config.rlhf.init_from")
    prompts, source = data.prompts(cfg)
    train_p, test_p = data.split_by_prompt(prompts, r.test_fraction, r.seed)
    n_test = max(1, r.label_prompts // 4)
    policy = GPT(GPTConfig.from_config(cfg.model))
    params = common.load_init(cfg, mesh, policy)
    with mesh_lib.activation_rules(mesh):
        train = labeler_comparisons(cfg, policy, params, tok, train_p[: r.label_prompts], mesh, r.seed)
        test = labeler_comparisons(cfg, policy, params, tok, test_p[:n_test], mesh, r.seed + 1)
    if jax.process_index() == 0:
        with open(os.path.join(workdir, COMPARISONS), "w") as f:
            for split, comps in (("train", train), ("test", test)):
                for c in comps:
                    f.write(json.dumps({"split": split, **dataclasses.asdict(c)}) + "\n")
    # A prompt whose K samples all tie (e.g. no sentiment word in any) teaches nothing: counted, then left out.
    ties = sum(not c.pairs for c in train + test)
    train, test = [c for c in train if c.pairs], [c for c in test if c.pairs]
    report = {
        "source": f"{r.labeler} ranking K={r.k} SFT samples of prompts from {source}",
        "all_tied_prompts": ties,
        "pairs_per_prompt": float(np.mean([len(c.pairs) for c in train])) if train else 0.0,
    }
    return train, test, report


# ------------------------------------------------------------------------------------------------------------
# The command


def make_trainer(cfg, tok: tokenizer_lib.Tokenizer, k: int, train, test, sft_params=None):
    """(Trainer, model) of a reward model run of cfg.train.steps steps."""
    model = RewardModel(GPTConfig.from_config(cfg.model))
    t, r = cfg.train, cfg.rlhf
    seq_len = config_lib.seq_len(cfg)

    def encode(comp, weight):
        return data.rm_example(tok, comp, seq_len, k, r.max_prompt_len, r.max_response_len, weight)

    tokens = t.batch_size * k * seq_len
    trainer = loop.Trainer(
        init_fn=make_init_fn(model, make_optimizer(t), seq_len, sft_params),
        train_step=step_lib.make_train_step(loss(model), grad_accum=t.grad_accum, lr_fn=lr_schedule(t)),
        train_data=data.batches(train, encode, t.batch_size, cfg.data.seed, train=True),
        eval_step=step_lib.make_eval_step(loss(model), "elements"),
        eval_data=(lambda: data.batches(test, encode, t.batch_size, train=False)) if test else None,
        flops_per_step=flops_lib.flops_per_token(model.cfg, seq_len) * tokens,
        tokens_per_step=tokens,
    )
    return trainer, model


def accuracy(model: RewardModel, params, comps, encode, batch_size: int, mesh: Mesh) -> dict[str, float]:
    """Pairwise accuracy and mean loss over every comparison in `comps`."""
    jscores = jax.jit(lambda p, b: pairwise_loss(comparison_scores(model, p, b), b))
    right = pairs = loss = elements = 0.0
    with mesh_lib.activation_rules(mesh):
        for batch in data.batches(comps, encode, batch_size, train=False):
            total, n, m = jax.device_get(jscores(params, mesh_lib.put_batch(mesh, batch)))
            n_pairs = float(np.sum(batch["pair_mask"] * batch["weight"]))
            right, pairs = right + float(m["accuracy"]) * n_pairs, pairs + n_pairs
            loss, elements = loss + float(total), elements + float(n)
    low, high = wilson_interval(right, pairs)
    return {
        "pairwise_accuracy": right / max(pairs, 1.0),
        "ci95": [low, high],
        "loss": loss / max(elements, 1.0),
        "pairs": int(pairs),
    }


def run(cfg: ml_collections.ConfigDict, workdir: str, mesh: Mesh | None = None) -> dict[str, Any]:
    """`gptx.main rm`: trains the reward model, normalises it (config.rlhf.reward_norm), reports held-out
    accuracy. The model is init_from's (an SFT or pretrained run) with config.rlhf.reward_model's shape, if set."""
    data.validate(cfg, "rm")
    require_init(cfg)
    cfg = integrity.with_model_of(cfg, cfg.rlhf.init_from, grow_vocab=True)
    cfg.model = sizes.reward_model_config(cfg)
    mesh = mesh or mesh_lib.make_mesh(cfg.mesh)
    tok = common.resolve_tokenizer(cfg, workdir)
    os.makedirs(workdir, exist_ok=True)
    r = cfg.rlhf
    train, test, report = read_comparisons(cfg, workdir, mesh, tok)
    k = max(len(c.responses) for c in train + test)
    logging.info("%d train / %d test comparisons, K = %d", len(train), len(test), k)
    run_cfg = cfg.copy_and_resolve_references()
    run_cfg.train.steps = common.steps_for(cfg, len(train))
    sft_params = common.load_init(cfg, mesh, RewardModel(GPTConfig.from_config(cfg.model)))
    trainer, model = make_trainer(run_cfg, tok, k, train, test, sft_params)
    result = loop.train(trainer, run_cfg, workdir, mesh)
    params = result.state.params
    del trainer, sft_params  # the initial trunk is not needed again: free it before sampling

    seq_len = config_lib.seq_len(cfg)

    def encode(comp, weight):
        return data.rm_example(tok, comp, seq_len, k, r.max_prompt_len, r.max_response_len, weight)

    held_out = accuracy(model, params, test, encode, cfg.train.batch_size, mesh)
    on_train = accuracy(model, params, train[:512], encode, cfg.train.batch_size, mesh)
    if r.reward_norm == "demonstrations":
        norm = demonstration_normalisation(cfg, model, params, tok, mesh)
    else:
        norm = reference_normalisation(cfg, model, params, tok, train, mesh)
    out = {
        **report,
        "train_comparisons": len(train),
        "test_comparisons": len(test),
        "k": k,
        "steps": int(result.state.step),
        "test": held_out,
        "train_sample": on_train,
        "normalisation": norm,
    }
    logs.write_json(os.path.join(workdir, NORM), norm)
    logs.write_json(os.path.join(workdir, RESULTS), out)
    if jax.process_index() == 0:
        print(
            f"rm: held-out pairwise accuracy {held_out['pairwise_accuracy']:.4f} "
            f"(95% interval {held_out['ci95'][0]:.3f}-{held_out['ci95'][1]:.3f}) on {held_out['pairs']} pairs "
            f"(train sample {on_train['pairwise_accuracy']:.4f}); gain {norm['gain']:.4f} bias {norm['bias']:.4f}"
        )
    return out


def require_init(cfg: ml_collections.ConfigDict) -> None:
    """ConfigError unless the reward model starts from a trained model or random weights are asked for: an RM
    trained from scratch on a few thousand comparisons learns little, and nothing else says it was."""
    if not cfg.rlhf.init_from and not cfg.rlhf.allow_random_init:
        raise ConfigError(
            "rm needs config.rlhf.init_from (the workdir of an SFT or pretrained run to start the reward model from); "
            "to train it from random weights, pass --config.rlhf.allow_random_init=True"
        )


def demonstration_normalisation(cfg, model: RewardModel, params, tok, mesh: Mesh) -> dict[str, Any]:
    """InstructGPT's convention: gain 1 and the bias that gives the demonstrations (config.rlhf.demonstrations,
    up to rlhf.norm_samples of them) a mean score of 0."""
    r = cfg.rlhf
    demos = data.demonstrations(cfg).examples
    demos = [demos[i] for i in np.random.default_rng(r.seed).permutation(len(demos))[: r.norm_samples]]
    ids = [data.encode_response(tok, d.response, r.max_response_len) for d in demos]
    length = r.max_prompt_len + r.max_response_len
    tokens, mask = pack_sequences(tok, [d.prompt for d in demos], ids, length, r.max_prompt_len)
    with mesh_lib.activation_rules(mesh):
        raw = LoadedReward(model, params, 1.0, 0.0).raw_scores(tokens, mask, mesh, r.rollout_batch)
    return {**normalisation(raw, scale=False), "reference": f"{len(demos)} demonstrations ({r.demonstrations})"}


def reference_normalisation(cfg, model: RewardModel, params, tok, train, mesh: Mesh) -> dict[str, Any]:
    """Gain/bias from SFT samples on training prompts (config.rlhf.init_from); without an SFT model, from the
    training comparisons' own responses."""
    r = cfg.rlhf
    prompts = list(dict.fromkeys(c.prompt for c in train))
    rng = np.random.default_rng(r.seed)
    prompts = [prompts[i] for i in rng.permutation(len(prompts))[: r.norm_samples]]
    length = r.max_prompt_len + r.max_response_len
    with mesh_lib.activation_rules(mesh):
        if r.init_from:
            policy = GPT(GPTConfig.from_config(cfg.model))
            ids, _ = common.sample_responses(
                policy,
                common.load_init(cfg, mesh, policy),
                tok,
                prompts,
                r,
                seed=r.seed + 2,
                mesh=mesh,
            )
            source = f"{len(prompts)} SFT samples (temperature {r.temperature}) of training prompts"
        else:
            pairs = [(c.prompt, resp) for c in train for resp in c.responses][: r.norm_samples]
            prompts = [p for p, _ in pairs]
            ids = [data.encode_response(tok, resp, r.max_response_len) for _, resp in pairs]
            source = f"{len(pairs)} responses of the training comparisons (no SFT model)"
        tokens, mask = pack_sequences(tok, prompts, ids, length, r.max_prompt_len)
        loaded = LoadedReward(model, params, 1.0, 0.0)
        raw = loaded.raw_scores(tokens, mask, mesh, r.rollout_batch)
    return {**normalisation(raw), "reference": source}
