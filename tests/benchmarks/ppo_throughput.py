"""Benchmark: PPO iterations of the demo config (or a 350M policy on an accelerator), time split by phase.

    python tests/benchmarks/ppo_throughput.py [--size=demo|350m] [--iterations=5]

Random-weight policy, reference, value and reward models (throughput does not depend on the weights) run full
PPO iterations: rollout (KV-cache decoder), scoring (four forward passes), update (ppo_epochs x minibatches of
policy and value steps). The peer is Hugging Face `GPT2LMHeadModel.generate` (PyTorch, KV cache, sampling) on
the same shapes on CPU, in alternating repeats with the rollout (medians). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import numpy as np
from machine import LoadWatch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from gptx import mesh as mesh_lib  # noqa: E402
from gptx import sample  # noqa: E402
from gptx.rlhf import common, ppo, recipes  # noqa: E402


def config(size: str):
    c = recipes.step_config("ppo", "demo")
    if size == "350m":
        c.model.update(vocab_size=50257, block_size=2048, n_layer=24, n_head=16, d_model=1024, dtype="bfloat16")
        c.rlhf.update(max_prompt_len=256, max_response_len=128, rollout_batch=64, minibatch=16)
    c.mesh.update(data=-1, fsdp=1, tensor=1)
    return c


def hf_generate(c, prompt, mask):
    """A function running Hugging Face `generate` (sampling, KV cache) on the prompts, after one warm-up call."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    m = c.model
    model = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=m.vocab_size,
            n_positions=m.block_size,
            n_embd=m.d_model,
            n_layer=m.n_layer,
            n_head=m.n_head,
            pad_token_id=3,
            eos_token_id=2,
            bos_token_id=1,
        )
    ).eval()
    ids, attn = torch.as_tensor(prompt, dtype=torch.long), torch.as_tensor(mask, dtype=torch.long)
    n = c.rlhf.max_response_len
    kwargs = dict(attention_mask=attn, max_new_tokens=n, min_new_tokens=n, do_sample=True, temperature=0.7, top_k=0)

    def run() -> None:
        with torch.no_grad():
            model.generate(ids, **kwargs)

    run()  # warm-up
    return run


def alternate(sides: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each side's call over `repeats` rounds that alternate the sides."""
    times = {name: [] for name in sides}
    for _ in range(repeats):
        for name, fn in sides.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: float(np.median(v)) for name, v in times.items()}


def main() -> None:
    load = LoadWatch()
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", default="demo", choices=["demo", "350m"])
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5, help="alternating rollout repeats against HF generate")
    args = parser.parse_args()
    c = config(args.size)
    r = c.rlhf
    mesh = mesh_lib.make_mesh(c.mesh)
    models = ppo.ppo_models(c)
    hp = ppo.PPOConfig.from_config(r, eos_id=-1)  # no EOS: every response has full length, as in HF's run
    seq = r.max_prompt_len + r.max_response_len
    with mesh_lib.activation_rules(mesh):
        state = ppo.init_sharded(ppo.make_init_fn(models, c, None, None, seq), mesh, jax.random.key(0))
        copy = lambda tree: jax.tree.map(lambda x: x.copy(), tree)  # noqa: E731  (the update donates the state)
        frozen = ppo.make_frozen(models, copy(state.policy.params), copy(state.value.params), 1.0, 0.0, mesh, seq)
        steps = ppo.compile_steps(models, hp, mesh, jax.tree.map(lambda x: x.sharding, state))
        sampling = sample.SamplingConfig(max_new_tokens=r.max_response_len, temperature=r.temperature, pad_id=3)
        rng = np.random.default_rng(0)
        lengths = rng.integers(r.max_prompt_len // 2, r.max_prompt_len + 1, r.rollout_batch)
        prompts = [[1, *rng.integers(4, c.model.vocab_size, n - 1)] for n in lengths]
        tokens, mask = sample.left_pad(prompts, 3)
        dev = common.put_rows(mesh, {"prompt": tokens, "prompt_mask": mask})
        times = {"generation": [], "scoring": [], "update": []}
        for it in range(args.iterations + 1):  # iteration 0 compiles
            t0 = time.perf_counter()
            out = sample.decode(
                models.policy, state.policy.params, dev["prompt"], dev["prompt_mask"], jax.random.key(it), sampling
            )
            jax.block_until_ready(out)
            t1 = time.perf_counter()
            rollout, metrics = steps.score(state, frozen, dev["prompt"], dev["prompt_mask"], out.tokens, out.mask)
            jax.block_until_ready(rollout)
            t2 = time.perf_counter()
            state, _ = steps.update(state, rollout, None, jax.random.key(it), metrics["kl"])
            jax.block_until_ready(state)
            t3 = time.perf_counter()
            if it:
                for k, dt in zip(times, (t1 - t0, t2 - t1, t3 - t2), strict=True):
                    times[k].append(dt)
    med = {k: float(np.median(v)) for k, v in times.items()}
    total = sum(med.values())
    rollout_tps = r.rollout_batch * r.max_response_len / med["generation"]
    result = {
        "benchmark": "ppo_throughput",
        "size": args.size,
        "device": jax.devices()[0].device_kind,
        "rollout_batch": r.rollout_batch,
        "prompt_len": r.max_prompt_len,
        "response_len": r.max_response_len,
        "rollout_tokens_per_s": rollout_tps,
        "iterations_per_s": 1.0 / total,
        "ppo_minibatch_updates_per_s": hp.ppo_epochs * hp.n_minibatches / med["update"],
        "time_split": {k: v / total for k, v in med.items()},
        "seconds_per_iteration": med,
    }
    if args.size == "demo":
        # The rollout against HF generate on the same prompts, in alternating repeats (the in-iteration times
        # above follow an update step, whose memory traffic they share).
        with mesh_lib.activation_rules(mesh):
            policy = state.policy.params
            ours = lambda: jax.block_until_ready(  # noqa: E731
                sample.decode(models.policy, policy, dev["prompt"], dev["prompt_mask"], jax.random.key(0), sampling)
            )
            med = alternate({"gptx": ours, "hf": hf_generate(c, tokens, mask)}, args.repeats)
        n = r.rollout_batch * r.max_response_len
        result.update(
            rollout_alone_tokens_per_s=n / med["gptx"],
            hf_generate_tokens_per_s=n / med["hf"],
            rollout_ratio_vs_hf=med["hf"] / med["gptx"],
            rollout_repeats=args.repeats,
        )
    result.update(load.fields())
    print(json.dumps(result))


if __name__ == "__main__":
    main()
