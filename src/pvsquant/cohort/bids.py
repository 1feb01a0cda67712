"""BIDS datasets in, BIDS derivatives out: finding each subject's T1w/T2w, and writing one
``pvsquant run`` folder as a derivative dataset (the layout of fMRIPrep and MRIQC).

The run folder stays as it is (``OUTPUT_DIR/sourcedata/pvsquant_runs/<key>``, readable by
``pvsquant evaluate``, ``finetune`` and ``report``); the derivative files are copies with BIDS
names, each with a JSON sidecar saying what it is. See docs/outputs.md for the mapping.
"""
from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from .. import __version__
from ..errors import InputDatasetError
from ..io import atomic_output_dir, write_json
from ..labels import REGION_CODES, REGION_TITLES

log = logging.getLogger(__name__)

BIDS_VERSION = "1.9.0"
RUNS_FOLDER = Path("sourcedata") / "pvsquant_runs"
"""Where the per-subject ``pvsquant run`` folders live inside the output dataset."""
IMAGE_EXTENSIONS = [".nii", ".nii.gz"]


def region_label(region: str) -> str:
    """A BIDS label (alphanumeric) for a region name: ``centrum_semiovale`` -> ``centrumsemiovale``."""
    return region.replace("_", "")


@dataclass(frozen=True)
class BidsSubject:
    """One subject (and session) of a BIDS dataset: its T1w and T2w, or why it cannot run."""

    subject: str
    """The label without ``sub-``."""
    session: str | None
    t1: Path | None
    t2: Path | None
    problem: str | None = None
    """Why this subject cannot be processed (e.g. no T2w); None when it can."""
    candidates: dict[str, list[str]] = field(default_factory=dict)
    """Every image found per role, when there were several (the chosen one is ``t1``/``t2``)."""

    @property
    def key(self) -> str:
        """``sub-01`` or ``sub-01_ses-1``: the file-name prefix and the subject name in group tables."""
        return f"sub-{self.subject}" + (f"_ses-{self.session}" if self.session else "")

    @property
    def folder(self) -> Path:
        """``sub-01[/ses-1]/anat``, relative to the output dataset."""
        parts = [f"sub-{self.subject}"] + ([f"ses-{self.session}"] if self.session else [])
        return Path(*parts) / "anat"


def parse_filter(value: str | None, what: str) -> dict[str, Any]:
    """A JSON object of BIDS entities (``'{"acquisition": "tse"}'``) or a file holding one."""
    if not value:
        return {}
    text = Path(value).read_text() if not value.lstrip().startswith("{") and Path(value).is_file() else value
    try:
        parsed = json.loads(text)
    except ValueError as exc:
        raise InputDatasetError(f"{what} {value!r} is not a JSON object of BIDS entities: {exc}") from exc
    if not isinstance(parsed, dict):
        raise InputDatasetError(f"{what} {value!r} must be a JSON object, e.g. '{{\"acquisition\": \"tse\"}}'")
    return parsed


def check_dataset(bids_dir: Path) -> None:
    """Raise InputDatasetError, naming what is missing, unless ``bids_dir`` looks like a BIDS dataset."""
    if not bids_dir.is_dir():
        raise InputDatasetError(f"BIDS folder {bids_dir} does not exist")
    if not (bids_dir / "dataset_description.json").is_file():
        raise InputDatasetError(f"{bids_dir} is not a BIDS dataset: {bids_dir / 'dataset_description.json'} is "
                                "missing (every BIDS dataset has one; see bids-specification.readthedocs.io)")
    if not any(p.is_dir() and p.name.startswith("sub-") for p in bids_dir.iterdir()):
        raise InputDatasetError(f"{bids_dir} is not a BIDS dataset: it has no sub-<label> folders")


def check_output_dir(bids_dir: Path, output_dir: Path) -> None:
    """An output folder inside the input dataset is allowed only under ``BIDS_DIR/derivatives/``."""
    bids, out = bids_dir.resolve(), output_dir.resolve()
    if out == bids:
        raise InputDatasetError(f"output folder {output_dir} is the BIDS dataset itself; "
                                f"use {bids_dir / 'derivatives' / 'pvsquant'} or a folder outside it")
    if bids in out.parents and (bids / "derivatives") not in [out, *out.parents]:
        raise InputDatasetError(f"output folder {output_dir} lies inside the BIDS dataset {bids_dir} but not under "
                                f"{bids_dir / 'derivatives'}; use {bids_dir / 'derivatives' / 'pvsquant'}")
    if (bids / "derivatives") == out:
        raise InputDatasetError(f"output folder {output_dir} is the derivatives folder itself; "
                                f"use {output_dir / 'pvsquant'}")


def _voxel_volume(path: str) -> float:
    try:
        zooms = nib.load(path).header.get_zooms()[:3]  # type: ignore[attr-defined]
        return float(np.prod(zooms))
    except Exception:  # an unreadable file is reported when the subject runs
        return float("inf")


def thickest_t2_slices(subjects: list[BidsSubject]) -> tuple[float, float] | None:
    """(thinnest, thickest) T2 slice thickness in mm among the subjects that can run (from the
    headers); None when no T2 can be read."""
    from ..pipeline.slices import slice_thickness_of

    found = []
    for s in subjects:
        if s.t2 is None or s.problem:
            continue
        try:
            found.append(slice_thickness_of(nib.load(str(s.t2)).affine))  # type: ignore[attr-defined]
        except Exception:  # an unreadable file is reported when the subject runs
            continue
    return (min(found), max(found)) if found else None


def choose_image(files: list[str]) -> str:
    """The documented choice among several images of one role: the finest resolution (smallest voxel
    volume); among equals, the highest run number (a repeat is usually made because the earlier one
    was poor); then the name."""
    def run_number(path: str) -> int:
        for part in Path(path).name.split("_"):
            if part.startswith("run-") and part[4:].isdigit():
                return int(part[4:])
        return 0

    return sorted(files, key=lambda f: (_voxel_volume(f), -run_number(f), f))[0]


def find_subjects(bids_dir: Path, participant_labels: Iterable[str] | None = None,
                  session_labels: Iterable[str] | None = None, t1_filter: dict[str, Any] | None = None,
                  t2_filter: dict[str, Any] | None = None) -> list[BidsSubject]:
    """Every (subject, session) of the dataset with its T1w and T2w (pybids), in label order.

    A subject lacking a T2w is returned with ``problem`` set (it is reported, never fatal); one lacking
    a T1w runs T2-only (``pvsquant run --t2`` alone), which ``problem`` does not stop.
    Raises InputDatasetError when the layout is wrong or a requested label does not exist.
    """
    from bids import BIDSLayout

    check_dataset(bids_dir)
    layout = BIDSLayout(str(bids_dir), validate=False, derivatives=False)
    subjects = sorted(layout.get_subjects())
    wanted = [s.removeprefix("sub-") for s in participant_labels or []]
    missing = sorted(set(wanted) - set(subjects))
    if missing:
        raise InputDatasetError(f"{bids_dir}: no subject(s) {', '.join('sub-' + s for s in missing)}; "
                                f"the dataset has {', '.join('sub-' + s for s in subjects) or 'none'}")
    sessions_wanted = [s.removeprefix("ses-") for s in session_labels or []]
    found = []
    for subject in wanted or subjects:
        sessions = sorted(layout.get_sessions(subject=subject)) or [None]
        if sessions_wanted:
            sessions = [s for s in sessions if s in sessions_wanted]
        for session in sessions:
            found.append(_subject_images(layout, subject, session, t1_filter or {}, t2_filter or {}))
    if not found:
        raise InputDatasetError(f"{bids_dir}: nothing to process for sessions {', '.join(sessions_wanted)}")
    return found


def _subject_images(layout: Any, subject: str, session: str | None, t1_filter: dict[str, Any],
                    t2_filter: dict[str, Any]) -> BidsSubject:
    query: dict[str, Any] = {"subject": subject, "datatype": "anat", "extension": IMAGE_EXTENSIONS,
                             "return_type": "filename"}
    if session:
        query["session"] = session
    images: dict[str, list[str]] = {}
    for role, suffix, extra in (("t1", "T1w", t1_filter), ("t2", "T2w", t2_filter)):
        images[role] = sorted(layout.get(**{**query, "suffix": suffix, **extra}))
    chosen = {role: Path(choose_image(files)) if files else None for role, files in images.items()}
    where = f"sub-{subject}" + (f" ses-{session}" if session else "")
    problem = None
    if chosen["t2"] is None:
        problem = f"{where}: no T2w image" + (f" matching {t2_filter}" if t2_filter else "")
    candidates = {role: files for role, files in images.items() if len(files) > 1}
    for role, files in candidates.items():
        log.info("%s: %d %s images; using %s (finest resolution, then highest run)", where, len(files),
                 role.upper(), Path(str(chosen[role])).name)
    return BidsSubject(subject, session, chosen["t1"], chosen["t2"], problem, candidates)


def scanner_of(image: Path | None) -> str:
    """Manufacturer, model and field strength from an image's BIDS JSON sidecar ('' when unknown)."""
    if image is None:
        return ""
    name = image.name.split(".")[0]
    sidecar = image.with_name(name + ".json")
    try:
        meta = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return ""
    parts = [str(meta.get(k, "")).strip() for k in ("Manufacturer", "ManufacturersModelName")]
    field_t = meta.get("MagneticFieldStrength")
    if field_t:
        parts.append(f"{field_t}T")
    return " ".join(p for p in parts if p)


# ---- the derivative dataset -------------------------------------------------------------------

def derivative_files(subject: BidsSubject, anatomy_space: str = "T1w") -> dict[str, tuple[str, str]]:
    """Run-folder file -> (BIDS file name, what it is) for one subject; the mapping of docs/outputs.md."""
    p = subject.key
    files = {
        "anatomy.nii.gz": (f"{p}_space-{anatomy_space}_desc-aseg_dseg.nii.gz",
                           "Anatomical labels (FreeSurfer aseg codes) on the grid of the image they were made on."),
        "regions.nii.gz": (f"{p}_space-T2w_desc-pvsregions_dseg.nii.gz",
                           "PVS counting regions on the T2w grid: "
                           + ", ".join(f"{c} {REGION_TITLES[r]}" for r, c in REGION_CODES.items()) + "."),
        "pvs.nii.gz": (f"{p}_space-T2w_desc-pvs_dseg.nii.gz",
                       "Detected PVS on the T2w grid, one label per PVS (the id column of the detections table)."),
        "counts.tsv": (f"{p}_desc-pvs_counts.tsv", "PVS count per region and method (region, model, count)."),
        "pvs.tsv": (f"{p}_space-T2w_desc-pvs_detections.tsv",
                    "Detected PVS: id, region, x, y, z (world RAS+ mm), peak, size_vox."),
        "qc.json": (f"{p}_desc-pvs_qc.json", "Quality checks (pass/warn/fail), timings, versions."),
        "settings.json": (f"{p}_desc-pvs_settings.json", "The settings of the run (pvsquant run --settings)."),
    }
    for region in REGION_CODES:
        files[f"attention_{region}.nii.gz"] = (
            f"{p}_space-T2w_desc-{region_label(region)}_pvsattention.nii.gz",
            f"GP-Unet attention map of the {REGION_TITLES[region]} on the T2w grid (PVS per voxel).")
    return files


FIGURES = ("regions.png", "roi.png", "attention.png", "pvs.png", "registration.png")


def _sidecar(description: str, sources: list[str], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"Description": description, "Sources": sources, "GeneratedBy": {"Name": "pvsquant",
                                                                            "Version": __version__},
            **(extra or {})}


def export_subject(run_dir: Path, output_dir: Path, subject: BidsSubject, bids_dir: Path) -> list[Path]:
    """Copy one run folder's outputs into the derivative dataset with BIDS names, sidecars, figures
    and ``<key>.html``; atomic per subject (a failure leaves the previous export as it was).
    Returns the files written, relative to ``output_dir``."""
    qc = json.loads((run_dir / "qc.json").read_text())
    space = "T2w" if qc.get("anatomy_from") == "T2" else "T1w"
    sources = [_bids_uri(p, bids_dir) for p in (subject.t1, subject.t2) if p is not None]
    mapping = derivative_files(subject, space)
    written: list[Path] = []
    target = output_dir / subject.folder
    with atomic_output_dir(target, overwrite=True) as tmp:
        for source, (name, description) in mapping.items():
            if not (run_dir / source).is_file():
                continue
            shutil.copy2(run_dir / source, tmp / name)
            written.append(subject.folder / name)
            extra: dict[str, Any] = {}
            if name.endswith("_desc-pvsregions_dseg.nii.gz"):
                extra = {"Labels": {str(c): r for r, c in REGION_CODES.items()}}
            if name.endswith(".nii.gz") or name.endswith(".tsv"):
                sidecar = tmp / (name.split(".")[0] + ".json")
                write_json(_sidecar(description, sources, extra), sidecar)
                written.append(subject.folder / sidecar.name)
        _write_dseg_table(tmp / f"{subject.key}_space-T2w_desc-pvsregions_dseg.tsv")
        written.append(subject.folder / f"{subject.key}_space-T2w_desc-pvsregions_dseg.tsv")
    figures = output_dir / subject.folder.parent / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    for name in FIGURES:
        if (run_dir / name).is_file():
            dest = figures / f"{subject.key}_desc-{Path(name).stem}_pvs.png"
            shutil.copy2(run_dir / name, dest)
            written.append(dest.relative_to(output_dir))
    if (run_dir / "report.html").is_file():
        shutil.copy2(run_dir / "report.html", output_dir / f"{subject.key}.html")
        written.append(Path(f"{subject.key}.html"))
    return written


def _bids_uri(path: Path, bids_dir: Path) -> str:
    """``bids:raw:<path in the dataset>``; the plain path when it lies elsewhere (not resolved: a
    symlinked file, as DataLad makes them, keeps its place in the dataset)."""
    try:
        return f"bids:raw:{Path(path).absolute().relative_to(bids_dir.absolute())}"
    except ValueError:
        return str(path)


def _write_dseg_table(path: Path) -> None:
    lines = ["index\tname"] + [f"{c}\t{r}" for r, c in REGION_CODES.items()]
    path.write_text("\n".join(lines) + "\n")


def write_dataset_description(output_dir: Path, bids_dir: Path, weights: dict[str, str]) -> Path:
    """``dataset_description.json`` of the derivative dataset (DatasetType derivative, GeneratedBy
    with the version and the weights' sha256)."""
    description = {
        "Name": "pvsquant: perivascular space counts",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [{
            "Name": "pvsquant",
            "Version": __version__,
            "Description": "Enlarged perivascular spaces counted per region (centrum semiovale, basal ganglia, "
                           "hippocampi, midbrain) by a GP-Unet, a CNN and a Frangi filter.",
            "Weights": weights,
        }],
        "SourceDatasets": [{"URL": bids_dir.resolve().as_uri()}],
        "DatasetLinks": {"raw": bids_dir.resolve().as_uri()},
    }
    path = output_dir / "dataset_description.json"
    try:
        if json.loads(path.read_text()) == json.loads(json.dumps(description)):
            return path  # unchanged: a rerun leaves the file (and its time stamp) as it was
    except (OSError, ValueError):
        pass
    return write_json(description, path)


def methods_text(weights: dict[str, str], settings: dict[str, Any]) -> str:
    """A methods paragraph for a paper: software, weights, regions, what each count means."""
    digest = ", ".join(f"{name} {sha[:12]}" for name, sha in sorted(weights.items()))
    return f"""# Methods (written by pvsquant {__version__}; edit freely)

Enlarged perivascular spaces (PVS) were quantified with pvsquant {__version__}, an open-source
implementation of the method of Dubost, Dünnwald et al. (Automated quantification of enlarged
perivascular spaces in clinical brain MRI across sites). For each participant, the T1-weighted
image was rigidly registered to the T2-weighted image (SimpleITK, Mattes mutual information) and
labelled by registering an anatomical atlas (ANTs SyN, {settings.get('segmenter', 'atlas')} method);
the labels were carried to the T2 grid, which was linearly resampled to
{' x '.join(str(s) for s in settings.get('target_spacing_mm', (0.5, 0.5, 0.8)))} mm. Four counting
regions were defined: the centrum semiovale (white matter in a {settings.get('cso_slab_thickness_mm', '')} mm
slab starting {settings.get('cso_offset_mm', '')} mm above the top of the caudate nucleus), the basal
ganglia, the hippocampi and the midbrain. In each region, PVS were counted by a GP-Unet
(encoder-decoder with global pooling; its attention map localises each PVS), a regression CNN,
and a Frangi vesselness filter as a baseline. The networks were trained on synthetic T2-weighted
images with synthetic PVS of known number (no manual labels). The count of a region is the
estimated number of PVS whose centre lies in it; the primary count per region is the method named
in the model card shipped with the software. Network weights (sha256): {digest}. Quality checks
(inputs, registration, anatomy, counting) gave each participant a status of pass, warn or fail;
participants that failed were excluded from group statistics.
"""


# ---- DICOM to BIDS ------------------------------------------------------------------------------

def dicom_to_bids(dicom_dir: Path, bids_dir: Path, subject: str, session: str | None = None,
                  t1_series: str | None = None, t2_series: str | None = None, t1_dir: Path | None = None,
                  overwrite: bool = False) -> dict[str, Path]:
    """Convert one subject's DICOM T2 (and T1, when ``t1_series`` or ``t1_dir`` is given) into
    ``bids_dir`` as ``sub-<subject>[_ses-<session>]_T2w.nii.gz`` (+ dcm2niix's JSON sidecar, without
    patient name or ID); creates ``dataset_description.json`` when missing. Returns the images written."""
    import tempfile

    from ..errors import OutputExistsError
    from ..pipeline.dicom import dicom_to_nifti

    subject, session = subject.removeprefix("sub-"), (session or "").removeprefix("ses-") or None
    for label, what in ((subject, "subject"), (session, "session")):
        if label is not None and not label.isalnum():
            raise InputDatasetError(f"BIDS {what} label {label!r} must be letters and digits only")
    folder = bids_dir / f"sub-{subject}" / (f"ses-{session}" if session else "") / "anat"
    prefix = f"sub-{subject}" + (f"_ses-{session}" if session else "")
    jobs = [("T2w", dicom_dir, t2_series)]
    if t1_series is not None or t1_dir is not None:
        jobs.insert(0, ("T1w", t1_dir or dicom_dir, t1_series))
    targets = {suffix: folder / f"{prefix}_{suffix}.nii.gz" for suffix, _, _ in jobs}
    existing = [str(p) for p in targets.values() if p.exists()]
    if existing and not overwrite:
        raise OutputExistsError(f"{', '.join(existing)} exist(s); use --overwrite to replace")
    written: dict[str, Path] = {}
    with tempfile.TemporaryDirectory(prefix="pvsquant-dicom2bids-") as work:
        converted = {suffix: dicom_to_nifti(source, Path(work) / suffix, series, role=suffix[:2])
                     for suffix, source, series in jobs}  # all checked before anything is written
        if not (bids_dir / "dataset_description.json").is_file():
            bids_dir.mkdir(parents=True, exist_ok=True)
            write_json({"Name": "converted by pvsquant dicom2bids", "BIDSVersion": BIDS_VERSION,
                        "DatasetType": "raw"}, bids_dir / "dataset_description.json")
        folder.mkdir(parents=True, exist_ok=True)
        for suffix, c in converted.items():
            shutil.copy2(c.nifti, targets[suffix])
            sidecar = json.loads(c.sidecar.read_text()) if c.sidecar and c.sidecar.is_file() else dict(c.header)
            write_json(sidecar, targets[suffix].with_name(f"{prefix}_{suffix}.json"))
            written[suffix] = targets[suffix]
            log.info("%s: %s -> %s (%s)", c.folder, c.series.label(), targets[suffix], c.scanner)
    return written
