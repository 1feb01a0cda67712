"""End-to-end demo cohort: the real example plus synthetic cases with known counts, evaluated,
fine-tuned and each case reported (pvsquant demo --cohort)."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from pvsquant.cli import main
from pvsquant.types import REGION_CODES

pytestmark = pytest.mark.slow
N_CASES = 6


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("cohort") / "demo"
    assert main(["demo", "--cohort", str(N_CASES), "--out", str(out)]) == 0
    return out


def table(path):
    lines = [line for line in path.read_text().splitlines() if not line.startswith("#")]
    return list(csv.DictReader(lines, delimiter="\t"))


def test_scores_are_the_injected_counts(cohort):
    scores = table(cohort / "visual.tsv")
    assert len(scores) == N_CASES * len(REGION_CODES)
    assert (cohort / "visual.tsv").read_text().startswith("# SYNTHETIC DEMO SCORES")
    for row in scores:
        qc = json.loads((cohort / "results" / row["subject"] / "qc.json").read_text())
        assert qc["synthetic"]["injected"][row["region"]] == int(row["rater1"])
        assert qc["synthetic"]["scanner"] == row["scanner"]
        assert "Synthetic case" in (cohort / "results" / row["subject"] / "report.html").read_text()
    assert "Synthetic case" not in (cohort / "results" / "sub-example" / "report.html").read_text()


def test_counts_follow_the_injected_pvs(cohort):
    """More injected PVS, higher GP-Unet count in the basal ganglia (where the counting benchmark's
    slope is 0.76). Measured r of these 6 cases: 0.91 (a CI run) and 0.81 (in the 12-case demo).
    Frangi is not asserted: with two cases per simulated scanner its count follows the scanner as
    much as the injection (r 0.46 and 0.65 in the same runs), and the anatomy stage is not
    bit-reproducible, so the injected positions move between runs."""
    rows = [r for r in table(cohort / "evaluation" / "data.tsv") if r["region"] == "basal_ganglia"]
    injected = np.array([float(r["rater1"]) for r in rows])
    counts = np.array([float(r["gpunet"]) for r in rows])
    assert np.corrcoef(injected, counts)[0, 1] > 0.5


def test_evaluation_and_finetune_outputs(cohort):
    evaluation = cohort / "evaluation"
    for name in ("table_correlation.tsv", "table_williams.tsv", "summary.md", "figure_scatter.png", "evaluation.html"):
        assert (evaluation / name).is_file(), name
    summary = (evaluation / "summary.md").read_text()
    assert "SYNTHETIC DEMO DATA" in summary and "sub-example" in summary  # the example has no scores: reported
    assert len(table(evaluation / "table_correlation.tsv")) == len(REGION_CODES) * 4
    finetuned = json.loads((cohort / "finetuned_models" / "finetune.json").read_text())
    assert set(finetuned["regions"]) == set(REGION_CODES)
    oof = table(cohort / "finetuned_models" / "finetune_out_of_fold.tsv")
    assert len(oof) == N_CASES * len(REGION_CODES) * 2 and {r["subject"] for r in oof} == {
        f"synth-{i:02d}" for i in range(1, N_CASES + 1)}
    assert len(list((cohort / "finetuned_models").glob("*.pt"))) == 8
