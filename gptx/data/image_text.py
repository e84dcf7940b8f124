"""Image-text data: readers, captions, augmentation and the grain pipelines of the vision models.

Sources (under `config.vision.data_dir`, normally ../shared/data):
  image_text/sklearn_digits/digits.csv.gz   1,797 8x8 handwritten digits (64 pixels 0-16, then the label)
  image_text/skimage_clip8/captions.jsonl   8 photos with human-written captions (CLIP's own notebook)

The digits come with labels, not captions: their captions are MADE FROM THE LABELS with the templates below
("a handwritten digit seven."). Digits are upscaled bilinearly to `image_size` and, for training, augmented by
a small random rotation and translation; photos are resized (no augmentation). Pixels are scaled to [-1, 1].

Two pipelines:
  clip_dataset        (image, caption) pairs -> {patches [B, N, P], tokens [B, L], lengths [B, 1], labels [B, 1]}
  multimodal_dataset  records of text with image placeholders -> packed rows {inputs, targets, positions,
                      segment_ids, weights [B, T], patches [B, T, P]}

Multimodal records are rendered as [BOS] text [EOS] where each image becomes N placeholder tokens
(`gptx.models.multimodal.layout`) and its pixels ride along token-aligned, so grain's first-fit packer packs
several records into a row without ever splitting an image. Loss weights are 0 on placeholder targets.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import json
import os
from collections.abc import Sequence

import grain
import jax
import numpy as np
from PIL import Image

from gptx.data.sources import DataError
from gptx.models.multimodal import layout, place_patches
from gptx.models.vision import patchify

DIGITS_FILE = "image_text/sklearn_digits/digits.csv.gz"
PHOTOS_DIR = "image_text/skimage_clip8"
SOURCES = ("digits", "photos")
DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

# Captions made from the digit labels (training).
CAPTION_TEMPLATES = (
    "a handwritten digit {}.",
    "a photo of the number {}.",
    "the digit {}.",
    "a scan of a handwritten {}.",
    "a drawing of the number {}.",
)
# Zero-shot prompts: class names in templates the contrastive model never saw in a caption.
ZERO_SHOT_TEMPLATES = ("a picture of the digit {}.", "an image of a {}.", "a {} written by hand.")
QUESTION = "Question: which digit is this? Answer:"
# Record kinds of the multimodal decoder's training mix.
CAPTION, QA, INTERLEAVED, PHOTO = "caption", "qa", "interleaved", "photo"


@dataclasses.dataclass
class Digits:
    """Digit images [n, 8, 8] (0-16) with labels [n]; `malformed` lists the rejected lines as 'file:line: why'."""

    images: np.ndarray
    labels: np.ndarray
    path: str
    malformed: list[str]


@dataclasses.dataclass
class Photo:
    file: str
    caption: str
    image: np.ndarray  # [S, S, 3] float in [0, 1]


def read_digits(path: str) -> Digits:
    """Reads digits.csv.gz; a malformed line is counted in `malformed` (with file and line), never kept."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"digits file {path} not found (config.vision.data_dir)")
    images, labels, bad = [], [], []
    with gzip.open(path, "rt") as f:
        for n, row in enumerate(csv.reader(f), start=1):
            try:
                values = [int(v) for v in row]
            except ValueError:
                bad.append(f"{path}:{n}: non-integer field")
                continue
            if len(values) != 65 or not all(0 <= v <= 16 for v in values[:64]) or not 0 <= values[64] <= 9:
                bad.append(f"{path}:{n}: want 64 pixels in 0..16 and a label in 0..9, got {len(values)} fields")
                continue
            images.append(values[:64])
            labels.append(values[64])
    if not images:
        raise DataError(f"{path}: no valid digit rows ({len(bad)} malformed)")
    return Digits(np.asarray(images, np.uint8).reshape(-1, 8, 8), np.asarray(labels, np.int32), path, bad)


def read_photos(directory: str, size: int) -> list[Photo]:
    """The captioned photos of captions.jsonl, resized to size x size RGB; errors name the file and line."""
    index = os.path.join(directory, "captions.jsonl")
    if not os.path.exists(index):
        raise FileNotFoundError(f"photo captions {index} not found (config.vision.data_dir)")
    photos = []
    with open(index) as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                file, caption = rec["file"], rec["caption"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise DataError(f"{index}:{n}: not a {{file, caption}} JSON record ({e})") from None
            path = os.path.join(directory, file)
            if not os.path.exists(path):
                raise FileNotFoundError(f"{index}:{n}: image {path} not found")
            with Image.open(path) as im:
                im = im.convert("RGB").resize((size, size), Image.Resampling.BOX)
            photos.append(Photo(file, caption, np.asarray(im, np.float32) / 255.0))
    return photos


def upscale(gray: np.ndarray, size: int) -> np.ndarray:
    """[8, 8] digit (0-16) -> [size, size] float in [0, 1], bilinear."""
    im = Image.fromarray(gray.astype(np.float32) / 16.0, mode="F")
    return np.asarray(im.resize((size, size), Image.Resampling.BILINEAR), np.float32)


def augment(gray: np.ndarray, rng: np.random.Generator, max_rotation: float, max_shift: int) -> np.ndarray:
    """A random rotation (degrees) and integer translation (pixels) of a [S, S] image; the background stays 0."""
    angle = rng.uniform(-max_rotation, max_rotation)
    dx, dy = rng.integers(-max_shift, max_shift + 1, size=2)
    im = Image.fromarray(gray, mode="F").rotate(
        angle, resample=Image.Resampling.BILINEAR, translate=(int(dx), int(dy)), fillcolor=0.0
    )
    return np.asarray(im, np.float32)


def to_pixels(image: np.ndarray, channels: int) -> np.ndarray:
    """[S, S] gray or [S, S, 3] RGB in [0, 1] -> [S, S, channels] in [-1, 1]."""
    if image.ndim == 2:
        image = np.repeat(image[..., None], channels, axis=-1)
    elif channels == 1:
        image = image.mean(axis=-1, keepdims=True)
    return (2.0 * image - 1.0).astype(np.float32)


@dataclasses.dataclass
class ImageBank:
    """Everything a pipeline renders from: upscaled digits [n, S, S] in [0, 1], labels, photos, image settings."""

    digits: np.ndarray
    labels: np.ndarray
    photos: list[Photo]
    image_size: int
    patch_size: int
    channels: int
    max_rotation: float = 10.0
    max_shift: int = 1

    def image(self, ref: tuple[str, int], rng: np.random.Generator | None) -> np.ndarray:
        """Pixels [S, S, C] of ("digit", i) or ("photo", j); digits are augmented when an rng is given."""
        kind, i = ref
        if kind == "photo":
            return to_pixels(self.photos[i].image, self.channels)
        gray = self.digits[i]
        if rng is not None:
            gray = augment(gray, rng, self.max_rotation, self.max_shift)
        return to_pixels(gray, self.channels)


def load_bank(data_dir: str, sources: Sequence[str], image_size: int, patch_size: int, channels: int) -> ImageBank:
    """Reads the requested sources; malformed digit lines are reported on stderr with their count."""
    digits = np.zeros((0, image_size, image_size), np.float32)
    labels = np.zeros((0,), np.int32)
    photos: list[Photo] = []
    if "digits" in sources:
        d = read_digits(os.path.join(data_dir, DIGITS_FILE))
        if d.malformed:
            print(f"warning: {len(d.malformed)} malformed line(s) in {d.path}, e.g. {d.malformed[0]}")
        digits = np.stack([upscale(im, image_size) for im in d.images])
        labels = d.labels
    if "photos" in sources:
        photos = read_photos(os.path.join(data_dir, PHOTOS_DIR), image_size)
    return ImageBank(digits, labels, photos, image_size, patch_size, channels)


def split_digits(n: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) digit indices: a seeded permutation, the last `test_fraction` held out."""
    order = np.random.default_rng(seed).permutation(n)
    n_test = int(round(n * test_fraction))
    return np.sort(order[: n - n_test]), np.sort(order[n - n_test :])


def _shard(ds: grain.MapDataset, batch_size: int) -> tuple[grain.MapDataset, int]:
    n_proc = jax.process_count()
    if batch_size % n_proc:
        raise ValueError(f"batch size {batch_size} does not split over {n_proc} processes")
    return ds[jax.process_index() :: n_proc], batch_size // n_proc


# ------------------------------------------------------------------------------------------------------------
# Contrastive pairs


def encode_caption(tokenizer, text: str, text_len: int) -> tuple[np.ndarray, int]:
    """[BOS] text [EOS], cut to text_len (the EOS kept last) and right-padded; returns (tokens [L], length)."""
    ids = [tokenizer.bos_id, *tokenizer.encode(text)][: text_len - 1] + [tokenizer.eos_id]
    out = np.full((text_len,), tokenizer.pad_id, np.int32)
    out[: len(ids)] = ids
    return out, len(ids)


class _RenderPairs(grain.transforms.RandomMap):
    """A batch of image refs -> the batch of pairs (rendering whole batches keeps grain's per-element cost low)."""

    def __init__(self, bank: ImageBank, tokenizer, text_len: int, augment: bool):
        self.bank, self.tokenizer, self.text_len, self.augment = bank, tokenizer, text_len, augment

    def pair(self, ref, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, int, int]:
        kind, i = ref
        if kind == "photo":
            caption, label = self.bank.photos[i].caption, -1
        else:
            label = int(self.bank.labels[i])
            caption = CAPTION_TEMPLATES[rng.integers(len(CAPTION_TEMPLATES))].format(DIGIT_NAMES[label])
        tokens, length = encode_caption(self.tokenizer, caption, self.text_len)
        pixels = self.bank.image(ref, rng if self.augment else None)
        return patchify(pixels, self.bank.patch_size), tokens, length, label

    def random_map(self, refs, rng: np.random.Generator):
        patches, tokens, lengths, labels = zip(*(self.pair(tuple(ref), rng) for ref in refs), strict=True)
        return {
            "patches": np.stack(patches),
            "tokens": np.stack(tokens),
            # [b, 1]: the loop shards batch arrays of rank >= 2
            "lengths": np.asarray(lengths, np.int32)[:, None],
            "labels": np.asarray(labels, np.int32)[:, None],
        }


def clip_dataset(
    bank: ImageBank,
    refs: Sequence[tuple[str, int]],
    tokenizer,
    *,
    text_len: int,
    batch_size: int,
    seed: int = 0,
    train: bool = True,
    worker_count: int = 0,
) -> grain.IterDataset:
    """Batches of (image, caption) pairs for this process: patches [b, N, P] float32, tokens [b, L] int32,
    lengths [b, 1] (tokens up to and including EOS), labels [b, 1] (digit class, -1 for photos).

    Training data is shuffled, reshuffled every epoch, augmented, with a random caption template per visit;
    evaluation data is read once in order without augmentation (the last incomplete batch is dropped).
    """
    ds, local = _shard(grain.MapDataset.source(list(refs)), batch_size)
    if train:
        ds = ds.shuffle(seed=seed).repeat()
    ds = ds.batch(local, drop_remainder=True, batch_fn=list)
    ds = ds.random_map(_RenderPairs(bank, tokenizer, text_len, augment=train), seed=seed).to_iter_dataset()
    if worker_count > 0:
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
    return ds


# ------------------------------------------------------------------------------------------------------------
# Multimodal records


@dataclasses.dataclass(frozen=True)
class Record:
    """A training sequence to render: its kind and the images it shows, in order."""

    kind: str
    images: tuple[tuple[str, int], ...]


def digit_records(
    train_idx: np.ndarray, n_photos: int, *, seed: int, max_interleaved: int, photo_repeats: int
) -> list[Record]:
    """The decoder's training mix: each digit once captioned and once asked about, every digit again in an
    interleaved sequence of 2..max_interleaved digits, and every photo `photo_repeats` times."""
    rng = np.random.default_rng(seed)
    records = [Record(kind, (("digit", int(i)),)) for i in train_idx for kind in (CAPTION, QA)]
    order, start = rng.permutation(train_idx), 0
    while max_interleaved >= 2 and start < len(order):
        k = int(rng.integers(2, max_interleaved + 1))
        records.append(Record(INTERLEAVED, tuple(("digit", int(i)) for i in order[start : start + k])))
        start += k
    records += [Record(PHOTO, (("photo", j),)) for j in range(n_photos)] * photo_repeats
    return records


def record_pieces(record: Record, bank: ImageBank, rng: np.random.Generator) -> list[str | None]:
    """Text pieces and image slots (None) of a record, in order."""
    names = [DIGIT_NAMES[bank.labels[i]] for kind, i in record.images if kind == "digit"]
    if record.kind == CAPTION:
        return [None, CAPTION_TEMPLATES[rng.integers(len(CAPTION_TEMPLATES))].format(names[0])]
    if record.kind == QA:
        return [None, f"{QUESTION} {names[0]}."]
    if record.kind == INTERLEAVED:
        return [p for name in names for p in (None, f"{name}.")]
    if record.kind == PHOTO:
        return [None, bank.photos[record.images[0][1]].caption]
    raise ValueError(f"unknown record kind {record.kind!r}")


class _RenderSequence(grain.transforms.RandomMap):
    """Record -> {inputs, targets, weights [L], patches [L, P]} with L = its length (before packing)."""

    def __init__(self, bank: ImageBank, tokenizer, image_token_id: int, seq_len: int, augment: bool):
        self.bank, self.tokenizer, self.image_token_id = bank, tokenizer, image_token_id
        self.seq_len, self.augment = seq_len, augment
        self.n_patches = (bank.image_size // bank.patch_size) ** 2

    def random_map(self, record: Record, rng: np.random.Generator):
        tok = self.tokenizer
        body = layout(record_pieces(record, self.bank, rng), tok.encode, self.image_token_id, self.n_patches)
        ids = np.asarray([tok.bos_id, *body, tok.eos_id], np.int32)
        if len(ids) - 1 > self.seq_len:
            raise ValueError(
                f"a {record.kind} record of {len(record.images)} image(s) needs {len(ids) - 1} tokens, more than "
                f"config.data.seq_len={self.seq_len}; raise it or lower config.vision.max_interleaved"
            )
        images = [self.bank.image(ref, rng if self.augment else None) for ref in record.images]
        inputs, targets = ids[:-1], ids[1:]
        return {
            "inputs": inputs,
            "targets": targets,
            "weights": (targets != self.image_token_id).astype(np.float32),  # no loss on image positions
            "patches": place_patches(inputs, images, self.image_token_id, self.bank.patch_size, self.bank.channels),
        }


def _to_batch(packed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {
        "inputs": packed["inputs"],
        "targets": packed["targets"],
        "positions": packed["inputs_positions"],
        "segment_ids": packed["inputs_segment_ids"],
        "weights": packed["weights"] * (packed["targets_segment_ids"] > 0),
        "patches": packed["patches"],
    }


def multimodal_dataset(
    bank: ImageBank,
    records: Sequence[Record],
    tokenizer,
    image_token_id: int,
    *,
    seq_len: int,
    batch_size: int,
    seed: int = 0,
    train: bool = True,
    worker_count: int = 0,
) -> grain.IterDataset:
    """Packed batches for this process: inputs, targets, positions, segment_ids, weights [b, T] and patches
    [b, T, P] (T = seq_len). Records are packed first-fit, whole: an image is never split across rows."""
    ds, local = _shard(grain.MapDataset.source(list(records)), batch_size)
    if train:
        ds = ds.shuffle(seed=seed).repeat()
    ds = ds.random_map(_RenderSequence(bank, tokenizer, image_token_id, seq_len, augment=train), seed=seed)
    ds = grain.experimental.FirstFitPackIterDataset(
        ds.to_iter_dataset(),
        length_struct={k: seq_len for k in ("inputs", "targets", "weights", "patches")},
        num_packing_bins=local,
        seed=seed,
        shuffle_bins=train,
    )
    ds = ds.map(_to_batch).batch(local, drop_remainder=True)
    if worker_count > 0:
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
    return ds
