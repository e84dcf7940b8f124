"""Checkpoint interop with other frameworks: Hugging Face GPT-2 and OpenAI GPT (gptx/interop/hf.py)."""


class InteropError(ValueError):
    """A checkpoint that cannot be converted; the message names the file, key or option."""


from gptx.interop.hf import export_checkpoint, import_checkpoint, load_hf, save_hf  # noqa: E402

__all__ = ["InteropError", "export_checkpoint", "import_checkpoint", "load_hf", "save_hf"]
