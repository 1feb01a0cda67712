"""Command-line interface: argument parsing only; the work is in pipeline.run_subject()."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from importlib import resources
from pathlib import Path

from . import __version__
from .errors import PvsError
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


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--segmenter", choices=["atlas", "samseg"], default="atlas",
                   help="how to label the T1: shipped atlas registered with ANTs (default, ~1 min) or "
                        "FreeSurfer's SAMSEG (external run_samseg, ~5 min)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("-v", "--verbose", action="store_true", help="more detail in the log")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pvsquant", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--version", action="version", version=f"pvsquant {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="one subject: T1 + T2 -> regions and network inputs")
    run.add_argument("--t1", required=True, type=Path, help="T1-weighted NIfTI")
    run.add_argument("--t2", required=True, type=Path, help="T2-weighted NIfTI")
    run.add_argument("--out", required=True, type=Path, help="output folder (created; must not exist)")
    run.add_argument("--labels", type=Path, help="your own aseg-coded label map on the T1 (skips segmentation)")
    run.add_argument("--subject", help="subject id for reports (default: output folder name)")
    _add_common(run)

    demo = sub.add_parser("demo", help="run the pipeline on the example patient shipped in the package")
    demo.add_argument("--out", type=Path, default=Path("pvsquant_demo"), help="output folder (default ./pvsquant_demo)")
    _add_common(demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)-7s %(message)s", datefmt="%H:%M:%S")
    if not args.verbose:
        for noisy in ("matplotlib", "PIL", "h5py"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    from .pipeline import run_subject  # heavy imports after argument parsing

    settings = Settings(segmenter=args.segmenter, threads=args.threads)
    overwrite = args.overwrite
    if args.command == "demo":
        inputs = example_inputs()
        # Re-running the demo replaces its own earlier output, never anything else.
        overwrite = overwrite or _is_demo_output(args.out)
    else:
        inputs = SubjectInputs(t1=args.t1, t2=args.t2, labels=args.labels, subject_id=args.subject or args.out.name)
    try:
        result = run_subject(inputs, args.out, settings, overwrite=overwrite)
    except PvsError as exc:
        log.error("%s: %s", type(exc).__name__, exc)
        return 1
    print(f"done: {result.out_dir} (QC {result.qc['status']}; regions "
          + ", ".join(f"{k} {v:.1f} ml" for k, v in result.qc["regions"]["volumes_ml"].items()) + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
