"""Arena rating maths without Ray: Elo against hand-computed updates, Bradley-Terry against a closed form and against
simulated votes from known strengths, bootstrap intervals."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from serving.arena.ratings import Comparison, bradley_terry, elo_history, encode, leaderboard

TRUE_RATINGS = {"alpha": 1150.0, "bravo": 1050.0, "charlie": 950.0, "delta": 850.0}  # mean 1000, 100 apart


def simulate(num_votes: int, seed: int, tie_rate: float = 0.0) -> list[Comparison]:
    """Votes from a Bradley-Terry model on the Elo scale: P(left wins) = 1 / (1 + 10 ** ((R_right - R_left) / 400))."""
    rng = random.Random(seed)
    names = list(TRUE_RATINGS)
    votes = []
    for _ in range(num_votes):
        left, right = rng.sample(names, 2)
        if rng.random() < tie_rate:
            votes.append(Comparison(left, right, "tie"))
            continue
        p_left = 1.0 / (1.0 + 10.0 ** ((TRUE_RATINGS[right] - TRUE_RATINGS[left]) / 400.0))
        votes.append(Comparison(left, right, "left" if rng.random() < p_left else "right"))
    return votes


def test_elo_and_bradley_terry():
    # --- Elo, K = 32, start 1000, by hand: E_a = 1 / (1 + 10 ** ((R_b - R_a) / 400)), R_a += 32 * (S_a - E_a).
    votes = [
        Comparison("A", "B", "left"),  # E_A = 0.5 -> A 1016, B 984
        Comparison("C", "A", "right"),  # E_A = 1/(1+10**(-16/400)) = 0.523013 -> A 1031.2637, C 984.7363
        Comparison("B", "C", "tie"),  # E_B = 1/(1+10**(0.7363/400)) = 0.498940 -> B 984.0339, C 984.7024
        Comparison("C", "A", "both_bad"),  # a tie: E_C = 1/(1+10**(46.5613/400)) = 0.433157 -> C 986.8339, A 1029.1322
    ]
    history = elo_history(votes, ["A", "B", "C"], k_factor=32, initial_rating=1000)
    expected = [
        [1000.0, 1000.0, 1000.0],
        [1016.0, 984.0, 1000.0],
        [1031.2637, 984.0, 984.7363],
        [1031.2637, 984.0339, 984.7024],
        [1029.1322, 984.0339, 986.8339],
    ]
    np.testing.assert_allclose(history, expected, atol=1e-4)
    # "both bad" left out of the ratings: the last vote changes nothing.
    ignored = elo_history(votes, ["A", "B", "C"], k_factor=32, initial_rating=1000, both_bad="ignore")
    np.testing.assert_allclose(ignored[-1], expected[3], atol=1e-4)
    assert len(ignored) == 4
    # K scales each step: K = 16 halves the first update.
    assert elo_history(votes[:1], ["A", "B"], k_factor=16, initial_rating=1500)[-1].tolist() == [1508.0, 1492.0]
    board = {s.name: s for s in leaderboard(votes, ["A", "B", "C"], num_bootstrap=0)}
    assert round(board["A"].elo, 4) == 1029.1322 and round(board["C"].elo, 4) == 986.8339
    assert (board["A"].wins, board["A"].losses, board["A"].ties, board["A"].both_bad) == (2, 0, 0, 1)
    assert (board["B"].wins, board["B"].losses, board["B"].ties, board["B"].num_votes) == (0, 1, 1, 2)

    # --- Bradley-Terry, two models, no prior: the MLE has p_A / p_B = wins_A / wins_B (a tie is half a win each).
    # A beats B 3 times, loses once, ties once: 3.5 / 1.5, so A - B = 400 * log10(3.5 / 1.5) = 147.19, mean 1000.
    two = [Comparison("A", "B", c) for c in ("left", "left", "right", "tie")] + [Comparison("B", "A", "right")]
    fit = {s.name: s.bt_rating for s in leaderboard(two, ["A", "B"], prior_ties=0.0, num_bootstrap=0)}
    assert fit["A"] == pytest.approx(1000 + 200 * math.log10(3.5 / 1.5), abs=1e-6)
    assert fit["B"] == pytest.approx(1000 - 200 * math.log10(3.5 / 1.5), abs=1e-6)

    # --- Simulated arena: 4,000 votes from known strengths, 200 bootstrap resamples.
    names = list(TRUE_RATINGS)
    shuffled = ["charlie", "alpha", "delta", "bravo"]  # registration order must not matter
    standings = leaderboard(simulate(4000, seed=1), shuffled, num_bootstrap=200, bootstrap_seed=0)
    assert [s.name for s in standings] == names  # the true order, best first
    for standing in standings:
        truth = TRUE_RATINGS[standing.name]
        assert abs(standing.bt_rating - truth) < 20, (standing.name, standing.bt_rating, truth)
        assert standing.ci_low < standing.bt_rating < standing.ci_high
        assert standing.ci_low <= truth <= standing.ci_high, (standing.name, standing.ci_low, standing.ci_high, truth)
        assert 10 < standing.ci_high - standing.ci_low < 60  # about +-2 standard errors of ~1,000 games each
    for better, worse in zip(standings, standings[1:], strict=False):
        assert better.ci_low > worse.ci_high  # 100 points apart with 4,000 votes: separated
    assert sum(s.num_votes for s in standings) == 2 * 4000
    # Elo on the same votes also ranks the best and the worst right.
    elo = {s.name: s.elo for s in standings}
    assert max(elo, key=elo.get) == "alpha" and min(elo, key=elo.get) == "delta"

    # Fewer votes: wider intervals. Same seed: same intervals; another seed: others.
    few = leaderboard(simulate(300, seed=2), names, num_bootstrap=200, bootstrap_seed=0)
    width = np.mean([s.ci_high - s.ci_low for s in few]) / np.mean([s.ci_high - s.ci_low for s in standings])
    assert width > 2.5  # ~sqrt(4000 / 300) = 3.7
    assert few == leaderboard(simulate(300, seed=2), names, num_bootstrap=200, bootstrap_seed=0)
    other = leaderboard(simulate(300, seed=2), names, num_bootstrap=200, bootstrap_seed=1)
    assert [s.ci_low for s in other] != [s.ci_low for s in few]
    assert [s.bt_rating for s in other] == [s.bt_rating for s in few]  # the fit itself is not random


def test_bradley_terry_ignores_vote_order_and_elo_does_not():
    votes = simulate(600, seed=3, tie_rate=0.2)
    names = list(TRUE_RATINGS)
    reordered = list(votes)
    random.Random(0).shuffle(reordered)
    first = leaderboard(votes, names, num_bootstrap=0)
    second = leaderboard(reordered, names, num_bootstrap=0)
    np.testing.assert_allclose([s.bt_rating for s in first], [s.bt_rating for s in second], atol=1e-6)
    assert max(abs(a.elo - b.elo) for a, b in zip(first, second, strict=True)) > 1.0
    # Swapping sides and the choice with them is the same vote.
    mirrored = [Comparison(v.right, v.left, {"left": "right", "right": "left"}.get(v.choice, v.choice)) for v in votes]
    np.testing.assert_allclose(
        [s.bt_rating for s in leaderboard(mirrored, names, num_bootstrap=0)], [s.bt_rating for s in first], atol=1e-6
    )


def test_bradley_terry_needs_a_prior_when_a_model_never_won():
    votes = [Comparison("A", "B", "left"), Comparison("A", "B", "left")]
    left, right, score = encode(votes, ["A", "B"])
    with pytest.raises(ValueError, match="prior_ties"):
        bradley_terry(left, right, score, 2, prior_ties=0.0)
    strength = bradley_terry(left, right, score, 2, prior_ties=1.0)  # 2.5 : 0.5 -> log10(5) apart
    assert strength[0] - strength[1] == pytest.approx(math.log10(5.0), abs=1e-8)
    # A model without votes sits at the mean; no votes at all: no intervals.
    board = {s.name: s for s in leaderboard(votes, ["A", "B", "C"], num_bootstrap=50)}
    assert board["C"].num_votes == 0 and board["C"].elo == 1000.0 and board["C"].ci_low is not None
    empty = leaderboard([], ["A", "B"])
    assert all(s.bt_rating == pytest.approx(1000.0) and s.ci_low is None for s in empty)
    with pytest.raises(ValueError, match="not among"):
        leaderboard([Comparison("A", "Z", "left")], ["A", "B"])
