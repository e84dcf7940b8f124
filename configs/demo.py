"""The demo: a tiny GPT-2 on the bundled Tiny Shakespeare, a few minutes on 2 CPU cores.

Usage: python -m gptx.main demo --config=configs/demo.py --workdir=/tmp/gptx_demo
"""

from gptx import config as gptx_config


def get_config(arg: str = ""):
    c = gptx_config.default()
    c.model.update(
        name="demo",
        arch="gpt2",
        vocab_size=1024,
        block_size=128,
        n_layer=4,
        n_head=4,
        d_model=128,
        dropout=0.1,
        attn_dropout=0.0,
    )
    c.tokenizer.vocab_size = 1024
    c.data.update(corpus="bundled:tinyshakespeare", doc_separator="blank_line", val_fraction=0.1)
    c.train.update(
        steps=500,
        batch_size=32,
        lr=3e-3,
        warmup_steps=50,
        log_every=10,
        eval_every=100,
        eval_batches=8,
        ckpt_every=250,
        weight_decay=0.1,
    )
    c.mesh.update(data=-1, fsdp=1, tensor=1)
    # The `scaling` stage: five sizes of 10 tokens per parameter, ~100x apart in compute; the largest is predicted.
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
    return c
