"""Tokenizers as GPT-2/3 used them: GPT-2's byte-level BPE gives transformers' ids on real text and restores it byte
for byte; a byte-level BPE trained by gptx is one transformers reads; the special tokens come from the
tokenizer; and everything that frames text with special ids (packing, GPT-1's task tokens, InstructGPT's prompts,
image placeholders) works with either kind, never producing those ids from text.

References are independent of gptx: transformers' GPT2TokenizerFast loaded from the shared files, the original
bytes of the text, and OpenAI's byte-to-character map (below) applied to vocab.json's pieces.
"""

import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, SHARED_DATA

from gptx.data import finetune_tasks, image_text, loader, readers, sources
from gptx.data import tokenizer as tokenizer_lib
from gptx.errors import DataError
from gptx.models.multimodal import layout
from gptx.rlhf import data as rlhf_data
from gptx.train.multimodal import image_token_id

GPT2_DIR = SHARED_DATA / "gpt2_tokenizer"
needs_gpt2 = pytest.mark.skipif(
    not (GPT2_DIR / "merges.txt").exists(), reason=f"GPT-2's tokenizer files not found in {GPT2_DIR} (../shared)"
)
# The shared pretraining corpora: (name, path under SHARED_DATA, text field; "" = a text file split at blank lines).
CORPORA = (
    ("debian_docs", "corpora/debian_docs.jsonl.gz", "text"),
    ("fortunes", "corpora/fortunes.jsonl", "text"),
    ("kjv_bible", "corpora/kjv_bible_verses.tsv.gz", "text"),
    ("wordnet_glosses", "corpora/wordnet_glosses.tsv.xz", "gloss"),
    ("tinyshakespeare", "tinyshakespeare/input.txt", ""),
)
SLICE = {"debian_docs": 100}  # documents per corpus in the default run (debian_docs' are ~16k characters each)
SLICE_DEFAULT = 1500

# Texts where byte-level BPE can go wrong: emoji (ZWJ sequences, flags, skin tones), CJK, combining marks,
# Windows and old-Mac line ends, NUL and control characters, long whitespace runs, GPT-2's contractions and
# digits, the BOM, the last code point, and special-token strings written as text.
HARD_TEXTS = (
    "",
    "Hello world!",
    "👨‍👩‍👧‍👦 family, 🇯🇵 flag, 👍🏽 thumbs, 😀😃😄",
    "日本語のテキスト、中文文本，한국어 텍스트",
    "e\u0301 a\u0308 n\u0303 \u0915\u094d\u0937 Z\u0324\u0308 ﷺ",
    "line one\r\nline two\r\n\rold mac\r",
    "\x00NUL\x01\x02\x1b[31mred\x1b[0m\x7f\x85\t",
    " " * 300 + "x" + "\t" * 50 + "\n" * 40 + "  \n \t\n   y   ",
    "I'm sure they'll say we've 12345 or 3.14159 — don't",
    "\ufeffBOM first, \U0010ffff last, \ufffd replacement, \u2028 line separator",
    "before<|endoftext|>after",
    "<|endoftext|>",
    "<|endoftext|><|endoftext|> twice, and <s> </s> <pad> [PAD] <unk>",
)


def bytes_to_unicode() -> dict[int, str]:
    """OpenAI's GPT-2 byte -> printable character map (encoder.py), the reference for what a piece's bytes are."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


@pytest.fixture(scope="module")
def gpt2():
    return tokenizer_lib.load(GPT2_DIR)


@pytest.fixture(scope="module")
def hf():
    """transformers' GPT2TokenizerFast (the reference) and a twin that splits special-token strings in text."""
    transformers = pytest.importorskip("transformers")
    ref = transformers.GPT2TokenizerFast.from_pretrained(str(GPT2_DIR))
    split = transformers.GPT2TokenizerFast.from_pretrained(str(GPT2_DIR), split_special_tokens=True)
    # transformers 5.x builds a one-token tokenizer when handed the files the wrong way: guard the reference.
    assert len(ref) == len(split) == 50257
    return ref, split


@pytest.fixture(scope="module")
def piece_bytes():
    """id -> the bytes of its GPT-2 piece, from vocab.json and OpenAI's byte map (gptx is not involved)."""
    with open(GPT2_DIR / "vocab.json", encoding="utf-8") as f:
        vocab = json.load(f)
    decoder = {c: b for b, c in bytes_to_unicode().items()}
    return {i: bytes(decoder[c] for c in piece) for piece, i in vocab.items() if piece != "<|endoftext|>"}


def corpus_documents(limit: int | None) -> dict[str, list[str]]:
    """The documents of each shared corpus through gptx's source readers (the first `limit`, or all)."""
    out = {}
    for name, rel, field in CORPORA:
        path = SHARED_DATA / rel
        if not path.exists():
            continue
        n = 0 if limit is None else SLICE.get(name, limit)
        records, _ = readers.read_source(readers.Source(name, str(path), text_field=field, limit=n))
        out[name] = [r["text"] for r in records]
    if not out:
        pytest.skip(f"no shared corpora found under {SHARED_DATA}")
    return out


def assert_equal_to_transformers_and_round_trips(tok, hf_tok, docs: list[str], name: str) -> int:
    """gptx's batched and single ids equal transformers' batched ids; every document decodes to its own bytes."""
    ours = tok.encode_batch(docs)
    theirs = hf_tok(docs)["input_ids"]
    for k, (doc, a, b) in enumerate(zip(docs, ours, theirs, strict=True)):
        assert a == b, f"{name} document {k}: gptx and GPT2TokenizerFast disagree"
        assert tok.decode(a).encode("utf-8") == doc.encode("utf-8"), f"{name} document {k} does not round-trip"
    assert [tok.encode(d) for d in docs[:50]] == ours[:50]  # the single path agrees with the batched one
    return sum(map(len, ours))


# ------------------------------------------------------------------------------------------------- GPT-2 itself


@needs_gpt2
def test_gpt2_ids_equal_transformers_on_a_slice_of_every_shared_corpus(gpt2, hf):
    docs = corpus_documents(SLICE_DEFAULT)
    for name, texts in docs.items():
        assert assert_equal_to_transformers_and_round_trips(gpt2, hf[0], texts, name) > len(texts)


@pytest.mark.slow  # every document of the shared corpora (~48M characters): ~2.5 min on 2 shared cores
@needs_gpt2
def test_gpt2_ids_equal_transformers_on_every_document_of_the_shared_corpora(gpt2, hf):
    docs = corpus_documents(None)
    assert len(docs) == len(CORPORA), f"missing corpora: {set(n for n, *_ in CORPORA) - set(docs)}"
    for name, texts in docs.items():
        assert assert_equal_to_transformers_and_round_trips(gpt2, hf[0], texts, name) > len(texts)


@needs_gpt2
def test_gpt2_hard_texts_equal_transformers_and_restore_every_byte(gpt2, hf, piece_bytes):
    ref, split = hf
    for text in HARD_TEXTS:
        ids = gpt2.encode(text)
        # Text is text: a literal "<|endoftext|>" is pieces, as transformers gives with split_special_tokens.
        want = (split if "<|endoftext|>" in text else ref)(text)["input_ids"]
        assert ids == want, repr(text)
        assert gpt2.eos_id not in ids
        assert b"".join(piece_bytes[i] for i in ids) == text.encode("utf-8"), repr(text)
        assert gpt2.decode(ids).encode("utf-8") == text.encode("utf-8"), repr(text)
        assert ref.decode(ids) == text  # and transformers reads gptx's ids back the same way
    assert gpt2.encode_batch(HARD_TEXTS) == [gpt2.encode(t) for t in HARD_TEXTS]


@needs_gpt2
def test_decoding_a_prefix_that_splits_a_character_gives_a_replacement_char(gpt2, piece_bytes):
    text = "日本😀 é\u0301 👨‍👩‍👧"
    ids = gpt2.encode(text)
    assert len(ids) > len(text)  # several of these characters take more than one token
    for k in range(len(ids) + 1):
        prefix = b"".join(piece_bytes[i] for i in ids[:k])
        assert gpt2.decode(ids[:k]) == prefix.decode("utf-8", errors="replace"), k
    assert gpt2.decode(ids[:1]) == "\ufffd"  # 日 is three bytes, split over tokens


@needs_gpt2
def test_gpt2_special_tokens_come_from_its_vocabulary(gpt2, hf):
    """One special token, <|endoftext|> = 50256, for BOS and EOS; no pad, so padding falls back to EOS; GPT-2
    never saw BOS before a document, so none is added."""
    ref, _ = hf
    assert (gpt2.kind, gpt2.vocab_size) == ("bpe", len(ref))
    assert gpt2.bos_id == gpt2.eos_id == ref.eos_token_id == ref.convert_tokens_to_ids("<|endoftext|>") == 50256
    assert ref.pad_token_id is None and not gpt2.has_pad and gpt2.pad_id == gpt2.eos_id
    assert not gpt2.add_bos and gpt2.prefix() == []
    assert gpt2.document("Hello world!") == [15496, 995, 0, 50256]
    assert gpt2.prompt("Hello") == [15496] and gpt2.prompt("") == [50256]  # an empty prompt still has a token
    # Special and out-of-vocabulary ids (task tokens, image placeholders, padded embedding rows) are dropped.
    assert gpt2.decode([50256, 15496, 50256, 995, 50257, 50303, -1, 0]) == "Hello world!"
    assert gpt2.decode(np.asarray([15496, 995], np.int32)) == "Hello world"


@needs_gpt2
def test_gpt2_loads_from_any_of_its_files_and_survives_pickling(gpt2, tmp_path):
    for path in (GPT2_DIR / "vocab.json", GPT2_DIR / "merges.txt", str(GPT2_DIR)):
        assert tokenizer_lib.load(path).encode("Hello world!") == [15496, 995, 0]
    # grain's worker processes get a pickled copy: it must still treat special strings in text as text.
    copy = pickle.loads(pickle.dumps(gpt2))
    assert copy.encode("a<|endoftext|>b") == gpt2.encode("a<|endoftext|>b") and 50256 not in copy.encode(
        "<|endoftext|>"
    )
    # Saved as tokenizer.json + tokenizer_config.json, it reloads identically (a workdir keeps it so).
    path = gpt2.save(tmp_path)
    again = tokenizer_lib.load(tokenizer_lib.find(str(tmp_path)))
    assert path == str(tmp_path / "tokenizer.json")
    assert (again.bos_id, again.eos_id, again.pad_id, again.add_bos, again.vocab_size) == (
        50256,
        50256,
        50256,
        False,
        50257,
    )
    assert again.encode_batch(HARD_TEXTS) == gpt2.encode_batch(HARD_TEXTS)
    transformers = pytest.importorskip("transformers")
    auto = transformers.AutoTokenizer.from_pretrained(str(tmp_path))  # what a workdir hands to transformers
    assert [auto(t)["input_ids"] for t in HARD_TEXTS] == gpt2.encode_batch(HARD_TEXTS)  # literal specials too


# ------------------------------------------------------------------------------------- gptx's byte-level BPE


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory):
    """WORKDIR of `python -m gptx.main tokenizer --config=configs/demo.py --config.tokenizer.kind=bpe` (512)."""
    workdir = tmp_path_factory.mktemp("bpe_workdir")
    out = subprocess.run(
        [sys.executable, "-m", "gptx.main", "tokenizer", "--config=configs/demo.py", "--config.tokenizer.kind=bpe"]
        + ["--config.tokenizer.vocab_size=512", f"--workdir={workdir}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return workdir


@pytest.fixture(scope="module")
def bpe(trained_dir):
    return tokenizer_lib.load(trained_dir)


def test_the_tokenizer_command_trains_a_byte_level_bpe_that_transformers_reads(trained_dir, bpe):
    assert sorted(os.listdir(trained_dir)) == ["tokenizer.json", "tokenizer_config.json"]
    assert (bpe.kind, bpe.vocab_size, bpe.add_bos) == ("bpe", 512, True)
    assert bpe.bos_id == bpe.eos_id == 0 and bpe.id_to_piece(0) == "<|endoftext|>"
    # Every byte is a symbol: any text encodes without unknowns and decodes to its own bytes.
    for text in HARD_TEXTS:
        assert bpe.decode(bpe.encode(text)).encode("utf-8") == text.encode("utf-8"), repr(text)
        assert bpe.eos_id not in bpe.encode(text)
    transformers = pytest.importorskip("transformers")
    auto = transformers.AutoTokenizer.from_pretrained(str(trained_dir))
    assert len(auto) == bpe.vocab_size
    texts = ["ROMEO:\nO Juliet, thou art 😀", "First Citizen:\r\nWe are accounted poor citizens.", *HARD_TEXTS]
    for text in texts:
        assert auto(text, add_special_tokens=False)["input_ids"] == bpe.encode(text), repr(text)
        assert auto(text)["input_ids"] == bpe.prompt(text), repr(text)  # BOS, as gptx's models saw documents
        assert auto.decode(bpe.encode(text)) == text


def test_a_trained_bpe_reloads_and_pickles_with_identical_ids(bpe, tmp_path):
    docs = sources.read_documents("bundled:tinyshakespeare")[:300]
    want = bpe.encode_batch(docs + list(HARD_TEXTS))
    path = bpe.save(tmp_path / "copy.json")
    for tok in (tokenizer_lib.load(path), pickle.loads(pickle.dumps(bpe))):
        assert tok.encode_batch(docs + list(HARD_TEXTS)) == want
        assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.add_bos) == (bpe.bos_id, bpe.eos_id, bpe.pad_id, True)
    assert [bpe.encode(d) for d in docs] == want[: len(docs)]
    transformers = pytest.importorskip("transformers")
    (tmp_path / "hf").mkdir()
    auto = transformers.AutoTokenizer.from_pretrained(os.path.dirname(bpe.save(tmp_path / "hf")))
    assert auto(docs[:20])["input_ids"] == [bpe.prompt(d) for d in docs[:20]]  # BOS first, as gptx packs them
    assert auto(list(HARD_TEXTS), add_special_tokens=False)["input_ids"] == want[len(docs) :]


def test_sentencepiece_batches_equal_single_texts_and_round_trip():
    docs = sources.read_documents("bundled:tinyshakespeare")
    tok = tokenizer_lib.train(docs[:1500], 512)
    texts = [*docs[1500:1800], *HARD_TEXTS]
    ids = tok.encode_batch(texts)
    assert ids == [tok.encode(t) for t in texts] and tok.documents(texts) == [tok.document(t) for t in texts]
    assert pickle.loads(pickle.dumps(tok)).encode_batch(texts) == ids
    for text, one in zip(texts, ids, strict=True):
        assert tok.decode(one).encode("utf-8") == text.encode("utf-8"), repr(text)
        assert not set(one) & tok.special_ids()
    assert tok.decode([tok.bos_id, *ids[0], tok.eos_id, tok.vocab_size, tok.vocab_size + 7, -1]) == texts[0]
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.add_bos) == (1, 2, 3, True)
    with pytest.raises(DataError, match=r"a 100-piece tokenizer cannot hold the \d+ .*vocab_size=\d+ or more"):
        tokenizer_lib.train(docs[:50], 100)


def test_bpe_training_refuses_too_small_a_vocabulary_or_too_little_text():
    docs = sources.Documents(["to be or not to be"] * 3, source="tiny.txt")
    with pytest.raises(DataError, match=r"at least 257 tokens .* not 200: set --config.tokenizer.vocab_size=257"):
        tokenizer_lib.train(docs, 200, "bpe")
    with pytest.raises(DataError, match=r"too little text .* 1000-token .* of tiny\.txt .*vocab_size=\d+ \(or less\)"):
        tokenizer_lib.train(docs, 1000, "bpe")
    with pytest.raises(DataError, match=r"no text .* of empty\.txt are empty"):
        tokenizer_lib.train(sources.Documents(["", ""], source="empty.txt"), 300, "bpe")
    with pytest.raises(ValueError, match="tokenizer kind 'wordpiece'"):
        tokenizer_lib.train(docs, 300, "wordpiece")


def test_missing_and_malformed_files_are_one_line_naming_the_file(tmp_path):
    cases = {
        "bad.json": '{"version": "1.0", "model": ',
        "list.json": "[1, 2]",
        "x.model": "not a protobuf",
        "vocab_bad/vocab.json": "garbage",
        "vocab_bad/merges.txt": "#version: 0.2\na b\n",
        "config_list/tokenizer.json": None,
        "config_list/tokenizer_config.json": "[1]",
        "config_bad/tokenizer.json": None,
        "config_bad/tokenizer_config.json": "{bad",
        "half/vocab.json": '{"a": 0, "<|endoftext|>": 1}',
    }
    good = tokenizer_lib.train(sources.read_documents("bundled:tinyshakespeare")[:200], 300, "bpe")
    for rel, text in cases.items():
        (tmp_path / rel).parent.mkdir(exist_ok=True)
        if text is None:
            good.save(tmp_path / rel)
        else:
            (tmp_path / rel).write_text(text)
    expect = {
        "bad.json": (DataError, "bad.json is not a readable tokenizer.json"),
        "list.json": (DataError, "list.json is not a readable tokenizer.json"),
        "x.model": (DataError, "x.model is not a SentencePiece model"),
        "vocab_bad": (DataError, r"vocab_bad/vocab\.json \+ .*merges\.txt are not a BPE vocabulary"),
        "config_list": (DataError, "config_list/tokenizer_config.json is not a JSON object"),
        "config_bad": (DataError, "config_bad/tokenizer_config.json is not valid JSON"),
        "half": (FileNotFoundError, "half/merges.txt not found"),
        "missing.model": (FileNotFoundError, "missing.model not found: train one with `python -m gptx.main tokenizer`"),
        "": (FileNotFoundError, "holds no tokenizer.model, tokenizer.json or vocab.json"),
    }
    (tmp_path / "empty_dir").mkdir()
    for rel, (kind, message) in expect.items():
        path = tmp_path / (rel or "empty_dir")
        with pytest.raises(kind, match=message) as err:
            tokenizer_lib.load(path)
        assert "\n" not in str(err.value) and str(tmp_path) in str(err.value), str(err.value)


# ---------------------------------------------------------------- framing special ids around text, either kind


@pytest.fixture(scope="module", params=["gpt2", "trained_bpe", "sentencepiece"])
def any_tok(request):
    if request.param == "gpt2":
        if not (GPT2_DIR / "merges.txt").exists():
            pytest.skip(f"GPT-2's tokenizer files not found in {GPT2_DIR}")
        return tokenizer_lib.load(GPT2_DIR)
    docs = sources.read_documents("bundled:tinyshakespeare")[:1500]
    kind = "bpe" if request.param == "trained_bpe" else "sentencepiece"
    return tokenizer_lib.train(docs, 512, kind)


def test_packed_documents_are_their_ids_separated_by_eos(any_tok):
    tok = any_tok
    docs = ["a<|endoftext|>b </s> <s> <pad>", "日本 😀\r\n", *sources.read_documents("bundled:tinyshakespeare")[:40]]
    batches = list(loader.lm_dataset(docs, tok, seq_len=64, batch_size=4, seed=0, train=False))
    inputs, targets = [], []
    for b in batches:
        for row in range(4):
            real = b["segment_ids"][row] > 0
            inputs.append(b["inputs"][row][real])
            targets.append(b["targets"][row][real])
            assert (b["weights"][row][~real] == 0).all()
    # The packed tokens are the documents in order, each as the next-token pairs of [BOS] ids EOS (BOS only when
    # add_bos), split into rows of 64 (a long document continues as a new segment in the next row).
    got_in, got_t = np.concatenate(inputs), np.concatenate(targets)
    want = [tok.document(d) for d in docs]
    want_in, want_t = np.concatenate([w[:-1] for w in want]), np.concatenate([w[1:] for w in want])
    assert len(got_in) == len(got_t) and len(want_in) - 4 * 64 < len(got_in) <= len(want_in)  # last batch dropped
    np.testing.assert_array_equal(got_in, want_in[: len(got_in)])
    np.testing.assert_array_equal(got_t, want_t[: len(got_t)])
    bounds = np.cumsum([0] + [len(w) - 1 for w in want])
    for k, doc in enumerate(docs[: np.searchsorted(bounds, len(got_in), side="right") - 1]):
        ids = [*got_in[bounds[k] : bounds[k + 1]], got_t[bounds[k + 1] - 1]]
        n = len(tok.prefix())
        assert ids[:n] == tok.prefix() and ids[-1] == tok.eos_id
        assert not set(ids[n:-1]) & tok.special_ids()  # text never yields a special id: EOS only ends documents
        assert tok.decode(ids) == doc, k


def test_finetuning_tokens_come_after_the_vocabulary_never_from_text(any_tok):
    """GPT-1's start/delim/extract (and task) ids are V, V+1, V+2 (V+3...) whatever the tokenizer."""
    tok = any_tok
    v = tok.vocab_size
    special = finetune_tasks.SpecialTokens.for_tokenizer(v, n_task_tokens=2)
    assert (special.start, special.delim, special.extract, special.task) == (v, v + 1, v + 2, (v + 3, v + 4))
    ex = finetune_tasks.Example("A man plays a guitar <|endoftext|> [start]", "Someone makes music. 🎸", label=0)
    for kind in (finetune_tasks.ENTAILMENT, finetune_tasks.SIMILARITY):
        for seq in finetune_tasks.transform(ex, kind, tok, special, seq_len=128, task_token=special.task[1]):
            assert seq[:2] == [special.start, special.task[1]] and seq[-1] == special.extract
            assert [i for i in seq if i >= v] == [special.start, special.task[1], special.delim, special.extract]
            cut = seq.index(special.delim)
            first, second = tok.decode(seq[2:cut]), tok.decode(seq[cut + 1 : -1])
            assert {first, second} == {ex.text_a, ex.text_b}  # similarity also has the swapped order
            if tok.kind == "bpe":  # (SentencePiece marks each encoded text's start with a space: not concatenative)
                assert tok.decode(seq) == first + second  # task ids are beyond the vocabulary: decode drops them
    mc = finetune_tasks.Example("The cat", choices=(" sat.", " ran.", " 跳."), label=0)
    seqs = finetune_tasks.transform(mc, finetune_tasks.MULTIPLE_CHOICE, tok, special, seq_len=64)
    for seq, choice in zip(seqs, mc.choices, strict=True):
        cut = seq.index(special.delim)
        assert (tok.decode(seq[1:cut]), tok.decode(seq[cut + 1 : -1])) == (mc.text_a, choice)
    assert all(sum(i >= v for i in s) == 3 for s in seqs)


def test_rlhf_layouts_put_bos_prompt_response_eos(any_tok):
    tok = any_tok
    prompt = rlhf_data.dialogue_prompt("Say hi in Japanese", "politely <|endoftext|>")
    demo = rlhf_data.Demonstration(prompt, " こんにちは 🙇")
    p = rlhf_data.encode_prompt(tok, prompt, max_len=64)
    assert p == [tok.bos_id, *tok.encode(prompt)] and tok.decode(p) == prompt
    ex = rlhf_data.sft_example(tok, demo, seq_len=96, max_prompt=64, max_response=32)
    n = int(ex["segment_ids"].sum())
    seq = [*p, *tok.encode(demo.response), tok.eos_id]
    assert n == len(seq) - 1 and list(ex["inputs"][:n]) == seq[:-1] and list(ex["targets"][:n]) == seq[1:]
    assert (ex["inputs"][n:] == tok.pad_id).all()
    weighted = ex["targets"][ex["weights"] > 0]
    assert weighted[-1] == tok.eos_id and tok.decode(weighted) == demo.response  # the loss sees the response only
    comp = rlhf_data.Comparison(prompt, (" yes", " no 🙅"), ((0, 1),))
    rm = rlhf_data.rm_example(tok, comp, seq_len=96, k=3, max_prompt=64, max_response=32)
    for i, resp in enumerate(comp.responses):
        row = rm["tokens"][i][rm["segment_ids"][i] > 0]
        assert list(row) == [*p, *tok.encode(resp), tok.eos_id] and tok.decode(row[len(p) :]) == resp
        if tok.kind == "bpe":  # byte-level pieces concatenate (SentencePiece adds a word-start mark per encode)
            assert tok.decode(row) == prompt + resp
    assert list(rm["tokens"][2][rm["segment_ids"][2] > 0]) == [tok.bos_id]  # an unused response slot


def test_image_placeholders_are_n_patches_ids_after_the_vocabulary(any_tok):
    tok = any_tok
    image_id = image_token_id(tok)
    assert image_id == tok.vocab_size
    size, patch = 16, 4
    n_patches = (size // patch) ** 2
    rng = np.random.default_rng(0)
    bank = image_text.ImageBank(
        digits=rng.uniform(0.1, 1.0, (12, size, size)).astype(np.float32),
        labels=np.arange(12) % 10,
        photos=[],
        image_size=size,
        patch_size=patch,
        channels=1,
    )
    records = image_text.digit_records(np.arange(12), 0, seed=0, max_interleaved=3, photo_repeats=0)
    for record in records:
        pieces = image_text.record_pieces(record, bank, rng)
        ids = layout(pieces, tok.encode, image_id, n_patches)
        texts = [p for p in pieces if p is not None]
        assert sum(i == image_id for i in ids) == n_patches * len(record.images)
        assert all(image_id not in tok.encode(t) for t in texts)
        if tok.kind == "bpe":  # (SentencePiece starts each encoded piece of text with a word-start mark)
            assert tok.decode(ids) == "".join(texts)
        else:
            assert tok.decode(ids).split() == " ".join(texts).split()
    batches = image_text.multimodal_dataset(bank, records, tok, image_id, seq_len=96, batch_size=2, train=False)
    n_placeholders = 0
    for b in batches:
        is_image = b["inputs"] == image_id
        n_placeholders += int(is_image.sum())
        assert (b["weights"][b["targets"] == image_id] == 0).all()  # no loss on predicting a placeholder
        assert (np.abs(b["patches"][is_image]).sum(-1) > 0).all() and (b["patches"][~is_image] == 0).all()
    assert n_placeholders % n_patches == 0 and n_placeholders > 0
