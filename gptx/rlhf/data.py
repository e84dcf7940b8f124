"""InstructGPT data: demonstrations, ranked comparisons and prompts, split by prompt, and their token layouts.

Every text follows the dialogue format of Anthropic's HH-RLHF data, so demonstrations, comparisons and PPO
prompts look alike to the model:

  prompt    "\\n\\nHuman: <instruction>[\\n<input>]\\n\\nAssistant:"
  response  " <answer>"   (followed by EOS in token space)

Sources (config.rlhf.*):
  demonstrations  self_instruct: ../shared/data/self_instruct/seed_tasks.jsonl, one per instance (human written);
                  corpus: paragraphs of config.data.corpus, the first `corpus_prompt_lines` lines as prompt and
                  the next line as the demonstration (plain text, no dialogue format)
  comparisons     hh_rlhf: ../shared/data/hh_rlhf/harmless-base_test.jsonl.gz; `chosen` and `rejected` share
                  the dialogue up to the last "\\n\\nAssistant:", which is the prompt, and differ in the last
                  reply: K = 2 ranked responses. labeler: K SFT samples per prompt ranked by a scorer (reward.py)
  prompts         the prompts of either source, or of the corpus

A record that cannot be used is counted as malformed with its line number and reported, never silently dropped.
Splits are by prompt with a seeded permutation, so no prompt is in both the training and the test split.
"""

from __future__ import annotations

import dataclasses
import gzip
import itertools
import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import grain
import jax
import ml_collections
import numpy as np
from absl import logging

from gptx import config as config_lib
from gptx.config import ConfigError
from gptx.data import loader, paths, sources
from gptx.data.finetune_tasks import ReadResult
from gptx.data.tokenizer import Tokenizer

HUMAN, ASSISTANT = "\n\nHuman: ", "\n\nAssistant:"
SELF_INSTRUCT = "self_instruct/seed_tasks.jsonl"
HH_RLHF = "hh_rlhf/harmless-base_test.jsonl.gz"
DEMONSTRATIONS = ("self_instruct", "corpus")
COMPARISONS = ("hh_rlhf", "labeler")
PROMPTS = ("hh_rlhf", "self_instruct", "corpus")


@dataclasses.dataclass(frozen=True)
class Demonstration:
    prompt: str
    response: str


@dataclasses.dataclass(frozen=True)
class Comparison:
    """A prompt, K responses and the preferences among them as (winner, loser) index pairs: all C(K, 2) pairs
    of a full ranking, fewer when some responses tie."""

    prompt: str
    responses: tuple[str, ...]
    pairs: tuple[tuple[int, int], ...]

    @classmethod
    def from_scores(cls, prompt: str, responses: Sequence[str], scores: Sequence[float]) -> Comparison:
        """The ranking of `responses` by `scores` (higher is better) as every ordered pair; ties give no pair."""
        pairs = []
        for i, j in itertools.combinations(range(len(responses)), 2):
            if scores[i] != scores[j]:
                pairs.append((i, j) if scores[i] > scores[j] else (j, i))
        return cls(prompt, tuple(responses), tuple(pairs))


def dialogue_prompt(instruction: str, context: str = "") -> str:
    body = instruction.strip() + (f"\n{context.strip()}" if context.strip() else "")
    return f"{HUMAN}{body}{ASSISTANT}"


# ------------------------------------------------------------------------------------------------------------
# Readers


def _lines(path: str):
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found (set config.rlhf.data_dir)")
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as f:
        yield from enumerate(f, start=1)


def read_self_instruct(path: str) -> ReadResult:
    """One demonstration per instance of each seed task. Malformed: bad JSON, no instruction, no instances, an
    instance with an empty output."""
    out = ReadResult(path, [])
    for line, text in _lines(path):
        if not text.strip():
            continue
        try:
            rec = json.loads(text)
            instruction, instances = rec["instruction"], rec["instances"]
            demos = [
                Demonstration(dialogue_prompt(instruction, i.get("input", "")), " " + i["output"].strip())
                for i in instances
            ]
            if not instruction.strip() or not demos or any(d.response == " " for d in demos):
                raise ValueError
        except (ValueError, KeyError, TypeError, AttributeError):
            out.bad(line)
            continue
        out.examples.extend(demos)
    return out


def split_dialogue(chosen: str, rejected: str) -> Comparison | None:
    """The shared dialogue up to the last "\\n\\nAssistant:" before the two texts differ, and the two replies;
    None when there is no such turn or a reply is empty or both are equal."""
    n = 0
    for a, b in zip(chosen, rejected, strict=False):
        if a != b:
            break
        n += 1
    cut = chosen.rfind(ASSISTANT, 0, n)  # an Assistant turn lying wholly in the shared part
    if cut < 0 or chosen == rejected:
        return None
    end = cut + len(ASSISTANT)
    prompt, win, lose = chosen[:end], chosen[end:], rejected[end:]
    if not win.strip() or not lose.strip():
        return None
    return Comparison(prompt, (win.rstrip(), lose.rstrip()), ((0, 1),))


def read_hh_rlhf(path: str) -> ReadResult:
    """HH-RLHF {"chosen", "rejected"} records as K = 2 comparisons. Malformed: bad JSON, missing keys, texts that
    do not share a prompt ending in an Assistant turn, empty or identical replies."""
    out = ReadResult(path, [])
    for line, text in _lines(path):
        if not text.strip():
            continue
        try:
            rec = json.loads(text)
            comp = split_dialogue(str(rec["chosen"]), str(rec["rejected"]))
        except (ValueError, KeyError, TypeError):
            comp = None
        if comp is None:
            out.bad(line)
        else:
            out.examples.append(comp)
    return out


def corpus_demonstrations(docs: Sequence[str], prompt_lines: int) -> list[Demonstration]:
    """Paragraphs with more than `prompt_lines` non-empty lines: the first lines (and a newline) are the prompt,
    the next line is the demonstration."""
    demos = []
    for doc in docs:
        lines = [ln for ln in doc.split("\n") if ln.strip()]
        if len(lines) > prompt_lines:
            demos.append(Demonstration("\n".join(lines[:prompt_lines]) + "\n", lines[prompt_lines]))
    return demos


def _report(result: ReadResult) -> ReadResult:
    if result.malformed:
        logging.warning("%s", result.summary())
    return result


def data_path(cfg: ml_collections.ConfigDict, rel: str) -> str:
    """A file under config.rlhf.data_dir (relative data dirs are taken from the repository root)."""
    return paths.data_path(cfg.rlhf.data_dir, rel)


def demonstrations(cfg: ml_collections.ConfigDict) -> ReadResult:
    """The configured demonstrations (config.rlhf.demonstrations)."""
    kind = cfg.rlhf.demonstrations
    if kind == "self_instruct":
        return _report(read_self_instruct(data_path(cfg, SELF_INSTRUCT)))
    if kind == "corpus":
        docs = sources.read_documents(cfg.data.corpus, cfg.data.doc_separator)
        return ReadResult(sources.resolve(cfg.data.corpus), corpus_demonstrations(docs, cfg.rlhf.corpus_prompt_lines))
    raise ConfigError(f"config.rlhf.demonstrations={kind!r} is not one of {', '.join(DEMONSTRATIONS)}")


def prompts(cfg: ml_collections.ConfigDict) -> tuple[list[str], str]:
    """(unique prompts in file order, their source) of config.rlhf.prompts."""
    kind = cfg.rlhf.prompts
    if kind == "hh_rlhf":
        result = _report(read_hh_rlhf(data_path(cfg, HH_RLHF)))
    elif kind in ("self_instruct", "corpus"):
        result = demonstrations(_with(cfg, demonstrations=kind))
    else:
        raise ConfigError(f"config.rlhf.prompts={kind!r} is not one of {', '.join(PROMPTS)}")
    return list(dict.fromkeys(x.prompt for x in result.examples)), result.path


def _with(cfg: ml_collections.ConfigDict, **rlhf) -> ml_collections.ConfigDict:
    out = ml_collections.ConfigDict(cfg.to_dict())
    out.rlhf.update(rlhf)
    return out


def split_by_prompt(items: Sequence[Any], test_fraction: float, seed: int, key: Callable[[Any], str] | None = None):
    """(train, test) with a seeded permutation of the distinct prompts: items sharing a prompt stay together.
    `key` gives an item's prompt (default: `.prompt`, or the item itself when it is a string)."""
    key = key or (lambda x: x if isinstance(x, str) else x.prompt)
    uniq = list(dict.fromkeys(key(x) for x in items))
    order = np.random.default_rng(seed).permutation(len(uniq))
    n_test = max(1, int(round(len(uniq) * test_fraction))) if test_fraction > 0 else 0
    test = {uniq[i] for i in order[:n_test]}
    return [x for x in items if key(x) not in test], [x for x in items if key(x) in test]


# ------------------------------------------------------------------------------------------------------------
# Token layouts


def encode_prompt(tok: Tokenizer, prompt: str, max_len: int) -> list[int]:
    """[BOS] + the prompt's last max_len - 1 tokens (a long dialogue keeps its latest turn)."""
    ids = tok.encode(prompt)
    return [tok.bos_id, *ids[len(ids) - (max_len - 1) :]] if len(ids) > max_len - 1 else [tok.bos_id, *ids]


def encode_response(tok: Tokenizer, response: str, max_len: int) -> list[int]:
    """The response's tokens and EOS, cut to max_len (a cut response has no EOS)."""
    return [*tok.encode(response), tok.eos_id][:max_len]


def sft_example(tok: Tokenizer, demo: Demonstration, seq_len: int, max_prompt: int, max_response: int):
    """Right-padded next-token arrays [T] whose `weights` are 1 exactly on targets that are response tokens
    (EOS included): the SFT loss ignores the prompt."""
    p = encode_prompt(tok, demo.prompt, max_prompt)
    seq = p + encode_response(tok, demo.response, max_response)
    n = len(seq) - 1  # input/target pairs
    out = {k: np.zeros(seq_len, np.int32) for k in ("inputs", "targets", "positions", "segment_ids")}
    out["inputs"][:] = tok.pad_id
    out["inputs"][:n], out["targets"][:n] = seq[:-1], seq[1:]
    out["positions"][:n] = np.arange(n)
    out["segment_ids"][:n] = 1
    out["weights"] = np.zeros(seq_len, np.float32)
    out["weights"][len(p) - 1 : n] = 1.0  # target j is seq[j + 1]: a response token when j + 1 >= len(p)
    return out


def rm_example(
    tok: Tokenizer, comp: Comparison, seq_len: int, k: int, max_prompt: int, max_response: int, weight: float = 1.0
) -> dict[str, np.ndarray]:
    """One batch element of the reward model: all K responses of a prompt and all their pairs.

    tokens/segment_ids [K, T] (right-padded prompt + response; unused response slots hold just BOS), pair_w,
    pair_l [C] indices of winner and loser, pair_mask [C] (C = K(K-1)/2 slots), weight [1].
    """
    if len(comp.responses) > k:
        raise ValueError(f"a comparison has {len(comp.responses)} responses, more than K = {k}")
    n_pairs = k * (k - 1) // 2
    tokens = np.full((k, seq_len), tok.pad_id, np.int32)
    seg = np.zeros((k, seq_len), np.int32)
    tokens[:, 0], seg[:, 0] = tok.bos_id, 1
    p = encode_prompt(tok, comp.prompt, max_prompt)
    for i, resp in enumerate(comp.responses):
        seq = p + encode_response(tok, resp, max_response)
        tokens[i, : len(seq)], seg[i, : len(seq)] = seq, 1
    pairs = np.zeros((n_pairs, 2), np.int32)
    if comp.pairs:
        pairs[: len(comp.pairs)] = comp.pairs
    mask = np.zeros(n_pairs, np.float32)
    mask[: len(comp.pairs)] = 1.0
    return {
        "tokens": tokens,
        "segment_ids": seg,
        "pair_w": pairs[:, 0],
        "pair_l": pairs[:, 1],
        "pair_mask": mask,
        "weight": np.asarray([weight], np.float32),
    }


class _Encode(grain.transforms.Map):
    def __init__(self, fn: Callable[[Any, float], dict[str, np.ndarray]]):
        self.fn = fn

    def map(self, item):
        x, weight = item
        return self.fn(x, weight)


def batches(
    items: Sequence[Any], encode: Callable[[Any, float], dict], batch_size: int, seed: int = 0, train: bool = True
) -> grain.IterDataset:
    """This process's share of global batches of `encode(item, weight)`.

    train: shuffled with `seed`, reshuffled each epoch, repeated. eval: every item once in order, the last
    batch filled with weight-0 copies so shapes stay fixed.
    """
    n_proc = jax.process_count()
    if batch_size % n_proc:
        raise ValueError(f"batch size {batch_size} does not split over {n_proc} processes")
    if not items:
        raise ValueError("no items to batch")
    local = batch_size // n_proc
    if train:
        ds = grain.MapDataset.source([(x, 1.0) for x in items])[jax.process_index() :: n_proc]
        ds = ds.shuffle(seed=seed).repeat()
    else:
        rows = [(x, 1.0) for x in items] + [(items[0], 0.0)] * (-len(items) % batch_size)
        first = jax.process_index() * local  # contiguous blocks of each global batch keep the order
        ds = grain.MapDataset.source(
            [rows[b + first + i] for b in range(0, len(rows), batch_size) for i in range(local)]
        )
    return ds.map(_Encode(encode)).to_iter_dataset(loader.SYNC_READ).batch(local, drop_remainder=True)


NORMS = ("reference", "demonstrations")


def validate(cfg: ml_collections.ConfigDict, command: str) -> None:
    """ConfigError naming the key for an rlhf section that `command` (sft, rm or ppo) cannot run with; the PPO
    settings are checked for ppo only."""
    r = cfg.rlhf
    for key, choices in (("demonstrations", DEMONSTRATIONS), ("comparisons", COMPARISONS), ("prompts", PROMPTS)):
        if r[key] not in choices:
            raise ConfigError(f"config.rlhf.{key}={r[key]!r} is not one of {', '.join(choices)}")
    for key in ("max_prompt_len", "max_response_len", "k", "iterations", "rollout_batch", "minibatch", "ppo_epochs"):
        if r[key] <= 0:
            raise ConfigError(f"config.rlhf.{key}={r[key]} must be positive")
    if r.k < 2:
        raise ConfigError(f"config.rlhf.k={r.k} must be at least 2 (a comparison needs two responses)")
    if r.max_prompt_len + r.max_response_len > config_lib.seq_len(cfg):
        raise ConfigError(
            f"config.rlhf.max_prompt_len + max_response_len = {r.max_prompt_len + r.max_response_len} exceed the "
            f"sequence length {config_lib.seq_len(cfg)} (config.data.seq_len, or model.block_size when 0)"
        )
    if r.temperature <= 0:
        raise ConfigError(f"config.rlhf.temperature={r.temperature} must be > 0 (PPO samples its rollouts)")
    if r.reward_norm not in NORMS:
        raise ConfigError(f"config.rlhf.reward_norm={r.reward_norm!r} is not one of {', '.join(NORMS)}")
    if command == "ppo" and r.rollout_batch % r.minibatch:
        raise ConfigError(
            f"config.rlhf.rollout_batch={r.rollout_batch} is not divisible by rlhf.minibatch={r.minibatch}"
        )
    if not 0.0 <= r.test_fraction < 1.0 or not 0.0 <= r.lam <= 1.0 or not 0.0 <= r.gamma <= 1.0:
        raise ConfigError("config.rlhf.test_fraction must be in [0, 1), rlhf.lam and rlhf.gamma in [0, 1]")
    for key in ("kl_coef", "kl_target", "kl_horizon", "cliprange", "cliprange_value", "ptx_coef", "value_lr"):
        if r[key] < 0:
            raise ConfigError(f"config.rlhf.{key}={r[key]} must be >= 0")
    if r.adaptive_kl and (r.kl_target <= 0 or r.kl_horizon <= 0):
        raise ConfigError("config.rlhf.kl_target and rlhf.kl_horizon must be positive with rlhf.adaptive_kl")
