"""pvsquant bids on a small BIDS dataset made from the example: two good subjects (one in another
header position) and two broken ones, on 2 Dask workers, one worker killed mid-subject; a rerun
recomputes nothing; the group level tables and pages the result."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ..bids_dataset import example_dataset

pytestmark = pytest.mark.slow
PVSQUANT = [sys.executable, "-m", "pvsquant.cli"]


def outputs_state(out: Path) -> dict[str, float]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in sorted(out.rglob("*"))
            if p.is_file() and "logs" not in p.parts}


def kill_worker_mid_subject(out: Path, key: str, timeout_s: float = 600) -> int:
    """Wait until ``key``'s log shows its anatomy stage running, then SIGKILL the worker process doing it."""
    log = out / "logs" / f"{key}.log"
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        text = log.read_text() if log.is_file() else ""
        if "[anatomy]" in text:
            pid = int(re.findall(r"process (\d+)", text)[-1])
            os.kill(pid, signal.SIGKILL)
            return pid
        time.sleep(1)
    raise AssertionError(f"{key} never reached its anatomy stage; log: {log}")


@pytest.fixture(scope="module")
def processed(tmp_path_factory):
    root = tmp_path_factory.mktemp("bidsapp")
    bids = example_dataset(root / "bids")
    out = bids / "derivatives" / "pvsquant"
    first = subprocess.Popen([*PVSQUANT, "bids", str(bids), str(out), "participant", "--workers", "2",
                              "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    killed = kill_worker_mid_subject(out, "sub-01")
    stdout, _ = first.communicate(timeout=1500)
    state = outputs_state(out)
    first_table = (out / "logs" / "participant.tsv").read_text()  # the rerun rewrites it
    second = subprocess.run([*PVSQUANT, "bids", str(bids), str(out), "participant", "--no-progress"],
                            capture_output=True, text=True, timeout=600)
    group = subprocess.run([*PVSQUANT, "bids", str(bids), str(out), "group"], capture_output=True, text=True,
                           timeout=600)
    return {"bids": bids, "out": out, "first": (first.returncode, stdout), "killed": killed, "state": state,
            "first_table": first_table,
            "second": second, "group": group}


def test_participant_level_survives_a_killed_worker_and_records_failures(processed):
    out = processed["out"]
    rc, stdout = processed["first"]
    assert rc == 1, stdout  # two subjects failed on purpose
    assert "4 subject(s): 2 computed, 0 skipped (finished earlier), 2 failed" in stdout
    rows = {line.split("\t")[0]: line.split("\t") for line in processed["first_table"].splitlines()[1:]}
    assert rows["sub-01"][1] == "done" and rows["sub-02"][1] == "done"
    assert rows["sub-03"][1] == "failed" and "sub-03_T2w.nii.gz" in rows["sub-03"][5]
    assert rows["sub-04"][1] == "failed" and "no T2w" in rows["sub-04"][5]
    log = (out / "logs" / "sub-01.log").read_text()
    pids = re.findall(r"process (\d+)", log)
    assert str(processed["killed"]) in pids and len(set(pids)) >= 2, "the killed subject was not rerun elsewhere"
    assert not list((out / "sourcedata" / "pvsquant_runs").glob(".*partial*")), "a half-written run was left"


def test_derivative_dataset(processed):
    out = processed["out"]
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    generated = description["GeneratedBy"][0]
    assert generated["Name"] == "pvsquant" and len(generated["Weights"]) >= 8
    assert all(len(sha) == 64 for sha in generated["Weights"].values())
    for key in ("sub-01", "sub-02"):
        anat = out / key / "anat"
        assert (anat / f"{key}_space-T2w_desc-pvsregions_dseg.nii.gz").is_file()
        assert (anat / f"{key}_space-T2w_desc-basalganglia_pvsattention.nii.gz").is_file()
        counts = (anat / f"{key}_desc-pvs_counts.tsv").read_text().splitlines()
        assert counts[0] == "region\tmodel\tcount" and len(counts) == 1 + 4 * 3
        assert (out / f"{key}.html").stat().st_size > 100_000  # the report with its figures embedded
    assert "pvsquant" in (out / "logs" / "CITATION.md").read_text()


def test_rerun_recomputes_nothing(processed):
    second = processed["second"]
    assert "2 computed" not in second.stdout
    assert "0 computed, 2 skipped (finished earlier), 2 failed" in second.stdout, second.stdout + second.stderr
    now = outputs_state(processed["out"])  # (the group level, run after the rerun, adds its own files)
    assert {k: now.get(k) for k in processed["state"]} == processed["state"]
    rows = (processed["out"] / "logs" / "participant.tsv").read_text()
    assert "sub-01\tskipped\tpass" in rows and "sub-02\tskipped\tpass" in rows


def test_group_level(processed):
    out, group = processed["out"], processed["group"]
    assert group.returncode == 0, group.stdout + group.stderr
    table = (out / "group_counts.tsv").read_text().splitlines()
    subjects = {line.split("\t")[0] for line in table[1:]}
    assert subjects == {"sub-01", "sub-02"}
    header = table[0].split("\t")
    scanners = {line.split("\t")[header.index("scanner")] for line in table[1:]}
    assert {"Siemens Skyra 3T", "GE Discovery 3T"} <= scanners
    slices = {line.split("\t")[header.index("t2_slice_mm")] for line in table[1:]}
    assert slices and all(float(v) > 0 for v in slices)  # each subject's counted slice thickness
    failed = (out / "group_failed.tsv").read_text()
    assert "sub-03" in failed and "sub-04" in failed and "sub-01" not in failed
    assert (out / "group_report.html").is_file()
