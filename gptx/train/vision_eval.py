"""Evaluation of the vision models: zero-shot classification by the contrastive model, and answers and captions
decoded by the multimodal model with images in the prompt (through gptx.sample's KV-cache decoder)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from gptx import mesh as mesh_lib
from gptx.data import image_text
from gptx.models import clip as clip_lib
from gptx.models.multimodal import layout
from gptx.models.vision import patchify
from gptx.sample import SamplingConfig, generate_with_images


def _padded_chunks(n: int, size: int):
    """Index chunks [size] covering range(n), the last padded by repeating its final index; yields (idx, n_real)."""
    for start in range(0, n, size):
        idx = np.arange(start, min(start + size, n))
        yield np.concatenate([idx, np.full(size - len(idx), idx[-1])]), len(idx)


def encode_images(model: clip_lib.CLIP, params, patches: np.ndarray, batch_size: int, mesh: Mesh) -> np.ndarray:
    """L2-normalised image embeddings [n, E] of patches [n, N, P], in batches that split over the mesh."""
    fn = jax.jit(lambda p, x: model.apply({"params": p}, x, method=clip_lib.CLIP.encode_image))
    out = []
    with mesh_lib.activation_rules(mesh):
        for idx, n_real in _padded_chunks(len(patches), batch_size):
            out.append(
                np.asarray(jax.device_get(fn(params, mesh_lib.put_batch(mesh, {"x": patches[idx]})["x"])))[:n_real]
            )
    return np.concatenate(out)


def encode_texts(model: clip_lib.CLIP, params, texts: list[str], tok, text_len: int, batch_size: int, mesh: Mesh):
    """L2-normalised text embeddings [n, E] of captions."""
    encoded = [image_text.encode_caption(tok, t, text_len) for t in texts]
    tokens = np.stack([e[0] for e in encoded])
    lengths = np.asarray([e[1] for e in encoded], np.int32)
    fn = jax.jit(lambda p, t, n: model.apply({"params": p}, t, n, method=clip_lib.CLIP.encode_text))
    out = []
    with mesh_lib.activation_rules(mesh):
        for idx, n_real in _padded_chunks(len(texts), batch_size):
            b = mesh_lib.put_batch(mesh, {"t": tokens[idx], "n": lengths[idx]})
            out.append(np.asarray(jax.device_get(fn(params, b["t"], b["n"])))[:n_real])
    return np.concatenate(out)


def zero_shot_classify(
    model, params, bank, idx, tok, cfg, mesh: Mesh, templates=image_text.ZERO_SHOT_TEMPLATES
) -> dict[str, Any]:
    """Zero-shot digit classification of bank.digits[idx]: the class whose prompted name (averaged over
    `templates`) has the most similar embedding. Returns accuracy, predictions and the chance level."""
    patches = np.stack([patchify(bank.image(("digit", int(i)), None), bank.patch_size) for i in idx])
    image_emb = encode_images(model, params, patches, cfg.train.batch_size, mesh)
    prompts = [t.format(name) for name in image_text.DIGIT_NAMES for t in templates]
    text_emb = encode_texts(model, params, prompts, tok, cfg.vision.text_len, cfg.train.batch_size, mesh)
    class_emb = clip_lib.class_embeddings(jnp.asarray(text_emb).reshape(10, len(templates), -1))
    pred = np.asarray(clip_lib.zero_shot_predict(jnp.asarray(image_emb), class_emb))
    labels = bank.labels[idx]
    return {
        "accuracy": float(np.mean(pred == labels)),
        "examples": len(idx),
        "chance": 0.1,
        "templates": list(templates),
        "predictions": pred.tolist(),
    }


def first_digit_name(text: str) -> str | None:
    """The first digit name in a generated text, or None."""
    words = "".join(c if c.isalpha() else " " for c in text.lower()).split()
    return next((w for w in words if w in image_text.DIGIT_NAMES), None)


def multimodal_prompts(kind: str, test_idx, train_idx, bank, shots: int, seed: int):
    """(pieces, image refs) per held-out digit: `qa` asks the question, `caption` shows only the image,
    `few_shot` shows `shots` training digits each followed by its name, then the query image."""
    rng = np.random.default_rng(seed)
    out = []
    for i in test_idx:
        query = ("digit", int(i))
        if kind == "qa":
            out.append(([None, image_text.QUESTION], [query]))
        elif kind == "caption":
            out.append(([None], [query]))
        else:
            examples = rng.choice(train_idx, size=shots, replace=False)
            pieces = [p for j in examples for p in (None, f"{image_text.DIGIT_NAMES[bank.labels[j]]}.")] + [None]
            out.append((pieces, [("digit", int(j)) for j in examples] + [query]))
    return out


def answer_digits(model, params, tok, bank, prompts, cfg, mesh, max_new_tokens: int) -> list[str]:
    """Greedy continuations (text) of image-text prompts, decoded by gptx.sample."""
    token_lists = [
        [tok.bos_id, *layout(pieces, tok.encode, model.image_token_id, model.n_patches)] for pieces, _ in prompts
    ]
    images = [[bank.image(ref, None) for ref in refs] for _, refs in prompts]
    sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.0, eos_id=tok.eos_id, pad_id=tok.pad_id)
    gen = generate_with_images(model, params, token_lists, images, sampling, batch_size=cfg.train.batch_size, mesh=mesh)
    return [tok.decode(t) for t in gen.tokens]


def evaluate_multimodal(model, params, tok, bank, train_idx, test_idx, cfg, mesh) -> dict[str, Any]:
    """Answer accuracy on held-out digits (zero-shot question, few-shot interleaved examples) and captions."""
    labels = [image_text.DIGIT_NAMES[bank.labels[i]] for i in test_idx]
    out = {}
    for kind, key, new_tokens in (("qa", "zero_shot", 6), ("few_shot", "few_shot", 6), ("caption", "captions", 24)):
        prompts = multimodal_prompts(kind, test_idx, train_idx, bank, cfg.vision.few_shot, cfg.data.seed)
        texts = answer_digits(model, params, tok, bank, prompts, cfg, mesh, new_tokens)
        answers = [first_digit_name(t) for t in texts]
        correct = [a == y for a, y in zip(answers, labels, strict=True)]
        out[key] = {
            "accuracy": float(np.mean(correct)),
            "examples": len(texts),
            "samples": texts[:12],
            "answers": answers,
        }
    if bank.photos:
        prompts = [([None], [("photo", j)]) for j in range(len(bank.photos))]
        texts = answer_digits(model, params, tok, bank, prompts, cfg, mesh, 24)
        out["photo_captions"] = [
            {"file": p.file, "caption": p.caption, "generated": t} for p, t in zip(bank.photos, texts, strict=True)
        ]
    out["test_digits"] = [int(i) for i in test_idx]
    return out
