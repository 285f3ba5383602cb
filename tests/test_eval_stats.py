"""Tests for oncocoder.eval.stats (hand-computed cases, NaN handling, edge cases)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from oncocoder.eval.stats import (
    accuracy_coverage_curve,
    bootstrap_ci,
    coverage_at_accuracy,
    expected_calibration_error,
    latency_summary,
    mcnemar_exact,
    paired_bootstrap_diff,
    wilson_interval,
)

NAN = float("nan")


# ---------------------------------------------------------------------------
# bootstrap_ci
# ---------------------------------------------------------------------------


def test_bootstrap_ci_contains_mean_and_is_ordered():
    correct = [1, 0, 1, 1, 0, 1, 1, 1, 0, 1]
    mean, low, high = bootstrap_ci(correct)
    assert mean == pytest.approx(0.7)
    assert 0.0 <= low <= mean <= high <= 1.0
    assert low < high


def test_bootstrap_ci_ignores_nan_rows():
    with_nan = bootstrap_ci([1, NAN, 0, 1, NAN, 1], seed=3)
    without = bootstrap_ci([1, 0, 1, 1], seed=3)
    assert with_nan[0] == pytest.approx(0.75)
    assert with_nan == without


def test_bootstrap_ci_constant_input_gives_degenerate_interval():
    assert bootstrap_ci([1, 1, 1, 1]) == (1.0, 1.0, 1.0)
    assert bootstrap_ci([0, NAN, 0]) == (0.0, 0.0, 0.0)


def test_bootstrap_ci_narrows_with_more_data():
    rng = np.random.default_rng(42)
    small = (rng.random(40) < 0.7).astype(float)
    large = (rng.random(4000) < 0.7).astype(float)
    _, lo_s, hi_s = bootstrap_ci(small, seed=1)
    m_l, lo_l, hi_l = bootstrap_ci(large, seed=1)
    assert lo_l <= m_l <= hi_l
    assert (hi_l - lo_l) < (hi_s - lo_s) / 3  # width ~ 1/sqrt(n): 10x smaller


def test_bootstrap_ci_width_close_to_normal_approximation():
    x = np.array([1.0] * 300 + [0.0] * 200)  # p = 0.6, n = 500
    mean, low, high = bootstrap_ci(x, n_boot=4000, seed=0)
    se = math.sqrt(0.6 * 0.4 / 500)
    assert mean == pytest.approx(0.6)
    assert (high - low) == pytest.approx(2 * 1.959964 * se, rel=0.1)


def test_bootstrap_ci_alpha_controls_width():
    x = [1, 0, 1, 1, 0, 1, 0, 1, 1, 1, 0, 1]
    _, lo90, hi90 = bootstrap_ci(x, alpha=0.10, seed=5)
    _, lo99, hi99 = bootstrap_ci(x, alpha=0.01, seed=5)
    assert lo99 <= lo90 and hi90 <= hi99
    assert (hi99 - lo99) > (hi90 - lo90)


def test_bootstrap_ci_deterministic_for_seed():
    x = np.random.default_rng(0).integers(0, 2, 57)
    assert bootstrap_ci(x, seed=7) == bootstrap_ci(x, seed=7)
    # binary means live on a 1/57 grid, so two seeds may share quantiles;
    # continuous values show that the seed actually drives the resampling
    y = np.random.default_rng(0).random(57)
    assert bootstrap_ci(y, seed=7) == bootstrap_ci(y, seed=7)
    assert bootstrap_ci(y, seed=7)[1:] != bootstrap_ci(y, seed=8)[1:]


def test_bootstrap_ci_does_not_modify_input():
    x = np.array([1.0, NAN, 0.0, 1.0])
    before = x.copy()
    bootstrap_ci(x)
    np.testing.assert_array_equal(x, before)


def test_bootstrap_ci_empty_and_all_nan():
    for empty in ([], [NAN, NAN], np.array([], dtype=float)):
        result = bootstrap_ci(empty)
        assert len(result) == 3
        assert all(math.isnan(v) for v in result)


def test_bootstrap_ci_rejects_bad_arguments():
    with pytest.raises(ValueError):
        bootstrap_ci([1, 0], n_boot=0)
    with pytest.raises(ValueError):
        bootstrap_ci([1, 0], alpha=1.5)
    with pytest.raises(ValueError):
        bootstrap_ci([[1, 0], [0, 1]])


# ---------------------------------------------------------------------------
# paired_bootstrap_diff
# ---------------------------------------------------------------------------


def test_paired_diff_identical_arrays_is_exactly_zero():
    a = np.random.default_rng(1).integers(0, 2, 200).astype(float)
    res = paired_bootstrap_diff(a, a.copy())
    assert res["diff"] == 0.0
    assert res["ci_low"] == 0.0 and res["ci_high"] == 0.0
    assert res["n"] == 200


def test_paired_diff_hand_computed_and_ci_contains_diff():
    a = [1, 1, 1, 0, 1, 1, 0, 1]  # 6/8
    b = [1, 0, 0, 0, 1, 0, 0, 1]  # 3/8
    res = paired_bootstrap_diff(a, b, seed=2)
    assert res["diff"] == pytest.approx(0.375)
    assert res["n"] == 8
    assert res["ci_low"] <= res["diff"] <= res["ci_high"]
    assert res["ci_low"] >= 0.0  # a is never worse than b on any row


def test_paired_diff_pairwise_nan_exclusion():
    a = [1, NAN, 1, 0, 1, 1]
    b = [0, 1, NAN, 0, 1, 0]
    # paired rows: 0, 3, 4, 5 -> a = [1, 0, 1, 1], b = [0, 0, 1, 0]
    res = paired_bootstrap_diff(a, b, seed=4)
    ref = paired_bootstrap_diff([1, 0, 1, 1], [0, 0, 1, 0], seed=4)
    assert res["n"] == 4
    assert res["diff"] == pytest.approx(0.75 - 0.25)
    assert res == ref


def test_paired_diff_is_paired_not_independent():
    # b is a with 5 rows flipped from right to wrong: every row difference is
    # 0 or +1, so a paired resample can never give a negative difference,
    # while independent resampling of the two arrays easily would.
    rng = np.random.default_rng(9)
    a = (rng.random(100) < 0.6).astype(float)
    b = a.copy()
    b[np.flatnonzero(a == 1.0)[:5]] = 0.0
    res = paired_bootstrap_diff(a, b, seed=0)
    assert res["diff"] == pytest.approx(0.05)
    assert res["ci_low"] >= 0.0
    assert res["ci_high"] < 0.15


def test_paired_diff_antisymmetric_and_deterministic():
    rng = np.random.default_rng(3)
    a = rng.integers(0, 2, 80).astype(float)
    b = rng.integers(0, 2, 80).astype(float)
    ab = paired_bootstrap_diff(a, b, seed=11)
    ba = paired_bootstrap_diff(b, a, seed=11)
    assert ab == paired_bootstrap_diff(a, b, seed=11)
    assert ab["diff"] == pytest.approx(-ba["diff"])
    assert ab["ci_low"] == pytest.approx(-ba["ci_high"])
    assert ab["ci_high"] == pytest.approx(-ba["ci_low"])


def test_paired_diff_empty_and_length_mismatch():
    res = paired_bootstrap_diff([], [])
    assert res["n"] == 0
    assert math.isnan(res["diff"]) and math.isnan(res["ci_low"]) and math.isnan(res["ci_high"])
    res = paired_bootstrap_diff([1, NAN], [NAN, 0])
    assert res["n"] == 0 and math.isnan(res["diff"])
    with pytest.raises(ValueError):
        paired_bootstrap_diff([1, 0, 1], [1, 0])


# ---------------------------------------------------------------------------
# mcnemar_exact
# ---------------------------------------------------------------------------


def test_mcnemar_all_discordant_one_way():
    a = [1] * 6 + [1, 0, 1]
    b = [0] * 6 + [1, 0, 1]
    res = mcnemar_exact(a, b)
    assert res["b01"] == 0 and res["b10"] == 6
    assert res["n"] == 9
    assert res["p_value"] == pytest.approx(2 * 0.5**6)
    assert res["p_value"] == pytest.approx(0.03125)


def test_mcnemar_hand_computed_mixed_and_symmetric():
    # b01 = 1, b10 = 4: p = 2 * P(X <= 1), X ~ Bin(5, 1/2) = 2 * 6/32
    a = [0, 1, 1, 1, 1, 1, 0]
    b = [1, 0, 0, 0, 0, 1, 0]
    res = mcnemar_exact(a, b)
    assert (res["b01"], res["b10"], res["n"]) == (1, 4, 7)
    assert res["p_value"] == pytest.approx(12 / 32)
    swapped = mcnemar_exact(b, a)
    assert (swapped["b01"], swapped["b10"]) == (4, 1)
    assert swapped["p_value"] == pytest.approx(res["p_value"])


def test_mcnemar_balanced_discordant_gives_one():
    res = mcnemar_exact([1, 0, 1, 0], [0, 1, 0, 1])
    assert (res["b01"], res["b10"]) == (2, 2)
    assert res["p_value"] == pytest.approx(1.0)


def test_mcnemar_no_discordant_pairs():
    res = mcnemar_exact([1, 0, 1], [1, 0, 1])
    assert (res["b01"], res["b10"], res["n"]) == (0, 0, 3)
    assert res["p_value"] == 1.0


def test_mcnemar_matches_scipy_binomtest_on_random_data():
    rng = np.random.default_rng(12)
    a = rng.integers(0, 2, 300)
    b = rng.integers(0, 2, 300)
    res = mcnemar_exact(a, b)
    b01 = int(np.sum((a == 0) & (b == 1)))
    b10 = int(np.sum((a == 1) & (b == 0)))
    assert (res["b01"], res["b10"]) == (b01, b10)
    assert res["p_value"] == pytest.approx(sps.binomtest(b10, b01 + b10, 0.5).pvalue)


def test_mcnemar_pairwise_nan_exclusion_and_bools():
    a = [True, True, NAN, False, True]
    b = [False, NAN, True, True, True]
    res = mcnemar_exact(a, b)
    # paired rows 0, 3, 4: (1,0) (0,1) (1,1)
    assert (res["b01"], res["b10"], res["n"]) == (1, 1, 3)


def test_mcnemar_empty_and_invalid():
    res = mcnemar_exact([], [])
    assert (res["b01"], res["b10"], res["n"], res["p_value"]) == (0, 0, 0, 1.0)
    with pytest.raises(ValueError):
        mcnemar_exact([1, 0.5], [1, 0])
    with pytest.raises(ValueError):
        mcnemar_exact([1, 0], [1])


# ---------------------------------------------------------------------------
# expected_calibration_error
# ---------------------------------------------------------------------------


def test_ece_perfectly_calibrated_bins_is_zero():
    conf = [0.25] * 4 + [0.75] * 4 + [0.55] * 20
    corr = [1, 0, 0, 0] + [1, 1, 1, 0] + [1] * 11 + [0] * 9
    assert expected_calibration_error(conf, corr) == pytest.approx(0.0, abs=1e-12)


def test_ece_two_bin_hand_computed():
    # bin [0, .5): conf .2, acc .5 -> gap .3;  bin [.5, 1]: conf .8, acc 1 -> gap .2
    conf = [0.2, 0.2, 0.8, 0.8]
    corr = [0, 1, 1, 1]
    assert expected_calibration_error(conf, corr, n_bins=2) == pytest.approx(0.25)


def test_ece_unequal_bin_weights_hand_computed():
    # 10 bins; bin 1: 3 rows conf .15, acc 1/3 -> gap 1/3 - .15
    #          bin 8: 1 row conf .85, acc 0  -> gap .85
    conf = [0.15, 0.15, 0.15, 0.85]
    corr = [1, 0, 0, 0]
    expected = 0.75 * (1 / 3 - 0.15) + 0.25 * 0.85
    assert expected_calibration_error(conf, corr) == pytest.approx(expected)


def test_ece_confidence_one_goes_into_last_bin():
    # Last bin [.9, 1.0] holds 1.0 and the three .95: acc 3/4, conf .9625.
    # (A separate bin for 1.0 would give .25 * 1 + .75 * .05 = .2875.)
    conf = [1.0, 0.95, 0.95, 0.95]
    corr = [0, 1, 1, 1]
    assert expected_calibration_error(conf, corr) == pytest.approx(0.9625 - 0.75)
    assert expected_calibration_error([1.0, 1.0], [1, 0], n_bins=1) == pytest.approx(0.5)


def test_ece_single_bin_is_global_gap_and_nan_ignored():
    conf = [0.9, 0.6, NAN, 0.3, 0.8]
    corr = [1, 1, 1, 0, NAN]
    # rows 0, 1, 3: mean conf .6, acc 2/3
    assert expected_calibration_error(conf, corr, n_bins=1) == pytest.approx(2 / 3 - 0.6)
    assert expected_calibration_error(conf, corr) == pytest.approx(
        expected_calibration_error([0.9, 0.6, 0.3], [1, 1, 0])
    )


def test_ece_empty_and_invalid():
    assert math.isnan(expected_calibration_error([], []))
    assert math.isnan(expected_calibration_error([NAN], [1]))
    with pytest.raises(ValueError):
        expected_calibration_error([1.2], [1])
    with pytest.raises(ValueError):
        expected_calibration_error([0.5], [1], n_bins=0)
    with pytest.raises(ValueError):
        expected_calibration_error([0.5, 0.4], [1])


# ---------------------------------------------------------------------------
# accuracy_coverage_curve / coverage_at_accuracy
# ---------------------------------------------------------------------------


def test_curve_constructed_case():
    conf = [0.6, 0.9, 0.5, 0.8, 0.7]
    corr = [1, 1, 0, 1, 0]
    # sorted desc: .9(1) .8(1) .7(0) .6(1) .5(0)
    curve = accuracy_coverage_curve(conf, corr)
    np.testing.assert_allclose(curve["coverage"], [0.2, 0.4, 0.6, 0.8, 1.0])
    np.testing.assert_allclose(curve["accuracy"], [1.0, 1.0, 2 / 3, 0.75, 0.6])
    np.testing.assert_allclose(curve["threshold"], [0.9, 0.8, 0.7, 0.6, 0.5])


def test_curve_ties_broken_stably_by_row_order():
    curve = accuracy_coverage_curve([0.5, 0.9, 0.5, 0.5], [0, 1, 1, 1])
    # order: row 1, then rows 0, 2, 3 in row order
    np.testing.assert_allclose(curve["accuracy"], [1.0, 0.5, 2 / 3, 0.75])


def test_curve_monotone_properties_random():
    rng = np.random.default_rng(5)
    conf = rng.random(500)
    corr = (rng.random(500) < conf).astype(float)
    corr[::37] = NAN
    curve = accuracy_coverage_curve(conf, corr)
    n = int(np.sum(~np.isnan(corr)))
    cov, acc = curve["coverage"], curve["accuracy"]
    assert cov.shape == acc.shape == (n,)
    assert np.all(np.diff(cov) > 0)
    assert cov[0] == pytest.approx(1 / n) and cov[-1] == pytest.approx(1.0)
    assert np.all(np.diff(curve["threshold"]) <= 0)
    assert np.all((acc >= 0) & (acc <= 1))
    assert acc[-1] == pytest.approx(np.nanmean(corr))


def test_curve_monotone_accuracy_when_confidence_separates():
    # every right row is more confident than every wrong one: accuracy is
    # 1 up to the fraction of right rows, then non-increasing
    conf = np.linspace(0.0, 1.0, 20)
    corr = (conf > 0.62).astype(float)
    acc = accuracy_coverage_curve(conf, corr)["accuracy"]
    assert np.all(np.diff(acc) <= 1e-15)
    k_right = int(corr.sum())
    np.testing.assert_array_equal(acc[:k_right], 1.0)
    assert coverage_at_accuracy(conf, corr, target=1.0) == pytest.approx(k_right / 20)


def test_coverage_at_accuracy_known_answers():
    conf = [0.6, 0.9, 0.5, 0.8, 0.7]
    corr = [1, 1, 0, 1, 0]  # accuracy by coverage: 1, 1, .667, .75, .6
    assert coverage_at_accuracy(conf, corr, target=1.0) == pytest.approx(0.4)
    # non-monotone curve: .6 misses .75 but .8 reaches it -> largest wins
    assert coverage_at_accuracy(conf, corr, target=0.75) == pytest.approx(0.8)
    assert coverage_at_accuracy(conf, corr, target=0.7) == pytest.approx(0.8)
    assert coverage_at_accuracy(conf, corr, target=0.6) == pytest.approx(1.0)


def test_coverage_at_accuracy_exact_target_fraction():
    # 19 right then 1 wrong: accuracy at full coverage is exactly 19/20 = .95
    conf = np.linspace(1.0, 0.05, 20)
    corr = [1] * 19 + [0]
    assert coverage_at_accuracy(conf, corr, target=0.95) == pytest.approx(1.0)
    corr2 = [1] * 18 + [0, 0]  # 18/19 < .95 and 18/20 < .95 -> stops at 18/20
    assert coverage_at_accuracy(conf, corr2, target=0.95) == pytest.approx(18 / 20)


def test_coverage_at_accuracy_never_reached():
    assert coverage_at_accuracy([0.9, 0.8, 0.1], [0, 1, 1], target=0.95) == 0.0
    assert coverage_at_accuracy([0.9, 0.8], [0, 0], target=0.1) == 0.0


def test_curve_and_coverage_empty_and_nan():
    curve = accuracy_coverage_curve([], [])
    assert curve["coverage"].size == 0 and curve["accuracy"].size == 0
    assert math.isnan(coverage_at_accuracy([], []))
    assert math.isnan(coverage_at_accuracy([0.5, NAN], [NAN, 1]))
    # a wrong row with NaN correctness is excluded, not counted as wrong
    assert coverage_at_accuracy([0.9, 0.8, 0.7], [1, NAN, 1], target=1.0) == 1.0


# ---------------------------------------------------------------------------
# latency_summary
# ---------------------------------------------------------------------------


def test_latency_summary_hand_computed():
    res = latency_summary([100, 200, NAN, 300, 400])
    assert res["p50"] == pytest.approx(250.0)
    assert res["p95"] == pytest.approx(385.0)  # 300 + 0.85 * 100
    assert res["mean"] == pytest.approx(250.0)
    assert res["texts_per_second"] == pytest.approx(4.0)
    assert res["n"] == 4


def test_latency_summary_single_value_and_empty():
    res = latency_summary([50.0])
    assert res["p50"] == res["p95"] == res["mean"] == pytest.approx(50.0)
    assert res["texts_per_second"] == pytest.approx(20.0)
    empty = latency_summary([])
    assert empty["n"] == 0
    for key in ("p50", "p95", "mean", "texts_per_second"):
        assert math.isnan(empty[key])
    assert latency_summary([NAN])["n"] == 0


# ---------------------------------------------------------------------------
# wilson_interval
# ---------------------------------------------------------------------------


def test_wilson_known_values():
    low, high = wilson_interval(5, 10)
    assert low == pytest.approx(0.236593, abs=1e-6)
    assert high == pytest.approx(0.763407, abs=1e-6)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.277533), abs=1e-6)
    assert wilson_interval(10, 10) == pytest.approx((0.722467, 1.0), abs=1e-6)


def test_wilson_endpoints_solve_score_equation():
    # Wilson bounds are the p with (phat - p)^2 = z^2 p (1 - p) / n
    k, n, alpha = 81, 263, 0.1
    z = sps.norm.ppf(1 - alpha / 2)
    low, high = wilson_interval(k, n, alpha=alpha)
    phat = k / n
    for p in (low, high):
        assert (phat - p) ** 2 == pytest.approx(z * z * p * (1 - p) / n, rel=1e-9)
    assert low < phat < high


def test_wilson_edge_cases():
    assert all(math.isnan(v) for v in wilson_interval(0, 0))
    with pytest.raises(ValueError):
        wilson_interval(5, 3)
    with pytest.raises(ValueError):
        wilson_interval(1, 3, alpha=0.0)
