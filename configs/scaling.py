"""A scaling sweep of tiny GPT-2s on the bundled Tiny Shakespeare: fit L(C) on the small runs, predict the largest.

Usage:
  python -m gptx.main scaling sweep --config=configs/scaling.py --workdir=/tmp/gptx_scaling
  (actions: sweep | fit | predict; the sweep predicts its held-out largest run before training it)

`arg` picks a preset: "" (5 sizes, d_model 16..48, n_layer 1..3, 10 tokens per parameter: ~100x in compute) or "tiny"
(2 runs of a few steps, for tests).
"""

from gptx import config as gptx_config


def get_config(arg: str = ""):
    c = gptx_config.default()
    c.model.update(
        name="scaling",
        arch="gpt2",
        vocab_size=512,
        block_size=64,
        n_layer=2,
        n_head=2,
        d_model=32,
        dropout=0.0,
        attn_dropout=0.0,
    )
    c.tokenizer.vocab_size = 512
    c.data.update(corpus="bundled:tinyshakespeare", doc_separator="blank_line", val_fraction=0.1)
    c.train.update(
        steps=1,  # set per run by the sweep schedule
        batch_size=16,
        lr=3e-3,
        warmup_steps=20,
        log_every=10,
        eval_batches=16,
        weight_decay=0.1,
        progress=False,
    )
    c.mesh.update(data=-1, fsdp=1, tensor=1)
    c.scaling.update(
        n_sizes=5,
        d_model_min=16,
        d_model_max=48,
        n_layer_min=1,
        n_layer_max=3,
        head_dim=8,
        tokens_per_param=10.0,
        holdout=1,
        law="compute",
    )
    if arg == "tiny":
        c.scaling.update(n_sizes=2, d_model_min=8, d_model_max=16, n_layer_max=1, tokens_per_param=1e-3)
        c.scaling.update(min_steps=4, holdout=0, bootstrap=20)
    elif arg:
        raise ValueError(f"configs/scaling.py: unknown preset {arg!r} (use '' or 'tiny')")
    return c
