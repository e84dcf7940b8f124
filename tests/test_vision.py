"""The ViT image encoder and contrastive alignment (CLIP, SigLIP): losses against naive loops, the learned and
clamped temperature, zero-shot classification, the image-text readers, the training loss as one step of the step
builder (with and without gradient accumulation), sharded steps, and (slow) zero-shot accuracy on held-out digits
after a short training run."""

import gzip
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import SHARED_DATA, tiny_config
from flax import linen as nn

from gptx import config as config_lib
from gptx import mesh as mesh_lib
from gptx.data import image_text
from gptx.data.sources import DataError
from gptx.models import clip as clip_lib
from gptx.models.gpt import GPTConfig
from gptx.models.vision import ViTConfig, patchify, unpatchify
from gptx.train import checkpoints
from gptx.train import clip as clip_train
from gptx.train import step as step_lib
from gptx.train import vision as vision_train
from gptx.train.state import TrainState

needs_data = pytest.mark.skipif(not SHARED_DATA.exists(), reason=f"shared data sets not found at {SHARED_DATA}")

VIT = ViTConfig(image_size=8, patch_size=4, channels=3, width=16, depth=1, n_head=2)
TEXT = GPTConfig(vocab_size=64, block_size=8, n_layer=1, n_head=2, d_model=16, dropout=0.0, attn_dropout=0.0)


def unit(rng, shape):
    x = rng.normal(size=shape)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_patch_embedding_is_a_stride_p_convolution():
    # ViT: "the patch embedding is a linear projection of flattened patches", i.e. a p x p convolution with stride p.
    rng = np.random.default_rng(0)
    images = rng.normal(size=(2, 8, 8, 3)).astype(np.float32)
    patches = patchify(images, 4)  # [2, 4, 48]
    np.testing.assert_array_equal(unpatchify(patches, 4, 3), images)
    np.testing.assert_array_equal(patches[1, 2].reshape(4, 4, 3), images[1, 4:8, 0:4])  # raster order: row 1, col 0
    kernel = rng.normal(size=(48, 5)).astype(np.float32)
    conv = jax.lax.conv_general_dilated(
        images, kernel.reshape(4, 4, 3, 5), (4, 4), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )  # [2, 2, 2, 5]
    np.testing.assert_allclose(patches @ kernel, np.asarray(conv).reshape(2, 4, 5), rtol=1e-5, atol=1e-5)


def test_clip_loss_equals_a_naive_computation():
    rng = np.random.default_rng(0)
    img, txt, scale = unit(rng, (6, 8)), unit(rng, (6, 8)), 7.5
    naive = 0.0
    for i in range(6):  # image i against every text, and text i against every image
        row = [scale * img[i] @ txt[j] for j in range(6)]
        col = [scale * img[j] @ txt[i] for j in range(6)]
        naive += -(row[i] - math.log(sum(math.exp(v) for v in row))) / 12
        naive += -(col[i] - math.log(sum(math.exp(v) for v in col))) / 12
    got = clip_lib.clip_loss(jnp.asarray(img), jnp.asarray(txt), jnp.asarray(scale))
    np.testing.assert_allclose(float(got), naive, rtol=1e-5)


def test_siglip_loss_equals_a_naive_computation():
    rng = np.random.default_rng(1)
    img, txt, t, b = unit(rng, (5, 8)), unit(rng, (5, 8)), 10.0, -10.0
    naive = 0.0
    for i in range(5):
        for j in range(5):
            z = 1.0 if i == j else -1.0
            naive -= math.log(1.0 / (1.0 + math.exp(-z * (t * img[i] @ txt[j] + b)))) / 5
    got = clip_lib.siglip_loss(jnp.asarray(img), jnp.asarray(txt), jnp.asarray(t), jnp.asarray(b))
    np.testing.assert_allclose(float(got), naive, rtol=1e-5)


def test_zero_shot_picks_the_class_of_the_nearest_prompt_ensemble():
    rng = np.random.default_rng(2)
    prompts = unit(rng, (3, 4, 8))  # 3 classes x 4 templates
    images = unit(rng, (10, 8))
    mean = prompts.mean(axis=1)
    classes = mean / np.linalg.norm(mean, axis=-1, keepdims=True)
    np.testing.assert_allclose(clip_lib.class_embeddings(jnp.asarray(prompts)), classes, rtol=1e-5, atol=1e-6)
    want = [int(np.argmax([img @ c for c in classes])) for img in images]
    assert clip_lib.zero_shot_predict(jnp.asarray(images), jnp.asarray(classes)).tolist() == want


def tiny_clip(loss="clip"):
    model = clip_lib.CLIP(VIT, TEXT, embed_dim=8, loss=loss)
    rng = np.random.default_rng(0)
    batch = {
        "patches": rng.normal(size=(4, 4, 48)).astype(np.float32),
        "tokens": rng.integers(4, 64, (4, 8)).astype(np.int32),
        "lengths": np.asarray([[8], [5], [3], [8]], np.int32),
        "labels": np.asarray([[0], [1], [2], [-1]], np.int32),
    }
    params = jax.jit(model.init)(jax.random.key(0), batch["patches"], batch["tokens"], batch["lengths"][:, 0])
    return model, nn.meta.unbox(params["params"]), batch


def test_temperature_is_learnable_and_clamped_at_a_logit_scale_of_100():
    # CLIP: the temperature is "directly optimized during training as a log-parameterized multiplicative scalar",
    # "clipped to prevent scaling the logits by more than 100": below the clamp the loss has a gradient in it,
    # above it the scale is 100 and gets none.
    rng = np.random.default_rng(3)
    img, txt = jnp.asarray(unit(rng, (4, 8))), jnp.asarray(unit(rng, (4, 8)))
    loss = lambda log_scale: clip_lib.clip_loss(img, txt, clip_lib.logit_scale(log_scale, 100.0))
    assert math.isclose(float(clip_lib.logit_scale(jnp.asarray(math.log(1000.0)), 100.0)), 100.0, rel_tol=1e-5)
    assert float(jax.grad(loss)(jnp.asarray(math.log(1000.0)))) == 0.0
    assert abs(float(jax.grad(loss)(jnp.asarray(math.log(1 / 0.07))))) > 1e-6


@pytest.mark.slow  # compiles a CLIP; the default run checks the clamp and its gradient on the loss alone
def test_temperature_and_bias_are_learned_and_text_embeddings_ignore_padding():
    model, params, batch = tiny_clip("siglip")
    # SigLIP's initialisation: t' = log 10, b = -10.
    assert math.isclose(float(params["logit_bias"]), -10.0)
    assert math.isclose(float(params["logit_scale"]), math.log(10), rel_tol=1e-6)
    loss = clip_train.loss(model)
    grads = jax.jit(jax.grad(lambda p: loss.fn(p, batch, None, loss.norms(batch))[0]))(params)
    assert abs(float(grads["logit_scale"])) > 1e-6 and abs(float(grads["logit_bias"])) > 1e-6
    # The text tower reads the state at the EOS: tokens after it (padding) do not matter, tokens before do.
    encode = jax.jit(lambda p, t, n: model.apply({"params": p}, t, n, method=clip_lib.CLIP.encode_text))
    embed = lambda t: encode(params, t, batch["lengths"][:, 0])
    padded = batch["tokens"].copy()
    padded[2, 3:] = 3
    np.testing.assert_allclose(embed(padded), embed(batch["tokens"]), atol=1e-6)
    padded[2, 0] = 5 if padded[2, 0] != 5 else 6
    assert not np.allclose(embed(padded)[2], embed(batch["tokens"])[2])


def test_digit_reader_counts_malformed_lines_and_photo_errors_name_the_line(tmp_path):
    path = tmp_path / "digits.csv.gz"
    good = ",".join(["0"] * 64 + ["7"])
    with gzip.open(path, "wt") as f:
        f.write(f"{good}\n{','.join(['0'] * 64)}\n1,2,x\n{','.join(['17'] * 64 + ['1'])}\n{good}\n")
    d = image_text.read_digits(str(path))
    assert d.images.shape == (2, 8, 8) and d.labels.tolist() == [7, 7]
    assert [m.split(": ")[0] for m in d.malformed] == [f"{path}:{n}" for n in (2, 3, 4)]
    (tmp_path / "captions.jsonl").write_text('{"file": "a.png", "caption": "x"}\n{"file": "b.png"\n')
    with pytest.raises(FileNotFoundError, match=r"captions\.jsonl:1: image .*a\.png not found"):
        image_text.read_photos(str(tmp_path), 8)
    from PIL import Image

    Image.new("RGB", (20, 10), (255, 0, 0)).save(tmp_path / "a.png")
    with pytest.raises(DataError, match=r"captions\.jsonl:2: not a \{file, caption\} JSON record"):
        image_text.read_photos(str(tmp_path), 8)


@pytest.mark.parametrize(
    ("key", "value", "named"),
    [
        ("task", "vqa", "config.vision.task='vqa'"),
        ("loss", "hinge", "config.vision.loss='hinge'"),
        ("patch_size", 5, "config.vision.image_size=16 is not divisible"),
        ("sources", "photos", "config.vision.sources='photos'"),
        ("max_interleaved", 9, "config.data.seq_len=128 is too short"),
    ],
)
def test_impossible_vision_settings_name_the_key(key, value, named):
    from conftest import load_config

    cfg = load_config("vision", "multimodal")
    cfg.vision[key] = value
    config_lib.validate(cfg)  # the schema accepts it; the vision rules do not
    with pytest.raises(config_lib.ConfigError, match=named.replace(".", r"\.")):
        vision_train.validate_vision(cfg)


@needs_data
def test_clip_batches_pair_digits_with_captions_made_from_their_labels():
    bank = image_text.load_bank(str(SHARED_DATA), image_text.SOURCES, 16, 4, 3)
    assert bank.digits.shape == (1797, 16, 16) and len(bank.photos) == 8
    assert bank.digits.min() >= 0.0 and bank.digits.max() <= 1.0
    train_idx, test_idx = image_text.split_digits(1797, 0.2, 0)
    assert len(test_idx) == 359 and not set(train_idx) & set(test_idx)

    class CharTok:
        bos_id, eos_id, pad_id = 1, 2, 3

        def encode(self, text):
            return [ord(c) for c in text]

    refs = [("digit", int(i)) for i in test_idx[:8]]
    batch = next(iter(image_text.clip_dataset(bank, refs, CharTok(), text_len=40, batch_size=8, train=False)))
    assert batch["patches"].shape == (8, 16, 48) and batch["tokens"].shape == (8, 40)
    for row in range(8):
        n = batch["lengths"][row, 0]
        assert (
            batch["tokens"][row, 0] == 1 and batch["tokens"][row, n - 1] == 2 and (batch["tokens"][row, n:] == 3).all()
        )
        label = batch["labels"][row, 0]
        assert label == bank.labels[test_idx[row]]
        caption = "".join(chr(t) for t in batch["tokens"][row, 1 : n - 1])
        assert caption in [t.format(image_text.DIGIT_NAMES[label]) for t in image_text.CAPTION_TEMPLATES]
    # Held-out images are not augmented; training ones are, within [-1, 1].
    pixels = bank.image(refs[0], None)
    np.testing.assert_array_equal(batch["patches"][0], patchify(pixels, 4))
    augmented = bank.image(refs[0], np.random.default_rng(0))
    assert not np.allclose(augmented, pixels) and augmented.min() >= -1.0 and augmented.max() <= 1.0


def test_clip_step_is_the_contrastive_loss_and_accumulation_averages_micro_batches():
    # One micro-batch: the loss is exactly CLIP's loss of the whole batch's B x B similarities, as before the step
    # builder. Two: each micro-batch (rows 0, 2 and rows 1, 3) is contrasted within itself and the two losses
    # are averaged (no gradient caching), in a step that runs and moves the parameters.
    model, params, batch = tiny_clip()
    loss = clip_train.loss(model)
    value, metrics = jax.jit(lambda p, b: loss.fn(p, b, None, loss.norms(b)))(params, batch)
    # The towers embed each row on its own: a micro-batch's embeddings are these rows'.
    image_emb, text_emb, scale, bias = jax.jit(clip_train.embed_pairs, static_argnums=3)(params, batch, None, model)

    def reference(rows):
        return float(clip_lib.contrastive_loss(model.loss, image_emb[rows], text_emb[rows], scale, bias))

    np.testing.assert_allclose(float(value), reference(slice(None)), rtol=1e-6)
    assert math.isclose(float(metrics["logit_scale"]), 1 / 0.07, rel_tol=1e-5)
    mean_of_micro = (reference(slice(0, None, 2)) + reference(slice(1, None, 2))) / 2
    assert not math.isclose(mean_of_micro, reference(slice(None)), rel_tol=1e-3)  # B = 2 is not B = 4
    state = TrainState.create(apply_fn=None, params=params, tx=optax.sgd(0.1))
    new, metrics = jax.jit(step_lib.make_train_step(loss, grad_accum=2))(state, batch, jax.random.key(1))
    np.testing.assert_allclose(float(metrics["loss"]), mean_of_micro, rtol=1e-5)
    assert math.isclose(float(metrics["logit_scale"]), 1 / 0.07, rel_tol=1e-5)  # a mean, not a sum of 2
    assert np.isfinite(float(metrics["grad_norm"])) and float(metrics["grad_norm"]) > 0
    assert not np.allclose(new.params["logit_scale"], params["logit_scale"])


@pytest.mark.slow  # tests/test_multimodal.py checks a sharded step through the same ViT in the default run
@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (simulated) devices")
def test_sharded_clip_step_equals_single_device_step():
    model, params, batch = tiny_clip()
    assert math.isclose(math.exp(float(params["logit_scale"])), 1 / 0.07, rel_tol=1e-5)  # CLIP's initial value
    batch = {k: np.concatenate([v, v[::-1]]) for k, v in batch.items()}  # 8 pairs
    tx = optax.sgd(0.1)  # Adam's first step is sign(g): noise where a gradient is exactly 0 (key biases)

    def init_fn(rng):
        b = batch
        p = model.init(rng, b["patches"][:1], b["tokens"][:1], b["lengths"][:1, 0])["params"]
        return TrainState.create(apply_fn=None, params=p, tx=tx)

    def step_on(mesh):
        with mesh_lib.activation_rules(mesh):
            shardings, _ = checkpoints.abstract_state(init_fn, mesh, jax.random.key(0))
            state = jax.jit(lambda r: nn.meta.unbox(init_fn(r)), out_shardings=shardings)(jax.random.key(0))
            step = jax.jit(step_lib.make_train_step(clip_train.loss(model)), out_shardings=(shardings, None))
            new, metrics = step(state, mesh_lib.put_batch(mesh, batch), jax.random.key(1))
        return jax.device_get((metrics["loss"], new.params)), new

    cfg = tiny_config()
    (loss1, params1), _ = step_on(mesh_lib.make_mesh(cfg.mesh, devices=jax.devices()[:1]))
    cfg.mesh.update(data=2, fsdp=2, tensor=2)
    (loss8, params8), state8 = step_on(mesh_lib.make_mesh(cfg.mesh))
    np.testing.assert_allclose(loss8, loss1, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), params8, params1)
    qkv = state8.params["image_tower"]["block_0"]["attn"]["qkv_kernel"]
    assert qkv.sharding.spec == jax.sharding.PartitionSpec("fsdp", None, "tensor", None)  # ViT shards like GPT


@pytest.mark.slow
@needs_data
def test_zero_shot_digit_classification_is_far_above_chance(tmp_path):
    from conftest import load_config

    cfg = load_config("vision", "clip")
    cfg.train.update(steps=400, batch_size=64, eval_every=400, progress=False, async_ckpt=False)  # ~1 CPU minute
    cfg.tokenizer.vocab_size = 512
    cfg.model.vocab_size = 512
    cfg.vision.data_dir = str(SHARED_DATA)
    out = vision_train.run(cfg, str(tmp_path))
    assert out["zero_shot"]["examples"] == 359
    assert out["zero_shot"]["accuracy"] > 0.5, out["zero_shot"]  # chance: 0.1; measured 0.67 (0.96 in the demo's run)
    assert json.loads((tmp_path / "vision_results.json").read_text())["task"] == "clip"
