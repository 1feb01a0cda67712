"""``pvsquant bids BIDS_DIR OUTPUT_DIR participant|group``: the BIDS-App levels.

participant: every selected subject (and session) is a Dask task that runs ``pvsquant run``
into ``sourcedata/pvsquant_runs/<key>``, exports the BIDS derivative files, and writes its
completion record; a failure is recorded and the rest go on; a rerun skips finished subjects.
group: one table of every subject's counts, region volumes and QC status, the failed subjects
with their reasons, a cohort HTML page, and (with visual scores) ``pvsquant evaluate``.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from ..errors import InputDatasetError
from ..io import is_run_folder, write_json, write_tsv
from ..types import Settings, SubjectInputs
from .batch import Outcome, SubjectLog, completed, fingerprint, run_tasks, timed_outcome, weights_sha256, write_record
from .bids import (
    RUNS_FOLDER,
    BidsSubject,
    check_output_dir,
    export_subject,
    find_subjects,
    methods_text,
    scanner_of,
    thickest_t2_slices,
    write_dataset_description,
)

log = logging.getLogger(__name__)


def record_path(output_dir: Path, key: str) -> Path:
    return output_dir / "logs" / "completed" / f"{key}.json"


def failure_path(output_dir: Path, key: str) -> Path:
    return output_dir / "logs" / "failed" / f"{key}.json"


def process_subject(subject: BidsSubject, bids_dir: Path, output_dir: Path, settings: Settings,
                    allow_t2_only: bool = False) -> Outcome:
    """One subject, start to finish (runs on a Dask worker): skip when finished, else run, export, record."""
    key = subject.key
    with SubjectLog(output_dir / "logs" / f"{key}.log", key):
        outcome = timed_outcome(key, lambda: _process(subject, bids_dir, output_dir, settings, allow_t2_only))
        failure = failure_path(output_dir, key)
        if outcome.status == "failed":
            write_json(asdict(outcome), failure)
        else:
            failure.unlink(missing_ok=True)
        return outcome


def _process(subject: BidsSubject, bids_dir: Path, output_dir: Path, settings: Settings,
             allow_t2_only: bool) -> Outcome:
    from ..pipeline.run import run_subject

    key = subject.key
    if subject.problem or subject.t2 is None:
        raise InputDatasetError(subject.problem or f"{key}: no T2w image")
    if subject.t1 is None and not allow_t2_only:
        raise InputDatasetError(f"{key}: no T1w image (rerun with --allow-t2-only to take the anatomy from the T2w)")
    current = fingerprint({"t1": subject.t1, "t2": subject.t2}, settings)
    record = completed(record_path(output_dir, key), current, output_dir)
    if record is not None:
        log.info("%s: finished earlier with the same inputs, version, weights and settings: skipped", key)
        return Outcome(key, "skipped", qc_status=record.get("qc_status"))
    run_dir = output_dir / RUNS_FOLDER / key
    remove_partial_outputs(run_dir, output_dir / subject.folder)
    result = run_subject(SubjectInputs(t1=subject.t1, t2=subject.t2, subject_id=key), run_dir, settings,
                         overwrite=True)
    written = export_subject(run_dir, output_dir, subject, bids_dir)
    outputs = [*written, *(p.relative_to(output_dir) for p in (run_dir / "qc.json", run_dir / "counts.tsv"))]
    write_record(record_path(output_dir, key), key, current, outputs, result.qc["status"])
    return Outcome(key, "done", qc_status=result.qc["status"])


def remove_partial_outputs(*folders: Path) -> None:
    """Temporary folders a killed earlier attempt left beside ``folders`` (never a finished output)."""
    import shutil

    for folder in folders:
        if folder.parent.is_dir():
            for stale in folder.parent.glob(f".{folder.name}.partial-*"):
                log.info("removing %s, left by an interrupted attempt", stale)
                shutil.rmtree(stale, ignore_errors=True)


def participant_level(bids_dir: Path, output_dir: Path, settings: Settings, participant_labels: list[str] | None = None,
                      session_labels: list[str] | None = None, t1_filter: dict[str, Any] | None = None,
                      t2_filter: dict[str, Any] | None = None, workers: int = 1, scheduler: str | None = None,
                      allow_t2_only: bool = False, progress: bool = True,
                      match_thickest_slices: bool = False) -> list[Outcome]:
    """Run every selected subject; returns one outcome per subject (also in ``logs/participant.tsv``).
    ``match_thickest_slices``: every subject counted on slices as thick as the thickest T2 among
    them (``Settings.match_slice_thickness_mm``)."""
    bids_dir, output_dir = Path(bids_dir).absolute(), Path(output_dir).absolute()
    check_output_dir(bids_dir, output_dir)
    subjects = find_subjects(bids_dir, participant_labels, session_labels, t1_filter, t2_filter)
    if match_thickest_slices:
        extent = thickest_t2_slices(subjects)
        if extent is None:
            raise InputDatasetError(f"{bids_dir}: --match-slice-thickness auto found no readable T2w to measure")
        settings = replace(settings, match_slice_thickness_mm=round(extent[1], 2))
        log.info("T2 slices of %.2f to %.2f mm: every subject counted on %.2f mm slices", extent[0], extent[1],
                 settings.match_slice_thickness_mm)
    output_dir.mkdir(parents=True, exist_ok=True)
    weights = weights_sha256(settings.models_dir)
    write_dataset_description(output_dir, bids_dir, weights)
    (output_dir / "logs").mkdir(exist_ok=True)
    citation = output_dir / "logs" / "CITATION.md"
    text = methods_text(weights, settings.to_json())
    if not citation.is_file() or citation.read_text(encoding="utf-8") != text:
        citation.write_text(text, encoding="utf-8")
    log.info("%d subject(s) to process with %s", len(subjects),
             f"the Dask scheduler at {scheduler}" if scheduler else f"{workers} local worker(s)")
    outcomes = run_tasks(process_subject, subjects, [s.key for s in subjects], workers=workers, scheduler=scheduler,
                         progress=progress, bids_dir=bids_dir, output_dir=output_dir, settings=settings,
                         allow_t2_only=allow_t2_only)
    rows = [{**asdict(o), "subject": o.key} for o in outcomes]
    write_tsv(rows, ("subject", "status", "qc_status", "seconds", "worker", "error"),
              output_dir / "logs" / "participant.tsv")
    return outcomes


def summary_line(outcomes: list[Outcome]) -> str:
    counts = {s: sum(o.status == s for o in outcomes) for s in ("done", "skipped", "failed")}
    qc = {s: sum(o.qc_status == s for o in outcomes) for s in ("pass", "warn", "fail")}
    return (f"{len(outcomes)} subject(s): {counts['done']} computed, {counts['skipped']} skipped (finished earlier), "
            f"{counts['failed']} failed; QC {qc['pass']} pass, {qc['warn']} warn, {qc['fail']} fail")


# ---- group level -----------------------------------------------------------------------------

GROUP_COLUMNS = ("subject", "session", "region", "model", "count", "primary", "region_volume_ml", "qc_status",
                 "anatomy_from", "scanner", "t2_slice_mm")


def counted_slice_mm(qc: dict[str, Any]) -> float | None:
    """The slice thickness of the T2 a run counted on: the matched thickness where the run matched
    it (``match_slice_thickness_mm``), else the T2's largest spacing; None where qc.json lacks both."""
    inputs = qc.get("inputs") or {}
    slices = inputs.get("slices") or {}
    if slices.get("applied"):
        return float(slices["target_mm"])
    if slices.get("native_mm") is not None:
        return float(slices["native_mm"])
    spacing = (inputs.get("t2") or {}).get("spacing_mm")
    return float(max(spacing)) if spacing else None


def group_rows(output_dir: Path, subjects: list[BidsSubject]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(count rows of every finished subject, failed subjects with their reasons)."""
    rows: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    for s in subjects:
        run_dir = output_dir / RUNS_FOLDER / s.key
        base = {"subject": f"sub-{s.subject}", "session": s.session or ""}
        error = None
        if failure_path(output_dir, s.key).is_file():
            error = json.loads(failure_path(output_dir, s.key).read_text()).get("error")
        elif s.problem:
            error = s.problem
        elif not record_path(output_dir, s.key).is_file() or not is_run_folder(run_dir):
            error = "not processed yet (run the participant level)"
        if error:
            failed.append({**base, "reason": "error", "detail": error})
            continue
        qc = json.loads((run_dir / "qc.json").read_text())
        if qc.get("status") == "fail":
            reasons = "; ".join(f["message"] for f in qc.get("flags", []) if f.get("severity") == "fail")
            failed.append({**base, "reason": "qc fail", "detail": reasons})
        primary = {r: v.get("model") for r, v in qc.get("primary_counts", {}).items()}
        scanner = qc.get("scanner") or scanner_of(s.t2)
        slice_mm = counted_slice_mm(qc)
        for c in qc.get("counts", []):
            rows.append({**base, "region": c["region"], "model": c["model"], "count": c["count"],
                         "primary": primary.get(c["region"]) == c["model"],
                         "region_volume_ml": qc.get("regions", {}).get("volumes_ml", {}).get(c["region"]),
                         "qc_status": qc.get("status"), "anatomy_from": qc.get("anatomy_from", "T1"),
                         "scanner": scanner, "t2_slice_mm": None if slice_mm is None else round(slice_mm, 2)})
    return rows, failed


def group_level(bids_dir: Path, output_dir: Path, participant_labels: list[str] | None = None,
                session_labels: list[str] | None = None, t1_filter: dict[str, Any] | None = None,
                t2_filter: dict[str, Any] | None = None, scores: Path | None = None) -> dict[str, Any]:
    """group_counts.tsv, group_failed.tsv, group_report.html (and group_evaluation/ with ``scores``)."""
    from .group_report import mixed_slices_message, write_group_report

    bids_dir, output_dir = Path(bids_dir).absolute(), Path(output_dir).absolute()
    check_output_dir(bids_dir, output_dir)
    if not (output_dir / "dataset_description.json").is_file():
        raise InputDatasetError(f"{output_dir} holds no pvsquant participant results: run the participant level first")
    subjects = find_subjects(bids_dir, participant_labels, session_labels, t1_filter, t2_filter)
    rows, failed = group_rows(output_dir, subjects)
    write_tsv(rows, GROUP_COLUMNS, output_dir / "group_counts.tsv")
    write_tsv(failed, ("subject", "session", "reason", "detail"), output_dir / "group_failed.tsv")
    mixed = mixed_slices_message(rows)
    if mixed:
        log.warning("group: %s", mixed)
    page = write_group_report(rows, failed, len(subjects), output_dir / "group_report.html")
    result: dict[str, Any] = {"rows": rows, "failed": failed, "report": page}
    if scores is not None:
        from .evaluate import evaluate_cohort

        run_dirs = [output_dir / RUNS_FOLDER / s.key for s in subjects
                    if is_run_folder(output_dir / RUNS_FOLDER / s.key)]
        if not run_dirs:
            raise InputDatasetError(f"{output_dir}: no finished subject to evaluate against {scores}")
        result["evaluation"] = evaluate_cohort(scores, output_dir / "group_evaluation", results=run_dirs,
                                               overwrite=True)
    n_ok = len({(r["subject"], r["session"]) for r in rows if r["qc_status"] != "fail"})
    log.info("group: %d of %d subject(s) in the statistics, %d failed", n_ok, len(subjects), len(failed))
    return result

