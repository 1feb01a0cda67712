from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import stats as scipy_stats

from pvsquant.cohort.stats import (
    Agreement,
    agreement,
    bland_altman,
    bonferroni,
    icc,
    pearson,
    pearson_ci,
    williams_test,
)

# Shrout & Fleiss (1979), Psychological Bulletin 86(2):420-428, Table 2: 6 targets (rows) x 4 judges (columns).
SHROUT_FLEISS = np.array([[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]], float)


def _sample(seed: int, slope: float, n: int = 40) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    return x, slope * x + rng.normal(size=n)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("slope", [0.0, 0.3, 2.0, -1.0])
def test_pearson_matches_scipy(seed, slope):
    x, y = _sample(seed, slope)
    r, ci_low, ci_high, p = pearson(x, y)
    expected = scipy_stats.pearsonr(x, y)
    assert r == pytest.approx(expected.statistic, rel=1e-12, abs=1e-14)
    assert p == pytest.approx(expected.pvalue, rel=1e-8)
    expected_ci = expected.confidence_interval(0.95)
    assert (ci_low, ci_high) == pytest.approx((expected_ci.low, expected_ci.high), rel=1e-12, abs=1e-14)


@pytest.mark.parametrize("confidence", [0.8, 0.99])
def test_pearson_ci_other_levels_match_scipy(confidence):
    x, y = _sample(7, 0.5, n=25)
    expected = scipy_stats.pearsonr(x, y).confidence_interval(confidence)
    r = scipy_stats.pearsonr(x, y).statistic
    assert pearson_ci(r, 25, confidence) == pytest.approx((expected.low, expected.high), rel=1e-12)
    with pytest.raises(ValueError, match=r"confidence"):
        pearson_ci(r, 25, 1.5)


@pytest.mark.parametrize("seed", range(4))
def test_spearman_matches_scipy_with_ties(seed):
    rng = np.random.default_rng(seed)
    visual = rng.integers(0, 5, size=50).astype(float)  # visual scores: many ties
    counts = visual * 3 + rng.poisson(2.0, size=50)
    expected = scipy_stats.spearmanr(counts, visual).statistic
    assert agreement(counts, visual).spearman_rho == pytest.approx(expected, rel=1e-12)


def test_icc_reproduces_shrout_fleiss_table_4():
    """Shrout & Fleiss (1979), Psychological Bulletin 86(2):420-428, Table 4 (data of their Table 2):
    ICC(1,1) = .17, ICC(2,1) = .29, ICC(3,1) = .71. The same data and values are the worked example of
    R psych::ICC and DescTools::ICC ("example from Shrout and Fleiss (1979)"); MedCalc's ICC manual uses it too."""
    assert round(icc(SHROUT_FLEISS, "1,1"), 2) == 0.17
    assert round(icc(SHROUT_FLEISS, "A,1"), 2) == 0.29
    assert round(icc(SHROUT_FLEISS, "C,1"), 2) == 0.71
    assert icc(SHROUT_FLEISS) == icc(SHROUT_FLEISS, "A,1")


def test_icc_against_mean_squares_written_out():
    """Two-way ANOVA by explicit sums; Shrout & Fleiss (1979) Table 3 gives BMS 11.24, WMS 6.26, JMS 32.49, EMS 1.02."""
    n, k = SHROUT_FLEISS.shape
    grand = sum(sum(row) for row in SHROUT_FLEISS) / (n * k)
    row_means = [sum(row) / k for row in SHROUT_FLEISS]
    col_means = [sum(SHROUT_FLEISS[i][j] for i in range(n)) / n for j in range(k)]
    bms = k * sum((m - grand) ** 2 for m in row_means) / (n - 1)
    jms = n * sum((m - grand) ** 2 for m in col_means) / (k - 1)
    wms = sum((SHROUT_FLEISS[i][j] - row_means[i]) ** 2 for i in range(n) for j in range(k)) / (n * (k - 1))
    ems = sum((SHROUT_FLEISS[i][j] - row_means[i] - col_means[j] + grand) ** 2
              for i in range(n) for j in range(k)) / ((n - 1) * (k - 1))
    assert [round(v, 2) for v in (bms, wms, jms, ems)] == [11.24, 6.26, 32.49, 1.02]
    assert icc(SHROUT_FLEISS, "1,1") == pytest.approx((bms - wms) / (bms + (k - 1) * wms), rel=1e-12)
    assert icc(SHROUT_FLEISS, "A,1") == pytest.approx(
        (bms - ems) / (bms + (k - 1) * ems + k * (jms - ems) / n), rel=1e-12)
    assert icc(SHROUT_FLEISS, "C,1") == pytest.approx((bms - ems) / (bms + (k - 1) * ems), rel=1e-12)


def test_icc_perfect_agreement_offset_and_edge_cases():
    subjects = np.array([1.0, 4.0, 2.0, 8.0, 5.0])
    assert icc(np.column_stack([subjects, subjects]), "A,1") == pytest.approx(1.0)
    shifted = np.column_stack([subjects, subjects + 3.0])  # consistent but not in absolute agreement
    assert icc(shifted, "C,1") == pytest.approx(1.0)
    assert icc(shifted, "A,1") < 0.9
    with_nan = np.vstack([SHROUT_FLEISS, [np.nan, 1.0, 2.0, 3.0]])
    assert icc(with_nan, "A,1") == pytest.approx(icc(SHROUT_FLEISS, "A,1"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(icc(np.full((5, 2), 3.0), "A,1"))
        assert math.isnan(icc(SHROUT_FLEISS[:1], "A,1"))
    with pytest.raises(ValueError, match=r"form"):
        icc(SHROUT_FLEISS, "2,1")
    with pytest.raises(ValueError, match=r"2-D"):
        icc(subjects)


def test_agreement_icc_is_the_two_rater_absolute_agreement_icc():
    method, reference = _sample(3, 1.5, n=30)
    expected = icc(np.column_stack([reference, method]), "A,1")
    assert agreement(method, reference).icc == pytest.approx(expected)
    assert icc(np.column_stack([method, reference]), "A,1") == pytest.approx(expected)  # symmetric in the raters


def test_williams_test_reproduces_howell_example():
    """Howell, Statistical Methods for Psychology (6th ed., p. 262): r12 = .80, r13 = .72, r23 = .89, N = 26.
    Published result as reproduced by B. Weaver's SPSS syntax Williams1959.sps on the MRC CBU statistics wiki
    (https://imaging.mrc-cbu.cam.ac.uk/statswiki/FAQ/Will): t = 1.361, df = 23, two-sided p = .187."""
    t, p = williams_test(0.80, 0.72, 0.89, 26)
    assert round(t, 3) == 1.361
    assert round(p, 3) == 0.187
    t_swapped, p_swapped = williams_test(0.72, 0.80, 0.89, 26)
    assert (t_swapped, p_swapped) == pytest.approx((-t, p))


def _steiger_z1(r_a: float, r_b: float, r_ab: float, n: int) -> float:
    """Steiger's (1980) Z1* from Fisher-transformed correlations: an alternative large-sample test."""
    r_mean = (r_a + r_b) / 2
    covariance = (r_ab * (1 - 2 * r_mean ** 2) - 0.5 * r_mean ** 2 * (1 - 2 * r_mean ** 2 - r_ab ** 2)) / (
        1 - r_mean ** 2) ** 2
    return (math.atanh(r_a) - math.atanh(r_b)) * math.sqrt(n - 3) / math.sqrt(2 - 2 * covariance)


@pytest.mark.parametrize("r_a, r_b, r_ab, n", [(0.50, 0.46, 0.6, 2000), (0.30, 0.20, 0.4, 5000), (0.7, 0.68, 0.8, 800)])
def test_williams_test_close_to_steiger_z1_for_large_n(r_a, r_b, r_ab, n):
    t, _ = williams_test(r_a, r_b, r_ab, n)
    assert t == pytest.approx(_steiger_z1(r_a, r_b, r_ab, n), rel=0.02)


def test_williams_test_holds_its_size_under_the_null():
    """Monte Carlo: reference, a and b with corr(ref, a) = corr(ref, b) = 0.6, corr(a, b) = 0.5; n = 30."""
    rng = np.random.default_rng(12345)
    covariance = np.array([[1.0, 0.6, 0.6], [0.6, 1.0, 0.5], [0.6, 0.5, 1.0]])
    samples = rng.multivariate_normal(np.zeros(3), covariance, size=(3000, 30))
    p_values = []
    for sample in samples:
        corr = np.corrcoef(sample, rowvar=False)
        p_values.append(williams_test(corr[0, 1], corr[0, 2], corr[1, 2], 30)[1])
    rejection_rate = np.mean(np.array(p_values) < 0.05)
    assert 0.035 < rejection_rate < 0.065


def test_williams_test_undefined_cases_are_nan():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert all(math.isnan(v) for v in williams_test(0.8, 0.7, 0.9, 3))
        assert all(math.isnan(v) for v in williams_test(1.0, 1.0, 1.0, 50))
        assert all(math.isnan(v) for v in williams_test(0.5, 0.4, -1.0, 50))
        assert all(math.isnan(v) for v in williams_test(float("nan"), 0.4, 0.3, 50))
    t, p = williams_test(0.5, 0.5, 0.3, 50)
    assert t == 0.0 and p == pytest.approx(1.0)


def test_bland_altman_and_mae_by_hand():
    method = [3.0, 5.0, 1.0, 8.0]
    reference = [2.0, 5.0, 2.0, 6.0]
    # differences 1, 0, -1, 2: mean 0.5; squared deviations 0.25 + 0.25 + 2.25 + 2.25 = 5, SD = sqrt(5 / 3)
    half_width = 1.96 * math.sqrt(5 / 3)
    assert bland_altman(method, reference) == pytest.approx((0.5, 0.5 - half_width, 0.5 + half_width))
    result = agreement(method, reference)
    assert (result.bias, result.loa_low, result.loa_high) == pytest.approx((0.5, 0.5 - half_width, 0.5 + half_width))
    assert result.mae == pytest.approx(1.0)  # (1 + 0 + 1 + 2) / 4


def test_bonferroni_by_hand_with_nan():
    adjusted, significant = bonferroni([0.01, np.nan, 0.02, 0.4])  # m = 3
    np.testing.assert_allclose(adjusted, [0.03, np.nan, 0.06, 1.0])
    assert significant.tolist() == [True, False, False, False]
    adjusted, significant = bonferroni([0.004, 0.02], alpha=0.01)
    np.testing.assert_allclose(adjusted, [0.008, 0.04])
    assert significant.tolist() == [True, False]
    adjusted, significant = bonferroni([np.nan])
    assert np.isnan(adjusted).all() and not significant.any()


def test_nan_pairs_are_dropped():
    method, reference = _sample(11, 1.0, n=20)
    method_with_nan = np.append(method, [np.nan, 4.0, np.nan])
    reference_with_nan = np.append(reference, [1.0, np.nan, np.nan])
    result = agreement(method_with_nan, reference_with_nan)
    assert result == agreement(method, reference)
    assert result.n == 20
    assert pearson(method_with_nan, reference_with_nan) == pearson(method, reference)
    assert bland_altman(method_with_nan, reference_with_nan) == bland_altman(method, reference)


def test_small_samples_give_nan_correlations_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        two = agreement([1.0, 3.0, np.nan], [2.0, 5.0, 7.0])
        assert two.n == 2
        assert all(math.isnan(v) for v in (two.pearson_r, two.ci_low, two.ci_high, two.p, two.spearman_rho, two.icc))
        assert (two.mae, two.bias) == pytest.approx((1.5, -1.5))
        assert not math.isnan(two.loa_low)
        one = agreement([2.0], [1.0])
        assert (one.n, one.mae, one.bias) == (1, 1.0, 1.0)
        assert math.isnan(one.loa_low) and math.isnan(one.loa_high)
        empty = agreement([np.nan], [1.0])
        assert empty.n == 0 and math.isnan(empty.mae) and math.isnan(empty.bias)
        three = agreement([1.0, 2.0, 4.0], [1.0, 3.0, 3.5])
        assert not math.isnan(three.pearson_r) and not math.isnan(three.p) and not math.isnan(three.icc)
        assert math.isnan(three.ci_low) and math.isnan(three.ci_high)
        assert three.p == pytest.approx(scipy_stats.pearsonr([1.0, 2.0, 4.0], [1.0, 3.0, 3.5]).pvalue)


def test_constant_input_gives_nan_correlations_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = agreement([0.0, 0.0, 0.0, 0.0, 0.0], [1.0, 2.0, 0.0, 3.0, 1.0])
        assert all(math.isnan(v) for v in (result.pearson_r, result.ci_low, result.ci_high, result.p,
                                            result.spearman_rho, result.icc))
        assert result.mae == pytest.approx(1.4) and result.bias == pytest.approx(-1.4)
        assert all(math.isnan(v) for v in pearson([1.0, 2.0, 3.0, 4.0], [5.0, 5.0, 5.0, 5.0]))


def test_perfect_correlation_has_zero_p_and_degenerate_ci():
    x = np.arange(10.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r, ci_low, ci_high, p = pearson(x, 2 * x + 1)
    assert (r, ci_low, ci_high, p) == pytest.approx((1.0, 1.0, 1.0, 0.0))


def test_length_mismatch_raises():
    with pytest.raises(ValueError, match=r"same length"):
        agreement([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(ValueError, match=r"same length"):
        pearson([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(ValueError, match=r"same length"):
        bland_altman([1.0], [1.0, 2.0])


def test_agreement_is_frozen():
    result = agreement([1.0, 2.0, 3.0, 5.0], [1.0, 2.5, 2.5, 6.0])
    assert isinstance(result, Agreement)
    with pytest.raises(AttributeError):
        result.n = 3  # type: ignore[misc]
