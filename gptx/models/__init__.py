"""Pure Flax linen models."""

from gptx.models.gpt import GPT, GPTConfig

__all__ = ["GPT", "GPTConfig"]
