"""Data: readers, tokenizer, and grain input pipelines."""
