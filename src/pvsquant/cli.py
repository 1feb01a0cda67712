"""Command-line interface: argument parsing only; the work is in pipeline.run_subject()."""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import tempfile
from importlib import resources
from pathlib import Path

from . import __version__
from .errors import InputFileNotFoundError, InputSettingsError, OutputExistsError, PvsError
from .io import is_run_folder
from .labels import METHODS, REGION_CODES
from .types import Settings, SubjectInputs

log = logging.getLogger("pvsquant")


def example_inputs() -> SubjectInputs:
    """The example patient shipped in the package (open_ms_data, CC BY; see data/example/ATTRIBUTION.md)."""
    base = resources.files("pvsquant") / "data" / "example"
    return SubjectInputs(t1=Path(str(base / "sub-example_T1w.nii.gz")),
                         t2=Path(str(base / "sub-example_T2w.nii.gz")), subject_id="sub-example")


def _is_demo_output(path: Path) -> bool:
    try:
        return json.loads((path / "qc.json").read_text()).get("subject") == "sub-example"
    except (OSError, ValueError):
        return False


def slice_thickness_option(value: str) -> float | str:
    """--match-slice-thickness: a number of mm, or 'auto' (pvsquant bids)."""
    if value.strip().lower() == "auto":
        return "auto"
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a slice thickness in mm or 'auto', not {value!r}") from None


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--settings", metavar="FILE|JSON",
                   help="settings.json of an earlier run, which reproduces that run, or a JSON file or inline "
                        "JSON object holding only the settings to change, e.g. '{\"csf\": {\"enabled\": false}}'; "
                        "the options below override it")
    p.add_argument("--segmenter", choices=["atlas", "samseg"],
                   help="how to label the T1: shipped atlas registered with ANTs (default, ~1 min) or "
                        "FreeSurfer's SAMSEG (external run_samseg, ~5 min)")
    p.add_argument("--threads", type=int, help="CPU threads (default 2)")
    p.add_argument("--match-slice-thickness", type=slice_thickness_option, metavar="MM",
                   help="count on the T2 averaged along its slices to look MM thick: for cohorts of mixed "
                        "protocols, the thickest T2 slices among them (counts depend on the slice thickness; "
                        "default: the native slices); pvsquant bids also takes 'auto': the thickest T2 of the "
                        "subjects it runs")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("-v", "--verbose", action="store_true", help="more detail in the log")


def settings_from_args(args: argparse.Namespace) -> Settings:
    """The run's Settings: ``--settings FILE|JSON`` (or the defaults), then the options given on the command line."""
    settings = Settings.from_json(args.settings) if args.settings else Settings()
    changes: dict[str, object] = {}
    if args.segmenter is not None:
        changes["segmenter"] = args.segmenter
    if args.threads is not None:
        changes["threads"] = args.threads
    if args.match_slice_thickness == "auto":
        if args.command != "bids":
            raise InputSettingsError("--match-slice-thickness auto is for pvsquant bids (the thickest T2 of its "
                                     "subjects); for one run give the thickness in mm, e.g. 4")
    elif args.match_slice_thickness is not None:
        changes["match_slice_thickness_mm"] = args.match_slice_thickness
    if getattr(args, "models", None):
        changes["models_dir"] = str(args.models)
    try:
        return dataclasses.replace(settings, **changes)  # type: ignore[arg-type]
    except ValueError as exc:
        raise InputSettingsError(f"command-line options: {exc}") from exc


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pvsquant", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--version", action="version", version=f"pvsquant {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="one subject: T1 + T2 -> regions and network inputs")
    run.add_argument("--t1", type=Path, help="T1-weighted NIfTI, or a folder of DICOM files (leave out when there "
                     "is none: the anatomy then comes from the T2, less accurately; qc.json says anatomy_from T2)")
    run.add_argument("--t2", required=True, type=Path, help="T2-weighted NIfTI, or a folder of DICOM files "
                     "(converted with dcm2niix)")
    run.add_argument("--t1-series", metavar="SERIES", help="the series to use when the --t1 DICOM folder holds "
                     "several: its number, SeriesInstanceUID or description")
    run.add_argument("--t2-series", metavar="SERIES", help="the same for --t2")
    run.add_argument("--out", required=True, type=Path, help="output folder (created; must not exist)")
    run.add_argument("--labels", type=Path, help="your own aseg-coded label map on the T1 (skips segmentation)")
    run.add_argument("--flair", type=Path, help="FLAIR NIfTI (optional): registered rigidly to the T2, it finds "
                     "white-matter lesions, which are left out of the count (lesions.nii.gz)")
    run.add_argument("--subject", help="subject id for reports (default: output folder name)")
    _add_common(run)

    run.add_argument("--models", type=Path, help="folder of your own <region>_<model>.pt weights "
                     "(e.g. from pvsquant train or finetune); the shipped weights fill the rest")

    train = sub.add_parser("train", help="train a counting network on synthetic PVS (see MODEL_CARD.md)")
    train.add_argument("--region", required=True, choices=[*list(REGION_CODES), "all"])
    train.add_argument("--model", required=True, choices=["cnn", "gpunet"])
    train.add_argument("--out", required=True, type=Path, help="run folder: weights, checkpoint, log (resumes)")
    train.add_argument("--cache", type=Path, help="folder of cached synthetic samples (made when missing; "
                       "default OUT/cache)")
    train.add_argument("--maps", type=Path, help="folder of aseg-coded label maps to synthesise from "
                       "(default: SynthSeg's training maps in ../shared/data, or $PVSQUANT_LABEL_MAPS)")
    train.add_argument("--samples", type=int, default=400, help="synthetic training patches per region")
    train.add_argument("--val-samples", type=int, default=50, help="held-out patches per region (other maps)")
    train.add_argument("--max-density", type=float, default=3.0, help="highest synthetic PVS density (PVS per ml) "
                       "of a training patch (log-uniform from 0.05; default 3); use a new --cache when changing it")
    train.add_argument("--min-visibility", type=float, default=0.0,
                       help="label a synthetic PVS only when its peak partial-volume fraction in the simulated scan's "
                       "voxels reaches this (0-1; default 0: every PVS); use a new --cache when changing it")
    train.add_argument("--val-maps", type=int, default=2, help="how many label maps are held out for validation")
    train.add_argument("--background", nargs=2, action="append", type=Path, metavar=("T1", "T2"),
                       help="a real T1/T2 pair to inject synthetic PVS into (repeat for several; see "
                       "MODEL_CARD.md); keep the scans you evaluate on out of it")
    train.add_argument("--background-samples", type=int, default=300, help="real-background patches per region")
    train.add_argument("--background-fraction", type=float, default=0.35,
                       help="share of each batch taken from the real backgrounds (with --background)")
    train.add_argument("--steps", type=int, default=800)
    train.add_argument("--batch-size", type=int, default=8)
    train.add_argument("--lr", type=float, default=2e-3)
    train.add_argument("--density-weight", type=float, default=1e5, help="GP-Unet: weight of the density loss")
    train.add_argument("--count-weight", type=float, default=1e-4,
                       help="GP-Unet: weight of the image-level count loss (the paper's only loss)")
    train.add_argument("--outside-weight", type=float, default=0.0,
                       help="GP-Unet with --background: train the clean real scans' attention to 0 outside the "
                            "region (weight relative to the density loss; 0: off)")
    train.add_argument("--floor-weight", type=float, default=0.0,
                       help="GP-Unet with --background: train the clean real scans' faint attention in the counting "
                            "mask (|value| < 5e-4 PVS per voxel, TrainSettings.floor_level) to 0, in PVS per patch "
                            "(0: off)")
    train.add_argument("--init", type=Path, help="start from these weights (e.g. a GP-Unet for a CNN)")
    train.add_argument("--minutes", type=float, help="stop after this many minutes (a checkpoint is kept)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    train.add_argument("--threads", type=int, default=2)
    train.add_argument("-v", "--verbose", action="store_true")

    evaluate = sub.add_parser("evaluate", help="a cohort's counts against visual scores: the paper's tables and "
                              "figures (Pearson r, ICC, MAE, Bland-Altman, Williams' test, Bonferroni)")
    evaluate.add_argument("--scores", required=True, type=Path, help="visual.tsv: subject, region, rater1, "
                          "[rater2], [scanner], [other columns, kept]")
    source = evaluate.add_mutually_exclusive_group(required=True)
    source.add_argument("--results", type=Path, nargs="+", help="pvsquant run output folders (folder name = subject)")
    source.add_argument("--counts", type=Path, help="one table: subject, region, model, count")
    evaluate.add_argument("--out", required=True, type=Path, help="output folder (created; must not exist)")
    evaluate.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    evaluate.add_argument("-v", "--verbose", action="store_true")

    finetune = sub.add_parser("finetune", help="fine-tune the networks' output layer on your visual scores, "
                              "with cross-validation (out-of-fold gain reported); use with pvsquant run --models")
    finetune.add_argument("--scores", required=True, type=Path, help="visual.tsv: subject, region, rater1, ...")
    finetune.add_argument("--results", required=True, type=Path, nargs="+",
                          help="pvsquant run output folders (folder name = subject)")
    finetune.add_argument("--out", required=True, type=Path, help="model folder to write (created; must not exist)")
    finetune.add_argument("--models", type=Path, help="start from these weights instead of the shipped ones")
    finetune.add_argument("--region", choices=[*list(REGION_CODES), "all"], default="all",
                          help="fine-tune this region's networks only (default: every region with scores)")
    finetune.add_argument("--folds", type=int, default=5, help="cross-validation folds (default 5)")
    finetune.add_argument("--seed", type=int, default=0)
    finetune.add_argument("--threads", type=int, default=2)
    finetune.add_argument("--overwrite", action="store_true", help="replace an existing model folder")
    finetune.add_argument("-v", "--verbose", action="store_true")

    report = sub.add_parser("report", help="(re)build report.html of pvsquant run output folders")
    report.add_argument("out_dirs", type=Path, nargs="+", help="pvsquant run output folders")
    report.add_argument("-v", "--verbose", action="store_true")

    bids = sub.add_parser("bids", help="a BIDS dataset, as a BIDS-App: participant level (every subject, on Dask "
                          "workers; resumable) then group level (one table, failed subjects, cohort report)")
    bids.add_argument("bids_dir", type=Path, help="the BIDS dataset (with dataset_description.json)")
    bids.add_argument("output_dir", type=Path, help="the derivative dataset to write (outside BIDS_DIR, or "
                      "under BIDS_DIR/derivatives/)")
    bids.add_argument("analysis_level", choices=["participant", "group"])
    bids.add_argument("--participant-label", nargs="+", metavar="LABEL", help="subjects to process (default all; "
                      "with or without 'sub-')")
    bids.add_argument("--session-label", nargs="+", metavar="LABEL", help="sessions to process (default all)")
    bids.add_argument("--t1-filter", metavar="JSON", help="BIDS entities choosing the T1w, e.g. "
                      "'{\"acquisition\": \"mprage\"}' (or a file holding them)")
    bids.add_argument("--t2-filter", metavar="JSON", help="BIDS entities choosing the T2w, e.g. '{\"run\": 2}'")
    bids.add_argument("--workers", type=int, default=1, help="local Dask worker processes (default 1; each needs "
                      "~2.5 GB of memory)")
    bids.add_argument("--scheduler", metavar="ADDRESS", help="an existing Dask scheduler (tcp://host:8786) "
                      "instead of local workers, e.g. one whose workers dask-jobqueue started on SLURM/PBS")
    bids.add_argument("--allow-t2-only", action="store_true", help="process subjects without a T1w from the T2w "
                      "alone (less accurate small structures; default: list them as failed)")
    bids.add_argument("--scores", type=Path, help="group level: visual.tsv of visual scores (subject = sub-<label> or "
                      "sub-<label>_ses-<label>): also runs pvsquant evaluate into OUTPUT_DIR/group_evaluation")
    bids.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_common(bids)

    d2b = sub.add_parser("dicom2bids", help="DICOM series of one subject into a BIDS dataset (dcm2niix), ready "
                         "for pvsquant bids")
    d2b.add_argument("dicom_dir", type=Path, help="folder of the subject's DICOM files (a series or a whole study)")
    d2b.add_argument("bids_dir", type=Path, help="the BIDS dataset to add to (created when missing)")
    d2b.add_argument("--subject", required=True, help="BIDS subject label (letters and digits)")
    d2b.add_argument("--session", help="BIDS session label")
    d2b.add_argument("--t2-series", metavar="SERIES", help="the T2 series: number, SeriesInstanceUID or description "
                     "(needed when the folder holds several)")
    d2b.add_argument("--t1-series", metavar="SERIES", help="the T1 series (leave out for no T1)")
    d2b.add_argument("--t1-dir", type=Path, help="the T1's DICOM folder, when it is not DICOM_DIR")
    d2b.add_argument("--overwrite", action="store_true", help="replace this subject's converted images")
    d2b.add_argument("-v", "--verbose", action="store_true")

    demo = sub.add_parser("demo", help="run the pipeline on the example patient shipped in the package")
    demo.add_argument("--out", type=Path, default=Path("pvsquant_demo"), help="output folder (default ./pvsquant_demo)")
    demo.add_argument("--cohort", type=int, metavar="N", help="instead: a demo cohort of the example plus N synthetic "
                      "cases with known PVS counts standing in for visual scores, then pvsquant evaluate and "
                      "pvsquant finetune on it (about 40 s per case; resumable)")
    demo.add_argument("--seed", type=int, default=2026, help="seed of the demo cohort")
    _add_common(demo)
    return parser


def train_command(args: argparse.Namespace) -> int:
    """pvsquant train: cache synthetic samples (resumable), then train (resumable)."""
    from .learning.training import TrainSettings, train
    from .learning.trainingdata import default_label_maps, generate_dataset, generate_validation_dataset

    for path in (p for pair in args.background or [] for p in pair):
        if not path.is_file():
            log.error("--background: %s is not a file", path)
            return 1
    for flag in ("count_weight", "density_weight", "outside_weight", "floor_weight", "background_fraction"):
        if getattr(args, flag) < 0:
            log.error("--%s must be 0 or more, got %g", flag.replace("_", "-"), getattr(args, flag))
            return 1
    if not 0 <= args.min_visibility <= 1:
        log.error("--min-visibility is a partial-volume fraction (0 to 1), got %g", args.min_visibility)
        return 1
    if args.background_fraction > 1:
        log.error("--background-fraction is a share of each batch (0 to 1), got %g", args.background_fraction)
        return 1
    if (args.outside_weight > 0 or args.floor_weight > 0) and not (args.background and args.model == "gpunet"):
        log.error("--outside-weight and --floor-weight train the GP-Unet's clean pass on real backgrounds: it needs "
                  "--model gpunet and --background T1 T2")
        return 1
    maps = sorted(args.maps.glob("*.nii*")) if args.maps else default_label_maps()
    if len(maps) <= args.val_maps:
        log.error("need more than %d label maps (*.nii, *.nii.gz) in %s, found %d", args.val_maps,
                  args.maps or "the default folder", len(maps))
        return 1
    cache = args.cache or args.out / "cache"
    regions = list(REGION_CODES) if args.region == "all" else [args.region]
    for region in regions:
        generate_dataset(maps[: len(maps) - args.val_maps], region, args.samples, cache / "train", seed=args.seed,
                         workers=args.threads, max_density_per_ml=args.max_density,
                         min_visibility=args.min_visibility)
        generate_validation_dataset(maps, region, args.val_samples, cache / "val", seed=args.seed,
                                    val_maps=args.val_maps, workers=args.threads, max_density_per_ml=args.max_density,
                                    min_visibility=args.min_visibility)
    real_dir = None
    if args.background:
        from .learning.backgrounds import background_file, generate_background_dataset, prepare_background
        from .types import Settings

        case_files = []
        for t1, t2 in args.background:
            print(f"preparing real background {t2} (registration, anatomy, regions)", flush=True)
            prepare_background(t1, t2, cache, Settings(threads=args.threads))
            case_files.append(background_file(t2, cache))
        real_dir = cache / "train_real"
        for region in regions:
            generate_background_dataset(case_files, region, args.background_samples, real_dir, seed=args.seed,
                                        workers=args.threads, max_density_per_ml=args.max_density,
                                        min_visibility=args.min_visibility)
    settings = TrainSettings(region=args.region, model=args.model, steps=args.steps, batch_size=args.batch_size,
                             learning_rate=args.lr, density_weight=args.density_weight,
                             count_weight=args.count_weight, seed=args.seed,
                             threads=args.threads, max_minutes=args.minutes,
                             init=str(args.init) if args.init else None,
                             background_fraction=args.background_fraction if real_dir else 0.0,
                             outside_weight=args.outside_weight, floor_weight=args.floor_weight,
                             extra={"samples": args.samples, "max_density": args.max_density,
                                    "min_visibility": args.min_visibility,
                                    "backgrounds": [[str(t1), str(t2)] for t1, t2 in args.background or []],
                                    "background_samples": args.background_samples if real_dir else 0})
    result = train(settings, cache / "train", args.out, val_dir=cache / "val", device=args.device,
                   background_dir=real_dir)
    print(json.dumps({k: result[k] for k in ("steps_done", "train_seconds", "validation") if k in result}))
    return 0


def evaluate_command(args: argparse.Namespace) -> int:
    """pvsquant evaluate: tables, figures and evaluation.html of a cohort."""
    from .cohort.evaluate import evaluate_cohort

    result = evaluate_cohort(args.scores, args.out, results=args.results, counts_path=args.counts,
                             overwrite=args.overwrite)
    print(result["summary"])
    print(f"written: {args.out} (open {args.out / 'evaluation.html'})")
    return 0


def finetune_command(args: argparse.Namespace) -> int:
    """pvsquant finetune: cross-validated fine-tuning, then weights for pvsquant run --models."""
    from .learning.finetune import FinetuneSettings, finetune_cohort, summary_markdown

    regions = tuple(REGION_CODES) if args.region == "all" else (args.region,)
    settings = FinetuneSettings(folds=args.folds, seed=args.seed, threads=args.threads, regions=regions)
    summary = finetune_cohort(args.scores, args.results, args.out, models_dir=str(args.models) if args.models else None,
                              settings=settings, overwrite=args.overwrite)
    print(summary_markdown(summary))
    print(f"written: {args.out}; use it with: pvsquant run --models {args.out} ...")
    return 0


def demo_cohort_command(args: argparse.Namespace) -> int:
    """pvsquant demo --cohort N: synthetic cohort from the example, its evaluation and a cross-validated fine-tune."""
    from .cohort.evaluate import evaluate_cohort
    from .demo import make_demo_cohort
    from .learning.finetune import FinetuneSettings, finetune_cohort, summary_markdown

    out = args.out
    if out.exists() and any(out.iterdir()) and not (out / "results").is_dir():
        raise OutputExistsError(f"{out} exists and is not a demo cohort folder; choose another --out")
    settings = settings_from_args(args)
    cohort = make_demo_cohort(out, example_inputs(), args.cohort, settings, seed=args.seed)
    evaluation = evaluate_cohort(cohort["scores"], out / "evaluation", results=cohort["results"], overwrite=True)
    print(evaluation["summary"])
    summary = finetune_cohort(cohort["scores"], cohort["results"], out / "finetuned_models",
                              settings=FinetuneSettings(threads=settings.threads, seed=args.seed), overwrite=True)
    print(summary_markdown(summary))
    print(f"done: {out} (open {out / 'evaluation' / 'evaluation.html'}; per subject: results/<subject>/report.html)")
    return 0


def resolve_run_inputs(args: argparse.Namespace, work: Path) -> tuple[SubjectInputs, dict | None]:
    """``pvsquant run``'s inputs, DICOM folders converted into ``work``; with what qc.json should
    record of the conversion (scanner, series, header fields) or None for NIfTI inputs."""
    from .pipeline.dicom import resolve_input

    if args.t1_series and args.t1 is None:
        raise InputSettingsError("--t1-series needs --t1 (a DICOM folder)")
    t2, t2_dicom = resolve_input(args.t2, work, args.t2_series, role="T2")
    t1, t1_dicom = resolve_input(args.t1, work, args.t1_series, role="T1") if args.t1 else (None, None)
    inputs = SubjectInputs(t1=t1, t2=t2, labels=args.labels, subject_id=args.subject or args.out.name,
                           flair=args.flair)
    converted = {role: c for role, c in (("t1", t1_dicom), ("t2", t2_dicom)) if c is not None}
    if not converted:
        return inputs, None
    for role, c in converted.items():
        log.info("%s: %s converted from %s (%s)", role.upper(), c.series.label(), c.folder, c.scanner)
        for warning in c.warnings:
            log.info("  dcm2niix: %s", warning)
    dicom = {role: {"folder": str(c.folder), "series_number": c.series.number, "series_uid": c.series.uid,
                    "description": c.series.description, "n_files": c.series.n_files, "header": c.header,
                    "warnings": list(c.warnings)} for role, c in converted.items()}
    scanner = (converted.get("t2") or converted["t1"]).scanner
    return inputs, {"scanner": scanner, "dicom": dicom}


def dicom2bids_command(args: argparse.Namespace) -> int:
    from .cohort.bids import dicom_to_bids

    written = dicom_to_bids(args.dicom_dir, args.bids_dir, args.subject, args.session, t1_series=args.t1_series,
                            t2_series=args.t2_series, t1_dir=args.t1_dir, overwrite=args.overwrite)
    for suffix, path in written.items():
        print(f"{suffix}: {path}")
    return 0


def bids_command(args: argparse.Namespace) -> int:
    """pvsquant bids BIDS_DIR OUTPUT_DIR participant|group."""
    from .cohort.bids import parse_filter

    filters = {"t1_filter": parse_filter(args.t1_filter, "--t1-filter"),
               "t2_filter": parse_filter(args.t2_filter, "--t2-filter")}
    selection = {"participant_labels": args.participant_label, "session_labels": args.session_label, **filters}
    if args.analysis_level == "group":
        from .cohort.bidsapp import group_level

        result = group_level(args.bids_dir, args.output_dir, scores=args.scores, **selection)
        print(f"written: {args.output_dir / 'group_counts.tsv'}, {args.output_dir / 'group_failed.tsv'} "
              f"({len(result['failed'])} failed); open {args.output_dir / 'group_report.html'}")
        return 0
    from .cohort.bidsapp import participant_level, summary_line

    settings = settings_from_args(args)
    if args.threads is None:  # one thread per worker: subjects run in parallel instead
        settings = dataclasses.replace(settings, threads=1)
    if args.workers < 1:
        raise InputSettingsError(f"--workers must be at least 1, got {args.workers}")
    outcomes = participant_level(args.bids_dir, args.output_dir, settings, workers=args.workers,
                                 scheduler=args.scheduler, allow_t2_only=args.allow_t2_only,
                                 progress=not args.no_progress,
                                 match_thickest_slices=args.match_slice_thickness == "auto", **selection)
    print(summary_line(outcomes))
    for o in outcomes:
        if o.status == "failed":
            print(f"  FAILED {o.key}: {o.error} (log: {args.output_dir / 'logs' / (o.key + '.log')})")
    print(f"then: pvsquant bids {args.bids_dir} {args.output_dir} group")
    return 1 if any(o.status == "failed" for o in outcomes) else 0


def report_command(args: argparse.Namespace) -> int:
    from .reporting.report import write_report

    for folder in args.out_dirs:
        if not is_run_folder(folder):
            raise InputFileNotFoundError(f"{folder} is not a pvsquant run output: {folder / 'qc.json'} does not exist")
        print(write_report(folder))
    return 0


COMMANDS = {"train": train_command, "evaluate": evaluate_command, "finetune": finetune_command,
            "report": report_command, "demo-cohort": demo_cohort_command,
            "bids": bids_command, "dicom2bids": dicom2bids_command}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # -v: pvsquant's own detail; the libraries' debug chatter (matplotlib's font search, numba's
    # compiler, PIL) stays out of the log either way.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(message)s", datefmt="%H:%M:%S")
    if args.verbose:
        logging.getLogger("pvsquant").setLevel(logging.DEBUG)
    for noisy in ("matplotlib", "PIL", "h5py", "distributed", "bids", "bidsschematools", "tornado", "numba"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.command == "demo" and args.cohort:
        args.command = "demo-cohort"
    if args.command in COMMANDS:
        try:
            return COMMANDS[args.command](args)
        except (PvsError, FileNotFoundError) as exc:
            log.error("%s: %s", type(exc).__name__, exc)
            return 1
    from .pipeline.run import run_subject  # heavy imports after argument parsing

    try:
        settings = settings_from_args(args)
    except PvsError as exc:
        log.error("%s: %s", type(exc).__name__, exc)
        return 1
    overwrite = args.overwrite
    if args.command == "demo":  # re-running the demo replaces its own earlier output, never anything else
        overwrite = overwrite or _is_demo_output(args.out)
    try:
        with tempfile.TemporaryDirectory(prefix="pvsquant-dicom-") as work:
            extra_qc = None
            if args.command == "demo":
                inputs = example_inputs()
            else:
                inputs, extra_qc = resolve_run_inputs(args, Path(work))
            result = run_subject(inputs, args.out, settings, overwrite=overwrite, extra_qc=extra_qc)
    except PvsError as exc:
        log.error("%s: %s", type(exc).__name__, exc)
        return 1
    print(f"done: {result.out_dir} (QC {result.qc['status']}; regions "
          + ", ".join(f"{k} {v:.1f} ml" for k, v in result.qc["regions"]["volumes_ml"].items()) + ")")
    counts = {(row["region"], row["model"]): row["count"] for row in result.qc.get("counts", [])}
    primary = result.qc.get("primary_counts", {})
    for region in REGION_CODES:
        main = primary.get(region, {}).get("model", "gpunet")
        value = counts.get((region, main))
        others = ", ".join(f"{m} {'n/a' if counts.get((region, m)) is None else counts[(region, m)]}"
                           for m in METHODS if m != main)
        print(f"  PVS count {region:18s} {'n/a' if value is None else value} ({main}; secondary: {others})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
