"""pvsquant evaluate: joins, tables checked against scipy, outputs, errors, and the HTML in a browser."""
from __future__ import annotations

import csv
import json
import math
import re

import numpy as np
import pytest
from scipy import stats as sps

from pvsquant.cli import main
from pvsquant.cohort.evaluate import CORRELATION_COLUMNS, WILLIAMS_COLUMNS, evaluate_cohort, read_scores
from pvsquant.cohort.stats import williams_test
from pvsquant.errors import InputTableError

from .browser import not_blank, rendered_dom, screenshot

REGIONS = ("centrum_semiovale", "basal_ganglia", "hippocampi")


def make_cohort(tmp_path, n=30, seed=3):
    """visual.tsv and all_counts.tsv of a made-up cohort: GP-Unet tracks rater1 closely, CNN loosely,
    Frangi barely; two subjects only in the scores, one only in the counts."""
    rng = np.random.default_rng(seed)
    scores, counts, truth = [], [], {}
    for i in range(n):
        subject, scanner = f"sub-{i:02d}", ["philips_3T", "siemens_1.5T", "philips_1T"][i % 3]
        for region in REGIONS:
            true = rng.poisson(12)
            r1, r2 = true + rng.normal(0, 1.5), true + rng.normal(0, 2.5)
            model = {"gpunet": 2.0 * true + rng.normal(0, 3), "cnn": 1.5 * true + rng.normal(0, 9),
                     "frangi": rng.poisson(5) + 0.2 * true}
            truth[(subject, region)] = {"rater1": round(r1, 3), "rater2": round(r2, 3),
                                        **{k: round(v, 3) for k, v in model.items()}}
            if i < n - 2:
                counts += [(subject, region, m, f"{v:.3f}") for m, v in model.items()]
            scores.append((subject, {"centrum_semiovale": "CSO", "basal_ganglia": "basal ganglia"}.get(region, region),
                           f"{r1:.3f}", f"{r2:.3f}", scanner, f"age{i}"))
    counts += [("sub-extra", "cso", m, "3") for m in ("gpunet", "cnn", "frangi")]
    counts += [("sub-00", "midbrain", m, "n/a") for m in ("gpunet", "cnn", "frangi")]  # never scored: no gap
    counts = [c for c in counts if c[:2] != ("sub-01", "hippocampi")]  # scored, not counted: a gap
    (tmp_path / "visual.tsv").write_text("subject\tregion\trater1\trater2\tscanner\tnote\n"
                                         + "\n".join("\t".join(r) for r in scores) + "\n")
    (tmp_path / "all_counts.tsv").write_text("subject\tregion\tmodel\tcount\n"
                                             + "\n".join("\t".join(r) for r in counts) + "\n")
    kept = {k: v for k, v in truth.items() if int(k[0][4:]) < n - 2 and k != ("sub-01", "hippocampi")}
    return tmp_path / "visual.tsv", tmp_path / "all_counts.tsv", kept


def read_table(path):
    with open(path) as f:
        return list(csv.DictReader(f, delimiter="\t"))


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    d = tmp_path_factory.mktemp("eval")
    scores, counts, truth = make_cohort(d)
    result = evaluate_cohort(scores, d / "out", counts_path=counts)
    return d / "out", result, truth


def test_tables_have_the_stable_columns_and_every_region_method(evaluated):
    out, _, _ = evaluated
    corr = read_table(out / "table_correlation.tsv")
    assert list(corr[0]) == list(CORRELATION_COLUMNS)
    assert {(r["region"], r["method"]) for r in corr} == {(g, m) for g in REGIONS
                                                          for m in ("gpunet", "cnn", "frangi", "rater2")}
    will = read_table(out / "table_williams.tsv")
    assert list(will[0]) == list(WILLIAMS_COLUMNS)
    assert {(r["region"], r["method_a"], r["method_b"]) for r in will} >= {(g, "gpunet", "cnn") for g in REGIONS}


def test_correlations_match_scipy(evaluated):
    _, result, truth = evaluated
    for row in result["correlation"]:
        pairs = [(v["rater1"], v[row["method"]]) for (s, g), v in truth.items() if g == row["region"]]
        x, y = np.array(pairs).T
        ref = sps.pearsonr(y, x)
        ci = ref.confidence_interval(0.95)
        assert row["n"] == len(x) == (27 if row["region"] == "hippocampi" else 28)
        assert row["pearson_r"] == pytest.approx(ref.statistic, abs=1e-6)
        assert row["p"] == pytest.approx(ref.pvalue, rel=1e-4, abs=1e-300)
        assert (row["ci_low"], row["ci_high"]) == pytest.approx((ci.low, ci.high), abs=1e-6)
        assert row["spearman_rho"] == pytest.approx(sps.spearmanr(y, x).statistic, abs=1e-6)
        assert row["mae"] == pytest.approx(np.mean(np.abs(y - x)), abs=1e-6)
        assert row["bias"] == pytest.approx(np.mean(y - x), abs=1e-6)
        assert row["loa_high"] - row["loa_low"] == pytest.approx(2 * 1.96 * np.std(y - x, ddof=1), abs=1e-6)
    # the made-up cohort is built so that GP-Unet agrees best with rater 1
    by = {(r["region"], r["method"]): r["pearson_r"] for r in result["correlation"]}
    assert all(by[(g, "gpunet")] > by[(g, "cnn")] > by[(g, "frangi")] for g in REGIONS)


def test_bonferroni_and_williams_follow_their_definitions(evaluated):
    _, result, truth = evaluated
    corr = result["correlation"]
    m = sum(not math.isnan(r["p"]) for r in corr)
    assert m == len(corr) == 12
    for row in corr:
        assert row["significant_bonferroni"] == (row["p"] * m <= 0.05)
    for row in result["williams"]:
        x = np.array([[v["rater1"], v[row["method_a"]], v[row["method_b"]]]
                      for (s, g), v in truth.items() if g == row["region"]])
        r = np.corrcoef(x.T)
        assert (row["r_a"], row["r_b"], row["r_ab"]) == pytest.approx((r[0, 1], r[0, 2], r[1, 2]), abs=1e-9)
        assert (row["t"], row["p"]) == pytest.approx(williams_test(r[0, 1], r[0, 2], r[1, 2], len(x)), abs=1e-9)
    assert sum(r["significant_bonferroni"] for r in result["williams"]) >= 1


def test_unmatched_subjects_are_reported_and_extra_columns_kept(evaluated):
    out, result, _ = evaluated
    assert result["cohort"].only_in_scores == ["sub-28", "sub-29"]
    assert result["cohort"].only_in_counts == ["sub-extra"]
    summary = (out / "summary.md").read_text()
    assert "sub-28, sub-29" in summary and "sub-extra" in summary
    assert result["cohort"].incomplete_pairs == ["sub-01/hippocampi"] and "sub-01/hippocampi" in summary
    data = read_table(out / "data.tsv")
    assert len(data) == 28 * 3 - 1 and data[0]["note"].startswith("age") and data[0]["scanner"]
    assert (out / "figure_scatter.png").stat().st_size > 20_000


def test_results_folders_and_synthetic_cases(tmp_path):
    scores, _, truth = make_cohort(tmp_path, n=8)
    folders = []
    for (subject, region), v in truth.items():
        folder = tmp_path / "runs" / subject
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "counts.tsv", "a") as f:
            if f.tell() == 0:
                f.write("region\tmodel\tcount\n")
            f.writelines(f"{region}\t{m}\t{v[m]}\n" for m in ("gpunet", "cnn", "frangi"))
        (folder / "qc.json").write_text(json.dumps({"synthetic": {"description": "made up"}}))
        folders.append(folder)
    result = evaluate_cohort(scores, tmp_path / "eval", results=sorted(set(folders)))
    assert len(result["cohort"].synthetic_subjects) == 6
    assert "SYNTHETIC DEMO DATA" in (tmp_path / "eval" / "summary.md").read_text()
    assert "SYNTHETIC DEMO DATA" in (tmp_path / "eval" / "evaluation.html").read_text()


@pytest.mark.parametrize("content, message", [
    ("subject\tregion\trater2\nsub-1\tcso\t3\n", "missing column(s) rater1"),
    ("subject\tregion\trater1\nsub-1\tcso\tmany\n", "line 2: column 'rater1' holds 'many'"),
    ("subject\tregion\trater1\nsub-1\tcerebellum\t3\n", "unknown region 'cerebellum'"),
    ("subject\tregion\trater1\nsub-1\tcso\t3\nsub-1\tCSO\t4\n", "appears twice"),
])
def test_bad_scores_name_the_file_and_problem(tmp_path, content, message):
    path = tmp_path / "visual.tsv"
    path.write_text(content)
    with pytest.raises(InputTableError, match=re.escape(message)) as info:
        read_scores(path)
    assert str(path) in str(info.value)


def test_cli_evaluate_and_bad_input_leaves_no_output(tmp_path, capsys):
    scores, counts, _ = make_cohort(tmp_path, n=10)
    assert main(["evaluate", "--scores", str(scores), "--counts", str(counts), "--out", str(tmp_path / "e")]) == 0
    assert "Correlation with rater 1" in capsys.readouterr().out
    bad = tmp_path / "bad.tsv"
    bad.write_text("subject\tregion\tmodel\n")
    assert main(["evaluate", "--scores", str(scores), "--counts", str(bad), "--out", str(tmp_path / "f")]) == 1
    assert not (tmp_path / "f").exists()


def test_evaluation_html_in_headless_chromium(evaluated, tmp_path):
    out, _, _ = evaluated
    image = screenshot(out / "evaluation.html", tmp_path / "evaluation.png", height=2400)
    assert not_blank(image) > 0.05
    dom = rendered_dom(out / "evaluation.html", tmp_path)
    table = re.search(r'<table id="correlation"[^>]*>(.*?)</table>', dom, re.S)
    assert table is not None and len(re.findall("<tr>", table.group(1))) == 1 + 12
    assert "<b>" in table.group(1)  # Bonferroni-significant r in bold
