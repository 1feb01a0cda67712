"""report.html: one self-contained page per subject (images embedded) that a clinician opens
in any browser, offline. Built only from the files of a ``pvsquant run`` output folder, so it
can be rebuilt later with ``pvsquant report OUTDIR``."""
from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from ..io import atomic_file
from ..labels import METHOD_TITLES, REGION_CODES

MODEL_LABELS = {**METHOD_TITLES, "frangi": "Frangi baseline"}
POTTER_REGIONS = ("centrum_semiovale", "basal_ganglia")
FIGURES = (
    ("regions.png", "Counting regions outlined on the T2"),
    ("attention.png", "Per region, as in Dubost et al. Fig. 2: T2 input, GP-Unet attention map with the "
                      "region's contour, and their overlay with detected PVS circled"),
    ("pvs.png", "Detected PVS (cyan circles) on the slices where most of them lie"),
    ("registration.png", "Registration check: edges of the registered T1 (red) over the T2"),
    ("roi.png", "Network inputs: T2 resampled to 0.5 x 0.5 x 0.8 mm, masked and normalised"),
)

STYLE = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 24px auto; max-width: 1150px;
       color: #1d1d1f; background: #fff; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.2em; border-bottom: 1px solid #ddd; padding-top: 0.6em; }
table { border-collapse: collapse; margin: 0.6em 0; } td, th { border: 1px solid #ccc; padding: 4px 10px; }
th { background: #f2f2f2; text-align: left; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.status { display: inline-block; padding: 2px 12px; border-radius: 10px; color: #fff; font-weight: bold; }
.pass { background: #2e7d32; } .warn { background: #ef8c00; } .fail { background: #c62828; }
.banner { background: #fff3cd; border: 1px solid #e0b000; padding: 8px 12px; margin: 10px 0; }
.banner.failed { background: #c62828; border-color: #8e0000; color: #fff; font-weight: bold; }
.note { color: #555; font-size: 0.9em; } figure { margin: 0.8em 0; } figure img { max-width: 100%; }
figcaption { color: #444; font-size: 0.9em; }
"""


def potter_category(count: float | None) -> int | None:
    """Potter et al. (2015) PVS rating band of a count: 0 none, 1: 1-10, 2: 11-20, 3: 21-40, 4: > 40."""
    if count is None:
        return None
    n = round(count)
    if n <= 0:
        return 0
    return 1 if n <= 10 else 2 if n <= 20 else 3 if n <= 40 else 4


def embed_png(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _esc(value: Any) -> str:
    return html.escape(str(value))


def _fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def counts_table(qc: dict[str, Any]) -> str:
    counts = {(r["region"], r["model"]): r["count"] for r in qc.get("counts", [])}
    detected = qc.get("detected_pvs", {})
    primary = qc.get("primary_counts", {})
    head = "".join(f"<th>{m}</th>" for m in MODEL_LABELS.values())
    rows = [f"<tr><th>region</th><th>PVS count</th>{head}<th>detected PVS</th><th>category</th></tr>"]
    for region in REGION_CODES:
        main = primary.get(region, {"model": "gpunet", "count": counts.get((region, "gpunet"))})
        cells = "".join(
            f'<td class="num">{_fmt(counts.get((region, m)), 0 if m == "frangi" else 1)}</td>' for m in MODEL_LABELS
        )
        category = potter_category(main["count"]) if region in POTTER_REGIONS else None
        result = (
            f'<td class="num"><b>{_fmt(main["count"], 0 if main["model"] == "frangi" else 1)}</b> '
            f'<span class="note">({_esc(MODEL_LABELS.get(main["model"], main["model"]))})</span></td>'
        )
        rows.append(
            f"<tr><td>{region.replace('_', ' ')}</td>{result}{cells}"
            f'<td class="num">{_esc(detected.get(region, "n/a"))}</td>'
            f'<td class="num">{"" if category is None else category}</td></tr>'
        )
    return '<table id="counts">' + "".join(rows) + "</table>"


def header_table(qc: dict[str, Any]) -> str:
    inputs = qc.get("inputs", {})
    models = qc.get("models", {})
    user = sorted({str(Path(p).parent) for p in models.values() if p and "pvsquant/data/models" not in p})
    dicom = qc.get("dicom", {})

    def source(role: str) -> Any:
        if role in dicom:  # converted from DICOM: the series, not the temporary NIfTI
            d = dicom[role]
            return f"{d.get('folder')} (DICOM series {d.get('series_number')} '{d.get('description')}', " \
                   f"{d.get('n_files')} files)"
        return (inputs.get(role) or {}).get("path")

    acquired = next((d.get("header", {}).get(k) for d in dicom.values()
                     for k in ("AcquisitionDateTime", "AcquisitionDate") if d.get("header", {}).get(k)), None)
    rows = [
        ("subject", qc.get("subject")),
        ("T1", source("t1")),
        ("T2", source("t2")),
        *([("scanner", qc["scanner"])] if qc.get("scanner") else []),
        *([("acquired", acquired)] if acquired else []),
        ("T2 voxel size (mm)", " x ".join(f"{v:g}" for v in (inputs.get("t2") or {}).get("spacing_mm", []))),
        *([("slices counted", f"{slices['target_mm']:g} mm: the T2 averaged along its {slices['native_mm']:g} mm "
            "slices (--match-slice-thickness), as the rest of its cohort")]
          if (slices := inputs.get("slices") or {}).get("applied") else []),
        ("processed", qc.get("date", "unknown")),
        ("software", f"pvsquant {qc.get('pvsquant_version')}, torch {qc.get('versions', {}).get('torch', '?')}"),
        (
            "network weights",
            "shipped (synthetic training, see MODEL_CARD.md)"
            if not user
            else "your own from " + ", ".join(user) + " (the shipped weights fill the rest)",
        ),
        ("weights (sha256)", ", ".join(f"{k} {v}" for k, v in qc.get("model_versions", {}).items()) or "unknown"),
        ("anatomy", f"{qc.get('anatomy', {}).get('method')}, from the {qc.get('anatomy_from', 'T1')}"
         + (" (no T1 given: less accurate for small structures)" if qc.get("anatomy_from") == "T2" else "")),
        ("total run time", f"{qc.get('timings_s', {}).get('total', float('nan')):.0f} s"),
    ]
    return "<table>" + "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in rows) + "</table>"


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def qc_section(qc: dict[str, Any]) -> str:
    """QC status (a banner when it failed), the flags, and every quality gate's measured value."""
    status = qc.get("status", "fail")
    flags = qc.get("flags", [])
    items = "".join(f"<li><b>{_esc(f['severity'])}</b> {_esc(f['code'])}: {_esc(f['message'])}</li>" for f in flags)
    reasons = f"<ul>{items}</ul>" if items else "<p>No QC flags.</p>"
    banner = ""
    if status == "fail":
        why = "; ".join(f["message"] for f in flags if f.get("severity") == "fail") or "see the flags below"
        banner = (f'<div class="banner failed" id="qc-banner">QC FAILED: {_esc(why)}. The counts below are not '
                  "reliable; cohort statistics leave this subject out.</div>")
    checks = qc.get("checks", [])
    table = ""
    if checks:
        rows = "".join(
            f'<tr><td>{_esc(c["stage"])}</td><td>{_esc(c["name"])}</td><td class="num">{_number(c["value"])}</td>'
            f'<td><span class="status {_esc(c["status"])}">{_esc(c["status"])}</span></td>'
            f'<td>{_esc(c["message"])}</td></tr>' for c in checks)
        table = ("<details><summary>Quality gates: every measured value and its range</summary>"
                 '<table id="qc-checks"><tr><th>stage</th><th>check</th><th>value</th><th>status</th>'
                 f"<th>what</th></tr>{rows}</table></details>")
    return (f'{banner}<p>QC status: <span class="status {_esc(status)}" id="qc-status">{_esc(status)}</span></p>'
            f"{reasons}{table}")


LESION_METHODS = {"off": "stage switched off", "none": "not searched (no white-matter label)",
                  "t2": "T2 alone", "t2+t1": "T2 and T1", "flair+t2": "FLAIR and T2", "flair+t2+t1": "FLAIR, T2 and T1"}


def lesion_table(qc: dict[str, Any]) -> str:
    """Lesions found and the volume each counting region lost to them (qc.json "lesions")."""
    lesions = qc.get("lesions")
    if not lesions:
        return ""
    method = LESION_METHODS.get(lesions.get("method"), lesions.get("method"))
    if lesions.get("method") in ("off", "none"):
        return f"<p class='note' id='lesions'>White-matter lesions: {_esc(method)}; nothing excluded.</p>"
    volumes = qc.get("regions", {}).get("volumes_ml", {})
    rows = "".join(
        f"<tr><td>{_esc(k.replace('_', ' '))}</td><td class='num'>{v:.2f}</td>"
        f"<td class='num'>{_fmt(volumes.get(k), 1)}</td></tr>" for k, v in lesions.get("excluded_ml", {}).items())
    return (f"<table id='lesions'><tr><th>white-matter lesions and lacunes</th><td class='num'>"
            f"{lesions.get('volume_ml', 0.0):.2f} ml</td><td>found from the {_esc(method)}</td></tr>"
            f"<tr><th>region</th><th>excluded (ml)</th><th>counted volume (ml)</th></tr>{rows}</table>"
            f"<p class='note'>Lesions (lesions.nii.gz), grown by {lesions.get('margin_mm', 0):g} mm, are left out "
            "of the counting regions: they are T2-bright like PVS and would be counted as PVS.</p>")


def csf_table(qc: dict[str, Any]) -> str:
    """The volume each counting region lost to the CSF spaces next to it (qc.json "csf")."""
    csf = qc.get("csf")
    if not csf:
        return ""
    if not csf.get("enabled"):
        return "<p class='note' id='csf'>CSF next to the regions: stage switched off; nothing excluded.</p>"
    rows = "".join(f"<tr><td>{_esc(k.replace('_', ' '))}</td><td class='num'>{v:.2f}</td></tr>"
                   for k, v in csf.get("excluded_ml", {}).items())
    return (f"<table id='csf'><tr><th>CSF next to the regions</th><td>CSF / white matter on the T2: "
            f"{_fmt(csf.get('csf_to_wm_ratio'), 2)}</td></tr><tr><th>region</th><th>excluded (ml)</th></tr>{rows}"
            f"</table><p class='note'>The third ventricle, cisterns and temporal horns (T2-bright, wider than a "
            f"{csf.get('ball_diameter_mm', 0):g} mm ball) and the ventricles, grown by {csf.get('margin_mm', 0):g} mm, "
            "are left out of the counting regions: their rim is as bright as a PVS at thick slices.</p>")


def build_report(out_dir: Path) -> str:
    """The HTML text of ``out_dir``'s report."""
    qc = json.loads((out_dir / "qc.json").read_text())
    volumes = qc.get("regions", {}).get("volumes_ml", {})
    parts = [
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>PVS report: {_esc(qc.get('subject'))}</title><style>{STYLE}</style></head><body>",
        f"<h1>Enlarged perivascular spaces: {_esc(qc.get('subject'))}</h1>",
    ]
    synthetic = qc.get("synthetic")
    if synthetic:
        parts.append(
            f"<div class='banner' id='synthetic'><b>Synthetic case</b> (demo cohort): "
            f"{_esc(synthetic.get('description', ''))}</div>"
        )
    parts += [
        header_table(qc),
        "<h2>Quality control</h2>",
        qc_section(qc),
        "<h2>PVS counts</h2>",
        counts_table(qc),
        "<p class='note'>Counts are numbers of PVS in the whole 3D region (GP-Unet and CNN: sum of the "
        "network's output; Frangi: connected components of a vesselness filter). <b>PVS count</b> is the "
        "result of each region: the method that did best on pvsquant's counting benchmark for that region "
        "(MODEL_CARD.md); the other columns are secondary. The category applies the "
        "Potter et al. (2015) bands (0 none, 1: 1-10, 2: 11-20, 3: 21-40, 4: &gt;40) to that count; "
        "a rater applies them to one slice, so it is indicative, not a rating. The networks were trained on "
        "synthetic PVS only and are not calibrated against visual scores (see <code>pvsquant finetune</code>)."
        " Research use; not for diagnosis.</p>",
        "<table><tr><th>region</th><th>volume (ml)</th></tr>"
        + "".join(
            f"<tr><td>{_esc(k.replace('_', ' '))}</td><td class='num'>{v:.1f}</td></tr>" for k, v in volumes.items()
        )
        + "</table>",
        lesion_table(qc),
        csf_table(qc),
        "<h2>Figures</h2>",
    ]
    for name, caption in FIGURES:
        if (out_dir / name).is_file():
            parts.append(
                f"<figure><img alt='{_esc(name)}' src='{embed_png(out_dir / name)}'>"
                f"<figcaption>{_esc(caption)} ({_esc(name)})</figcaption></figure>"
            )
    timings = ", ".join(f"{k} {v:.1f} s" for k, v in qc.get("timings_s", {}).items())
    parts.append(
        f"<h2>Run</h2><p class='note'>Stage times: {_esc(timings)}. Peak memory "
        f"{qc.get('peak_memory_mb', float('nan')):.0f} MB. Every number above is in qc.json, counts.tsv "
        "and pvs.tsv next to this file.</p></body></html>"
    )
    return "\n".join(parts)


def write_report(out_dir: str | Path) -> Path:
    """Write ``out_dir/report.html`` from the folder's qc.json and figures."""
    out_dir = Path(out_dir)
    path = out_dir / "report.html"
    with atomic_file(path) as tmp:
        tmp.write_text(build_report(out_dir), encoding="utf-8")
    return path
