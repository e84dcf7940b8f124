"""Hugging Face interop: a converted GPT-2 / OpenAI GPT computes what transformers computes, and converts back
to the same tensors. The references are random-weight models built offline from small configs."""

import json

import jax
import numpy as np
import pytest
from conftest import load_config, tiny_config
from test_config import run_cli

from gptx import mesh as mesh_lib
from gptx.interop import InteropError, hf
from gptx.models import GPT, GPTConfig

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

SMALL = dict(n_embd=32, n_layer=2, n_head=4)


def hf_model(kind: str, **overrides):
    """A random GPT2LMHeadModel / OpenAIGPTLMHeadModel. Every weight, LayerNorm gains and biases included, is
    drawn at random, so a transposed or misplaced tensor changes the logits."""
    if kind == "gpt2":
        last = overrides.get("vocab_size", 50257) - 1  # GPT-2's <|endoftext|> is the last token
        cfg = transformers.GPT2Config(**{**SMALL, "bos_token_id": last, "eos_token_id": last, **overrides})
        cls = transformers.GPT2LMHeadModel
    else:
        cfg = transformers.OpenAIGPTConfig(**{**SMALL, **overrides})
        cls = transformers.OpenAIGPTLMHeadModel
    torch.manual_seed(0)
    model = cls(cfg)
    with torch.no_grad():
        for p in model.parameters():  # the tied lm_head is the same Parameter as the token embedding
            p.normal_(0.0, 0.3)
    return model.eval()


def save(model, path) -> str:
    model.save_pretrained(path, safe_serialization=True)
    return str(path)


def hf_logits(model, tokens: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.as_tensor(tokens)).logits.numpy()


def gptx_logits(model_cfg, params, tokens: np.ndarray) -> np.ndarray:
    model = GPT(GPTConfig.from_config(model_cfg))
    return np.asarray(model.apply({"params": params}, tokens))


def random_tokens(vocab: int, length: int, batch: int = 2) -> np.ndarray:
    return np.random.default_rng(0).integers(0, vocab, (batch, length)).astype(np.int32)


@pytest.mark.parametrize(
    ("overrides", "scan"),
    [
        ({}, False),  # GPT-2's own vocabulary (50,257) and context (1,024)
        (dict(vocab_size=1000, n_positions=64, n_inner=48, layer_norm_epsilon=1e-6), False),
        (dict(vocab_size=1000, n_positions=64, n_layer=3), True),
    ],
)
def test_gpt2_logits_equal_transformers(tmp_path, overrides, scan):
    ref = hf_model("gpt2", **overrides)
    base = tiny_config(scan_layers=scan).model
    m, params, info = hf.load_hf(save(ref, tmp_path), base)
    assert (m.arch, m.vocab_size, m.block_size, m.scan_layers) == (
        "gpt2",
        ref.config.vocab_size,
        ref.config.n_positions,
        scan,
    )
    assert info["architecture"] == "GPT2LMHeadModel"
    assert info["eos_token_id"] == ref.config.eos_token_id is not None
    if scan:
        assert "layers" in params and "h_0" not in params
    tokens = random_tokens(m.vocab_size, 24)
    np.testing.assert_allclose(gptx_logits(m, params, tokens), hf_logits(ref, tokens), atol=1e-4, rtol=0)


def test_openai_gpt_logits_equal_transformers(tmp_path):
    ref = hf_model("openai-gpt", vocab_size=1000, n_positions=64)
    assert ref.config.afn == "gelu"  # OpenAI GPT's default, the tanh approximation in its own activation table
    m, params, info = hf.load_hf(save(ref, tmp_path), tiny_config().model)
    assert m.arch == "gpt1" and "ln_f" not in params  # post-LN blocks, no final LayerNorm
    assert info["architecture"] == "OpenAIGPTLMHeadModel"
    tokens = random_tokens(m.vocab_size, 40)
    np.testing.assert_allclose(gptx_logits(m, params, tokens), hf_logits(ref, tokens), atol=1e-4, rtol=0)


@pytest.mark.parametrize(("kind", "scan"), [("gpt2", False), ("gpt2", True), ("openai-gpt", False)])
def test_round_trip_gives_identical_tensors(tmp_path, kind, scan):
    ref = hf_model(kind, vocab_size=500, n_positions=32)
    src = save(ref, tmp_path / "src")
    m, params, info = hf.load_hf(src, tiny_config(scan_layers=scan).model)
    hf.save_hf(str(tmp_path / "out"), params, m, info)

    before = safetensors_numpy.load_file(f"{src}/model.safetensors")
    after = safetensors_numpy.load_file(str(tmp_path / "out" / "model.safetensors"))
    assert sorted(after) == sorted(k for k in before if k != "lm_head.weight")
    for key, x in before.items():
        if key in after:
            np.testing.assert_array_equal(after[key], x, err_msg=key)
    config_in = json.loads((tmp_path / "src" / "config.json").read_text())
    config_out = json.loads((tmp_path / "out" / "config.json").read_text())
    for key in ("model_type", "vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "layer_norm_epsilon"):
        assert config_out[key] == config_in[key], key
    assert config_out["eos_token_id"] == config_in["eos_token_id"]

    # transformers loads the export completely (tied head included) and computes the same logits.
    back, loading = type(ref).from_pretrained(str(tmp_path / "out"), output_loading_info=True)
    assert not loading["missing_keys"] and not loading["unexpected_keys"]
    tokens = random_tokens(500, 16)
    np.testing.assert_array_equal(hf_logits(back.eval(), tokens), hf_logits(ref, tokens))


def test_pickle_weights_are_refused_unless_allowed(tmp_path):
    ref = hf_model("gpt2", vocab_size=300, n_positions=16)
    ref.config.save_pretrained(tmp_path)
    torch.save(ref.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(InteropError, match=r"pytorch_model\.bin is a pickle file.*allow_pickle"):
        hf.load_hf(str(tmp_path))
    with pytest.raises(InteropError, match=r"pickle file"):
        hf.load_weights(str(tmp_path / "pytorch_model.bin"))
    m, params, _ = hf.load_hf(str(tmp_path), allow_pickle=True)
    tokens = random_tokens(300, 16)
    np.testing.assert_allclose(gptx_logits(m, params, tokens), hf_logits(ref, tokens), atol=1e-4, rtol=0)


def test_models_gptx_cannot_reproduce_are_refused(tmp_path):
    # GPT-2's "gelu" is the exact erf GELU; gptx computes the tanh approximation (OpenAI GPT's "gelu").
    exact = save(hf_model("gpt2", vocab_size=300, n_positions=16, activation_function="gelu"), tmp_path / "exact")
    with pytest.raises(InteropError, match=r"activation_function='gelu' is not supported.*exact erf GELU"):
        hf.load_hf(exact)
    relu = save(hf_model("openai-gpt", vocab_size=300, n_positions=16, afn="relu"), tmp_path / "relu")
    with pytest.raises(InteropError, match=r"afn='relu' is not supported"):
        hf.load_hf(relu)
    scaled = save(
        hf_model("gpt2", vocab_size=300, n_positions=16, scale_attn_by_inverse_layer_idx=True), tmp_path / "s"
    )
    with pytest.raises(InteropError, match=r"scale_attn_by_inverse_layer_idx=True"):
        hf.load_hf(scaled)
    banded = tiny_config(arch="gpt3", attention="alternating").model
    with pytest.raises(InteropError, match=r"config\.model\.attention='alternating'"):
        hf.hf_config_from_model(banded)


def test_cli_import_writes_a_checkpoint_train_and_sample_restore(tmp_path, one_device_mesh):
    from gptx.train import checkpoints, pretrain

    ref = hf_model("gpt2", vocab_size=1000, n_positions=64)
    src = save(ref, tmp_path / "hf")
    work = tmp_path / "work"
    out = run_cli("convert", "--config=configs/gpt2.py:124m", f"--workdir={work}", f"--hf_dir={src}")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "config: model from" in out.stdout and "--config.model.vocab_size=1000" in out.stdout
    assert f"tokenizer: none in {src}" in out.stdout  # save_pretrained of a model alone writes no tokenizer

    cfg = load_config("gpt2", "124m")
    cfg.model.update(vocab_size=1000, block_size=64, n_layer=2, n_head=4, d_model=32)
    _, init_fn = pretrain.make_model(cfg)
    with mesh_lib.activation_rules(one_device_mesh):
        state = checkpoints.restore_state(str(work), init_fn, one_device_mesh, jax.random.key(0))
        assert int(state.step) == 0
        # `train` resumes from it too: the converted checkpoint has no data position, so the loop starts a fresh one.
        with checkpoints.manager(str(work), keep=3) as mngr:
            resumed = checkpoints.restore_or_init(mngr, init_fn, one_device_mesh, jax.random.key(0), iter([]))
    tokens = random_tokens(1000, 64)
    np.testing.assert_allclose(gptx_logits(cfg.model, state.params, tokens), hf_logits(ref, tokens), atol=1e-4, rtol=0)
    jax.tree.map(np.testing.assert_array_equal, resumed.params, state.params)

    # And back, with no --config.model.* flags (the model shape is the run's config.json): the original tensors.
    out = run_cli(
        "convert", "--config=configs/gpt2.py:124m", f"--workdir={work}", f"--hf_dir={tmp_path / 'back'}",
        "--direction=export",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    before = safetensors_numpy.load_file(f"{src}/model.safetensors")
    after = safetensors_numpy.load_file(str(tmp_path / "back" / "model.safetensors"))
    assert sorted(before) == sorted(after)
    for key, x in before.items():
        np.testing.assert_array_equal(after[key], x, err_msg=key)


def test_cli_refuses_pickle_with_one_line(tmp_path):
    ref = hf_model("gpt2", vocab_size=300, n_positions=16)
    ref.config.save_pretrained(tmp_path / "hf")
    torch.save(ref.state_dict(), tmp_path / "hf" / "pytorch_model.bin")
    out = run_cli(
        "convert", "--config=configs/gpt2.py:124m", f"--workdir={tmp_path / 'w'}", f"--hf_dir={tmp_path / 'hf'}"
    )
    assert out.returncode == 2
    assert "pickle file" in out.stderr.strip().splitlines()[-1] and "--allow_pickle" in out.stderr
    assert not (tmp_path / "w" / "checkpoints").exists()
