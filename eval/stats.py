"""Statistics for the evaluation: pure functions over numpy arrays.

The evaluation compares coding *modes* (retrieval, base, ft, rag, rag+ft,
thinking) on the same test rows.  Every mode gives per row

* a correctness value: 1 (right), 0 (wrong) or NaN where the row has no gold
  code for the target; NaN rows are left out (pairwise, where two arrays are
  compared), and
* a confidence in [0, 1].

All functions accept array-likes (lists, bool arrays, ...), convert them to
1-D float arrays, never modify their inputs and are deterministic for a given
``seed``.  Empty input (or input that is empty after removing NaN rows) gives
NaN statistics rather than an error.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import stats as _sps

__all__ = [
    "bootstrap_ci",
    "paired_bootstrap_diff",
    "mcnemar_exact",
    "expected_calibration_error",
    "accuracy_coverage_curve",
    "coverage_at_accuracy",
    "latency_summary",
    "wilson_interval",
]

# Upper bound on the number of resampled indices held in memory at once.
_MAX_BOOT_ELEMENTS = 4_000_000
# Tolerance for comparing an accuracy k/n to a target given as a decimal.
_ACC_TOL = 1e-12


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def _as_1d(x: Any, name: str) -> np.ndarray:
    """Return ``x`` as a new 1-D float array (``None`` becomes NaN)."""
    arr = np.array(x, dtype=float)  # copy: inputs are never modified
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    return arr


def _same_length(a: np.ndarray, b: np.ndarray, na: str, nb: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{na} and {nb} differ in length: {a.shape[0]} != {b.shape[0]}")


def _check_boot_args(n_boot: int, alpha: float) -> None:
    if int(n_boot) != n_boot or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha!r}")


def _check_binary(x: np.ndarray, name: str) -> None:
    """``x`` (NaN already removed) must only hold 0 and 1."""
    if x.size and not np.all((x == 0.0) | (x == 1.0)):
        raise ValueError(f"{name} must contain only 0, 1 or NaN")


def _bootstrap_means(x: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """Means of ``n_boot`` resamples (with replacement) of the non-empty ``x``.

    Resamples are drawn in chunks of at most ``_MAX_BOOT_ELEMENTS`` indices; the
    chunk size depends only on ``len(x)``, so the result is a deterministic
    function of ``(x, n_boot, seed)``.
    """
    n = x.shape[0]
    rng = np.random.default_rng(seed)
    out = np.empty(int(n_boot), dtype=float)
    chunk = max(1, _MAX_BOOT_ELEMENTS // n)
    for start in range(0, int(n_boot), chunk):
        stop = min(int(n_boot), start + chunk)
        idx = rng.integers(0, n, size=(stop - start, n))
        out[start:stop] = x[idx].mean(axis=1)
    return out


def _percentile_ci(boot: np.ndarray, alpha: float) -> tuple[float, float]:
    low, high = np.quantile(boot, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(low), float(high)


def _valid_conf_correct(confidence: Any, correct: Any) -> tuple[np.ndarray, np.ndarray]:
    """Aligned (confidence, correct) with rows where either is NaN removed."""
    conf = _as_1d(confidence, "confidence")
    corr = _as_1d(correct, "correct")
    _same_length(conf, corr, "confidence", "correct")
    keep = ~(np.isnan(conf) | np.isnan(corr))
    conf, corr = conf[keep], corr[keep]
    if conf.size and (conf.min() < 0.0 or conf.max() > 1.0):
        raise ValueError("confidence must lie in [0, 1]")
    return conf, corr


# ---------------------------------------------------------------------------
# accuracy and comparisons between modes
# ---------------------------------------------------------------------------


def bootstrap_ci(
    correct: Any, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float, float]:
    """Accuracy and its percentile bootstrap confidence interval.

    Args:
        correct: per-row correctness (1/0, NaN rows are ignored).
        n_boot: number of bootstrap resamples.
        alpha: 1 - confidence level (0.05 gives a 95 % interval).
        seed: seed of the ``numpy.random.default_rng`` generator.

    Returns:
        ``(mean, ci_low, ci_high)``; ``(nan, nan, nan)`` if no non-NaN row.
    """
    _check_boot_args(n_boot, alpha)
    x = _as_1d(correct, "correct")
    x = x[~np.isnan(x)]
    if x.size == 0:
        return (math.nan, math.nan, math.nan)
    boot = _bootstrap_means(x, n_boot, seed)
    low, high = _percentile_ci(boot, alpha)
    return (float(x.mean()), low, high)


def paired_bootstrap_diff(
    a: Any, b: Any, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0
) -> dict[str, float | int]:
    """Difference in accuracy of two modes on the same rows, paired bootstrap CI.

    Rows where ``a`` or ``b`` is NaN are dropped (pairwise exclusion).  Each
    bootstrap resample draws row indices once and uses them for both modes,
    i.e. it resamples the per-row differences ``a - b``.

    Returns:
        ``{"diff", "ci_low", "ci_high", "n"}``: ``diff`` is mean(a) - mean(b)
        over the ``n`` paired rows and ``(ci_low, ci_high)`` its percentile
        bootstrap interval.  With ``n == 0`` the three floats are NaN.
        Identical inputs give exactly ``diff == ci_low == ci_high == 0``.
    """
    _check_boot_args(n_boot, alpha)
    xa = _as_1d(a, "a")
    xb = _as_1d(b, "b")
    _same_length(xa, xb, "a", "b")
    keep = ~(np.isnan(xa) | np.isnan(xb))
    d = xa[keep] - xb[keep]
    n = int(d.size)
    if n == 0:
        return {"diff": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n": 0}
    boot = _bootstrap_means(d, n_boot, seed)
    low, high = _percentile_ci(boot, alpha)
    return {"diff": float(d.mean()), "ci_low": low, "ci_high": high, "n": n}


def mcnemar_exact(a: Any, b: Any) -> dict[str, float | int]:
    """Exact two-sided McNemar test for two modes on the same rows.

    Rows where ``a`` or ``b`` is NaN are dropped.  The discordant pairs are
    ``b01`` (a wrong, b right) and ``b10`` (a right, b wrong); the p-value is
    that of the two-sided exact binomial test of ``b10`` successes out of
    ``b01 + b10`` trials with p = 0.5 (``scipy.stats.binomtest``), and 1.0
    when there is no discordant pair.

    Returns:
        ``{"b01", "b10", "n", "p_value"}`` with ``n`` the number of paired rows.

    Raises:
        ValueError: if a non-NaN value is not 0 or 1, or the lengths differ.
    """
    xa = _as_1d(a, "a")
    xb = _as_1d(b, "b")
    _same_length(xa, xb, "a", "b")
    keep = ~(np.isnan(xa) | np.isnan(xb))
    xa, xb = xa[keep], xb[keep]
    _check_binary(xa, "a")
    _check_binary(xb, "b")
    b01 = int(np.count_nonzero((xa == 0.0) & (xb == 1.0)))
    b10 = int(np.count_nonzero((xa == 1.0) & (xb == 0.0)))
    m = b01 + b10
    p_value = 1.0 if m == 0 else float(_sps.binomtest(b10, m, 0.5).pvalue)
    return {"b01": b01, "b10": b10, "n": int(xa.size), "p_value": min(1.0, p_value)}


# ---------------------------------------------------------------------------
# confidence: calibration and selective prediction
# ---------------------------------------------------------------------------


def expected_calibration_error(confidence: Any, correct: Any, n_bins: int = 10) -> float:
    """Expected calibration error with equal-width bins on [0, 1].

    Bin ``i`` is ``[i/n_bins, (i+1)/n_bins)``; a confidence of exactly 1.0
    goes into the last bin.  ECE = sum over non-empty bins of
    ``(bin size / n) * |accuracy(bin) - mean confidence(bin)|``.
    Rows where confidence or correctness is NaN are ignored.

    Returns:
        The ECE in [0, 1], or NaN if no row is left.

    Raises:
        ValueError: on a confidence outside [0, 1] or ``n_bins < 1``.
    """
    if int(n_bins) != n_bins or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    n_bins = int(n_bins)
    conf, corr = _valid_conf_correct(confidence, correct)
    n = conf.size
    if n == 0:
        return math.nan
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.clip(np.searchsorted(edges, conf, side="right") - 1, 0, n_bins - 1)
    counts = np.bincount(bins, minlength=n_bins).astype(float)
    sum_conf = np.bincount(bins, weights=conf, minlength=n_bins)
    sum_corr = np.bincount(bins, weights=corr, minlength=n_bins)
    nonempty = counts > 0
    gap = np.abs(sum_corr[nonempty] - sum_conf[nonempty]) / counts[nonempty]
    return float(np.sum(counts[nonempty] / n * gap))


def accuracy_coverage_curve(confidence: Any, correct: Any) -> dict[str, np.ndarray]:
    """Accuracy of the k most confident rows as a function of coverage k/n.

    Rows where confidence or correctness is NaN are dropped; the remaining
    ``n`` rows are sorted by confidence descending, ties kept in row order
    (stable sort).

    Returns:
        ``{"coverage", "accuracy", "threshold"}``, arrays of length ``n``:
        ``coverage[k-1] = k/n``, ``accuracy[k-1]`` = accuracy of the top k rows
        and ``threshold[k-1]`` = confidence of the k-th row.  Empty arrays if
        ``n == 0``.
    """
    conf, corr = _valid_conf_correct(confidence, correct)
    n = conf.size
    if n == 0:
        empty = np.empty(0, dtype=float)
        return {"coverage": empty, "accuracy": empty.copy(), "threshold": empty.copy()}
    order = np.argsort(-conf, kind="stable")
    k = np.arange(1, n + 1, dtype=float)
    return {
        "coverage": k / n,
        "accuracy": np.cumsum(corr[order]) / k,
        "threshold": conf[order],
    }


def coverage_at_accuracy(confidence: Any, correct: Any, target: float = 0.95) -> float:
    """Largest coverage at which the most confident rows reach ``target`` accuracy.

    Uses :func:`accuracy_coverage_curve`: the largest ``k/n`` with
    ``accuracy(top k) >= target`` (up to 1e-12, so e.g. 19/20 meets 0.95).
    The curve need not be monotone; the largest such k counts.

    Returns:
        Coverage in (0, 1], 0.0 if no k reaches the target, NaN if no row.
    """
    curve = accuracy_coverage_curve(confidence, correct)
    if curve["coverage"].size == 0:
        return math.nan
    ok = np.flatnonzero(curve["accuracy"] >= target - _ACC_TOL)
    if ok.size == 0:
        return 0.0
    return float(curve["coverage"][ok[-1]])


# ---------------------------------------------------------------------------
# latency and single proportions
# ---------------------------------------------------------------------------


def latency_summary(ms: Any) -> dict[str, float | int]:
    """Summary of per-text latencies in milliseconds (NaN ignored).

    Returns:
        ``{"p50", "p95", "mean", "texts_per_second", "n"}``; percentiles use
        numpy's default linear interpolation, ``texts_per_second`` is
        ``1000 / mean`` (inf for a mean of 0).  All floats NaN if no value.
    """
    x = _as_1d(ms, "ms")
    x = x[~np.isnan(x)]
    if x.size == 0:
        return {"p50": math.nan, "p95": math.nan, "mean": math.nan,
                "texts_per_second": math.nan, "n": 0}
    p50, p95 = np.percentile(x, [50.0, 95.0])
    mean = float(x.mean())
    tps = math.inf if mean == 0.0 else 1000.0 / mean
    return {"p50": float(p50), "p95": float(p95), "mean": mean,
            "texts_per_second": float(tps), "n": int(x.size)}


def wilson_interval(k: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score interval ``(low, high)`` for ``k`` successes out of ``n``.

    Returns ``(nan, nan)`` for ``n == 0``.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha!r}")
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"need 0 <= k <= n, got k={k!r}, n={n!r}")
    if n == 0:
        return (math.nan, math.nan)
    z = float(_sps.norm.ppf(1.0 - alpha / 2.0))
    p = k / n
    denom = 1.0 + z * z / n
    center = (p + z * z / (2.0 * n)) / denom
    half = z * math.sqrt(p * (1.0 - p) / n + z * z / (4.0 * n * n)) / denom
    low = 0.0 if k == 0 else max(0.0, center - half)
    high = 1.0 if k == n else min(1.0, center + half)
    return (float(low), float(high))
