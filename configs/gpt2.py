"""GPT-2 (Radford et al., 2019): pre-LN decoders with a final LayerNorm, 1024 context, 50,257-token BPE.

Usage: --config=configs/gpt2.py:124m  (124m | 355m | 774m | 1.5b)
"""

from gptx import config as gptx_config
from gptx.errors import ConfigError

# name -> (n_layer, d_model, n_head, lr). The paper tunes lr per size without publishing it; these follow
# GPT-3's Table 2.1 at similar sizes.
SIZES = {
    "124m": (12, 768, 12, 6e-4),
    "355m": (24, 1024, 16, 3e-4),
    "774m": (36, 1280, 20, 2.5e-4),
    "1.5b": (48, 1600, 25, 2e-4),
}


def get_config(arg: str = "124m"):
    if arg not in SIZES:
        raise ConfigError(f"configs/gpt2.py has no size {arg!r}; sizes: {', '.join(SIZES)}")
    c = gptx_config.default()
    n_layer, d_model, n_head, lr = SIZES[arg]
    c.model.update(
        name=f"gpt2-{arg}",
        arch="gpt2",
        n_layer=n_layer,
        d_model=d_model,
        n_head=n_head,
        block_size=1024,
        vocab_size=50257,
    )
    c.train.update(batch_size=512, lr=lr, warmup_steps=2000, steps=100_000)  # 512 x 1024 tokens (Sec. 2.3)
    return c
