"""Checkpoint interop with other frameworks: Hugging Face GPT-2 and OpenAI GPT (the formats in
gptx/interop/hf.py, the `convert` command's workdir side in gptx/interop/workdir.py)."""

from gptx.errors import InteropError  # re-exported: `gptx.interop.InteropError` predates gptx.errors
from gptx.interop.hf import load_hf, save_hf
from gptx.interop.workdir import export_checkpoint, import_checkpoint

__all__ = ["InteropError", "export_checkpoint", "import_checkpoint", "load_hf", "save_hf"]
