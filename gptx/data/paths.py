"""Where data files are found: paths relative to the repository root, as the configs' `data_dir` keys give them.

The configs name the shared data sets as `../shared/data/...` or `gptx/assets/...`, relative to the repository
(so a run works from any current directory); absolute paths are taken as they are.
"""

from __future__ import annotations

import os

from gptx import fs

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def from_repo(path: str) -> str:
    """`path` if absolute (or a URL: gs://...), else the same path under the repository root, normalised."""
    if fs.is_remote(path):
        return path  # normpath would turn gs://b into gs:/b
    return os.path.normpath(path if os.path.isabs(path) else os.path.join(REPO, path))


def data_path(data_dir: str, *rel: str) -> str:
    """A file under a config's `data_dir` (e.g. config.finetune.data_dir, config.rlhf.data_dir)."""
    base = from_repo(data_dir)
    return fs.join(base, *rel) if fs.is_remote(base) else os.path.normpath(os.path.join(base, *rel))
