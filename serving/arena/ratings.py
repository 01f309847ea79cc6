"""Ratings from pairwise votes: online Elo in vote order, and a Bradley-Terry fit with bootstrap intervals.

Pure numpy (no Ray, no SQLite): the arena feeds it the stored votes, the tests simulated ones. A vote is a
``Comparison(left, right, choice)`` with ``choice`` one of ``CHOICES``. Its score for the left model is 1 (left),
0 (right) or 0.5 (tie). "both bad" says neither image is good, not which is better: by default (``both_bad="tie"``)
it rates as a tie, as LMSYS's Chatbot Arena counts "both are bad"; ``both_bad="ignore"`` leaves it out of both
ratings. Either way the leaderboard counts it.

- Elo (Elo 1978): ``E_a = 1 / (1 + 10 ** ((R_b - R_a) / scale))``, ``R_a += k * (S_a - E_a)``, ``R_b`` the mirror,
  applied vote by vote in the order the votes were cast, so it depends on that order.
- Bradley-Terry: ``P(i beats j) = p_i / (p_i + p_j)``, fitted to all votes at once (ties as half a win each) with
  Hunter's MM algorithm (Hunter 2004, "MM algorithms for generalized Bradley-Terry models"), reported on the Elo
  scale, ``initial + scale * log10(p_i)``, with the geometric mean of ``p`` fixed at 1 so that the ratings average
  ``initial``. ``prior_ties`` virtual ties between every pair keep the fit finite when a model has never won (or
  never lost) and pull models with few votes toward the mean. It does not depend on vote order.
- Bootstrap: votes resampled with replacement ``num_bootstrap`` times (``bootstrap_seed``), BT refitted on each,
  percentile intervals at ``confidence``; intervals are relative to the mean rating, as the fit is.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

CHOICES = ("left", "right", "tie", "both_bad")
BOTH_BAD_POLICIES = ("tie", "ignore")
_SCORES = {"left": 1.0, "right": 0.0, "tie": 0.5}


@dataclasses.dataclass(frozen=True)
class Comparison:
    """One vote: the model shown left, the one shown right, and the voter's choice."""

    left: str
    right: str
    choice: str


@dataclasses.dataclass(frozen=True)
class Standing:
    """One model's row of the leaderboard."""

    name: str
    bt_rating: float
    ci_low: float | None
    ci_high: float | None
    elo: float
    num_votes: int
    wins: int
    losses: int
    ties: int
    both_bad: int


def left_score(choice: str, both_bad: str = "tie") -> float | None:
    """The left model's score for a choice; ``None`` when the vote does not count for ratings."""
    if choice not in CHOICES:
        raise ValueError(f"choice must be one of {CHOICES}, got {choice!r}")
    if both_bad not in BOTH_BAD_POLICIES:
        raise ValueError(f"both_bad must be one of {BOTH_BAD_POLICIES}, got {both_bad!r}")
    if choice == "both_bad":
        return 0.5 if both_bad == "tie" else None
    return _SCORES[choice]


def encode(
    comparisons: Sequence[Comparison], models: Sequence[str], both_bad: str = "tie"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rated votes as arrays in vote order: left index, right index, left score (votes that do not rate dropped)."""
    index = {name: i for i, name in enumerate(models)}
    rows = []
    for comparison in comparisons:
        for name in (comparison.left, comparison.right):
            if name not in index:
                raise ValueError(f"vote for model {name!r}, which is not among {list(models)}")
        score = left_score(comparison.choice, both_bad)
        if score is not None:
            rows.append((index[comparison.left], index[comparison.right], score))
    if not rows:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0)
    left, right, score = zip(*rows, strict=True)
    return np.array(left, dtype=np.int64), np.array(right, dtype=np.int64), np.array(score, dtype=np.float64)


def elo_update(
    rating_a: float, rating_b: float, score_a: float, *, k_factor: float, scale: float = 400.0
) -> tuple[float, float]:
    """Both ratings after one game in which ``a`` scored ``score_a`` (1 win, 0.5 tie, 0 loss)."""
    expected_a = 1.0 / (1.0 + 10.0 ** ((rating_b - rating_a) / scale))
    delta = k_factor * (score_a - expected_a)
    return rating_a + delta, rating_b - delta


def elo_history(
    comparisons: Sequence[Comparison],
    models: Sequence[str],
    *,
    k_factor: float,
    initial_rating: float,
    scale: float = 400.0,
    both_bad: str = "tie",
) -> np.ndarray:
    """Elo ratings ``[num_rated_votes + 1, num_models]``: row 0 the initial ratings, row ``t`` after vote ``t``."""
    left, right, score = encode(comparisons, models, both_bad)
    ratings = np.full(len(models), float(initial_rating))
    history = [ratings.copy()]
    for a, b, s in zip(left.tolist(), right.tolist(), score.tolist(), strict=True):
        ratings[a], ratings[b] = elo_update(ratings[a], ratings[b], s, k_factor=k_factor, scale=scale)
        history.append(ratings.copy())
    return np.stack(history)


def bradley_terry(
    left: np.ndarray,
    right: np.ndarray,
    score: np.ndarray,
    num_models: int,
    *,
    weights: np.ndarray | None = None,
    prior_ties: float = 1.0,
    tolerance: float = 1e-10,
    max_iterations: int = 10_000,
) -> np.ndarray:
    """Bradley-Terry log10-strengths ``[num_models]`` (mean 0) by MM; ``weights`` count each vote (bootstrap)."""
    weights = np.ones(len(score)) if weights is None else np.asarray(weights, dtype=np.float64)
    wins = np.zeros((num_models, num_models))
    np.add.at(wins, (left, right), weights * score)
    np.add.at(wins, (right, left), weights * (1.0 - score))
    wins += 0.5 * prior_ties * (1.0 - np.eye(num_models))
    games = wins + wins.T
    total_wins = wins.sum(axis=1)
    if np.any(total_wins <= 0) or np.any(games.sum(axis=1) - total_wins <= 0):
        raise ValueError(
            "a model has never won or never lost, so its Bradley-Terry strength is infinite: set prior_ties > 0"
        )
    strength = np.ones(num_models)
    for _ in range(max_iterations):
        updated = total_wins / (games / (strength[:, None] + strength[None, :])).sum(axis=1)
        updated /= math.exp(np.log(updated).mean())
        change = np.abs(np.log(updated) - np.log(strength)).max()
        strength = updated
        if change < tolerance:
            break
    return np.log10(strength)


def bootstrap_intervals(
    left: np.ndarray,
    right: np.ndarray,
    score: np.ndarray,
    num_models: int,
    *,
    num_resamples: int,
    seed: int,
    confidence: float,
    prior_ties: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile intervals of the BT log10-strengths over ``num_resamples`` resamplings of the votes."""
    rng = np.random.default_rng(seed)
    num_votes = len(score)
    fits = np.empty((num_resamples, num_models))
    for resample in range(num_resamples):
        weights = np.bincount(rng.integers(0, num_votes, num_votes), minlength=num_votes).astype(np.float64)
        fits[resample] = bradley_terry(left, right, score, num_models, weights=weights, prior_ties=prior_ties)
    tail = 100.0 * (1.0 - confidence) / 2.0
    return np.percentile(fits, tail, axis=0), np.percentile(fits, 100.0 - tail, axis=0)


def leaderboard(
    comparisons: Sequence[Comparison],
    models: Sequence[str],
    *,
    k_factor: float = 32.0,
    initial_rating: float = 1000.0,
    scale: float = 400.0,
    both_bad: str = "tie",
    prior_ties: float = 1.0,
    num_bootstrap: int = 200,
    bootstrap_seed: int = 0,
    confidence: float = 0.95,
) -> list[Standing]:
    """Every model's standing, best Bradley-Terry rating first; intervals are ``None`` without rated votes."""
    models = list(models)
    left, right, score = encode(comparisons, models, both_bad)
    elo = elo_history(
        comparisons, models, k_factor=k_factor, initial_rating=initial_rating, scale=scale, both_bad=both_bad
    )[-1]
    strength = bradley_terry(left, right, score, len(models), prior_ties=prior_ties)
    low = high = None
    if len(score) and num_bootstrap > 0:
        low, high = bootstrap_intervals(
            left,
            right,
            score,
            len(models),
            num_resamples=num_bootstrap,
            seed=bootstrap_seed,
            confidence=confidence,
            prior_ties=prior_ties,
        )
    counts = {name: dict.fromkeys(("num_votes", "wins", "losses", "ties", "both_bad"), 0) for name in models}
    for comparison in comparisons:
        for side, name in (("left", comparison.left), ("right", comparison.right)):
            row = counts[name]
            row["num_votes"] += 1
            if comparison.choice in ("tie", "both_bad"):
                row["ties" if comparison.choice == "tie" else "both_bad"] += 1
            else:
                row["wins" if comparison.choice == side else "losses"] += 1
    standings = [
        Standing(
            name=name,
            bt_rating=float(initial_rating + scale * strength[i]),
            ci_low=None if low is None else float(initial_rating + scale * low[i]),
            ci_high=None if high is None else float(initial_rating + scale * high[i]),
            elo=float(elo[i]),
            **counts[name],
        )
        for i, name in enumerate(models)
    ]
    return sorted(standings, key=lambda standing: (-standing.bt_rating, standing.name))
