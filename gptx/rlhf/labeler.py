"""Scorers that stand in for human labelers in offline runs.

A labeler must be something no gptx code controls and that can score any text, so that "the reward model
learned the labeler" and "PPO pleased the labeler" are measurable claims. lm-human-preferences' sentiment
experiment asked humans to prefer positive continuations; here the VADER lexicon (Hutto & Gilbert, 2014;
package `vadersentiment`) plays the human: its compound score in [-1, 1] of the response text.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from gptx.config import ConfigError

Labeler = Callable[[Sequence[str]], np.ndarray]
LABELERS = ("vader",)


def vader() -> Labeler:
    """VADER's compound sentiment of each text, in [-1, 1] (higher = more positive)."""
    try:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    except ImportError as e:
        raise ConfigError(
            "config.rlhf.labeler='vader' needs the vadersentiment package: pip install -e '.[rlhf]'"
        ) from e
    analyzer = SentimentIntensityAnalyzer()
    return lambda texts: np.asarray([analyzer.polarity_scores(t)["compound"] for t in texts], np.float64)


def get(name: str) -> Labeler:
    if name == "vader":
        return vader()
    raise ConfigError(f"config.rlhf.labeler={name!r} is not one of {', '.join(LABELERS)}")


def win_rate(a: np.ndarray, b: np.ndarray) -> float:
    """Share of paired samples where `a` scores above `b`, ties counting half."""
    a, b = np.asarray(a), np.asarray(b)
    return float(np.mean((a > b) + 0.5 * (a == b)))
