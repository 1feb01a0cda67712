"""report.html: content from the output folder, and what a real browser shows."""
from __future__ import annotations

import json
import re

import pytest

from pvsquant.reporting.report import build_report, potter_category, write_report
from pvsquant.types import REGION_CODES

from .browser import not_blank, rendered_dom, screenshot


@pytest.fixture(scope="module")
def run_output(phantom_run):
    return phantom_run[0]


@pytest.mark.parametrize("count, category", [(None, None), (0.0, 0), (0.4, 0), (0.6, 1), (10.0, 1), (10.4, 1),
                                             (11.0, 2), (20.0, 2), (21.0, 3), (40.0, 3), (40.6, 4), (300.0, 4)])
def test_potter_bands(count, category):
    assert potter_category(count) == category


def test_report_holds_the_counts_flags_and_embedded_figures(run_output):
    text = build_report(run_output)
    qc = json.loads((run_output / "qc.json").read_text())
    table = re.search(r'<table id="counts">(.*?)</table>', text, re.S).group(1)
    for row in qc["counts"]:
        assert f"{row['count']:.{0 if row['model'] == 'frangi' else 1}f}" in table
    for region in REGION_CODES:
        assert region.replace("_", " ") in table
    assert f'class="status {qc["status"]}"' in text
    for flag in qc["flags"]:
        assert flag["code"] in text
    sources = re.findall(r"src='([^']*)'", text)
    assert len(sources) == 5 and all(s.startswith("data:image/png;base64,") for s in sources)  # self-contained
    assert "sub-07" in text and "t2.nii.gz" in text
    assert re.search(r"basal_ganglia_gpunet [0-9a-f]{12}", text)  # weights identified by their hash


def test_report_marks_a_synthetic_case(run_output, tmp_path):
    qc = json.loads((run_output / "qc.json").read_text())
    qc["synthetic"] = {"description": "12 PVS injected per region"}
    (tmp_path / "qc.json").write_text(json.dumps(qc))
    text = write_report(tmp_path).read_text()
    assert "id='synthetic'" in text and "12 PVS injected" in text


def test_report_says_when_the_slices_were_matched(run_output, tmp_path):
    qc = json.loads((run_output / "qc.json").read_text())
    assert "slices counted" not in write_report(run_output).read_text()  # native slices: nothing to say
    qc["inputs"]["slices"] = {"target_mm": 5.0, "native_mm": 4.0, "slice_axis": 2, "applied": True}
    (tmp_path / "qc.json").write_text(json.dumps(qc))
    text = write_report(tmp_path).read_text()
    assert "slices counted" in text and "5 mm: the T2 averaged along its 4 mm slices" in text


def test_report_in_headless_chromium(run_output, tmp_path):
    """Chromium renders the pipeline's own report: not blank, images drawn, counts table in the DOM."""
    image = screenshot(run_output / "report.html", tmp_path / "report.png", height=3000)
    assert image.shape[0] == 3000 and image.shape[1] == 1200
    assert not_blank(image) > 0.15  # figures are black-background PNGs; an empty page is ~0
    dom = rendered_dom(run_output / "report.html", tmp_path)
    table = re.search(r'<table id="counts">(.*?)</table>', dom, re.S)
    assert table is not None
    assert len(re.findall(r"<tr>", table.group(1))) == 1 + len(REGION_CODES)
    status = json.loads((run_output / "qc.json").read_text())["status"]
    assert f'id="qc-status">{status}<' in dom
    assert ('id="qc-banner"' in dom) == (status == "fail")  # the phantom's painted contrasts may fail a gate


def test_cli_report_rebuilds_and_refuses_other_folders(run_output, tmp_path):
    from pvsquant.cli import main

    (run_output / "report.html").unlink()
    assert main(["report", str(run_output)]) == 0
    assert "<table id=\"counts\">" in (run_output / "report.html").read_text()
    assert main(["report", str(tmp_path)]) == 1  # no qc.json: not a pvsquant run output
    assert not (tmp_path / "report.html").exists()
