"""ViT train-step throughput: gptx's ViT (JAX) against Hugging Face ViTForImageClassification (PyTorch) on the
same shapes.

    python tests/benchmarks/vit_throughput.py [--batch 32 --image 64 --patch 8 --width 192 --depth 6 --heads 3]

Both sides run one AdamW step per iteration of a 10-class classifier on random images and labels: pre-LN ViT
blocks (width, depth, heads, MLP 4x width), dropout 0, float32. The heads differ as the models do: gptx
mean-pools the patch features, Hugging Face reads a class token (one more token per image). Warmup steps (and JAX
compilation) are excluded; the two sides' timed repeats alternate so both see the same load on a shared machine,
and medians are reported. torch runs with the usable cores and with 1 thread; the faster is the baseline. stdout
gets exactly one JSON line; everything else goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

from machine import LoadWatch, roofline_fields, xla_flops


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=3, help="optimizer steps per timed repeat")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--image", type=int, default=64)
    p.add_argument("--patch", type=int, default=8)
    p.add_argument("--width", type=int, default=192)
    p.add_argument("--depth", type=int, default=6)
    p.add_argument("--heads", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def log(*a) -> None:
    print(*a, file=sys.stderr, flush=True)


def gptx_runner(args, images, labels):
    """A function running n AdamW steps of gptx's ViT + linear head; returns it after compiling."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax import linen as nn

    from gptx.models.vision import ViT, ViTConfig, patchify

    cfg = ViTConfig(args.image, args.patch, 3, args.width, args.depth, args.heads)

    class Classifier(nn.Module):
        @nn.compact
        def __call__(self, patches):
            return nn.Dense(10)(jnp.mean(ViT(cfg)(patches), axis=1))

    model = Classifier()
    patches = jnp.asarray(patchify(images, args.patch))
    labels = jnp.asarray(labels)
    params = nn.meta.unbox(model.init(jax.random.key(args.seed), patches[:1])["params"])
    tx = optax.adamw(1e-4, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1)

    @jax.jit
    def step(params, opt_state):
        def loss_fn(p):
            logits = model.apply({"params": p}, patches)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    state = [params, tx.init(params)]

    def run(n):
        for _ in range(n):
            state[0], state[1], loss = step(*state)
        jax.block_until_ready(loss)

    run.flops_per_step = xla_flops(step.lower(*state).compile())
    return run


def torch_runner(args, images, labels, threads: int):
    import torch
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(args.seed)
    config = ViTConfig(
        image_size=args.image,
        patch_size=args.patch,
        num_channels=3,
        hidden_size=args.width,
        num_hidden_layers=args.depth,
        num_attention_heads=args.heads,
        intermediate_size=4 * args.width,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=10,
    )
    model = ViTForImageClassification(config)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()  # NCHW
    y = torch.from_numpy(labels).long()

    def run(n):
        torch.set_num_threads(threads)
        for _ in range(n):
            opt.zero_grad(set_to_none=True)
            loss = model(pixel_values=x, labels=y).loss
            loss.backward()
            opt.step()

    return run


def per_step(run, n: int) -> float:
    t0 = time.perf_counter()
    run(n)
    return (time.perf_counter() - t0) / n


def main(argv=None) -> None:
    import numpy as np

    load = LoadWatch()

    args = parse_args(argv)
    rng = np.random.default_rng(args.seed)
    images = rng.uniform(-1, 1, (args.batch, args.image, args.image, 3)).astype(np.float32)
    labels = rng.integers(0, 10, args.batch).astype(np.int32)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    runners = {"gptx": gptx_runner(args, images, labels)}
    for t in sorted({cores, 1}):
        runners[f"torch_{t}"] = torch_runner(args, images, labels, t)
    for name, run in runners.items():
        log(f"warming up {name}")
        run(args.warmup)
    times = {name: [] for name in runners}
    for r in range(args.repeats):
        for name, run in runners.items():
            times[name].append(per_step(run, args.steps))
        log(f"repeat {r}: " + ", ".join(f"{k} {v[-1] * 1e3:.0f} ms" for k, v in times.items()))
    med = {k: statistics.median(v) for k, v in times.items()}
    torch_best = min((k for k in med if k.startswith("torch")), key=med.get)
    out = {
        "benchmark": "vit_train_step",
        "shape": {k: getattr(args, k) for k in ("batch", "image", "patch", "width", "depth", "heads")},
        "patches_per_image": (args.image // args.patch) ** 2,
        "gptx_images_per_s": args.batch / med["gptx"],
        "hf_torch_images_per_s": args.batch / med[torch_best],
        "hf_torch_threads": int(torch_best.split("_")[1]),
        "hf_torch_by_threads": {k.split("_")[1]: args.batch / v for k, v in med.items() if k.startswith("torch")},
        "ratio": med[torch_best] / med["gptx"],
        "repeats": args.repeats,
        "steps_per_repeat": args.steps,
        "xla_flops_per_step": runners["gptx"].flops_per_step,
        **roofline_fields(runners["gptx"].flops_per_step / med["gptx"]),
        **load.fields(),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
