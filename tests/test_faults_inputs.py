"""Bad inputs, fed for real, end in one clear line naming the file or tensor, or are counted with the good records
kept (issue 15, "Nothing lost, nothing cryptic"): empty corpora for training, damaged weights for `convert`,
damaged archives and binary bytes for `prepare`."""

import bz2
import dataclasses
import gzip
import json
import logging
import lzma
import os
import random

import numpy as np
import pytest
from conftest import SHARED_DATA, load_config, tiny_config
from test_config import run_cli

from gptx import config as config_lib
from gptx.data import clean, loader, prepare, readers, sources
from gptx.data import tokenizer as tokenizer_lib
from gptx.errors import DataError, InteropError
from gptx.interop import hf
from gptx.train import pretrain

# --------------------------------------------------------------------------------------------------------------
# Training on a corpus without training documents: one line before anything compiles


def _bad_corpus(tmp_path, kind: str) -> tuple[str, str]:
    """(corpus path, doc_separator) of a corpus that has no training documents."""
    path = tmp_path / f"{kind}.txt"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "blank_lines":
        path.write_text("\n\n   \n\t\n\n")
    else:  # one document: doc_separator=none keeps the whole file together, and val_fraction holds it out
        path.write_text("To be, or not to be, that is the question.\n\nWhether 'tis nobler in the mind to suffer.\n")
    return str(path), "none" if kind == "one_document" else "blank_line"


@pytest.mark.parametrize("kind", ["empty", "blank_lines", "one_document"])
def test_training_on_a_corpus_without_training_documents_is_one_error_naming_it(tmp_path, kind, one_device_mesh):
    corpus, separator = _bad_corpus(tmp_path, kind)
    cfg = tiny_config()
    cfg.data.update(corpus=corpus, doc_separator=separator, val_fraction=0.1)
    with pytest.raises(DataError, match=f"^0 training documents in {corpus}") as e:
        pretrain.run(cfg, str(tmp_path / "run"), one_device_mesh)
    assert "\n" not in str(e.value)
    if kind == "one_document":
        assert "doc_separator='none'" in str(e.value) and "val_fraction=0.1" in str(e.value)
    assert not (tmp_path / "run" / "checkpoints").exists()  # it stopped before the model was built


def test_the_split_names_the_corpus_for_every_caller(tmp_path):
    corpus, _ = _bad_corpus(tmp_path, "one_document")
    docs = sources.read_documents(corpus, "none")
    assert len(docs) == 1
    with pytest.raises(DataError, match=f"0 training documents in {corpus}: it has 1 document"):
        loader.split_train_val(docs, 0.1)
    train, val = loader.split_train_val(docs, 0.0)  # nothing held out: the one document trains
    assert list(train) == list(docs) and not val
    with pytest.raises(DataError, match="0 training documents in the corpus"):
        loader.split_train_val([], 0.1)  # a plain list has no name to give


def test_a_damaged_compressed_training_corpus_is_one_error_naming_it(tmp_path):
    data = gzip.compress(b"To be, or not to be, that is the question.\n\n" * 2000)
    path = tmp_path / "corpus.txt.gz"
    path.write_bytes(data[: len(data) // 2])  # training on part of a corpus unnoticed would be worse than stopping
    with pytest.raises(DataError, match=f"^{path}: cannot read it .*end-of-stream marker.*damaged or cut short"):
        sources.read_documents(str(path))


def test_a_tokenizer_with_too_little_text_is_one_error_with_the_most_pieces_it_supports(tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text("To be or not.\n\nAll the world.\n")
    docs = sources.read_documents(str(path))
    with pytest.raises(DataError, match=rf"too little text to train a 512-piece tokenizer.*{path}") as e:
        tokenizer_lib.train(docs, 512)
    most = int(str(e.value).split("vocab_size=")[1].split()[0])
    assert tokenizer_lib.train(docs, most).vocab_size == most  # the figure it names does train
    with pytest.raises(DataError, match="no text to train the tokenizer on"):
        tokenizer_lib.train(["", "\n\n"], 64)


@pytest.mark.parametrize("command", ["train", "tokenizer"])
def test_cli_on_an_empty_corpus_prints_one_line_and_exits_2(tmp_path, command):
    corpus, _ = _bad_corpus(tmp_path, "blank_lines")
    out = run_cli(command, "--config=configs/demo.py", f"--workdir={tmp_path / 'w'}", f"--config.data.corpus={corpus}")
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("gptx: error: 0 training documents in") and corpus in last


# --------------------------------------------------------------------------------------------------------------
# `convert`: weights that are not what they claim


D, VOCAB, POSITIONS = 8, 16, 8


def _write_hf(directory, **dtypes) -> str:
    """A one-layer GPT-2 checkpoint as save_pretrained writes it: config.json + model.safetensors. `dtypes`
    maps a tensor name (without `transformer.`, dots as underscores) to the dtype it is stored in."""
    from safetensors.numpy import save_file

    os.makedirs(directory, exist_ok=True)
    config = dict(model_type="gpt2", n_embd=D, n_layer=1, n_head=2, vocab_size=VOCAB, n_positions=POSITIONS)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump({**config, "activation_function": "gelu_new"}, f)
    shapes = {"wte.weight": (VOCAB, D), "wpe.weight": (POSITIONS, D), "ln_f.weight": (D,), "ln_f.bias": (D,)}
    for suffix, shape in {
        "attn.c_attn.weight": (D, 3 * D),
        "attn.c_attn.bias": (3 * D,),
        "attn.c_proj.weight": (D, D),
        "attn.c_proj.bias": (D,),
        "mlp.c_fc.weight": (D, 4 * D),
        "mlp.c_fc.bias": (4 * D,),
        "mlp.c_proj.weight": (4 * D, D),
        "mlp.c_proj.bias": (D,),
        "ln_1.weight": (D,),
        "ln_1.bias": (D,),
        "ln_2.weight": (D,),
        "ln_2.bias": (D,),
    }.items():
        shapes[f"h.0.{suffix}"] = shape
    rng = np.random.default_rng(0)
    weights = {
        f"transformer.{k}": (rng.normal(size=s) * 3).astype(dtypes.get(k.replace(".", "_"), np.float32))
        for k, s in shapes.items()
    }
    save_file(weights, os.path.join(directory, "model.safetensors"))
    return str(directory)


def test_a_float_checkpoint_converts(tmp_path):  # the control for the refusals below
    m, params, _ = hf.load_hf(_write_hf(tmp_path / "hf"))
    assert m.n_layer == 1 and params["wpe"].shape == (POSITIONS, D)


@pytest.mark.parametrize(("tensor", "dtype"), [("wpe_weight", np.int64), ("h_0_ln_1_bias", np.bool_)])
def test_int_and_bool_tensors_are_refused_naming_the_tensor_and_dtype(tmp_path, tensor, dtype):
    hf_dir = _write_hf(tmp_path / "hf", **{tensor: dtype})
    name = tensor.replace("_weight", ".weight").replace("h_0_ln_1_bias", "h.0.ln_1.bias")
    with pytest.raises(InteropError, match=rf"tensor {name} has dtype {np.dtype(dtype).name}, not a floating-point"):
        hf.load_hf(hf_dir)


def test_a_truncated_safetensors_file_is_one_line_naming_it(tmp_path):
    hf_dir = _write_hf(tmp_path / "hf")
    path = os.path.join(hf_dir, "model.safetensors")
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(InteropError, match=f"^{path}: cannot read weights .*truncated or damaged") as e:
        hf.load_hf(hf_dir)
    assert "\n" not in str(e.value)
    out = run_cli("convert", "--config=configs/gpt2.py:124m", f"--workdir={tmp_path / 'w'}", f"--hf_dir={hf_dir}")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith(f"gptx: error: {path}: cannot read weights")


def test_a_pickle_that_weights_only_refuses_is_one_line_naming_it(tmp_path):
    torch = pytest.importorskip("torch")
    hf_dir = _write_hf(tmp_path / "hf")
    os.remove(os.path.join(hf_dir, "model.safetensors"))
    path = os.path.join(hf_dir, "pytorch_model.bin")
    torch.save({"wte.weight": torch.zeros(VOCAB, D), "args": argparse_namespace()}, path)
    with pytest.raises(InteropError, match=rf"^{path}: torch.load\(weights_only=True\) refused this pickle") as e:
        hf.load_hf(hf_dir, allow_pickle=True)
    assert "\n" not in str(e.value) and "argparse.Namespace" in str(e.value)
    torch.save({"wte.weight": torch.zeros(VOCAB, D), "epoch": 3}, path)  # loads, but holds a non-tensor
    with pytest.raises(InteropError, match=f"^{path}: entry 'epoch' is a int, not a tensor"):
        hf.load_hf(hf_dir, allow_pickle=True)


def argparse_namespace():
    import argparse

    return argparse.Namespace(lr=0.1)  # what fairseq-style checkpoints pickle beside their tensors


# --------------------------------------------------------------------------------------------------------------
# `prepare`: damaged archives, binary bytes, sources that yield nothing

DOCS = [
    f"document {i}: the quick brown fox jumps over the lazy dog {random.Random(i).random():.6f}" for i in range(3000)
]


# bz2 at level 1: blocks of 100 kB, so that these 300 kB span several (a bz2 block decodes only when whole)
COMPRESS = {"gz": gzip.compress, "xz": lzma.compress, "bz2": lambda data: bz2.compress(data, 1)}


def _jsonl(docs) -> bytes:
    return "".join(json.dumps({"text": d}) + "\n" for d in docs).encode()


def _read(path, **source):
    recs, stats = readers.read_source(readers.Source(name="s", path=str(path), **source))
    return [r["text"] for r in recs], stats


def test_a_gzip_member_damaged_mid_file_keeps_the_documents_before_it(tmp_path):
    # Two gzip members (as pigz, bgzip or `cat a.gz b.gz` write them); the second one's Huffman tables are
    # damaged, which raised zlib.error and lost the whole run.
    second = bytearray(gzip.compress(_jsonl(DOCS[1500:]), mtime=0))
    second[12:16] = b"\xff\xff\xff\xff"
    path = tmp_path / "docs.jsonl.gz"
    path.write_bytes(gzip.compress(_jsonl(DOCS[:1500]), mtime=0) + bytes(second))
    texts, stats = _read(path)
    assert texts == DOCS[:1500]
    assert stats.bad == {"unreadable_file": 1}
    assert stats.examples == [
        f"{path}:1501: Error -3 while decompressing data: invalid code lengths set: unreadable file"
    ]
    assert len(stats.warnings) == 1 and str(path) in stats.warnings[0]


@pytest.mark.parametrize("ext", ["gz", "xz", "bz2"])
def test_an_archive_cut_short_keeps_every_whole_line(tmp_path, ext):
    data = COMPRESS[ext](_jsonl(DOCS))
    path = tmp_path / f"docs.jsonl.{ext}"
    path.write_bytes(data[: len(data) * 2 // 3])
    texts, stats = _read(path)
    assert 0 < len(texts) < len(DOCS) and texts == DOCS[: len(texts)]  # a prefix: nothing garbled, nothing partial
    assert stats.bad == {"unreadable_file": 1} and "ended before the end-of-stream marker" in stats.examples[0]
    assert stats.examples[0].startswith(f"{path}:{len(texts) + 1}: ")


@pytest.mark.parametrize("ext", ["xz", "bz2", "gz"])
def test_bytes_damaged_mid_stream_keep_the_documents_before_the_damage_and_drop_the_garbage(tmp_path, ext):
    data = bytearray(COMPRESS[ext](_jsonl(DOCS)))
    mid = len(data) // 2
    data[mid : mid + 32] = random.Random(1).randbytes(32)
    path = tmp_path / f"docs.jsonl.{ext}"
    path.write_bytes(bytes(data))
    texts, stats = _read(path)
    assert 0 < len(texts) < len(DOCS)
    assert texts == DOCS[: len(texts)]  # what the decompressor emitted after the damage is not kept
    assert stats.bad["unreadable_file"] == 1 and stats.bad["lines_after_break"] > 0
    assert set(stats.bad) == {"unreadable_file", "lines_after_break"}  # garbage lines are not also "bad json"
    assert "documents from line" in stats.warnings[0] and str(path) in stats.warnings[0]


def test_a_text_archive_cut_mid_paragraph_drops_the_partial_document(tmp_path):
    data = gzip.compress(
        ("\n\n".join(f"{d}\nsecond line of paragraph {i}" for i, d in enumerate(DOCS)) + "\n").encode()
    )
    path = tmp_path / "docs.txt.gz"
    path.write_bytes(data[: len(data) // 2])
    texts, stats = _read(path)
    whole = [f"{d}\nsecond line of paragraph {i}" for i, d in enumerate(DOCS)]
    assert len(texts) > 0 and texts == whole[: len(texts)]  # the last, possibly partial, paragraph is not kept
    assert stats.bad["unreadable_file"] == 1


def test_a_gzip_whose_checksum_fails_keeps_what_it_read_and_says_so(tmp_path):
    data = bytearray(gzip.compress(_jsonl(DOCS[:100])))
    data[-8:-4] = bytes(b ^ 0xFF for b in data[-8:-4])  # the CRC32 in the trailer: the data itself is intact
    path = tmp_path / "docs.jsonl.gz"
    path.write_bytes(bytes(data))
    texts, stats = _read(path)
    assert texts == DOCS[:100] and stats.bad == {"unreadable_file": 1}
    assert "could not be located" in stats.warnings[0]


def _prepare_cfg(tmp_path, *extra_sources, on_bad_utf8="repair"):
    good = tmp_path / "good.txt"
    good.write_text("\n\n".join(f"{d}, and then it went home to sleep in its den." for d in DOCS[:200]))
    cfg = config_lib.default()
    cfg.data_prep.sources = (dict(name="good", path=str(good)), *extra_sources)
    cfg.data_prep.update(val_fraction=0.0, progress=False, on_bad_utf8=on_bad_utf8)
    cfg.data_prep.dedup.fuzzy = False
    cfg.data_prep.quality.enabled = False
    return cfg


@pytest.mark.parametrize("on_bad_utf8", ["repair", "skip"])
def test_random_bytes_as_a_text_source_yield_no_training_document(tmp_path, on_bad_utf8):
    noise = tmp_path / "noise.txt"
    noise.write_bytes(random.Random(0).randbytes(300_000))
    cfg = _prepare_cfg(tmp_path, dict(name="noise", path=str(noise), separator="line"), on_bad_utf8=on_bad_utf8)
    report = prepare.run(cfg, str(tmp_path / "out"))
    stages = {s["stage"]: s for s in report["stages"]}
    read = stages["read"]
    if on_bad_utf8 == "repair":  # the bytes did arrive as "documents"
        assert read["per_source"]["noise"]["docs_out"] > 100
    else:  # most lines are skipped and counted; the few that decode must not pass either
        assert read["details"]["sources"]["noise"]["bad"]["non_utf8_skipped"] > 1000
        assert read["per_source"]["noise"]["docs_out"] > 0
    assert stages["filter"]["per_source"].get("noise", {"docs_out": 0})["docs_out"] == 0
    assert stages["filter"]["per_source"]["good"]["docs_out"] == 200
    if on_bad_utf8 == "repair":  # U+FFFD everywhere: the new filter is what catches them, and says so
        assert stages["filter"]["details"]["reasons"]["noise"]["bad_char_ratio"] > 100
        assert "bad_char_ratio" in (tmp_path / "out" / "summary.md").read_text()
    corpus = sources.read_documents(str(tmp_path / "out"))
    assert len(corpus.train) == 200 and not any("\ufffd" in t for t in corpus.train)


def test_the_bad_character_share_counts_replacement_and_control_characters():
    fc = clean.FilterConfig()
    words = (  # 209 characters
        "Now is the winter of our discontent made glorious summer by this sun of York; and all the clouds that "
        "lour'd upon our house in the deep bosom of the ocean buried. Now are our brows bound with victorious wreaths."
    )
    assert clean.filter_reasons([words], fc) == [None]
    assert clean.filter_reasons([words + "\ufffd"], fc) == [None]  # 1 in 210: a stray byte is kept
    assert clean.filter_reasons([words + "\ufffd" * 3], fc) == ["bad_char_ratio"]
    assert clean.filter_reasons([words + "\x00\x01\x1b"], fc) == ["bad_char_ratio"]  # as read, before normalize
    assert clean.filter_reasons([words.replace(" ", "\t\n")], fc) == [None]  # tab and newline are text
    loose = dataclasses.replace(fc, max_bad_char_ratio=1.0)
    assert clean.filter_reasons([words + "\ufffd" * 3], loose) == [None]


def test_a_source_that_yields_no_document_is_a_warning_in_the_log_and_the_summary(tmp_path, caplog):
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"title": "no text here"}\n\n')
    cfg = _prepare_cfg(tmp_path, dict(name="empty", path=str(empty)))
    with caplog.at_level(logging.WARNING):
        prepare.run(cfg, str(tmp_path / "out"))
    assert any("source 'empty' yielded 0 documents" in r.getMessage() for r in caplog.records)
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert f"**Warning**: source 'empty' yielded 0 documents from {empty} (bad input: missing_field 1)" in summary


def test_a_bad_char_ratio_outside_0_1_names_the_key(tmp_path):
    cfg = _prepare_cfg(tmp_path)
    cfg.data_prep.clean.max_bad_char_ratio = 2.0
    with pytest.raises(config_lib.ConfigError, match="config.data_prep.clean.max_bad_char_ratio"):
        prepare.validate_data_prep(cfg)


@pytest.mark.skipif(not (SHARED_DATA / "corpora").is_dir(), reason="needs the shared corpora (../shared/data)")
def test_the_bad_character_filter_spares_the_shared_corpora():
    """Real text is not binary: of fortunes, the Debian docs and the KJV, at most a handful of documents (the
    fortunes stored as mojibake, "donâ\\x80\\x99t") break the default threshold."""
    cfg = load_config("data")
    fc = clean.FilterConfig.from_config(cfg.data_prep.clean)
    dropped = {}
    for src in cfg.data_prep.sources:
        if src["name"] not in ("fortunes", "debian", "kjv"):
            continue
        recs, _ = readers.read_source(readers.Source.from_dict(dict(src), src["name"]))
        texts = [t for t in (clean.normalize(r["text"]) for r in recs) if t]
        stats = clean.text_stats(texts)
        dropped[src["name"]] = (int((stats["bad_char_ratio"] > fc.max_bad_char_ratio).sum()), len(texts))
    assert dropped["kjv"][0] == 0 and dropped["debian"][0] == 0
    assert dropped["fortunes"][0] <= 5, dropped
