"""Train the learned subcortical refinement (``pvsquant/data/atlas/subcortical_refiner.pt``).

Step 4 of the atlas, after ``scripts/fuse_atlas_labels.py``, with the same ten SynthSeg training
label maps (``training_seg_11..20``, github.com/BBillot/SynthSeg, Apache-2.0; the painted
benchmark uses 01-10 and stays held out) and that script's ``--work`` folder (the maps warped
onto the template):

1. Cases: each map painted as a clinical T1 (``--paintings`` times, random contrast, in-plane
   0.6-0.9 mm, slices 3-6 mm) and labelled by the atlas stage (registration, intensity
   refinement) with the template labelled by a leave-one-out vote of the other nine maps: the
   atlas errors the refiner learns from are those of a subject the atlas was not built from.
   Each case is kept in ``--cases`` (~40-60 s per case on 2 cores), so a rerun only trains.
2. Training: the MLP of :mod:`pvsquant.pipeline.subcortical` on every relabelled voxel of
   every case, cross-entropy against the map's own labels, fixed recipe and seed.

``--contrast t2`` paints T2s instead and labels them as a T2-only run does (the atlas registered
by mutual information): the weights ``subcortical_refiner_t2.pt`` that T2-only runs use (keep
its cases in another folder).

    python scripts/train_subcortical_refiner.py --maps DIR --work DIR --cases DIR [--paintings 3] [--contrast t2]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from pvsquant.grids import resample_labels
from pvsquant.io import load_volume
from pvsquant.learning.synthesis import acquire, clinical_grid, paint_t1, paint_t2
from pvsquant.pipeline import anatomy as an
from pvsquant.pipeline import subcortical as sc
from pvsquant.types import Settings, Volume

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fuse_atlas_labels as fusion

MAP_IDS = tuple(range(11, 21))
EPOCHS = 16
BATCH = 8192
LEARNING_RATE = 2e-3


def leave_one_out_labels(left_out: int, work: Path, cases: Path) -> Path:
    """The template labelled by the vote of the maps other than ``left_out`` (cached in ``cases``)."""
    out = cases / f"template_labels_without_{left_out}.nii.gz"
    if not out.is_file():
        seg = nib.load(str(fusion.ATLAS / "template_labels_samseg.nii.gz"))
        samseg = np.asarray(seg.dataobj).astype(np.int32)
        maps = []
        for j in MAP_IDS:
            if j != left_out:
                warped = work / f"training_seg_{j}_on_template.nii.gz"
                if not warped.is_file():
                    raise SystemExit(f"{warped} missing: run scripts/fuse_atlas_labels.py --work {work} first")
                maps.append(np.asarray(nib.load(str(warped)).dataobj).astype(np.int32))
        fused = fusion.fuse(samseg, maps, seg.affine)
        nib.save(nib.Nifti1Image(fused.astype(np.uint16), seg.affine), str(out))
    return out


def make_case(map_path: Path, template_labels: Path, seed: int, out: Path, contrast: str = "t1") -> None:
    """Paint one map as a clinical T1 (or T2), label it with the atlas stage as a run labels such an
    image, keep the refiner's inputs."""
    rng = np.random.default_rng(seed)
    labels = load_volume(map_path, "label map", labels=True)
    painted = paint_t1(labels, rng) if contrast == "t1" else paint_t2(labels, rng)
    affine, shape, _ = clinical_grid(labels, rng, in_plane_mm=(0.6, 0.9), slice_mm=(3.0, 6.0))
    t1 = acquire(painted, affine, shape, rng)
    truth = resample_labels(labels.with_array(an.standardise_labels(labels.array)), affine, shape).array
    settings = Settings() if contrast == "t1" else an.settings_for_t2(Settings())
    settings = dataclasses.replace(settings, subcortical_refiner="none")
    result = an.segment_with_atlas(t1, settings, template_labels=template_labels, keep_inputs=True)
    assert result.atlas_labels is not None and result.corrected is not None and result.brain_mask is not None
    np.savez_compressed(out, image=result.corrected.array, affine=t1.affine, atlas=result.atlas_labels.array,
                        labels=result.labels.array, mask=result.brain_mask.array, truth=truth)


def case_voxels(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Features and target classes of one case's relabelled voxels."""
    case = np.load(path)
    image = Volume(case["image"], case["affine"])
    x, box, todo = sc.features(image, case["atlas"], case["labels"], case["mask"])
    return x, sc.class_map(case["truth"])[box][todo]


def train(x: np.ndarray, y: np.ndarray, epochs: int = EPOCHS, seed: int = 0) -> tuple[sc.SubcorticalRefiner, list]:
    """The refiner trained on voxels ``x`` (features) with classes ``y``; returns it and the loss per epoch."""
    torch.manual_seed(seed)
    features, classes = torch.from_numpy(x), torch.from_numpy(y)
    model = sc.SubcorticalRefiner()
    steps = len(features) // BATCH
    optimiser = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=LEARNING_RATE, total_steps=epochs * steps)
    generator = torch.Generator().manual_seed(seed)
    losses = []
    for epoch in range(epochs):
        order = torch.randperm(len(features), generator=generator)
        total = 0.0
        for i in range(steps):
            batch = order[i * BATCH:(i + 1) * BATCH]
            loss = torch.nn.functional.cross_entropy(model(features[batch]), classes[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            total += loss.item()
        losses.append(total / steps)
        print(f"epoch {epoch + 1}/{epochs}: loss {losses[-1]:.4f}", flush=True)
    return model.eval(), losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--maps", required=True, type=Path, help="folder with training_seg_11..20.nii.gz")
    parser.add_argument("--work", required=True, type=Path, help="fuse_atlas_labels.py's --work folder")
    parser.add_argument("--cases", required=True, type=Path, help="folder for the painted cases (kept)")
    parser.add_argument("--paintings", type=int, default=3)
    parser.add_argument("--contrast", choices=["t1", "t2"], default="t1", help="paint T1s (default) or T2s")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, help="weights file (default: the shipped one of --contrast)")
    args = parser.parse_args()
    args.out = args.out or sc.weights_path(args.contrast)
    torch.set_num_threads(args.threads)
    args.cases.mkdir(parents=True, exist_ok=True)
    paths = []
    for painting in range(args.paintings):
        for j in MAP_IDS:
            path = args.cases / f"case_{j}_{painting}.npz"
            if not path.is_file():
                tic = time.perf_counter()
                make_case(args.maps / f"training_seg_{j}.nii.gz", leave_one_out_labels(j, args.work, args.cases),
                          1000 + 100 * painting + j, path, args.contrast)
                print(f"{path.name}: {time.perf_counter() - tic:.0f} s", flush=True)
            paths.append(path)
    voxels = [case_voxels(p) for p in paths]
    x = np.concatenate([v[0] for v in voxels])
    y = np.concatenate([v[1] for v in voxels])
    print(f"{len(paths)} cases, {len(x)} voxels", flush=True)
    tic = time.perf_counter()
    model, losses = train(x, y)
    torch.save(model.state_dict(), args.out)
    log = {"contrast": args.contrast, "cases": [p.name for p in paths], "voxels": len(x), "epochs": EPOCHS,
           "batch": BATCH, "learning_rate": LEARNING_RATE, "loss": losses, "minutes": (time.perf_counter() - tic) / 60}
    args.out.with_name(f"{args.out.stem}_log.json").write_text(json.dumps(log, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
