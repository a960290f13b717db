"""Experiments: configuration, deterministic A/B buckets, the Thompson-sampling bandit and the
significance of a difference between two arms."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from flywheel.events import pseudonymise
from flywheel.settings import SettingsError, load_settings
from online_models.experiments import (
    ArmCounts,
    ThompsonBandit,
    assign,
    bucket,
    parse_experiment,
    prob_to_beat,
    wilson_interval,
    z_test,
)

KEY = "unit-test-key"
USERS = [pseudonymise(f"user-{i}", KEY) for i in range(20_000)]


# --- configuration ------------------------------------------------------------------------------
def test_compact_and_json_forms_are_the_same_experiment() -> None:
    compact = parse_experiment("mf-vs-pop:bandit:online_mf=3,trending=1:home,cart")
    as_json = parse_experiment(
        '{"name": "mf-vs-pop", "mode": "bandit", "arms": {"online_mf": 3, "trending": 1},'
        ' "scenes": ["home", "cart"]}'
    )
    assert compact == as_json
    assert compact is not None
    assert (compact.control, compact.weights) == ("online_mf", (0.75, 0.25))
    assert compact.reward == "click"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("Bad Name:ab:online_mf=1,trending=1", "experiment name"),
        ("x:abtest:online_mf=1,trending=1", "mode must be one of"),
        ("x:ab:online_mf=1", "expected 2..8 distinct arms"),
        ("x:ab:online_mf=0,trending=1", "must be > 0"),
        ("x:ab:online_mf=lots,trending=1", "must be a number"),
        ("x:ab:online_mf=1,trending=1:checkout", "scenes must be"),
        ("x:ab", "expected NAME:MODE"),
        ('{"name": "x", "mode": "ab", "arms": {"online_mf": 1, "trending": 1}, "k": 1}', "unknown"),
        ('{"name": "x", "mode": "ab", "arms": {"online_mf": 1, "trending": 1}, "reward": "view"}',
         "reward must be"),
        ('{"name": "x"', "invalid JSON"),
    ],
)  # fmt: skip
def test_a_bad_experiment_is_refused_with_a_reason(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_experiment(text, strategies=("online_mf", "trending"))


def test_the_setting_is_validated_at_start_up_naming_the_variable() -> None:
    assert load_settings().experiment_spec is None  # off by default: today's behaviour
    with pytest.raises(SettingsError, match=r"FLYWHEEL_EXPERIMENT.*unknown arm 'popular'"):
        load_settings(experiment="x:ab:online_mf=1,popular=1")
    spec = load_settings(experiment="x:ab:online_mf=1,trending=1").experiment_spec
    assert spec is not None and spec.arms == ("online_mf", "trending")


# --- A/B buckets --------------------------------------------------------------------------------
def test_bucketing_is_deterministic_and_keyed() -> None:
    experiment = parse_experiment("home-mf:ab:online_mf=1,trending=1")
    assert experiment is not None
    first = [assign(experiment, user, KEY).arm for user in USERS[:500]]
    assert first == [assign(experiment, user, KEY).arm for user in USERS[:500]]
    other_key = [assign(experiment, user, "another-key").arm for user in USERS[:500]]
    assert first != other_key


def test_buckets_are_balanced_and_follow_the_weights() -> None:
    for weights in ((1, 1), (4, 1)):
        experiment = parse_experiment(f"w:ab:online_mf={weights[0]},trending={weights[1]}")
        assert experiment is not None
        counts = Counter(assign(experiment, user, KEY).arm for user in USERS)
        share = counts["online_mf"] / len(USERS)
        expected = weights[0] / sum(weights)
        sd = math.sqrt(expected * (1 - expected) / len(USERS))
        assert abs(share - expected) < 4 * sd, (weights, share)
        assert {a.propensity for a in (assign(experiment, u, KEY) for u in USERS[:50])} == set(
            experiment.weights
        )


def test_two_experiments_bucket_users_independently() -> None:
    a = np.array([bucket(user, "exp-a", KEY) < 0.5 for user in USERS])
    b = np.array([bucket(user, "exp-b", KEY) < 0.5 for user in USERS])
    both = float(np.mean(a & b))
    assert abs(both - 0.25) < 4 * math.sqrt(0.25 * 0.75 / len(USERS))


# --- Thompson sampling --------------------------------------------------------------------------
def test_the_bandit_favours_the_better_arm_on_bernoulli_feedback() -> None:
    rates = np.array([0.04, 0.08])
    world = np.random.default_rng(7)
    bandit = ThompsonBandit(2, seed=11)
    pulls = np.zeros(2, dtype=int)
    for _ in range(3000):
        arm = bandit.choose()
        pulls[arm] += 1
        bandit.update(arm, int(world.random() < rates[arm]), 1)
    assert pulls[1] > 0.7 * pulls.sum(), pulls
    assert pulls[0] > 0, "the worse arm was still explored"
    assert bandit.propensities()[1] > 0.9


def test_propensities_sum_to_one_and_match_the_thompson_draws() -> None:
    bandit = ThompsonBandit(3, seed=3)
    for arm, (clicks, shown) in enumerate([(30, 1000), (38, 1000), (5, 100)]):
        bandit.update(arm, clicks, shown)
    p = bandit.propensities()
    assert p.sum() == pytest.approx(1.0, abs=1e-12)
    draws = 40_000
    freq = np.bincount([bandit.choose() for _ in range(draws)], minlength=3) / draws
    assert np.all(np.abs(freq - p) < 4 * np.sqrt(p * (1 - p) / draws) + 1e-3), (freq, p)


def test_propensities_of_equal_and_of_very_unequal_arms() -> None:
    equal = ThompsonBandit.from_counts([ArmCounts(1000, 50)] * 4).propensities()
    assert equal == pytest.approx([0.25] * 4, abs=1e-3)
    far = ThompsonBandit.from_counts([ArmCounts(100_000, 1000), ArmCounts(100_000, 9000)])
    assert far.propensities() == pytest.approx([0.0, 1.0], abs=1e-3)
    by_purchase = ThompsonBandit.from_counts(
        [ArmCounts(1000, 300, 10, 1), ArmCounts(1000, 10, 10, 60)], reward="purchase"
    )
    assert by_purchase.propensities()[1] > 0.99


# --- significance -------------------------------------------------------------------------------
def test_z_test_matches_a_hand_computed_case() -> None:
    # 200/1000 vs 250/1000: pooled p = 450/2000 = 0.225, se = sqrt(0.225 * 0.775 * 2/1000)
    # = 0.0186748, z = 0.05 / 0.0186748 = 2.67740, two-sided p = 2 * (1 - Phi(2.6774)) = 0.00742
    test = z_test(200, 1000, 250, 1000)
    assert test.diff == pytest.approx(0.05)
    assert test.z == pytest.approx(2.67740, abs=1e-4)
    assert test.p_value == pytest.approx(0.00742, abs=1e-5)
    assert z_test(250, 1000, 200, 1000).z == pytest.approx(-test.z)
    assert z_test(0, 0, 5, 10).p_value == 1.0
    assert z_test(0, 10, 0, 10).p_value == 1.0


def test_wilson_interval_matches_a_hand_computed_case() -> None:
    # 50/1000, z = 1.959964, z^2 = 3.841459: centre = (0.05 + z^2/2000) / (1 + z^2/1000)
    # = 0.0517220, half = z * sqrt(0.05 * 0.95 / 1000 + z^2 / 4e6) / (1 + z^2/1000) = 0.0135918
    low, high = wilson_interval(50, 1000)
    assert (low, high) == pytest.approx((0.0381302, 0.0653138), abs=1e-6)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert wilson_interval(0, 20)[0] == pytest.approx(0.0, abs=1e-12)
    assert wilson_interval(20, 20)[1] == pytest.approx(1.0, abs=1e-12)


def test_probability_to_beat_agrees_with_monte_carlo() -> None:
    rng = np.random.default_rng(5)
    a = rng.beta(1 + 40, 1 + 960, 400_000)
    b = rng.beta(1 + 55, 1 + 945, 400_000)
    assert prob_to_beat(40, 1000, 55, 1000) == pytest.approx(float(np.mean(b > a)), abs=3e-3)
    assert prob_to_beat(55, 1000, 40, 1000) == pytest.approx(1 - prob_to_beat(40, 1000, 55, 1000))


@pytest.mark.parametrize(
    ("alpha", "beta"),
    [
        ([2, 1], [50, 3]),
        ([31, 40], [971, 962]),
        ([3001, 3301], [97001, 96701]),
        ([5, 6, 7], [99] * 3),
    ],
)
def test_propensities_match_an_independent_quadrature(alpha: list[int], beta: list[int]) -> None:
    # reference: P_i = E_{x ~ Beta_i}[prod_j F_j(x)] on 20,000 quantiles of arm i (a different
    # rule, on the inverse incomplete beta, than the implementation's grid of pdfs)
    from scipy import special

    u = (np.arange(20_000) + 0.5) / 20_000
    reference = []
    for i in range(len(alpha)):
        x = special.betaincinv(alpha[i], beta[i], u)
        others = [special.betainc(alpha[j], beta[j], x) for j in range(len(alpha)) if j != i]
        reference.append(float(np.mean(np.prod(others, axis=0))))
    bandit = ThompsonBandit(len(alpha))
    bandit.alpha, bandit.beta = np.array(alpha, float), np.array(beta, float)
    assert bandit.propensities() == pytest.approx(reference, abs=1e-4)
