"""The multimodal decoder: image tokens land exactly at their placeholders (several images, left padding), text
alone gives the plain GPT's logits, placeholder targets carry no loss, packed rows keep images whole, LLaVA's
two stages freeze what they should, accumulated micro-batches equal the whole batch, sharded steps match one
device, and decoding with images in the prompt
goes through gptx.sample's KV-cache decoder and matches a full recompute."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import SHARED_DATA, tiny_config
from flax import linen as nn

from gptx import mesh as mesh_lib
from gptx.data import image_text
from gptx.models.gpt import GPT, GPTConfig
from gptx.models.multimodal import PARTS, MultimodalGPT, Projector, layout, place_patches
from gptx.models.vision import ViT, ViTConfig, patchify
from gptx.sample import SamplingConfig, generate_with_images
from gptx.train import checkpoints
from gptx.train import multimodal as mm_train
from gptx.train import step as step_lib

IMG = 70  # placeholder id
N = 4  # patches per 8x8 image with 4x4 patches
DEC = GPTConfig(vocab_size=72, block_size=48, n_layer=2, n_head=2, d_model=32, dropout=0.0, attn_dropout=0.0)
VIT = ViTConfig(image_size=8, patch_size=4, channels=3, width=16, depth=1, n_head=2)


def tiny_model():
    return MultimodalGPT(GPT(DEC), ViT(VIT), Projector(DEC.d_model), IMG)


@pytest.fixture(scope="module")
def model_and_params():
    model = tiny_model()
    params = jax.jit(model.init, static_argnums=1)(jax.random.key(0), 16)
    return model, nn.meta.unbox(params)


@pytest.fixture(scope="module")
def forward(model_and_params):
    """The model's logits, compiled once for every test's [2, 16] batches."""
    model, _ = model_and_params
    return jax.jit(lambda p, t, x: model(p, t, x))


def images(k, seed=0):
    return list(np.random.default_rng(seed).uniform(-1, 1, size=(k, 8, 8, 3)).astype(np.float32))


def test_image_tokens_land_exactly_at_their_placeholders(model_and_params):
    model, params = model_and_params
    ims = images(4)
    # Row 0: text, image, text, image, image, text (interleaved); row 1: left padding, then text and one image.
    row0 = layout(["a", None, "bc", None, None, "d"], lambda s: [10 + ord(c) % 50 for c in s], IMG, N)
    row1 = [3] * (len(row0) - 7) + [5, 6, IMG, IMG, IMG, IMG, 9]
    tokens = np.asarray([row0, row1], np.int32)
    patches = np.stack([place_patches(tokens[0], ims[:3], IMG, 4, 3), place_patches(tokens[1], ims[3:], IMG, 4, 3)])
    embeds = jax.jit(model.input_embeds)(params, tokens, patches)

    # Reference: each image through the encoder and projector on its own.
    enc = jax.jit(
        lambda p, x: model.projector.apply({"params": p["projector"]}, model.encoder.apply({"params": p["encoder"]}, x))
    )
    stacked = np.stack([patchify(im, 4) for im in ims])  # [4, N, P]
    per_image = np.asarray(enc(params, stacked))  # [4, N, D]
    # The ViT attends both ways: the last patch of an image changes its first patch's feature.
    stacked[0, -1] += 1.0
    assert not np.allclose(enc(params, stacked)[0, 0], per_image[0, 0])
    with pytest.raises(ValueError, match=r"ViT expects patches \[\.\.\., 4, 48\]"):
        model.encoder.apply({"params": params["encoder"]}, stacked[:, :3])
    wte = np.asarray(params["decoder"]["wte"])
    for row, shown in ((0, [0, 1, 2]), (1, [3])):
        where = np.flatnonzero(tokens[row] == IMG)
        assert len(where) == N * len(shown)
        for k, image in enumerate(shown):
            np.testing.assert_allclose(embeds[row, where[k * N : (k + 1) * N]], per_image[image], atol=1e-5)
        text = np.flatnonzero(tokens[row] != IMG)
        np.testing.assert_array_equal(embeds[row, text], wte[tokens[row, text]])
    with pytest.raises(ValueError, match=r"12 image placeholders for 1 image\(s\) \(4 patches\)"):
        place_patches(tokens[0], ims[:1], IMG, 4, 3)


def test_text_only_sequences_give_the_plain_gpts_logits(model_and_params, forward):
    _, params = model_and_params
    tokens = np.random.default_rng(1).integers(4, 64, (2, 16)).astype(np.int32)
    plain = jax.jit(lambda p, t: GPT(DEC).apply({"params": p}, t))(params["decoder"], tokens)
    # The vision path runs (no placeholder in the text), and changes nothing.
    np.testing.assert_array_equal(forward(params, tokens, np.zeros((2, 16, VIT.patch_dim), np.float32)), plain)


def test_placeholder_targets_carry_no_loss(model_and_params, forward):
    model, params = model_and_params
    row = [1, 5, *[IMG] * N, 7, 8, *[IMG] * N, 9, 10, 11, 12]
    inputs = np.asarray([row, row], np.int32)  # [2, 16]
    targets = np.concatenate([inputs[:, 1:], [[2], [2]]], axis=1)
    patches = np.stack([place_patches(inputs[0], images(2), IMG, 4, 3)] * 2)
    batch = {
        "inputs": inputs,
        "targets": targets,
        "positions": np.broadcast_to(np.arange(16), (2, 16)),
        "segment_ids": np.ones_like(inputs),
        "weights": np.ones(inputs.shape, np.float32),  # the loss itself must drop placeholder targets
        "patches": patches,
    }
    loss_sum, weight = jax.jit(lambda p, b: mm_train.loss_sum(p, b, None, model))(params, batch)
    logits = np.asarray(forward(params, inputs, patches), np.float64)[0]
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    text = [t for t in range(16) if targets[0, t] != IMG]
    assert float(weight) == 2 * len(text) == 2 * 8  # the 2N targets that are placeholders are out
    np.testing.assert_allclose(float(loss_sum), -2 * sum(logp[t, targets[0, t]] for t in text), rtol=1e-5)


class WordTok:
    bos_id, eos_id, pad_id = 1, 2, 3

    def encode(self, text):
        return [4 + sum(map(ord, w)) % 60 for w in text.split()]


def synthetic_bank(n=40):
    rng = np.random.default_rng(0)
    return image_text.ImageBank(
        digits=rng.uniform(0, 1, (n, 8, 8)).astype(np.float32),
        labels=np.arange(n) % 10,
        photos=[],
        image_size=8,
        patch_size=4,
        channels=3,
    )


def test_packed_rows_keep_every_image_whole_and_in_order():
    bank = synthetic_bank()
    records = image_text.digit_records(np.arange(40), 0, seed=0, max_interleaved=3, photo_repeats=0)
    assert {r.kind for r in records} == {"caption", "qa", "interleaved"}
    ds = image_text.multimodal_dataset(bank, records, WordTok(), IMG, seq_len=96, batch_size=4, seed=0, train=False)
    rows = seen = 0
    for batch in ds:
        for r in range(4):
            tokens, seg, pos = batch["inputs"][r], batch["segment_ids"][r], batch["positions"][r]
            assert (np.diff(pos)[np.diff(seg) == 0][seg[1:][np.diff(seg) == 0] > 0] == 1).all()  # positions count up
            assert (pos[np.flatnonzero(np.diff(seg)) + 1] == 0).all()  # and restart with each packed record
            for s in set(seg.tolist()) - {0}:
                # Each packed record: its placeholders form whole runs of N whose patches are its images' pixels.
                at = np.flatnonzero((seg == s) & (tokens == IMG))
                assert len(at) % N == 0 and len(at) > 0
                runs = batch["patches"][r, at].reshape(-1, N, VIT.patch_dim)
                for run in runs:  # un-augmented digits: each run is exactly one bank image
                    assert any(np.allclose(run, patchify(bank.image(("digit", i), None), 4)) for i in range(40))
                seen += len(runs)
            w, t = batch["weights"][r], batch["targets"][r]
            assert (w[t == IMG] == 0).all() and (w[seg == 0] == 0).all() and (w[(t != IMG) & (seg > 0)] == 1).all()
            rows += 1
    assert rows >= 4 and seen >= 40  # every digit appears at least once (captioned, asked about, interleaved)


def one_step(mesh, model, trainable, batch, tx, grad_accum=1):
    init_fn = mm_train.init_fn_of(model, tx, 16, {})
    train_step = step_lib.make_train_step(mm_train.loss(model), grad_accum=grad_accum, trainable=trainable)
    with mesh_lib.activation_rules(mesh):
        shardings, _ = checkpoints.abstract_state(init_fn, mesh, jax.random.key(0))
        state = jax.jit(lambda r: nn.meta.unbox(init_fn(r)), out_shardings=shardings)(jax.random.key(0))
        step = jax.jit(train_step, out_shardings=(shardings, None))
        new, metrics = step(state, mesh_lib.put_batch(mesh, batch), jax.random.key(1))
    return jax.device_get((state.params, new.params, metrics)), new


def mm_batch(rows=8, seed=0):
    bank = synthetic_bank()
    records = image_text.digit_records(np.arange(40), 0, seed=seed, max_interleaved=2, photo_repeats=0)
    ds = image_text.multimodal_dataset(bank, records, WordTok(), IMG, seq_len=16 + 2 * N, batch_size=rows, seed=seed)
    return next(iter(ds))


def test_stage1_trains_only_the_projector_and_stage2_adds_the_decoder():
    t = tiny_config().train
    t.warmup_steps = 0  # a full learning rate at the first step
    params = {part: {"kernel": jnp.ones((2, 3)), "bias": jnp.ones(3)} for part in ("decoder", "encoder", "projector")}
    grads = jax.tree.map(jnp.ones_like, params)  # every part gets a gradient: the optimizer must drop the frozen ones
    for trainable, want in (
        (("projector",), {"projector": True, "decoder": False, "encoder": False}),
        (("projector", "decoder"), {"projector": True, "decoder": True, "encoder": False}),
    ):
        tx = mm_train.stage_optimizer(t, trainable)
        updates = jax.device_get(tx.update(grads, tx.init(params), params)[0])
        assert {k: all(np.all(u != 0) for u in jax.tree.leaves(v)) for k, v in updates.items()} == want
        # No weight decay sneaks into a frozen part either: its updates are exactly zero.
        assert all(np.all(u == 0) for k in want if not want[k] for u in jax.tree.leaves(updates[k]))


def test_two_micro_batches_of_uneven_text_targets_equal_one_double_batch():
    # The loss is the mean over the whole batch's text targets: accumulating two micro-batches (rows 0, 2, 4, 6
    # and rows 1, 3, 5, 7) whose text-target counts differ gives the batch's loss, gradient and update, not the
    # mean of two micro-batch means. Stage 2's parts train; the encoder stays exactly as it was.
    model, trainable = tiny_model(), ("projector", "decoder")
    batch = dict(mm_batch())
    batch["weights"] = batch["weights"].copy()
    batch["weights"][1, : batch["weights"].shape[1] // 2] = 0.0  # fewer targets in the second micro-batch
    counts = [float(mm_train.loss(model).norms({k: v[i::2] for k, v in batch.items()})["tokens"]) for i in (0, 1)]
    assert counts[0] > counts[1] > 0, counts
    tx = optax.chain(optax.sgd(0.1), optax.freeze({part: part not in trainable for part in PARTS}))
    mesh = mesh_lib.make_mesh(tiny_config().mesh, devices=jax.devices()[:1])
    (before, params1, metrics1), _ = one_step(mesh, model, trainable, batch, tx)
    (_, params2, metrics2), _ = one_step(mesh, model, trainable, batch, tx, grad_accum=2)
    for key in ("loss", "grad_norm", "target_tokens"):
        np.testing.assert_allclose(metrics2[key], metrics1[key], rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), params2, params1)
    assert jax.tree.all(jax.tree.map(np.array_equal, params2["encoder"], before["encoder"]))
    assert not np.allclose(params2["projector"]["fc_kernel"], before["projector"]["fc_kernel"])


@pytest.mark.slow  # ~30 s of CPU; tests/test_sharding.py checks the shared mesh machinery in the default run
@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (simulated) devices")
def test_sharded_multimodal_step_equals_single_device_step():
    model = tiny_model()
    batch = mm_batch()
    tx = optax.sgd(0.1)
    cfg = tiny_config()
    (_, params1, metrics1), _ = one_step(
        mesh_lib.make_mesh(cfg.mesh, devices=jax.devices()[:1]), model, ("projector", "decoder"), batch, tx
    )
    cfg.mesh.update(data=2, fsdp=2, tensor=2)
    (before8, params8, metrics8), state8 = one_step(
        mesh_lib.make_mesh(cfg.mesh), model, ("projector", "decoder"), batch, tx
    )
    np.testing.assert_allclose(metrics8["loss"], metrics1["loss"], rtol=1e-5)
    assert jax.tree.all(jax.tree.map(np.array_equal, params8["encoder"], before8["encoder"]))  # frozen: no gradient
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), params8, params1)
    spec = state8.params["projector"]["fc_kernel"].sharding.spec
    assert spec == jax.sharding.PartitionSpec("fsdp", "tensor")


def test_decoding_with_images_goes_through_the_kv_cache_sampler(model_and_params, forward):
    model, params = model_and_params
    ims = images(3, seed=3)
    prompts = [[1, *[IMG] * N, 11, 12], [1, 13, *[IMG] * N, 14, *[IMG] * N], [1, *[IMG] * N]]
    shown = [[ims[0]], [ims[1], ims[2]], [ims[2]]]
    sampling = SamplingConfig(max_new_tokens=5, temperature=0.0)
    together = generate_with_images(model, params, prompts, shown, sampling)
    # The shortest prompt, left-padded by 5 in the batch, continues as it does alone.
    assert together.tokens[2] == generate_with_images(model, params, prompts[2:], shown[2:], sampling).tokens[0]
    # Reference: greedy decoding by full recompute (no cache, no left padding) in one right-padded [2, 16] buffer;
    # causal attention keeps the padding after the current token from mattering.
    for prompt, row_images, got in zip(prompts, shown, together.tokens, strict=True):
        assert IMG not in got  # (a generated placeholder would have no image; this random model emits none)
        seq = np.full((2, 16), 3, np.int32)
        seq[:, : len(prompt)] = prompt
        patches = np.stack([place_patches(seq[0], row_images, IMG, 4, 3)] * 2)
        for t in range(len(prompt), len(prompt) + 5):
            seq[:, t] = int(np.argmax(forward(params, seq, patches)[0, t - 1]))
        assert got == seq[0, len(prompt) : len(prompt) + 5].tolist()


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_DATA.exists(), reason=f"shared data sets not found at {SHARED_DATA}")
def test_train_command_runs_clip_then_both_llava_stages_and_names_bad_keys(tmp_path):
    from test_config import run_cli

    common = [
        "--config.train.progress=False",
        "--config.vision.eval_limit=20",
        f"--config.vision.data_dir={SHARED_DATA}",
    ]
    clip_dir, mm_dir = tmp_path / "clip", tmp_path / "mm"
    out = run_cli("train", "--config=configs/vision.py:clip", f"--workdir={clip_dir}", "--config.train.steps=20",
                  "--config.train.batch_size=32", "--config.tokenizer.vocab_size=512", "--config.model.vocab_size=512",
                  *common)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert "zero-shot accuracy on 20 held-out digits" in out.stdout
    out = run_cli("train", "--config=configs/vision.py:multimodal", f"--workdir={mm_dir}", "--config.train.steps=6",
                  "--config.vision.projector_steps=4", "--config.model.vocab_size=520",
                  f"--config.vision.encoder_init={clip_dir}", *common)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads((mm_dir / "vision_results.json").read_text())
    assert set(results["stages"]) == {"stage1_projector", "stage2_full"}
    assert results["image_token_id"] == 512 and results["zero_shot"]["examples"] == 20  # the clip run's tokenizer
    assert (mm_dir / "stage1_projector" / "checkpoints" / "4").is_dir() and (
        mm_dir / "stage2_full" / "checkpoints" / "6"
    ).is_dir()
    out = run_cli("train", "--config=configs/vision.py:multimodal", f"--workdir={tmp_path / 'bad'}",
                  "--config.model.vocab_size=512", f"--config.vision.encoder_init={clip_dir}", *common)  # fmt: skip
    assert out.returncode == 2 and "config.model.vocab_size=512 leaves no room for the image placeholder" in out.stderr
