"""Agreement between automated PVS counts and visual scores.

Pearson r with its Fisher-z confidence interval, Spearman rho, intraclass correlation,
mean absolute error, Bland-Altman bias and limits of agreement, Williams' test for two
dependent correlations sharing the reference, and the Bonferroni correction: the
statistics used to compare methods with a rater in Dubost, Dünnwald et al., "Automated
quantification of enlarged perivascular spaces in clinical brain MRI across sites".

Pairs where either value is NaN are dropped. Where a statistic is undefined (too few
pairs, a constant input) it is NaN; no exception or RuntimeWarning is raised for that.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats as scipy_stats

ICC_FORMS = ("1,1", "A,1", "C,1")
LOA_Z = 1.96

_NAN = float("nan")


@dataclass(frozen=True)
class Agreement:
    """Agreement of one method with the reference, over ``n`` complete pairs."""

    n: int
    pearson_r: float
    ci_low: float
    ci_high: float
    p: float
    spearman_rho: float
    icc: float
    mae: float
    bias: float
    loa_low: float
    loa_high: float


def _complete_pairs(x: ArrayLike, y: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Both inputs as 1-D float arrays, without the pairs where either value is NaN."""
    x_arr = np.asarray(x, dtype=float)
    y_arr = np.asarray(y, dtype=float)
    if x_arr.ndim != 1 or y_arr.ndim != 1:
        raise ValueError(f"expected two 1-D sequences, got shapes {x_arr.shape} and {y_arr.shape}")
    if x_arr.shape != y_arr.shape:
        raise ValueError(f"x and y must have the same length, got {x_arr.size} and {y_arr.size}")
    keep = ~(np.isnan(x_arr) | np.isnan(y_arr))
    return x_arr[keep], y_arr[keep]


def _is_constant(values: np.ndarray) -> bool:
    return bool(values.size == 0 or np.all(values == values[0]))


def _correlation_defined(x: np.ndarray, y: np.ndarray) -> bool:
    return x.size >= 3 and not _is_constant(x) and not _is_constant(y)


def _pearson_r(x: np.ndarray, y: np.ndarray) -> float:
    x_centred = x - x.mean()
    y_centred = y - y.mean()
    r = np.dot(x_centred / np.linalg.norm(x_centred), y_centred / np.linalg.norm(y_centred))
    return float(np.clip(r, -1.0, 1.0))


def pearson_ci(r: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Confidence interval of Pearson's r by the Fisher z transform (NaN when n < 4)."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    if n < 4 or not math.isfinite(r):
        return _NAN, _NAN
    z_crit = scipy_stats.norm.ppf(0.5 + confidence / 2.0)
    half_width = z_crit / math.sqrt(n - 3)
    with np.errstate(divide="ignore"):
        z = np.arctanh(r)
    return float(np.tanh(z - half_width)), float(np.tanh(z + half_width))


def _pearson_p(r: float, n: int) -> float:
    """Two-sided p of r = 0 by the t test with n - 2 degrees of freedom."""
    if abs(r) == 1.0:
        return 0.0
    t = r * math.sqrt((n - 2) / (1.0 - r * r))
    return float(2.0 * scipy_stats.t.sf(abs(t), n - 2))


def pearson(x: ArrayLike, y: ArrayLike) -> tuple[float, float, float, float]:
    """Pearson r, its 95% confidence interval (Fisher z) and two-sided p, as scipy.stats.pearsonr."""
    x_arr, y_arr = _complete_pairs(x, y)
    if not _correlation_defined(x_arr, y_arr):
        return _NAN, _NAN, _NAN, _NAN
    n = x_arr.size
    r = _pearson_r(x_arr, y_arr)
    ci_low, ci_high = pearson_ci(r, n)
    return r, ci_low, ci_high, _pearson_p(r, n)


def spearman(x: ArrayLike, y: ArrayLike) -> float:
    """Spearman's rho: Pearson r of the ranks, ties given their mean rank."""
    x_arr, y_arr = _complete_pairs(x, y)
    if not _correlation_defined(x_arr, y_arr):
        return _NAN
    return _pearson_r(scipy_stats.rankdata(x_arr), scipy_stats.rankdata(y_arr))


def icc(ratings: np.ndarray, form: str = "A,1") -> float:
    """Single-measure intraclass correlation of ``ratings`` (n_subjects, k_raters).

    Forms (McGraw & Wong 1996; Shrout & Fleiss 1979 in brackets):
    "1,1" one-way random effects [ICC(1,1)]; "A,1" two-way, absolute agreement [ICC(2,1)];
    "C,1" two-way, consistency [ICC(3,1)]. Subjects with a NaN rating are dropped.
    NaN with fewer than 2 subjects or raters, or when the ratings do not vary.
    """
    if form not in ICC_FORMS:
        raise ValueError(f"unknown ICC form {form!r}; expected one of {ICC_FORMS}")
    table = np.asarray(ratings, dtype=float)
    if table.ndim != 2:
        raise ValueError(f"ratings must be 2-D (n_subjects, k_raters), got shape {table.shape}")
    table = table[~np.isnan(table).any(axis=1)]
    n_subjects, k_raters = table.shape
    if n_subjects < 2 or k_raters < 2:
        return _NAN
    grand_mean = table.mean()
    ss_total = float(((table - grand_mean) ** 2).sum())
    ss_subjects = k_raters * float(((table.mean(axis=1) - grand_mean) ** 2).sum())
    ss_raters = n_subjects * float(((table.mean(axis=0) - grand_mean) ** 2).sum())
    ms_subjects = ss_subjects / (n_subjects - 1)
    ms_raters = ss_raters / (k_raters - 1)
    ms_error = (ss_total - ss_subjects - ss_raters) / ((n_subjects - 1) * (k_raters - 1))
    ms_within = (ss_total - ss_subjects) / (n_subjects * (k_raters - 1))
    if form == "1,1":
        numerator = ms_subjects - ms_within
        denominator = ms_subjects + (k_raters - 1) * ms_within
    else:
        numerator = ms_subjects - ms_error
        denominator = ms_subjects + (k_raters - 1) * ms_error
        if form == "A,1":
            denominator += k_raters * (ms_raters - ms_error) / n_subjects
    if not denominator > 0.0:
        return _NAN
    return float(numerator / denominator)


def bland_altman(method: ArrayLike, reference: ArrayLike) -> tuple[float, float, float]:
    """Bias (mean of method - reference) and the 95% limits of agreement, bias -/+ 1.96 SD."""
    method_arr, reference_arr = _complete_pairs(method, reference)
    differences = method_arr - reference_arr
    if differences.size == 0:
        return _NAN, _NAN, _NAN
    bias = float(differences.mean())
    if differences.size < 2:
        return bias, _NAN, _NAN
    half_width = LOA_Z * float(differences.std(ddof=1))
    return bias, bias - half_width, bias + half_width


def agreement(method: ArrayLike, reference: ArrayLike) -> Agreement:
    """All agreement statistics of ``method`` against ``reference`` (e.g. rater 1's scores)."""
    method_arr, reference_arr = _complete_pairs(method, reference)
    r, ci_low, ci_high, p = pearson(method_arr, reference_arr)
    if _correlation_defined(method_arr, reference_arr):
        rho = spearman(method_arr, reference_arr)
        icc_agreement = icc(np.column_stack([reference_arr, method_arr]), "A,1")
    else:
        rho = icc_agreement = _NAN
    mae = float(np.abs(method_arr - reference_arr).mean()) if method_arr.size else _NAN
    bias, loa_low, loa_high = bland_altman(method_arr, reference_arr)
    return Agreement(n=int(method_arr.size), pearson_r=r, ci_low=ci_low, ci_high=ci_high, p=p,
                     spearman_rho=rho, icc=icc_agreement, mae=mae, bias=bias, loa_low=loa_low, loa_high=loa_high)


def williams_test(r_a: float, r_b: float, r_ab: float, n: int) -> tuple[float, float]:
    """Williams' t (T2) for r_a = corr(reference, a) vs r_b = corr(reference, b), given r_ab = corr(a, b).

    Steiger (1980), Psychological Bulletin 87(2), eq. 7; df = n - 3. Returns (t, two-sided p);
    (nan, nan) when n < 4 or the correlations leave no positive denominator.
    """
    if n < 4 or not all(math.isfinite(r) for r in (r_a, r_b, r_ab)):
        return _NAN, _NAN
    det_r = 1.0 - r_a ** 2 - r_b ** 2 - r_ab ** 2 + 2.0 * r_a * r_b * r_ab
    r_mean = (r_a + r_b) / 2.0
    radicand = 2.0 * (n - 1) / (n - 3) * det_r + r_mean ** 2 * (1.0 - r_ab) ** 3
    if not radicand > 0.0:
        return _NAN, _NAN
    t = (r_a - r_b) * math.sqrt((n - 1) * (1.0 + r_ab)) / math.sqrt(radicand)
    return t, float(2.0 * scipy_stats.t.sf(abs(t), n - 3))


def bonferroni(p_values: ArrayLike, alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Bonferroni-adjusted p, min(1, p * m), and whether each is significant (adjusted p <= alpha).

    m counts the non-NaN p values; a NaN p stays NaN and is not significant.
    """
    p = np.asarray(p_values, dtype=float)
    valid = ~np.isnan(p)
    n_tests = int(valid.sum())
    adjusted = np.full(p.shape, np.nan)
    adjusted[valid] = np.minimum(1.0, p[valid] * n_tests)
    significant = np.zeros(p.shape, dtype=bool)
    significant[valid] = adjusted[valid] <= alpha
    return adjusted, significant
