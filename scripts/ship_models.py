"""Copy trained weights into the package and write its model card.

    python scripts/ship_models.py RUN_DIR [RUN_DIR ...]

Each RUN_DIR is a ``pvsquant train --out`` folder holding ``<region>_<model>.pt`` and
``train_log.json``. The weights go to src/pvsquant/data/models/, and MODEL_CARD.md there
is rewritten from the training logs (settings, steps, time, validation on held-out maps).
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch

from pvsquant.types import REGION_CODES

DEST = Path(__file__).resolve().parents[1] / "src" / "pvsquant" / "data" / "models"

HEADER = """# Model card: pvsquant counting networks

Weights: `<region>_<model>.pt` for the regions {regions} and the models `gpunet` and `cnn`
(PyTorch state dicts with their settings; loaded offline by `pvsquant run`).

## Data
Synthetic only: no patient data was used. Patches of 64 x 64 x 40 voxels (0.5 x 0.5 x 0.8 mm)
made by `pvsquant.trainingdata` from the SynthSeg training label maps (Apache-2.0): maps 1-8
for training (400 patches per region), maps 9-10 held out for validation (50 per region).
T2 contrast, enlarged PVS (straight capsules 1-3 mm wide with per-region length and
orientation, CSF-bright, partial volume), white-matter lesions, lacunes and flow voids, bias
field, clinical acquisition (in-plane 0.4-0.7 mm, slices 3-7 mm with profile and gap, tilts up
to 12 degrees, axial/coronal/sagittal), then the pipeline's own resampling and ROI
normalisation. Labels: a density map, each PVS a unit mass spread along its axis and blurred
by 0.8 mm, kept inside the region's counting mask. Input: two channels, the T2 crop and its
Frangi vesselness (`pvsquant.frangi.region_vesselness`).

## Training (reproduce on a CPU)
```
{commands}
```
GP-Unet: density MSE (weight 1e4) + count term (weight 1e-4) + auxiliary class-balanced
cross-entropy segmentation of the PVS axes (weight 1, a second linear read-out of the last
feature maps) on random 48 x 48 x 32 crops with flips, batch 8, Adam, warm-up + cosine decay.
It is first trained on all regions together, then fine-tuned per region from those weights.
CNN: the paper's image-level count loss only (MSE / (count + 1)); its encoder (identical to the
GP-Unet's) starts from the region's GP-Unet.

Why (measured on this CPU): trained from scratch on counts, both networks stayed at r ~ 0 within
5-18 CPU-minutes (issue 4). The GP-Unet under the density loss alone, from the T2 alone, was at
r = 0.04 (centrum semiovale) and -0.03 (basal ganglia) after 500 steps; with a rectified or
softplus output it collapsed to an empty map, so its attention map is linear in the last
features. A density at each PVS's centre could not be learned locally for long PVS (the centre
of a 20 mm line is not visible in a 48 x 48 x 32 patch), hence the mass along the axis.

## Runs
| weights | init | steps | train time (min) | validation r | MAE | mean pred. on empty patches |
|---|---|---|---|---|---|---|
"""


def main(run_dirs: list[str]) -> None:
    DEST.mkdir(parents=True, exist_ok=True)
    rows, commands = [], []
    for run in map(Path, run_dirs):
        log = json.loads((run / "train_log.json").read_text())
        s = log["settings"]
        name = f"{s['region']}_{s['model']}.pt"
        if s["region"] in REGION_CODES:
            state = torch.load(run / name, map_location="cpu", weights_only=True)
            torch.save({k: state[k] for k in ("state_dict", "model", "width", "region")}
                       | {"info": {"steps": log["steps_done"], "train_seconds": log["train_seconds"],
                                   "validation": log.get("validation"), "pvsquant_version": log["pvsquant_version"]}},
                       DEST / name)
        else:
            shutil.copy(run / name, Path("/tmp") / name)
        v = log.get("validation") or {}
        init = Path(s["init"]).name if s.get("init") else "random"
        rows.append(f"| {name} | {init} | {log['steps_done']} | {log['train_seconds'] / 60:.1f} | "
                    f"{v.get('pearson_r')} | {v.get('mae')} | {v.get('mean_pred_when_empty')} |")
        commands.append(f"pvsquant train --region {s['region']} --model {s['model']} --steps {s['steps']} "
                        f"--lr {s['learning_rate']} --seed {s['seed']}"
                        + (f" --init RUNS/{Path(s['init']).parent.name}/{Path(s['init']).name}" if s.get("init") else "")
                        + f" --out RUNS/{run.name} --cache CACHE")
    text = HEADER.format(regions=", ".join(REGION_CODES), commands="\n".join(commands)) + "\n".join(rows) + "\n"
    total = sum(json.loads((Path(r) / "train_log.json").read_text())["train_seconds"] for r in run_dirs)
    text += f"\nTotal training time: {total / 60:.0f} minutes on 2 CPU cores, plus the synthetic cache (6.5 minutes with 2 workers) and its vesselness channel (about 3 minutes).\n"
    (DEST / "MODEL_CARD.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main(sys.argv[1:])
