"""BIDS-App pieces on small synthetic datasets: discovery, output rules, derivative export,
completion records, Dask tasks, the group level and its page."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import cloudpickle
import numpy as np
import pytest

from pvsquant.cli import main
from pvsquant.cohort.batch import Outcome, completed, fingerprint, run_tasks, sha256_file, write_record
from pvsquant.cohort.bids import (
    BidsSubject,
    check_output_dir,
    derivative_files,
    export_subject,
    find_subjects,
    parse_filter,
    scanner_of,
)
from pvsquant.cohort.bidsapp import group_level, record_path
from pvsquant.errors import InputDatasetError
from pvsquant.labels import REGION_CODES
from pvsquant.types import Settings

from .bids_dataset import add_image, write_description
from .browser import not_blank, rendered_dom, screenshot

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # so Dask workers can run this module's functions


def small_dataset(root: Path) -> Path:
    write_description(root)
    add_image(root, "01", "T1w")
    add_image(root, "01", "T2w", sidecar={"Manufacturer": "Philips", "ManufacturersModelName": "Ingenia",
                                          "MagneticFieldStrength": 1.5})
    # two sessions; the second has two T2w runs of different resolution
    for session in ("1", "2"):
        add_image(root, "02", "T1w", session=session)
        add_image(root, "02", "T2w", session=session, entities="_run-1")
    add_image(root, "02", "T2w", session="2", entities="_run-2", affine=np.diag([0.5, 0.5, 3.0, 1.0]))
    add_image(root, "02", "T2w", session="2", entities="_acq-fast_run-3", affine=np.diag([1.0, 1.0, 6.0, 1.0]))
    add_image(root, "03", "T1w")  # no T2w
    add_image(root, "04", "T2w")  # no T1w
    return root


def test_find_subjects_sessions_choice_and_missing_images(tmp_path):
    subjects = {s.key: s for s in find_subjects(small_dataset(tmp_path / "bids"))}
    assert sorted(subjects) == ["sub-01", "sub-02_ses-1", "sub-02_ses-2", "sub-03", "sub-04"]
    assert subjects["sub-01"].t1.name == "sub-01_T1w.nii.gz" and subjects["sub-01"].problem is None
    chosen = subjects["sub-02_ses-2"]
    assert chosen.t2.name == "sub-02_ses-2_run-2_T2w.nii.gz"  # finest of three runs
    assert len(chosen.candidates["t2"]) == 3
    assert "no T2w" in subjects["sub-03"].problem
    assert subjects["sub-04"].t1 is None and subjects["sub-04"].problem is None
    assert subjects["sub-02_ses-1"].folder == Path("sub-02/ses-1/anat")


def test_find_subjects_labels_and_filters(tmp_path):
    bids = small_dataset(tmp_path / "bids")
    picked = find_subjects(bids, participant_labels=["sub-02"], session_labels=["2"],
                           t2_filter=parse_filter('{"acquisition": "fast"}', "--t2-filter"))
    assert [s.key for s in picked] == ["sub-02_ses-2"]
    assert picked[0].t2.name == "sub-02_ses-2_acq-fast_run-3_T2w.nii.gz"
    with pytest.raises(InputDatasetError, match=r"no subject.*sub-99"):
        find_subjects(bids, participant_labels=["99"])
    with pytest.raises(InputDatasetError, match="JSON"):
        parse_filter("{not json", "--t1-filter")


def test_dataset_layout_is_checked(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputDatasetError, match=r"dataset_description\.json"):
        find_subjects(tmp_path / "empty")
    write_description(tmp_path / "nosubjects")
    with pytest.raises(InputDatasetError, match="no sub-<label> folders"):
        find_subjects(tmp_path / "nosubjects")
    with pytest.raises(InputDatasetError, match="does not exist"):
        find_subjects(tmp_path / "missing")


def test_output_folder_rules(tmp_path):
    bids = tmp_path / "bids"
    bids.mkdir()
    check_output_dir(bids, tmp_path / "out")
    check_output_dir(bids, bids / "derivatives" / "pvsquant")
    for bad in (bids, bids / "results", bids / "derivatives", bids / "sub-01" / "out"):
        with pytest.raises(InputDatasetError):
            check_output_dir(bids, bad)


def fake_run_folder(folder: Path, status: str = "pass", counts: dict | None = None,
                    slices: dict | None = None) -> Path:
    """What pvsquant run leaves, small: every file the export maps, with plausible contents
    (``slices``: qc.json's inputs/slices)."""
    folder.mkdir(parents=True)
    counts = counts or {r: 3.0 + i for i, r in enumerate(REGION_CODES)}
    rows = [{"region": r, "model": m, "count": c if m == "gpunet" else c + 1}
            for r, c in counts.items() for m in ("gpunet", "cnn", "frangi")]
    qc = {"status": status, "anatomy_from": "T1", "counts": rows,
          "primary_counts": {r: {"model": "gpunet"} for r in counts},
          "regions": {"volumes_ml": {r: 10.0 for r in counts}},
          "flags": [{"code": "x", "message": "T2 cut above the ventricles", "severity": "fail"}]
          if status == "fail" else []}
    if slices is not None:
        qc["inputs"] = {"slices": slices}
    (folder / "qc.json").write_text(json.dumps(qc))
    (folder / "counts.tsv").write_text("region\tmodel\tcount\n" + "".join(
        f"{r['region']}\t{r['model']}\t{r['count']}\n" for r in rows))
    for name in ("anatomy.nii.gz", "regions.nii.gz", "pvs.nii.gz",
                 *(f"attention_{r}.nii.gz" for r in REGION_CODES)):
        (folder / name).write_bytes(b"nifti")
    for name in ("pvs.tsv", "settings.json", "report.html", "regions.png", "attention.png"):
        (folder / name).write_text("x")
    return folder


def test_export_subject_writes_bids_names_that_pybids_reads(tmp_path):
    from bids import BIDSLayout

    bids = small_dataset(tmp_path / "bids")
    subject = next(s for s in find_subjects(bids) if s.key == "sub-02_ses-1")
    run = fake_run_folder(tmp_path / "run")
    out = tmp_path / "out"
    write_description(out)
    written = export_subject(run, out, subject, bids)
    anat = out / "sub-02" / "ses-1" / "anat"
    assert (anat / "sub-02_ses-1_space-T2w_desc-pvsregions_dseg.nii.gz").is_file()
    assert (anat / "sub-02_ses-1_space-T2w_desc-centrumsemiovale_pvsattention.nii.gz").is_file()
    assert (anat / "sub-02_ses-1_desc-pvs_counts.tsv").is_file()
    assert (out / "sub-02_ses-1.html").is_file()
    assert (out / "sub-02" / "ses-1" / "figures" / "sub-02_ses-1_desc-attention_pvs.png").is_file()
    sidecar = json.loads((anat / "sub-02_ses-1_space-T2w_desc-pvsregions_dseg.json").read_text())
    assert sidecar["Sources"] == ["bids:raw:sub-02/ses-1/anat/sub-02_ses-1_T1w.nii.gz",
                                  "bids:raw:sub-02/ses-1/anat/sub-02_ses-1_run-1_T2w.nii.gz"]
    assert sidecar["Labels"]["1"] == "centrum_semiovale"
    assert all((out / p).is_file() for p in written)
    assert set(derivative_files(subject)) <= {p.name for p in run.iterdir()}
    layout = BIDSLayout(str(out), validate=False, is_derivative=True)
    found = layout.get(subject="02", session="1", desc="pvsregions", suffix="dseg", extension=".nii.gz")
    assert len(found) == 1 and found[0].entities["space"] == "T2w"


def test_scanner_from_sidecar(tmp_path):
    bids = small_dataset(tmp_path / "bids")
    assert scanner_of(bids / "sub-01" / "anat" / "sub-01_T2w.nii.gz") == "Philips Ingenia 1.5T"
    assert scanner_of(bids / "sub-03" / "anat" / "sub-03_T1w.nii.gz") == ""


def test_completion_record_matches_only_the_same_work(tmp_path):
    t2 = tmp_path / "t2.nii.gz"
    t2.write_bytes(b"first")
    out = tmp_path / "out"
    (out / "a").mkdir(parents=True)
    (out / "a" / "counts.tsv").write_text("x")
    record = tmp_path / "record.json"
    current = fingerprint({"t1": None, "t2": t2}, Settings())
    write_record(record, "sub-01", current, [Path("a/counts.tsv")], "pass")
    assert completed(record, current, out)["qc_status"] == "pass"
    assert completed(record, fingerprint({"t1": None, "t2": t2}, Settings(threads=7)), out) is not None
    assert completed(record, fingerprint({"t1": None, "t2": t2}, Settings(detection_level=0.5)), out) is None
    t2.write_bytes(b"changed")
    assert current["inputs"]["t2"]["sha256"] != sha256_file(t2)
    assert completed(record, fingerprint({"t1": None, "t2": t2}, Settings()), out) is None
    t2.write_bytes(b"first")
    (out / "a" / "counts.tsv").unlink()
    assert completed(record, current, out) is None  # an output went missing: recompute


def square_or_fail(item: int, offset: int = 0) -> Outcome:
    if item == 3:
        raise RuntimeError("subject 3 is broken")
    return Outcome(f"s{item}", "done", qc_status=str(item * item + offset))


def test_run_tasks_on_a_local_cluster_records_failures_and_keeps_order():
    from pvsquant.cohort.batch import timed_outcome

    def task(item: int, offset: int) -> Outcome:
        return timed_outcome(f"s{item}", lambda: square_or_fail(item, offset))

    outcomes = run_tasks(task, [1, 2, 3, 4], ["s1", "s2", "s3", "s4"], workers=2, progress=False, offset=10)
    assert [o.key for o in outcomes] == ["s1", "s2", "s3", "s4"]
    assert [o.status for o in outcomes] == ["done", "done", "failed", "done"]
    assert outcomes[3].qc_status == "26"
    assert "subject 3 is broken" in outcomes[2].error
    assert len({o.worker for o in outcomes}) >= 1 and all(o.worker for o in outcomes)


def test_group_level_tables_failed_subjects_and_page(tmp_path):
    bids = small_dataset(tmp_path / "bids")
    out = tmp_path / "out"
    write_description(out)
    runs = out / "sourcedata" / "pvsquant_runs"
    fake_run_folder(runs / "sub-01", counts={r: 5.0 for r in REGION_CODES},
                    slices={"target_mm": None, "native_mm": 3.3, "slice_axis": 2, "applied": False})
    fake_run_folder(runs / "sub-02_ses-1", status="fail")  # a run of pvsquant <= 0.2: no slices record
    fake_run_folder(runs / "sub-02_ses-2", status="warn",
                    slices={"target_mm": None, "native_mm": 4.0, "slice_axis": 2, "applied": False})
    for key in ("sub-01", "sub-02_ses-1", "sub-02_ses-2"):
        record_path(out, key).parent.mkdir(parents=True, exist_ok=True)
        record_path(out, key).write_text("{}")
    failed_record = out / "logs" / "failed" / "sub-04.json"
    failed_record.parent.mkdir(parents=True)
    failed_record.write_text(json.dumps({"error": "InputImageError: sub-04_T2w.nii.gz is not an image"}))
    result = group_level(bids, out)
    table = (out / "group_counts.tsv").read_text().splitlines()
    assert table[0].split("\t") == ["subject", "session", "region", "model", "count", "primary",
                                    "region_volume_ml", "qc_status", "anatomy_from", "scanner", "t2_slice_mm"]
    assert len(table) == 1 + 3 * 4 * 3
    assert "sub-01\t\tcentrum_semiovale\tgpunet\t5\tyes\t10\tpass\tT1\tPhilips Ingenia 1.5T\t3.3" in table
    failed = {(f["subject"], f["session"]): f for f in result["failed"]}
    assert failed[("sub-02", "1")]["reason"] == "qc fail"
    assert "above the ventricles" in failed[("sub-02", "1")]["detail"]
    assert "no T2w" in failed[("sub-03", "")]["detail"]
    assert "not an image" in failed[("sub-04", "")]["detail"]
    assert ("sub-01", "") not in failed and ("sub-02", "2") not in failed
    page = out / "group_report.html"
    dom = rendered_dom(page, tmp_path)
    assert "PVS cohort report" in dom and "sub-02" in dom and "qc warn" in dom
    assert "3 subject(s) left out of the group statistics" in dom
    # 3.3 and 4.0 mm slices: the page says the counts are not comparable and how to match them
    assert "slices of 3.3 to 4 mm" in dom and "--match-slice-thickness 4" in dom
    assert not_blank(screenshot(page, tmp_path / "group.png", height=1200)) > 0.05


def test_group_level_needs_the_participant_level_first(tmp_path):
    bids = small_dataset(tmp_path / "bids")
    with pytest.raises(InputDatasetError, match="participant level first"):
        group_level(bids, tmp_path / "out")


def test_cli_refuses_output_inside_the_dataset_and_missing_dataset(tmp_path, capsys, caplog):
    bids = small_dataset(tmp_path / "bids")
    assert main(["bids", str(bids), str(bids / "out"), "participant"]) == 1
    assert "derivatives" in caplog.text
    assert main(["bids", str(tmp_path / "nothing"), str(tmp_path / "out"), "participant"]) == 1
    assert "does not exist" in caplog.text


def test_bids_subject_key_without_session():
    s = BidsSubject("01", None, None, Path("t2.nii.gz"))
    assert s.key == "sub-01" and s.folder == Path("sub-01/anat")


def test_dicom2bids_makes_a_dataset_pvsquant_bids_reads(tmp_path, capsys):
    from .conftest import oblique_affine
    from .dicom_writer import SeriesSpec, write_series

    array = np.random.default_rng(1).uniform(100, 900, (40, 40, 18)).astype(np.float32)
    affine = oblique_affine((1.6, 1.6, 4.0), array.shape, angle_deg=8.0)
    study = tmp_path / "study"
    write_series(array, affine, study / "a", SeriesSpec(number=3, description="T1_SE", manufacturer="GE MEDICAL "
                 "SYSTEMS", model="Signa", field_strength_t=1.5), prefix="A")
    write_series(array, affine, study / "b", SeriesSpec(number=5, description="T2_FSE", manufacturer="GE MEDICAL "
                 "SYSTEMS", model="Signa", field_strength_t=1.5), prefix="B")
    bids = tmp_path / "bids"
    assert main(["dicom2bids", str(study), str(bids), "--subject", "07", "--session", "base", "--t1-series", "3",
                 "--t2-series", "T2_FSE"]) == 0
    (subject,) = find_subjects(bids)
    assert subject.key == "sub-07_ses-base" and subject.t1.name == "sub-07_ses-base_T1w.nii.gz"
    assert subject.t2.name == "sub-07_ses-base_T2w.nii.gz" and scanner_of(subject.t2) == "GE Signa 1.5T"
    sidecar = json.loads(subject.t2.with_name("sub-07_ses-base_T2w.json").read_text())
    assert sidecar["SeriesDescription"] == "T2_FSE" and "PatientName" not in sidecar
    assert main(["dicom2bids", str(study), str(bids), "--subject", "07", "--session", "base", "--t2-series",
                 "5"]) == 1  # exists: refused without --overwrite
    assert main(["dicom2bids", str(study), str(bids), "--subject", "08"]) == 1  # two series, no choice
    assert not (bids / "sub-08").exists()


def test_dataset_description_is_left_alone_when_unchanged(tmp_path):
    import os

    from pvsquant.cohort.bids import write_dataset_description

    path = write_dataset_description(tmp_path / "out", tmp_path / "bids", {"cso_gpunet": "a" * 64})
    description = json.loads(path.read_text())
    assert description["DatasetType"] == "derivative" and description["GeneratedBy"][0]["Name"] == "pvsquant"
    os.utime(path, ns=(1, 1))
    write_dataset_description(tmp_path / "out", tmp_path / "bids", {"cso_gpunet": "a" * 64})
    assert path.stat().st_mtime_ns == 1
    write_dataset_description(tmp_path / "out", tmp_path / "bids", {"cso_gpunet": "b" * 64})
    assert path.stat().st_mtime_ns != 1 and "b" * 64 in path.read_text()


def test_sources_of_symlinked_images_stay_in_the_dataset(tmp_path):
    from pvsquant.cohort.bids import _bids_uri

    bids = small_dataset(tmp_path / "bids")
    outside = tmp_path / "annex" / "t2.nii.gz"
    outside.parent.mkdir()
    link = bids / "sub-01" / "anat" / "sub-01_T2w.nii.gz"
    outside.write_bytes(link.read_bytes())
    link.unlink()
    link.symlink_to(outside)
    assert _bids_uri(link, bids) == "bids:raw:sub-01/anat/sub-01_T2w.nii.gz"
    assert _bids_uri(outside, bids) == str(outside)


def test_counted_slice_thickness_and_the_mixed_protocol_warning():
    from pvsquant.cohort.bidsapp import counted_slice_mm
    from pvsquant.cohort.group_report import mixed_slices_message

    matched = {"inputs": {"slices": {"target_mm": 4.0, "native_mm": 3.3, "applied": True}}}
    assert counted_slice_mm(matched) == 4.0
    assert counted_slice_mm({"inputs": {"slices": {"target_mm": 4.0, "native_mm": 5.0, "applied": False}}}) == 5.0
    assert counted_slice_mm({"inputs": {"t2": {"spacing_mm": [0.5, 0.5, 3.0]}}}) == 3.0  # before the record
    assert counted_slice_mm({}) is None
    assert mixed_slices_message([{"t2_slice_mm": 4.0}, {"t2_slice_mm": 4.1}, {"t2_slice_mm": None}]) is None
    message = mixed_slices_message([{"t2_slice_mm": 3.3}, {"t2_slice_mm": 5.0}])
    assert message is not None and "--match-slice-thickness 5" in message


def test_match_slice_thickness_auto_takes_the_thickest_t2_of_the_subjects_run(tmp_path, monkeypatch, caplog):
    import pvsquant.cohort.bidsapp as app
    from pvsquant.cohort.bids import thickest_t2_slices

    bids = small_dataset(tmp_path / "bids")
    # sub-01, sub-02 ses-1 and sub-04 have 1 mm T2s, sub-02 ses-2's chosen run 3 mm; sub-03 has none
    assert thickest_t2_slices(find_subjects(bids)) == (1.0, 3.0)
    assert thickest_t2_slices(find_subjects(bids, participant_labels=["01"])) == (1.0, 1.0)
    seen = {}

    def no_runs(task, items, keys, **kwargs):
        seen["settings"] = kwargs["settings"]
        return []

    monkeypatch.setattr(app, "run_tasks", no_runs)
    caplog.set_level("INFO")
    app.participant_level(bids, tmp_path / "out", Settings(), progress=False, match_thickest_slices=True)
    assert seen["settings"].match_slice_thickness_mm == 3.0 and "counted on 3.00 mm slices" in caplog.text
    app.participant_level(bids, tmp_path / "out", Settings(), progress=False)
    assert seen["settings"].match_slice_thickness_mm is None  # off unless asked


def test_match_slice_thickness_auto_is_for_the_bids_app_only(phantom_case, tmp_path, caplog, capsys):
    t1, t2, _ = phantom_case
    out = tmp_path / "out"
    assert main(["run", "--t1", str(t1), "--t2", str(t2), "--out", str(out), "--match-slice-thickness", "auto"]) == 1
    assert "is for pvsquant bids" in caplog.text and not out.exists()
    with pytest.raises(SystemExit) as exit_:
        main(["run", "--t2", str(t2), "--out", str(out), "--match-slice-thickness", "thick"])
    assert exit_.value.code == 2 and "a slice thickness in mm or 'auto'" in capsys.readouterr().err
