"""GPT-1 (Radford et al., 2018): 12-layer post-LN decoder, 768 wide, 512 context, 40,478-token BPE.

Usage: --config=configs/gpt1.py  (or configs/gpt1.py:117m)
"""

from gptx import config as gptx_config
from gptx.errors import ConfigError

# name -> (n_layer, d_model, n_head, context, vocab)
SIZES = {"117m": (12, 768, 12, 512, 40478)}


def get_config(arg: str = "117m"):
    if arg not in SIZES:
        raise ConfigError(f"configs/gpt1.py has no size {arg!r}; sizes: {', '.join(SIZES)}")
    c = gptx_config.default()
    n_layer, d_model, n_head, ctx, vocab = SIZES[arg]
    c.model.update(
        name=f"gpt1-{arg}",
        arch="gpt1",
        n_layer=n_layer,
        d_model=d_model,
        n_head=n_head,
        block_size=ctx,
        vocab_size=vocab,
        dropout=0.1,
        attn_dropout=0.1,
    )
    # Section 4.1: minibatches of 64 x 512 tokens, max lr 2.5e-4 warmed up linearly over 2000 updates and
    # annealed to 0 with a cosine schedule; L2 weight decay 0.01 on non-bias, non-gain weights.
    c.train.update(
        batch_size=64,
        lr=2.5e-4,
        warmup_steps=2000,
        min_lr_ratio=0.0,
        weight_decay=0.01,
        b2=0.999,
        steps=100_000,
    )
    return c
