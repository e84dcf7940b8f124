"""Hugging Face interop: GPT-2 (`GPT2LMHeadModel`) and OpenAI GPT (`OpenAIGPTLMHeadModel`) checkpoints.

A Hugging Face checkpoint is a directory with `config.json` and `model.safetensors` (or a sharded
`model.safetensors.index.json`), as `save_pretrained(safe_serialization=True)` writes it. Weights are read and
written with safetensors' numpy API; neither torch nor transformers is imported, except that pickled `.bin`/`.pt`
weights, which run code when loaded, are read with `torch.load(weights_only=True)` when the caller passes
`allow_pickle=True`.

Layouts. HF's `Conv1D` keeps kernels as [in, out], so the mapping is a reshape:

  c_attn.weight [D, 3D]  -> attn/qkv_kernel [D, 3, N, H]     c_attn.bias [3D] -> attn/qkv_bias [3, N, H]
  attn.c_proj.weight [D, D] -> attn/out_kernel [N, H, D]     mlp.c_fc / mlp.c_proj -> mlp/fc_* / mlp/proj_*
  ln_1 / ln_2 / ln_f (weight, bias) -> (scale, bias)         wte, wpe (tokens_embed, positions_embed for GPT-1)

The LM head is tied to the token embedding on both sides, so it is neither read nor written separately.
"""

from __future__ import annotations

import json
import os
import pickle
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from gptx import config as config_lib
from gptx import fs
from gptx.errors import InteropError

# gptx's MLP uses the tanh approximation of GELU; these HF activation names compute the same function.
# OpenAI GPT has its own table, in which "gelu" is the tanh approximation; in GPT-2's, "gelu" is exact (erf).
TANH_GELUS = {
    "gpt2": ("gelu_new", "gelu_pytorch_tanh", "gelu_fast", "gelu_accurate", "gelu_python_tanh"),
    "openai-gpt": ("gelu",),
}
PICKLE_FILES = ("pytorch_model.bin", "model.pt", "model.pth", "pytorch_model.pt")
IMPORT_NOTE = "hf_import.json"  # written into a workdir by `import_checkpoint`

# HF model_type -> (gptx arch, LM-head class, activation key)
HF_MODELS = {
    "gpt2": ("gpt2", "GPT2LMHeadModel", "activation_function"),
    "openai-gpt": ("gpt1", "OpenAIGPTLMHeadModel", "afn"),
}
LAYER_KEYS = {  # gptx path inside a layer -> HF key suffix inside `h.{i}.`
    ("attn", "qkv_kernel"): "attn.c_attn.weight",
    ("attn", "qkv_bias"): "attn.c_attn.bias",
    ("attn", "out_kernel"): "attn.c_proj.weight",
    ("attn", "out_bias"): "attn.c_proj.bias",
    ("mlp", "fc_kernel"): "mlp.c_fc.weight",
    ("mlp", "fc_bias"): "mlp.c_fc.bias",
    ("mlp", "proj_kernel"): "mlp.c_proj.weight",
    ("mlp", "proj_bias"): "mlp.c_proj.bias",
    ("ln_1", "scale"): "ln_1.weight",
    ("ln_1", "bias"): "ln_1.bias",
    ("ln_2", "scale"): "ln_2.weight",
    ("ln_2", "bias"): "ln_2.bias",
}


# ---------------------------------------------------------------------------------------------------------------
# Configs


def _hf_model_type(hf: Mapping[str, Any], where: str) -> str:
    model_type = hf.get("model_type")
    if model_type not in HF_MODELS:
        raise InteropError(
            f"{where}: model_type={model_type!r} is not supported (only {', '.join(HF_MODELS)}: GPT-2 and OpenAI GPT)"
        )
    return model_type


def model_config_from_hf(hf: Mapping[str, Any], base=None, *, where: str = "config"):
    """The gptx `config.model` section for an HF GPT-2 / OpenAI GPT config.json dict.

    Fields HF does not describe (dtype, remat, scan_layers, attention_impl) are kept from `base` (a model section;
    default: gptx's defaults). Raises InteropError for HF options gptx cannot reproduce exactly.
    """

    model_type = _hf_model_type(hf, where)
    arch, _, act_key = HF_MODELS[model_type]
    act = hf.get(act_key, "gelu_new" if model_type == "gpt2" else "gelu")
    if act not in TANH_GELUS[model_type]:
        raise InteropError(
            f"{where}: {act_key}={act!r} is not supported: gptx's MLP computes the tanh approximation of GELU, "
            f"which {model_type} names {' or '.join(map(repr, TANH_GELUS[model_type]))}"
            + (" (GPT-2's 'gelu' is the exact erf GELU)" if act == "gelu" else "")
        )
    unsupported = {
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "add_cross_attention": False,
        "tie_word_embeddings": True,
    }
    for key, want in unsupported.items():
        if hf.get(key, want) != want:
            raise InteropError(f"{where}: {key}={hf[key]!r} is not supported by gptx (needs {want!r})")
    d_model, n_head = int(hf["n_embd"]), int(hf["n_head"])
    if d_model % n_head:
        raise InteropError(f"{where}: n_embd={d_model} is not divisible by n_head={n_head}")
    n_inner = hf.get("n_inner") if model_type == "gpt2" else None

    m = config_lib.default().model if base is None else base.copy_and_resolve_references()
    m.update(
        name=str(hf.get("_name_or_path") or f"hf-{model_type}"),
        arch=arch,
        vocab_size=int(hf["vocab_size"]),
        block_size=int(hf["n_positions"]),
        n_layer=int(hf["n_layer"]),
        n_head=n_head,
        d_model=d_model,
        d_head=0,
        d_ff=0 if n_inner in (None, 4 * d_model) else int(n_inner),
        attention="dense",
        layer_norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
        init_std=float(hf.get("initializer_range", 0.02)),
        dropout=float(hf.get("resid_pdrop", 0.1)),
        attn_dropout=float(hf.get("attn_pdrop", 0.1)),
    )
    config_lib.validate_model(m)
    return m


def hf_config_from_model(m, info: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The config.json dict of the HF model that computes what a gptx `config.model` section computes."""
    if m.arch == "gpt3" and m.attention != "dense":
        raise InteropError(
            f"config.model.attention={m.attention!r}: Hugging Face GPT-2 has no locally banded layers to export into"
        )
    d_head = m.d_head or m.d_model // m.n_head
    if d_head * m.n_head != m.d_model:
        raise InteropError(
            f"config.model.d_head={m.d_head} x n_head={m.n_head} != d_model={m.d_model}: HF GPT-2 needs d_model = N*H"
        )
    d_ff = m.d_ff or 4 * m.d_model
    info = dict(info or {})
    common = dict(
        vocab_size=m.vocab_size,
        n_positions=m.block_size,
        n_embd=m.d_model,
        n_layer=m.n_layer,
        n_head=m.n_head,
        layer_norm_epsilon=m.layer_norm_eps,
        initializer_range=m.init_std,
        resid_pdrop=m.dropout,
        embd_pdrop=m.dropout,
        attn_pdrop=m.attn_dropout,
        tie_word_embeddings=True,
        dtype="float32",
    )
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        common[key] = info.get(key)
    if m.arch == "gpt1":
        if d_ff != 4 * m.d_model:
            raise InteropError(f"config.model.d_ff={m.d_ff}: OpenAI GPT's MLP is fixed at 4*d_model={4 * m.d_model}")
        return dict(architectures=["OpenAIGPTLMHeadModel"], model_type="openai-gpt", afn="gelu", **common)
    return dict(
        architectures=["GPT2LMHeadModel"],
        model_type="gpt2",
        activation_function="gelu_new",
        n_inner=None if d_ff == 4 * m.d_model else d_ff,
        scale_attn_weights=True,
        scale_attn_by_inverse_layer_idx=False,
        reorder_and_upcast_attn=False,
        add_cross_attention=False,
        **common,
    )


# ---------------------------------------------------------------------------------------------------------------
# Weights


def params_from_hf(weights: Mapping[str, np.ndarray], m, where: str = "weights") -> dict[str, Any]:
    """gptx params (plain numpy, layers h_0..h_{L-1}, or stacked under `layers` when m.scan_layers) from an HF
    state dict of the architecture `m` describes."""
    tok_key, pos_key = _embedding_keys(m)
    w = _strip_prefix(weights)
    dtype = np.dtype(_np_dtype(m.param_dtype))
    n, d = m.n_head, m.d_model
    h = d // n
    used: set[str] = set()

    def take(key: str, shape: tuple[int, ...], hf_shape: tuple[int, ...]) -> np.ndarray:
        if key not in w:
            raise InteropError(f"{where}: missing tensor {key!r} for a {m.arch} model of {m.n_layer} layers")
        x = _float_tensor(w[key], key, where)
        if x.shape != hf_shape:
            raise InteropError(f"{where}: {key} has shape {x.shape}, config.json implies {hf_shape}")
        used.add(key)
        return x.reshape(shape).astype(dtype)

    ff = m.d_ff or 4 * d
    shapes = {  # gptx shape, HF shape
        ("attn", "qkv_kernel"): ((d, 3, n, h), (d, 3 * d)),
        ("attn", "qkv_bias"): ((3, n, h), (3 * d,)),
        ("attn", "out_kernel"): ((n, h, d), (d, d)),
        ("attn", "out_bias"): ((d,), (d,)),
        ("mlp", "fc_kernel"): ((d, ff), (d, ff)),
        ("mlp", "fc_bias"): ((ff,), (ff,)),
        ("mlp", "proj_kernel"): ((ff, d), (ff, d)),
        ("mlp", "proj_bias"): ((d,), (d,)),
    }
    params: dict[str, Any] = {
        "wte": take(f"{tok_key}.weight", (m.vocab_size, d), (m.vocab_size, d)),
        "wpe": take(f"{pos_key}.weight", (m.block_size, d), (m.block_size, d)),
    }
    for i in range(m.n_layer):
        layer: dict[str, dict[str, np.ndarray]] = {}
        for (module, name), suffix in LAYER_KEYS.items():
            shape, hf_shape = shapes.get((module, name), ((d,), (d,)))
            layer.setdefault(module, {})[name] = take(f"h.{i}.{suffix}", shape, hf_shape)
        params[f"h_{i}"] = layer
    if m.arch != "gpt1":
        params["ln_f"] = {"scale": take("ln_f.weight", (d,), (d,)), "bias": take("ln_f.bias", (d,), (d,))}
    _check_lm_head(w, params["wte"], where)
    ignored = {"lm_head.weight"} | {k for k in w if k.endswith((".attn.bias", ".attn.masked_bias"))}
    unused = sorted(set(w) - used - ignored)
    if unused:
        raise InteropError(f"{where}: tensors gptx has no place for: {', '.join(unused[:5])}")
    return stack_layers(params, m) if m.scan_layers else params


def params_to_hf(params: Mapping[str, Any], m) -> dict[str, np.ndarray]:
    """The HF state dict (`transformer.*` keys, no tied lm_head) of gptx params of config.model section `m`."""
    hf_config_from_model(m)  # the architecture checks
    if "layers" in params:
        params = unstack_layers(params, m)
    tok_key, pos_key = _embedding_keys(m)
    d = m.d_model
    out = {f"{tok_key}.weight": params["wte"], f"{pos_key}.weight": params["wpe"]}
    for i in range(m.n_layer):
        layer = params[f"h_{i}"]
        for (module, name), suffix in LAYER_KEYS.items():
            x = np.asarray(layer[module][name])
            if name in ("qkv_kernel", "out_kernel"):
                x = x.reshape(d, -1)  # [D, 3, N, H] -> [D, 3D]; [N, H, D] -> [D, D]
            elif name == "qkv_bias":
                x = x.reshape(-1)
            out[f"h.{i}.{suffix}"] = x
    if m.arch != "gpt1":
        out["ln_f.weight"], out["ln_f.bias"] = params["ln_f"]["scale"], params["ln_f"]["bias"]
    # float16 and float32 are kept; bfloat16 is written as float32, which every safetensors reader handles.
    return {f"transformer.{k}": np.ascontiguousarray(_exportable(v)) for k, v in out.items()}


def stack_layers(params: Mapping[str, Any], m) -> dict[str, Any]:
    """h_0..h_{L-1} -> the `nn.scan` layout: layers/layer_j leaves stacked over groups (layer g*G + j)."""
    group = 2 if m.attention == "alternating" else 1
    out = {k: v for k, v in params.items() if not k.startswith("h_")}
    out["layers"] = {
        f"layer_{j}": _tree_map(
            lambda *xs: np.stack(xs), *[params[f"h_{g * group + j}"] for g in range(m.n_layer // group)]
        )
        for j in range(group)
    }
    return out


def unstack_layers(params: Mapping[str, Any], m) -> dict[str, Any]:
    """The inverse of `stack_layers`."""
    group = 2 if m.attention == "alternating" else 1
    out = {k: v for k, v in params.items() if k != "layers"}
    for g in range(m.n_layer // group):
        for j in range(group):
            out[f"h_{g * group + j}"] = _tree_map(lambda x, g=g: np.asarray(x[g]), params["layers"][f"layer_{j}"])
    return out


def _embedding_keys(m) -> tuple[str, str]:
    return ("tokens_embed", "positions_embed") if m.arch == "gpt1" else ("wte", "wpe")


def _tree_map(fn, *trees):
    if isinstance(trees[0], Mapping):
        return {k: _tree_map(fn, *[t[k] for t in trees]) for k in trees[0]}
    return fn(*trees)


def _strip_prefix(weights: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`transformer.h.0...` (LM-head models) and `h.0...` (base models, older hub files) name the same tensors."""
    return {k.removeprefix("transformer."): v for k, v in weights.items()}


def _float_tensor(x, key: str, where: str) -> np.ndarray:
    """`x` as a numpy array; a weight that is not floating point (int, bool) is refused rather than cast."""
    x = np.asarray(x)
    if not (np.issubdtype(x.dtype, np.floating) or x.dtype.name == "bfloat16"):
        raise InteropError(
            f"{where}: tensor {key} has dtype {x.dtype}, not a floating-point type; gptx does not cast it (the "
            "converted model would not be the one that was saved)"
        )
    return x


def _check_lm_head(w: Mapping[str, np.ndarray], wte: np.ndarray, where: str) -> None:
    head = w.get("lm_head.weight")
    if head is not None:
        head = _float_tensor(head, "lm_head.weight", where)
    if head is not None and not np.array_equal(np.asarray(head, wte.dtype), wte):
        raise InteropError(f"{where}: lm_head.weight differs from the token embedding; gptx ties them")


def _np_dtype(dtype):
    import jax.numpy as jnp  # late: keeps numpy-only callers light

    return jnp.dtype(dtype)


def _exportable(x) -> np.ndarray:
    x = np.asarray(x)
    return x if x.dtype in (np.float32, np.float16) else x.astype(np.float32)


# ---------------------------------------------------------------------------------------------------------------
# Files


def _weights_files(hf_dir: str, allow_pickle: bool) -> tuple[list[str], bool]:
    """(weight files, pickled?) of an HF directory: safetensors first, pickle only when allowed."""
    single = os.path.join(hf_dir, "model.safetensors")
    if os.path.exists(single):
        return [single], False
    index = os.path.join(hf_dir, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        return [os.path.join(hf_dir, s) for s in shards], False
    pickled = [os.path.join(hf_dir, p) for p in PICKLE_FILES if os.path.exists(os.path.join(hf_dir, p))]
    if not pickled:
        raise FileNotFoundError(f"{hf_dir}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin")
    _refuse_pickle(pickled[0], allow_pickle)
    return pickled[:1], True


def _refuse_pickle(path: str, allow_pickle: bool) -> None:
    if not allow_pickle:
        raise InteropError(
            f"{path} is a pickle file, and loading a pickle can run arbitrary code. Convert it to safetensors, or, "
            "if you trust its source, pass allow_pickle=True (--allow_pickle) to read it with "
            "torch.load(weights_only=True)"
        )


def _load_pickle(path: str) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError as e:
        raise InteropError(f"{path}: reading a pickled checkpoint needs PyTorch (pip install torch)") from e
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message is a page of advice; the reason is on its "WeightsUnpickler error:" line.
        why = re.search(r"WeightsUnpickler error:\s*(.+)", str(e))
        why = _first_sentence(why.group(1) if why else e)
        raise InteropError(
            f"{path}: torch.load(weights_only=True) refused this pickle ({why}): it "
            "holds more than tensors. Re-save it as safetensors where it was made, e.g. "
            "save_pretrained(dir, safe_serialization=True)"
        ) from None
    if not isinstance(state, Mapping):
        raise InteropError(f"{path}: holds a {type(state).__name__}, not a state dict of tensors")
    out = {}
    for k, v in state.items():
        if not isinstance(v, torch.Tensor):
            raise InteropError(f"{path}: entry {k!r} is a {type(v).__name__}, not a tensor (a state dict is expected)")
        if v.dtype == torch.bfloat16:
            v = v.float()
        out[k] = v.numpy()
    return out


def _first_sentence(e) -> str:
    """The first sentence of an error message (torch's and safetensors' run to paragraphs), on one line."""
    text = " ".join(str(e).split()) or type(e).__name__
    return re.split(r"(?<=[a-z0-9)])\. ", text, maxsplit=1)[0].rstrip(".")


def load_weights(path: str, *, allow_pickle: bool = False) -> dict[str, np.ndarray]:
    """All tensors of an HF checkpoint directory (or a single weights file) as numpy arrays; a file that cannot
    be read (truncated, not safetensors, a pickle torch refuses) is an InteropError naming it."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    if os.path.isdir(path):
        files, pickled = _weights_files(path, allow_pickle)
    elif path.endswith(".safetensors"):
        files, pickled = [path], False
    else:
        _refuse_pickle(path, allow_pickle)
        files, pickled = [path], True
    weights: dict[str, np.ndarray] = {}
    for f in files:
        try:
            weights.update(_load_pickle(f) if pickled else load_file(f))
        except (FileNotFoundError, InteropError):
            raise
        except (OSError, ValueError, TypeError, RuntimeError, EOFError, SafetensorError) as e:
            raise InteropError(
                f"{f}: cannot read weights ({_first_sentence(e)}); is it truncated or damaged?"
            ) from None
    return weights


def read_json(path: str) -> dict[str, Any]:
    """The JSON object in `path` (local or a URL); {} when there is no such file."""
    if not fs.exists(path):
        return {}
    return json.loads(fs.read_text(path))


def special_tokens(hf_dir: str, hf: Mapping[str, Any]) -> dict[str, Any]:
    """bos/eos/pad token ids (config.json, then generation_config.json) and, when the directory has tokenizer
    files, their strings. The tokenizer itself is read by `gptx.interop.workdir.hf_tokenizer`."""
    gen = read_json(os.path.join(hf_dir, "generation_config.json"))
    info: dict[str, Any] = {}
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = hf.get(key)
        info[key] = gen.get(key) if value is None else value
    tok = {
        **read_json(os.path.join(hf_dir, "tokenizer_config.json")),
        **read_json(os.path.join(hf_dir, "special_tokens_map.json")),
    }
    strings = {k: tok[k] for k in ("bos_token", "eos_token", "pad_token", "unk_token") if tok.get(k) is not None}
    if strings:
        info["special_tokens"] = {k: v["content"] if isinstance(v, dict) else v for k, v in strings.items()}
    return info


def load_hf(hf_dir: str, base_model=None, *, allow_pickle: bool = False) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """(config.model section, gptx params as numpy, info) of an HF GPT-2 / OpenAI GPT checkpoint directory.

    info holds model_type, the HF class (`architecture`), `source` and the bos/eos/pad token ids.
    `base_model` supplies the fields HF does not describe (dtype, scan_layers, remat ...).
    """
    config_path = os.path.join(hf_dir, "config.json")
    if not os.path.exists(config_path):
        raise FileNotFoundError(f"{config_path} not found: --hf_dir must be a save_pretrained directory")
    hf = read_json(config_path)
    m = model_config_from_hf(hf, base_model, where=config_path)
    weights = load_weights(hf_dir, allow_pickle=allow_pickle)
    params = params_from_hf(weights, m, where=hf_dir)
    info = {"model_type": hf["model_type"], "architecture": HF_MODELS[hf["model_type"]][1], "source": hf_dir}
    info.update(special_tokens(hf_dir, hf))
    return m, params, info


def save_hf(hf_dir: str, params: Mapping[str, Any], m, info: Mapping[str, Any] | None = None) -> None:
    """Writes config.json + model.safetensors that `from_pretrained` loads as GPT2LMHeadModel / OpenAIGPTLMHeadModel.

    `info` may carry bos/eos/pad token ids (as `load_hf` returns them)."""
    from safetensors.numpy import save_file

    hf = hf_config_from_model(m, info)
    weights = params_to_hf(params, m)
    fs.makedirs(hf_dir)  # (hf_dir may be a URL: safetensors writes a local file, uploaded whole)
    with fs.local_output(fs.join(hf_dir, "model.safetensors")) as local:
        save_file(weights, local, metadata={"format": "pt"})
    fs.write_atomic(fs.join(hf_dir, "config.json"), json.dumps(hf, indent=2, sort_keys=True) + "\n")
