"""Corpus reading, the tokenizer, and the packed grain pipeline."""

import gzip

import numpy as np
import pytest

from gptx.data import loader, sources, stats
from gptx.data import tokenizer as tokenizer_lib


@pytest.fixture(scope="module")
def shakespeare():
    docs = sources.read_documents("bundled:tinyshakespeare")
    return docs, tokenizer_lib.train(docs[:2000], vocab_size=512)


def test_bundled_corpus_is_tiny_shakespeare():
    text = sources.read_text("bundled:tinyshakespeare")
    assert len(text) == 1_115_394 and text.startswith("First Citizen:\nBefore we proceed any further")
    docs = sources.split_documents(text, "blank_line")
    assert docs[0] == "First Citizen:\nBefore we proceed any further, hear me speak."
    assert all(d.strip() and "\n\n" not in d for d in docs)


def test_tokenizer_round_trips_any_text(shakespeare):
    docs, tok = shakespeare
    for text in [*docs[2000:2050], "  two leading spaces\nand a tab\there", "naïve café — 日本語 ☃\n\nend"]:
        assert tok.decode(tok.encode(text)) == text
    assert tok.vocab_size == 512 and tok.encode("a\nb").count(tok.newline_id) == 1


def test_tokenizer_save_load_and_missing_file(shakespeare, tmp_path):
    _, tok = shakespeare
    tok.save(tmp_path / "t.model")
    assert tokenizer_lib.load(tmp_path / "t.model").encode("ROMEO:") == tok.encode("ROMEO:")
    with pytest.raises(FileNotFoundError, match=r"nope\.model not found.*gptx\.main tokenizer"):
        tokenizer_lib.load(tmp_path / "nope.model")


def test_packed_batches_hold_documents_with_next_token_targets(shakespeare):
    docs, tok = shakespeare
    ds = loader.lm_dataset(docs[:300], tok, seq_len=64, batch_size=4, seed=0, train=False)
    batches = list(ds)
    assert batches and all(b["inputs"].shape == (4, 64) for b in batches)
    # Rebuild every document from the packed rows: segment ids and positions must delimit them exactly.
    rebuilt = []
    for b in batches:
        for row in range(4):
            seg, pos = b["segment_ids"][row], b["positions"][row]
            for s in np.unique(seg[seg > 0]):
                idx = np.flatnonzero(seg == s)
                np.testing.assert_array_equal(pos[idx], np.arange(len(idx)))  # positions restart per segment
                inputs, targets = b["inputs"][row, idx], b["targets"][row, idx]
                np.testing.assert_array_equal(inputs[1:], targets[:-1])  # targets are the next inputs
                assert (b["weights"][row, idx] == 1).all()
                rebuilt.append((inputs, targets))
            assert (b["weights"][row, seg == 0] == 0).all()
    first = [tok.bos_id, *tok.encode(docs[0])]
    np.testing.assert_array_equal(rebuilt[0][0], first)
    assert rebuilt[0][1][-1] == tok.eos_id


def test_training_stream_is_shuffled_and_repeats(shakespeare):
    docs, tok = shakespeare
    ds = loader.lm_dataset(docs[:20], tok, seq_len=64, batch_size=2, seed=0, train=True)
    it = iter(ds)
    first = [next(it)["inputs"] for _ in range(40)]  # well past one epoch of 20 short documents
    again = iter(loader.lm_dataset(docs[:20], tok, seq_len=64, batch_size=2, seed=0, train=True))
    np.testing.assert_array_equal(next(again)["inputs"], first[0])  # seeded: reproducible
    other = next(iter(loader.lm_dataset(docs[:20], tok, seq_len=64, batch_size=2, seed=1, train=True)))
    assert not np.array_equal(other["inputs"], first[0])


def test_iterator_state_resumes_the_stream(shakespeare):
    docs, tok = shakespeare
    it = iter(loader.lm_dataset(docs[:100], tok, seq_len=32, batch_size=2, seed=3, train=True))
    for _ in range(5):
        next(it)
    state = it.get_state()
    expected = [next(it)["inputs"] for _ in range(3)]
    fresh = iter(loader.lm_dataset(docs[:100], tok, seq_len=32, batch_size=2, seed=3, train=True))
    fresh.set_state(state)
    for want in expected:
        np.testing.assert_array_equal(next(fresh)["inputs"], want)


def test_bad_files_get_errors_naming_file_and_line(tmp_path):
    bad = tmp_path / "bad.txt.gz"
    with gzip.open(bad, "wb") as f:
        f.write(b"good line\nsecond\n\xff\xfe broken\n")
    with pytest.raises(sources.DataError, match=r"bad\.txt\.gz: line 3 \(byte 17\) is not valid UTF-8"):
        sources.read_documents(str(bad))
    with pytest.raises(FileNotFoundError, match="missing.txt not found"):
        sources.read_documents(str(tmp_path / "missing.txt"))
    with pytest.raises(sources.DataError, match="no bundled corpus 'x'"):
        sources.read_documents("bundled:x")


def test_unigram_entropy_is_the_closed_form(shakespeare):
    _, tok = shakespeare
    docs = ["ab", "ab ab"]
    ids = [i for d in docs for i in [*tok.encode(d), tok.eos_id]]
    _, counts = np.unique(ids, return_counts=True)
    p = counts / counts.sum()
    assert stats.unigram_entropy(docs, tok) == pytest.approx(float(-(p * np.log(p)).sum()))


def test_validation_split_is_the_tail():
    train, val = loader.split_train_val([str(i) for i in range(10)], 0.2)
    assert train == [str(i) for i in range(8)] and val == ["8", "9"]
