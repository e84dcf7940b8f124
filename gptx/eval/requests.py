"""The three model requests of an evaluation, as lm-evaluation-harness defines them.

  loglikelihood(context, continuation) -> (log P(continuation | context) in nats, is_greedy)
  loglikelihood_rolling(text)          -> log P(text), over windows when the text exceeds the context
  generate_until(context, until)       -> greedy continuation, cut at the first stop string

`LM` runs them on a gptx model. Requests are deduplicated, sorted by length (longest first, so the first batch
shows the memory peak) and cut into fixed-size batches of one length bucket each (four per octave, so padding
adds at most a quarter), which bounds the number of compilations and computes a request at the same padded
length whatever else is in its batch. The LM head runs only where a continuation is scored: a multiple-choice
request's few continuation tokens, not every context position, which at GPT-2's vocabulary is most of the
FLOPs of a forward pass. Each
score is read from its own row and summed on the host in float64, so another batch size changes a score only by
float32 rounding (XLA may order a matmul's sums differently for another batch shape, ~1e-6 nats): the metrics
are the same for any batch size.

What a request is conditioned on before its own text is the model's convention (`ContextPrefix`): gptx models
were trained on documents that start with BOS, so every context starts with BOS; GPT-2 never saw a BOS, so a
context is scored as it is, as lm-evaluation-harness's Hugging Face backend does, and only an empty context or a
rolling text, whose first token needs a token to be predicted from, starts with <|endoftext|>.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm import tqdm

from gptx import mesh as mesh_lib
from gptx.eval.cache import RequestCache
from gptx.models import vocab_tiling
from gptx.sample import SamplingConfig, decode

MIN_BUCKET = 16


class TextTokenizer(Protocol):
    """What the harness needs of a tokenizer (gptx.data.tokenizer.Tokenizer has it)."""

    bos_id: int
    eos_id: int
    pad_id: int
    add_bos: bool  # the model saw BOS before every document in training

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


@dataclasses.dataclass(frozen=True)
class Loglikelihood:
    """Score of one continuation: summed log-probability (nats), greedy agreement, scored tokens."""

    logprob: float
    is_greedy: bool
    n_tokens: int


@dataclasses.dataclass(frozen=True)
class Rolling:
    """Log-likelihood of a whole text and the counts that turn it into perplexities."""

    logprob: float  # nats
    n_tokens: int
    n_bytes: int  # UTF-8 bytes of the text
    n_words: int  # whitespace-separated words

    @property
    def bits_per_byte(self) -> float:
        return -self.logprob / (math.log(2) * max(self.n_bytes, 1))

    @property
    def token_perplexity(self) -> float:
        return math.exp(-self.logprob / max(self.n_tokens, 1))

    @property
    def word_perplexity(self) -> float:
        return math.exp(-self.logprob / max(self.n_words, 1))


def bucket_length(n: int, max_len: int, per_octave: int = 4) -> int:
    """Padded length of a batch whose longest row has n tokens, capped at max_len.

    Lengths up to MIN_BUCKET pad to MIN_BUCKET; above it, to the next of `per_octave` evenly spaced lengths
    between consecutive powers of two (n = 65 -> 80, 100 -> 112, 129 -> 160), so padding adds at most
    1/per_octave of the length while a run compiles only per_octave shapes per doubling.
    """
    if n <= MIN_BUCKET:
        return min(MIN_BUCKET, max_len)
    step = max((1 << (n - 1).bit_length()) // (2 * per_octave), 1)  # octave (p/2, p] in per_octave steps
    return min(-(-n // step) * step, max_len)


def score_width(n_cont: int, t: int) -> int:
    """Positions the LM head scores in a batch whose longest continuation has n_cont tokens: the next power of
    two (at least 8, at most the padded length t), so a continuation's position in the window is the same for
    any batch it lands in."""
    return min(max(8, 1 << (n_cont - 1).bit_length()), t)


def rolling_windows(n_tokens: int, max_len: int, stride: int = 0) -> list[tuple[int, int, int]]:
    """Windows that predict each of a text's tokens exactly once.

    The text is `full = prefix + tokens` with the prefix at index 0 and tokens at 1..n_tokens. Targets are cut
    into chunks of `stride` tokens (0: max_len); the chunk of targets [a, b) is predicted from the max_len
    tokens before b (fewer at the start), so each window is (start, a, b): context full[start:a], continuation
    full[a:b]. stride = max_len is lm-evaluation-harness's layout (disjoint windows, the last one with a full
    context); stride 1 gives every token the full context (the sliding-window definition of perplexity).
    """
    stride = stride or max_len
    if not 0 < stride <= max_len:
        raise ValueError(f"stride {stride} must be in [1, max_len={max_len}]")
    out = []
    for a in range(1, n_tokens + 1, stride):
        b = min(a + stride, n_tokens + 1)
        out.append((max(0, b - 1 - max_len), a, b))
    return out


def split_pair(tokenizer: TextTokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Tokens of (context, continuation), cut from the tokens of context + continuation.

    All trailing whitespace of the context (spaces, newlines, tabs) moves to the continuation, as
    lm-evaluation-harness's `_encode_pair` does: tokenizers cut whitespace differently at the end of a text than
    before a word (GPT-2 ends "Hello" + blank line with one two-newline token, but splits the two newlines
    before "A"), so the context is cut where running text would be. Encoding the two separately would not do:
    SentencePiece marks the start of every encoded string. When a token straddles the boundary it belongs to
    the continuation (lm-eval instead cuts at len(encode(context)) and would drop it from the score).
    """
    stripped = context.rstrip()
    context, continuation = stripped, context[len(stripped) :] + continuation
    whole = tokenizer.encode(context + continuation)
    ctx = tokenizer.encode(context) if context else []
    common = 0
    for a, b in zip(ctx, whole, strict=False):
        if a != b:
            break
        common += 1
    common = min(common, len(whole) - 1) if continuation else common
    return whole[:common], whole[common:]


CONTEXT_PREFIXES = ("auto", "bos", "eos", "none")


@dataclasses.dataclass(frozen=True)
class ContextPrefix:
    """Tokens a request is conditioned on before its own text.

    context: put before a non-empty context (and a generation prompt).
    start: put before an empty context and a rolling text: what their first token is predicted from, so never
      empty when text requests are scored (lm-eval's prefix token).
    """

    context: tuple[int, ...]
    start: tuple[int, ...]

    @classmethod
    def of(cls, tokenizer: TextTokenizer, mode: str = "auto") -> ContextPrefix:
        """The convention `mode` for `tokenizer`'s model.

        "bos": BOS before everything (gptx-trained models: every training document started with it).
        "eos": EOS before everything (models trained on documents joined by an end-of-text token).
        "none": nothing before a non-empty context; EOS before an empty one and before a rolling text. This is
          lm-evaluation-harness's Hugging Face backend on GPT-2 (no BOS added; <|endoftext|> as the prefix token).
        "auto": "bos" when the tokenizer's model was trained with BOS (`tokenizer.add_bos`), else "none".
        """
        if mode not in CONTEXT_PREFIXES:
            raise ValueError(f"context prefix {mode!r}: expected one of {', '.join(CONTEXT_PREFIXES)}")
        if mode == "auto":
            # A tokenizer without the attribute predates it: one of gptx's own, which all train with BOS.
            mode = "bos" if getattr(tokenizer, "add_bos", True) else "none"
        if mode == "bos":
            return cls((tokenizer.bos_id,), (tokenizer.bos_id,))
        if mode == "eos":
            return cls((tokenizer.eos_id,), (tokenizer.eos_id,))
        return cls((), (tokenizer.eos_id,))


def with_prefix(prefix: Sequence[int], tokens: Sequence[int]) -> list[int]:
    """prefix + tokens, unless the tokens already start with the prefix (a text that spells out <|endoftext|>
    or <s> itself), which lm-eval does not double either."""
    prefix, tokens = list(prefix), list(tokens)
    return tokens if prefix and tokens[: len(prefix)] == prefix else prefix + tokens


class LM:
    """A gptx model answering evaluation requests.

    Args:
      model: a gptx GPT (its cfg.block_size is the context length).
      params: its parameters (numpy, device arrays, or sharded on `mesh`).
      tokenizer: encode/decode/bos_id/eos_id/pad_id; only the text-level methods need it.
      batch_size: rows per forward pass (rounded up to a multiple of the mesh's batch shards).
      mesh: run under this mesh (activation sharding rules); None runs on the default device.
      context_prefix: the prefix convention: "auto", "bos", "eos" or "none" (see `ContextPrefix.of`).
      prefix_ids: tokens put before every context and rolling text instead (token-level callers without a
        tokenizer; [] scores token requests only).
      progress: show a progress bar over the batches of each call (process 0).
      cache: scores kept between runs of this checkpoint (`gptx.eval.cache`); requests found there are not run.
        Single-process only: every process must run the same batches.
    """

    def __init__(
        self,
        model: Any,
        params: Any,
        tokenizer: TextTokenizer | None = None,
        *,
        batch_size: int = 16,
        mesh: Mesh | None = None,
        context_prefix: str = "auto",
        prefix_ids: Sequence[int] | None = None,
        progress: bool = False,
        cache: RequestCache | None = None,
    ):
        self.model, self.params, self.tokenizer, self.mesh = model, params, tokenizer, mesh
        self.max_len = model.cfg.block_size
        shards = 1 if mesh is None else mesh.shape["data"] * mesh.shape["fsdp"]
        self.batch_size = -(-max(1, batch_size) // shards) * shards
        if prefix_ids is not None:
            self.prefix = ContextPrefix(tuple(prefix_ids), tuple(prefix_ids))
        elif tokenizer is not None:
            self.prefix = ContextPrefix.of(tokenizer, context_prefix)
        else:
            self.prefix = ContextPrefix((), ())
        self.pad_id = tokenizer.pad_id if tokenizer is not None else 0
        self._score = _make_scorer(model, mesh)
        self.forward_passes = 0  # batches run, for throughput reports
        self.progress = progress and jax.process_index() == 0
        self.cache = cache

    def _batches(self, chunks: Sequence[Any], what: str):
        return tqdm(chunks, desc=what, disable=not self.progress or len(chunks) < 2, leave=False, dynamic_ncols=True)

    # ---------------------------------------------------------------------------------------------------------
    # Token level

    def loglikelihood_tokens(self, requests: Sequence[tuple[Sequence[int], Sequence[int]]]) -> list[Loglikelihood]:
        """Scores continuation tokens after context tokens (the prefix is NOT added here).

        A request longer than the context keeps its last max_len + 1 tokens (the context is cut on the left);
        the continuation itself must fit: 1 <= len(continuation) <= max_len, and context + continuation needs
        at least 2 tokens.
        """
        keys = [(tuple(int(t) for t in c), tuple(int(t) for t in x)) for c, x in requests]
        known = self.cache.get(keys) if self.cache is not None else {}
        unique = [k for k in dict.fromkeys(keys) if k not in known]
        for ctx, cont in unique:
            if not 1 <= len(cont) <= self.max_len or not ctx:
                raise ValueError(
                    f"a request needs a context of >= 1 token and a continuation of 1..{self.max_len} tokens, "
                    f"got {len(ctx)} and {len(cont)}"
                )
        rows = [(ctx + cont)[-(self.max_len + 1) :] for ctx, cont in unique]
        n_cont = [len(cont) for _, cont in unique]
        # Longest first; a batch holds rows of one (length, scored width) bucket only, so every row is always
        # computed at the same shapes, whatever the batch size and the other requests.
        shape = [bucket_length(len(r) - 1, self.max_len) for r in rows]
        shape = [(t, score_width(k, t)) for t, k in zip(shape, n_cont, strict=True)]
        order = sorted(range(len(rows)), key=lambda i: (-shape[i][0], -shape[i][1], -len(rows[i]), i))
        chunks = []
        for b in dict.fromkeys(shape[i] for i in order):
            group = [i for i in order if shape[i] == b]
            chunks += [(b, group[s : s + self.batch_size]) for s in range(0, len(group), self.batch_size)]
        scores: dict[int, Loglikelihood] = {}
        for (t, width), chunk in self._batches(chunks, "log-likelihoods"):
            logp, greedy = self._run([rows[i] for i in chunk], t, width)
            for r, i in enumerate(chunk):  # the continuation is the last n_cont of the row's scored window
                lp, gr = logp[r, width - n_cont[i] :], greedy[r, width - n_cont[i] :]
                scores[i] = Loglikelihood(float(np.sum(lp, dtype=np.float64)), bool(np.all(gr)), n_cont[i])
            if self.cache is not None:  # after every batch: an interrupted run keeps what it scored
                self.cache.add((unique[i], dataclasses.astuple(scores[i])) for i in chunk)
        index = {k: i for i, k in enumerate(unique)}
        return [Loglikelihood(*known[k]) if k in known else scores[index[k]] for k in keys]

    def _run(self, rows: list[tuple[int, ...]], t: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """Log-probs and greedy flags [batch_size, width] of the last `width` targets of each row (inputs
        row[:-1], right-padded to t); a row shorter than width is scored from its first target."""
        inputs = np.full((self.batch_size, t), self.pad_id, np.int32)
        targets = np.zeros((self.batch_size, t), np.int32)
        start = np.zeros((self.batch_size,), np.int32)
        for r, row in enumerate(rows):
            inputs[r, : len(row) - 1] = row[:-1]
            targets[r, : len(row) - 1] = row[1:]
            start[r] = max(len(row) - 1 - width, 0)
        self.forward_passes += 1
        logp, greedy = self._score(self.params, inputs, targets, start, width)
        # A row shorter than width was scored from position 0: shift its targets to the window's end.
        logp, greedy = np.array(logp), np.array(greedy)
        for r, row in enumerate(rows):
            if (short := width - (len(row) - 1)) > 0:
                logp[r], greedy[r] = np.roll(logp[r], short), np.roll(greedy[r], short)
        return logp, greedy

    def rolling_tokens(self, texts: Sequence[Sequence[int]], stride: int = 0) -> list[float]:
        """log P(tokens) of each token list after the prefix, over `rolling_windows` when longer than the context."""
        if not self.prefix.start:
            raise ValueError("rolling log-likelihood needs a prefix token (to predict the first token from)")
        requests, owner = [], []
        for j, toks in enumerate(texts):
            # lm-eval's windows condition on one prefix token (its EOT/BOS), the model's start of a document.
            full = [*self.prefix.start[-1:], *toks]
            for start, a, b in rolling_windows(len(toks), self.max_len, stride):
                requests.append((full[start:a], full[a:b]))
                owner.append(j)
        totals = [0.0] * len(texts)
        for j, score in zip(owner, self.loglikelihood_tokens(requests), strict=True):
            totals[j] += score.logprob
        return totals

    # ---------------------------------------------------------------------------------------------------------
    # Text level

    def _tok(self) -> TextTokenizer:
        if self.tokenizer is None:
            raise ValueError("text requests need a tokenizer")
        return self.tokenizer

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """(prefix + context tokens, continuation tokens); a context that is empty (or only whitespace, which
        moves to the continuation) gets the start prefix, as lm-eval's empty contexts get its prefix token."""
        ctx, cont = split_pair(self._tok(), context, continuation)
        if ctx:
            return with_prefix(self.prefix.context, ctx), cont
        start = list(self.prefix.start)
        if start and len(cont) > 1 and cont[: len(start)] == start:  # the text itself starts with the prefix
            return cont[: len(start)], cont[len(start) :]
        return start, cont

    def prompt_ids(self, text: str) -> list[int]:
        """Tokens a generation prompt is fed as: the context prefix and the text (the start prefix if empty)."""
        toks = self._tok().encode(text)
        return with_prefix(self.prefix.context if toks else self.prefix.start, toks)

    def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> list[Loglikelihood]:
        """log P(continuation | prefix + context) and is_greedy for (context, continuation) strings."""
        return self.loglikelihood_tokens([self.encode_pair(c, x) for c, x in requests])

    def loglikelihood_rolling(self, texts: Sequence[str], stride: int = 0) -> list[Rolling]:
        """log P(text | start prefix) of whole texts, with counts for perplexity and bits per byte."""
        tokens = [self._tok().encode(t) for t in texts]
        logps = self.rolling_tokens(tokens, stride)
        return [
            Rolling(lp, len(tok), len(text.encode("utf-8")), len(text.split()))
            for lp, tok, text in zip(logps, tokens, texts, strict=True)
        ]

    def count_tokens(self, text: str) -> int:
        return len(self.prompt_ids(text))

    def generate_until(
        self,
        requests: Sequence[tuple[str, Sequence[str]]],
        max_new_tokens: int = 32,
        *,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int = 0,
    ) -> list[str]:
        """Greedy continuations (temperature 0), or samples at a temperature and nucleus top_p, of the contexts,
        each cut before the first of its stop strings. n samples of a prompt are n copies of its request: each
        copy has its own row key, and the copies share batches of the KV-cache decoder.

        Prompts longer than max_len - max_new_tokens lose tokens on the left. Batches are left-padded to a
        `bucket_length` width and filled to batch_size rows, so decoding compiles once per width bucket, not once
        per prompt length; stop strings are applied here, on the decoded text, so they do not enter the
        compiled program either. The text of a continuation is decoded with its prompt and the prompt's text
        removed, so a leading space survives. Row i samples with key fold_in(key(seed), i) (temperature > 0).
        """

        tok = self._tok()
        if not 0 < max_new_tokens < self.max_len:
            raise ValueError(f"max_new_tokens={max_new_tokens} must be in [1, {self.max_len}) (the context)")
        keep = self.max_len - max_new_tokens
        prompts = [self.prompt_ids(ctx)[-keep:] for ctx, _ in requests]
        sampling = SamplingConfig(
            max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, eos_id=tok.eos_id, pad_id=self.pad_id
        )
        order = sorted(range(len(prompts)), key=lambda i: (-len(prompts[i]), i))
        out: list[str] = [""] * len(requests)
        for start in self._batches(range(0, len(order), self.batch_size), "generations"):
            chunk = order[start : start + self.batch_size]
            rows = chunk + [chunk[-1]] * (self.batch_size - len(chunk))  # filler rows repeat a real prompt
            width = min(bucket_length(len(prompts[chunk[0]]), self.max_len), keep)
            tokens = np.full((len(rows), width), self.pad_id, np.int32)
            mask = np.zeros((len(rows), width), bool)
            for r, i in enumerate(rows):
                tokens[r, width - len(prompts[i]) :], mask[r, width - len(prompts[i]) :] = prompts[i], True
            keys = _row_keys(seed, np.asarray(rows, np.int32))
            self.forward_passes += 1
            with _mesh_rules(self.mesh):
                result = jax.device_get(decode(self.model, self.params, tokens, mask, keys, sampling))
            for r, i in enumerate(chunk):
                new = result.tokens[r, : int(result.mask[r].sum())].tolist()
                out[i] = cut_at_stop(continuation_text(tok, prompts[i], new), requests[i][1])
        return out


def continuation_text(tokenizer: TextTokenizer, prompt: Sequence[int], new: Sequence[int]) -> str:
    """Text of `new` tokens as they read after `prompt` (decoding them alone would drop a leading space)."""
    head = tokenizer.decode(list(prompt))
    whole = tokenizer.decode([*prompt, *new])
    return whole[len(head) :] if whole.startswith(head) else tokenizer.decode(list(new))


def cut_at_stop(text: str, until: Sequence[str]) -> str:
    """text up to (not including) the earliest stop string."""
    cut = min((i for i in (text.find(s) for s in until if s) if i >= 0), default=len(text))
    return text[:cut]


@jax.jit
def _row_keys(seed: int, rows: jax.Array) -> jax.Array:
    """fold_in(key(seed), i) for each request index i: a row's key does not depend on its batch."""
    base = jax.random.key(seed)
    return jax.vmap(lambda i: jax.random.fold_in(base, i))(rows)


def _mesh_rules(mesh: Mesh | None):
    return mesh_lib.activation_rules(mesh) if mesh is not None else contextlib.nullcontext()


@functools.lru_cache(maxsize=16)
def _make_scorer(model: Any, mesh: Mesh | None):
    """jit(params, inputs [B, T], targets [B, T], start [B], width) -> (log P(target) [B, width] f32, target is
    argmax [B, width] bool) at positions start .. start + width - 1 of each row.

    One per (model, mesh), shared by every LM over them, so a new LM does not recompile.
    """

    def score(params, inputs, targets, start, width):
        hidden = model.apply({"params": params}, inputs, return_hidden=True)  # [B, T, D]
        # Only the scored window reaches the head: [B, T, D] -> [B, width, D].
        window = start[:, None] + jnp.arange(width)[None, :]  # [B, width]
        hidden = jnp.take_along_axis(hidden, window[..., None], axis=1)
        targets = jnp.take_along_axis(targets, window, axis=1)
        # The [B, width, V] logits exist model.cfg.logits_chunk positions at a time (vocab tiling).
        wte = nn.meta.unbox(params["wte"])
        return vocab_tiling.token_logprobs(hidden, wte, targets, chunk=model.cfg.logits_chunk)

    if mesh is None:
        return jax.jit(score, static_argnames="width")
    # Rows split over the data-parallel axes; results replicated so that every process can read them.
    batch = mesh_lib.batch_sharding(mesh)
    replicated = NamedSharding(mesh, PartitionSpec())
    jitted = jax.jit(score, static_argnames="width", out_shardings=(replicated, replicated))

    def run(params, inputs, targets, start, width):
        with mesh_lib.activation_rules(mesh):
            rows = NamedSharding(mesh, PartitionSpec(batch.spec[0]))
            put = lambda x: jax.device_put(x, batch)
            return jitted(params, put(inputs), put(targets), jax.device_put(start, rows), width)

    return run
