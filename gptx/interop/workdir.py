"""Hugging Face checkpoints in and out of gptx workdirs: the `convert` command's two directions.

`import_checkpoint` turns an HF GPT-2 / OpenAI GPT directory into the step-0 checkpoint of a workdir (a fresh
optimizer state, no data position) with the run's config.json and the directory's tokenizer, which `train`,
`finetune`, `sample` and `eval` read like any other; `export_checkpoint` writes the latest checkpoint of a workdir
as an HF directory with its tokenizer, which `transformers.AutoModelForCausalLM` and `AutoTokenizer` load. The
formats are gptx/interop/hf.py's.
"""

from __future__ import annotations

import json
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gptx import config as config_lib
from gptx import fs
from gptx import mesh as mesh_lib
from gptx.data import tokenizer as tokenizer_lib
from gptx.errors import InteropError
from gptx.interop.hf import IMPORT_NOTE, hf_config_from_model, load_hf, read_json, save_hf
from gptx.train import checkpoints, integrity, pretrain


def model_overrides(cfg_model, base_model) -> list[str]:
    """`--config.model.KEY=VALUE` flags that turn base_model into cfg_model (its name aside)."""
    return [f"--config.model.{k}={v}" for k, v in cfg_model.items() if k != "name" and base_model.get(k) != v]


def save_checkpoint(cfg, params: dict[str, Any], workdir: str, mesh=None) -> int:
    """Writes params as the step-0 TrainState (fresh optimizer) of WORKDIR/checkpoints, the layout `train`
    resumes from. Returns the step. Refuses a workdir that has checkpoints."""
    if (latest := checkpoints.latest_step(workdir)) is not None:
        raise InteropError(f"{workdir}/checkpoints already holds step {latest}; use an empty workdir")
    mesh = mesh or mesh_lib.make_mesh(cfg.mesh)
    _, init_fn = pretrain.make_model(cfg)
    rng = jax.random.key(cfg.train.seed)
    with mesh_lib.activation_rules(mesh):
        _, target = checkpoints.abstract_state(init_fn, mesh, rng)
        try:
            params = jax.tree.map(
                lambda t, x: jax.device_put(np.asarray(x, t.dtype), t.sharding), target.params, dict(params)
            )
        except ValueError as e:
            raise InteropError(f"converted params do not match config.model's parameter tree: {e}") from e
        # A fresh optimizer state does not depend on the parameter values (Adam moments start at zero).
        state = checkpoints.init_state(init_fn, mesh, rng).replace(params=params)
        with checkpoints.manager(workdir, keep=cfg.train.keep_ckpts) as mngr:
            checkpoints.save(mngr, 0, state)
            mngr.wait_until_finished()
    integrity.write_config(workdir, cfg)  # later commands take the model shape from it
    return 0


def load_checkpoint_params(cfg, workdir: str, mesh=None) -> dict[str, Any]:
    """The params (numpy) of the latest checkpoint in WORKDIR/checkpoints, for the model of the run's config.json
    (cfg.model when the run has none)."""
    cfg = integrity.with_model_of(cfg, workdir)
    mesh = mesh or mesh_lib.make_mesh(cfg.mesh)
    model, _ = pretrain.make_model(cfg)
    target = checkpoints.abstract_params(model, jnp.zeros((1, config_lib.seq_len(cfg)), jnp.int32))
    with mesh_lib.activation_rules(mesh):
        try:
            params, _ = checkpoints.restore_params(workdir, mesh, target)
        except (ValueError, KeyError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise InteropError(
                f"the checkpoint in {workdir}/checkpoints does not match config.model ({first}); pass the "
                f"--config.model.* overrides it was made with (an imported workdir lists them in {IMPORT_NOTE})"
            ) from e
    return jax.tree.map(np.asarray, jax.device_get(params))


def import_checkpoint(
    cfg, hf_dir: str, workdir: str, *, mesh=None, allow_pickle: bool = False
) -> tuple[Any, dict[str, Any]]:
    """HF checkpoint directory -> gptx checkpoint in workdir. Returns (the config with its model section taken
    from config.json, info).

    The workdir gets what later commands read, so that they need no extra flags: the step-0 checkpoint, the run's
    config.json (the model shape), the directory's tokenizer when it has one (saved as the workdir's own;
    info["tokenizer"] describes it, None when there is none), and hf_import.json with the info and the
    `--config.model.*` values in which the import differs from `cfg` (info["overrides"]).
    """
    with fs.local_dir(hf_dir) as local:  # a gs:// directory is read from a local copy
        m, params, info = load_hf(local, cfg.model, allow_pickle=allow_pickle)
        found = hf_tokenizer(local, m.vocab_size)  # before anything is written: a bad tokenizer leaves no checkpoint
    info["source"] = hf_dir
    new = cfg.copy_and_resolve_references()
    new.model = m
    if found is not None:  # the run's config.json then describes the tokenizer the workdir holds
        new.tokenizer.update(kind=found[0].kind, vocab_size=found[0].vocab_size)
    config_lib.validate(new)
    save_checkpoint(new, params, workdir, mesh)
    info["tokenizer"] = None
    if found is not None:
        tok, source = found
        saved = tok.save(workdir) if jax.process_index() == 0 else tokenizer_lib.find(workdir)
        info["tokenizer"] = dict(
            kind=tok.kind, vocab_size=tok.vocab_size, bos_id=tok.bos_id, eos_id=tok.eos_id, pad_id=tok.pad_id,
            add_bos=tok.add_bos, source=source, path=saved,
        )  # fmt: skip
    info["overrides"] = model_overrides(m, cfg.model)
    if jax.process_index() == 0:
        fs.write_atomic(
            fs.join(workdir, IMPORT_NOTE), json.dumps({"info": info, "model": m.to_dict()}, indent=2, default=str)
        )
    return new, info


def hf_tokenizer(hf_dir: str, model_vocab: int) -> tuple[tokenizer_lib.Tokenizer, str] | None:
    """(tokenizer, the path it was read from) of an HF checkpoint directory, or None when it has none.

    Read as `tokenizer_lib.load` reads a directory: tokenizer.json, else OpenAI's vocab.json + merges.txt, with
    the special tokens of tokenizer_config.json / special_tokens_map.json. A tokenizer with more ids than the
    model's embedding has rows is an InteropError: its last ids would index past the table.
    """
    path = tokenizer_lib.find(hf_dir)
    if path is None:
        return None
    tok = tokenizer_lib.load(path)
    if tok.vocab_size > model_vocab:
        raise InteropError(
            f"{path}: the tokenizer has {tok.vocab_size} ids but {fs.join(hf_dir, 'config.json')} has "
            f"vocab_size={model_vocab}; this tokenizer does not belong to this model"
        )
    return tok, path


def export_checkpoint(cfg, workdir: str, hf_dir: str, *, mesh=None) -> dict[str, Any]:
    """Latest gptx checkpoint in workdir -> HF directory. Token ids come from WORKDIR/hf_import.json when the
    workdir was imported, else from the workdir's tokenizer, whose files are written beside the weights (a BPE
    tokenizer as tokenizer.json + tokenizer_config.json, which `transformers.AutoTokenizer` loads). Returns the info."""
    cfg = integrity.with_model_of(cfg, workdir)
    params = load_checkpoint_params(cfg, workdir, mesh)
    note = read_json(fs.join(workdir, IMPORT_NOTE)).get("info", {})
    info = {k: note.get(k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    tok_path = cfg.data.tokenizer or tokenizer_lib.find(workdir)
    tok = tokenizer_lib.load(tok_path) if tok_path else None
    if tok is not None and not note:
        info = dict(bos_token_id=tok.bos_id, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)
    save_hf(hf_dir, params, cfg.model, info)
    if tok is not None and jax.process_index() == 0:
        tok.save(hf_dir)
    return {"architecture": hf_config_from_model(cfg.model)["architectures"][0], **info}
