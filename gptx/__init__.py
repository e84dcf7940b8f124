"""gptx: the GPT series rebuilt in JAX.

Public entry points for notebooks and scripts::

    import gptx
    cfg = gptx.config.default()
    model = gptx.models.GPT(gptx.models.GPTConfig.from_config(cfg.model))

and `gptx.sample`, `gptx.flops`, `gptx.aot`, `gptx.train.pretrain`; notebooks/quickstart.ipynb uses them.
"""

import importlib

from gptx import config, mesh, models

__all__ = ["config", "mesh", "models", "aot", "data", "flops", "sample", "train"]
__version__ = "0.1.0"

_LAZY = ("aot", "data", "flops", "sample", "train")  # imported on first use: `import gptx` stays light


def __getattr__(name: str):
    if name in _LAZY:
        return importlib.import_module(f"gptx.{name}")
    raise AttributeError(f"module 'gptx' has no attribute {name!r}")
