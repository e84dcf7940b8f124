"""gptx: the GPT series rebuilt in JAX.

Public entry points for notebooks and scripts::

    import gptx
    cfg = gptx.config.default()
    model = gptx.models.GPT(gptx.models.GPTConfig.from_config(cfg.model))
"""

from gptx import config, mesh, models

__all__ = ["config", "mesh", "models"]
__version__ = "0.1.0"
