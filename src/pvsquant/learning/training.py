"""Training of the counting networks on synthetic patches (:mod:`pvsquant.learning.trainingdata`).

* GP-Unet: supervised with the density map (where each PVS is), a weak count term
  (calibration) and a voxel-wise segmentation of the PVS axes (class-balanced cross-entropy on
  the gate, a second linear read-out of the last feature maps that multiplies the attention:
  a dense signal that trains the features faster than the sparse density target alone). The count term must stay
  weak: its gradient is orders of magnitude larger per unit of error, and with equal weights
  training is count-only in disguise, which does not learn on a CPU budget (see the model card).
* Real backgrounds (:mod:`pvsquant.learning.backgrounds`): what a synthetic injection adds to a
  real scan's outputs is supervised (:func:`background_loss`); optionally the clean scan's map
  outside the region (``outside_weight``) and its faint floor inside the counting mask
  (``floor_weight``) are trained to 0.
* CNN: the paper's image-level label only (MSE on the count). Its encoder starts from the
  trained GP-Unet's encoder of the same region (same architecture), then the whole network
  is trained on counts. Trained from scratch on counts, it does not learn in a CPU budget.

Checkpoints every ``checkpoint_every`` steps; a run with the same output folder resumes.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from numpy.typing import ArrayLike
from torch.nn import functional as F

from .. import __version__
from ..cohort.stats import pearson
from ..io import atomic_file
from ..models import build_model, save_weights
from ..types import REGION_CODES, Settings

log = logging.getLogger(__name__)


NETWORK_GRID_MM = Settings().target_spacing_mm
"""The grid of the cached patches and of the networks' input: that of ``pvsquant run``."""
NETWORK_FRANGI = Settings().frangi
"""The vesselness channel, computed as ``pvsquant run`` computes it."""


@dataclass(frozen=True)
class TrainSettings:
    """Everything that decides a training run (saved with the weights)."""

    region: str
    model: str
    steps: int = 1500
    batch_size: int = 8
    crop: tuple[int, int, int] = (48, 48, 32)
    learning_rate: float = 2e-3
    density_weight: float = 1e5
    count_weight: float = 1e-4
    width: int = 8
    in_channels: int = 3
    segment_weight: float = 1.0
    segment_threshold: float = 1e-3
    seed: int = 0
    threads: int = 2
    checkpoint_every: int = 100
    max_minutes: float | None = None
    init: str | None = None
    background_fraction: float = 0.0
    outside_weight: float = 0.0
    """Real backgrounds: weight of the clean pass's attention outside the region (in the counting
    mask's 1 mm rim), relative to the density loss; 0 leaves the clean pass untrained."""
    floor_weight: float = 0.0
    """Real backgrounds: weight of the clean pass's *faint* mass in the counting mask (voxels whose
    attention is within ``floor_level`` of 0), in PVS per patch. A PVS lights a few voxels far above
    that level; a floor spread thinly over the region (what made stage 4's and 7's midbrain counts
    ~7 PVS on every clean scan) is below it. 0: off."""
    floor_level: float = 5e-4
    extra: dict[str, Any] = field(default_factory=dict)


def load_shards(cache_dir: str | Path, regions: list[str]) -> dict[str, np.ndarray]:
    """All cached samples of the given regions, stacked (images float16, density float16, mask bool;
    ``visible_count`` where every shard has it)."""
    parts: dict[str, list[np.ndarray]] = {"image": [], "mask": [], "density": [], "count": []}
    files = sorted(f for r in regions for f in Path(cache_dir).glob(f"{r}_*.npz") if not f.name.endswith(".tmp.npz"))
    files = [f for f in files if ".vesselness" not in f.name]
    if not files:
        raise FileNotFoundError(f"no cached samples for {', '.join(regions)} in {cache_dir}")
    vesselness, visible = [], []
    for f in files:
        with np.load(f) as data:
            for key in parts:
                parts[key].append(data[key])
            if "visible_count" in data:  # shards written since 2026-12-07
                visible.append(data["visible_count"])
        sidecar = f.with_name(f.name.replace(".npz", ".vesselness.npy"))
        if not sidecar.exists():  # computed once per shard, then cached beside it
            np.save(sidecar, network_channels(parts["image"][-1], parts["mask"][-1]))
        vesselness.append(np.load(sidecar))
    data = {k: np.concatenate(v) for k, v in parts.items()}
    data["vesselness"] = np.concatenate(vesselness)
    if len(visible) == len(files):  # counts of the PVS visible at each level (trainingdata.VISIBILITY_LEVELS)
        data["visible_count"] = np.concatenate(visible)
    return data


def load_background_shards(cache_dir: str | Path, regions: list[str]) -> dict[str, np.ndarray]:
    """Cached real-background samples (:mod:`pvsquant.learning.backgrounds`): the injected patch
    as ``image``, the clean one as ``clean``, each with its vesselness channel."""
    files = sorted(f for r in regions for f in Path(cache_dir).glob(f"{r}_*.npz") if not f.name.endswith(".tmp.npz"))
    if not files:
        raise FileNotFoundError(f"no cached real-background samples for {', '.join(regions)} in {cache_dir}")
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("image", "clean", "mask", "density", "count",
                                                          "vesselness", "clean_vesselness")}
    for f in files:
        with np.load(f) as data:
            for key in ("image", "clean", "mask", "density", "count"):
                parts[key].append(data[key])
        for key, channel in (("image", "vesselness"), ("clean", "clean_vesselness")):
            sidecar = f.with_name(f.name.replace(".npz", f".{channel}.npy"))
            if not sidecar.exists():
                np.save(sidecar, network_channels(parts[key][-1], parts["mask"][-1]))
            parts[channel].append(np.load(sidecar))
    return {k: np.concatenate(v) for k, v in parts.items()}


def network_channels(images: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """The networks' second input for each cached sample: the Frangi vesselness of the unmasked,
    region-scaled T2, exactly as ``pvsquant run`` computes it (:func:`pvsquant.pipeline.counting.network_input`)."""
    from ..pipeline.frangi import region_vesselness

    return np.stack([region_vesselness(i.astype(np.float32), m.astype(np.float32), NETWORK_GRID_MM, NETWORK_FRANGI)
                     for i, m in zip(images, masks, strict=False)]).astype(np.float16)


def stack_channels(image: np.ndarray, vesselness: np.ndarray, region: np.ndarray) -> np.ndarray:
    """(B, 3, X, Y, Z) network input: T2, vesselness, region."""
    return np.stack([image, vesselness, region], axis=1).astype(np.float32)


class PatchBatches:
    """Random crops and flips of cached samples, as torch batches (image, mask, density, count)."""

    def __init__(self, data: dict[str, np.ndarray], crop: tuple[int, int, int], rng: np.random.Generator) -> None:
        self.data, self.crop, self.rng = data, crop, rng
        self.full = data["image"].shape[1:]

    def _crops(self, batch_size: int, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
        idx = self.rng.integers(0, len(self.data["image"]), batch_size)
        out: dict[str, list[np.ndarray]] = {k: [] for k in keys}
        for i in idx:
            start = [int(self.rng.integers(0, f - c + 1)) for f, c in zip(self.full, self.crop, strict=False)]
            sl = (i, *tuple(slice(s, s + c) for s, c in zip(start, self.crop, strict=False)))
            flips = [a for a in (0, 1) if self.rng.uniform() < 0.5]
            for key in out:
                arr = self.data[key][sl].astype(np.float32)
                out[key].append(np.flip(arr, axis=flips).copy() if flips else arr)
        return {k: np.stack(v) for k, v in out.items()}

    @staticmethod
    def _labels(masks: np.ndarray, densities: np.ndarray) -> tuple[torch.Tensor, ...]:
        from ..pipeline.roi import count_mask  # the same counting mask as at inference

        counting = torch.from_numpy(np.stack([count_mask(m > 0.5, NETWORK_GRID_MM) for m in masks]))[:, None].float()
        density = torch.from_numpy(densities)[:, None] * counting
        return counting, density, density.sum(dim=(1, 2, 3, 4))

    def next(self, batch_size: int) -> tuple[torch.Tensor, ...]:
        """(input, counting mask, density, count) of a batch."""
        c = self._crops(batch_size, ("image", "vesselness", "mask", "density"))
        image = torch.from_numpy(stack_channels(c["image"], c["vesselness"], c["mask"]))
        return (image, *self._labels(c["mask"], c["density"]))

    def next_pair(self, batch_size: int) -> tuple[torch.Tensor, ...]:
        """(injected input, clean input, counting mask, density, count) of real-background samples."""
        c = self._crops(batch_size, ("image", "vesselness", "clean", "clean_vesselness", "mask", "density"))
        injected = torch.from_numpy(stack_channels(c["image"], c["vesselness"], c["mask"]))
        clean = torch.from_numpy(stack_channels(c["clean"], c["clean_vesselness"], c["mask"]))
        return (injected, clean, *self._labels(c["mask"], c["density"]))


def loss_terms(model: torch.nn.Module, pred_count: torch.Tensor, attention: torch.Tensor, density: torch.Tensor,
               count: torch.Tensor, settings: TrainSettings) -> tuple[torch.Tensor, dict[str, float]]:
    """The training loss and its parts (see the module docstring)."""
    count_term = ((pred_count - count) ** 2 / (count + 1.0)).mean()
    if settings.model == "gpunet":
        density_term = ((attention - density) ** 2).mean()
        on_axis = (density > settings.segment_threshold).float()
        positive = float(on_axis.mean().clamp(1e-4, 0.5))
        segment_term = F.binary_cross_entropy_with_logits(cast(torch.Tensor, model.gate_logit), on_axis,
                                                          pos_weight=torch.tensor(((1 - positive) / positive) ** 0.5))
        loss = (settings.density_weight * density_term + settings.count_weight * count_term
                + settings.segment_weight * segment_term)
        return loss, {"density": float(density_term.detach()) * settings.density_weight,
                      "count": float(count_term.detach()) * settings.count_weight,
                      "segment": float(segment_term.detach()) * settings.segment_weight}
    return count_term, {"count": float(count_term.detach())}


def background_loss(model: torch.nn.Module, pred_injected: torch.Tensor, attention_injected: torch.Tensor,
                    pred_clean: torch.Tensor, attention_clean: torch.Tensor, density: torch.Tensor,
                    count: torch.Tensor, settings: TrainSettings,
                    outside: torch.Tensor | None = None, counted: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss on real-background samples: what the injection *adds* to the network's outputs
    must be the injected PVS (their density map, their number). The scan's own PVS and its
    borders are in both passes and cancel, so the clean pass enters the difference as a constant.
    The GP-Unet's gate is told to open on the injected axes (positives only: the clean scan's own
    PVS are unlabelled); ``model.gate_logit`` must be that of the injected forward pass.

    With ``settings.outside_weight`` > 0 and ``outside`` (1 on the counting mask's voxels outside
    the region), the clean pass is trained too: its attention there must be 0. The only label a
    real scan has: whatever the counted mass of a region is, it is not the CSF, cortex or cistern
    just outside it (``attention_clean`` must then carry its gradient). With
    ``settings.floor_weight`` > 0 and ``counted`` (the counting mask), the clean pass's faint mass
    there (|attention| < ``settings.floor_level``, either sign) must be 0 too: no floor."""
    count_term = ((pred_injected - pred_clean.detach() - count) ** 2 / (count + 1.0)).mean()
    if settings.model != "gpunet":
        return count_term, {"bg_count": float(count_term.detach())}
    density_term = ((attention_injected - attention_clean.detach() - density) ** 2).mean()
    on_axis = density > settings.segment_threshold
    logits = cast(torch.Tensor, model.gate_logit)
    segment_term = F.softplus(-logits[on_axis]).mean() if bool(on_axis.any()) else logits.sum() * 0.0
    loss = (settings.density_weight * density_term + settings.count_weight * count_term
            + settings.segment_weight * segment_term)
    parts = {"bg_density": float(density_term.detach()) * settings.density_weight,
             "bg_count": float(count_term.detach()) * settings.count_weight,
             "bg_segment": float(segment_term.detach()) * settings.segment_weight}
    if settings.outside_weight > 0 and outside is not None:
        outside_term = ((attention_clean * outside) ** 2).mean() * settings.density_weight * settings.outside_weight
        loss = loss + outside_term
        parts["bg_outside"] = float(outside_term.detach())
    if settings.floor_weight > 0 and counted is not None:
        faint = attention_clean.abs() * counted * (attention_clean.detach().abs() < settings.floor_level)
        floor_term = faint.sum() / attention_clean.shape[0] * settings.floor_weight
        loss = loss + floor_term
        parts["bg_floor"] = float(floor_term.detach())
    return loss, parts


def predict_counts(model: torch.nn.Module, data: dict[str, np.ndarray], batch_size: int = 8) -> np.ndarray:
    """The model's count of each whole cached sample (over its counting mask)."""
    from ..pipeline.roi import count_mask

    was_training = model.training
    model.eval()
    preds = []
    with torch.no_grad():
        for start in range(0, len(data["image"]), batch_size):
            chunk = slice(start, start + batch_size)
            image = torch.from_numpy(stack_channels(data["image"][chunk], data["vesselness"][chunk],
                                                    data["mask"][chunk]))
            masks = np.stack([count_mask(m, NETWORK_GRID_MM) for m in data["mask"][chunk]])
            pred, _ = model(image, torch.from_numpy(masks)[:, None].float())
            preds.append(pred.numpy())
    model.train(was_training)
    return np.concatenate(preds).astype(float)


def count_agreement(pred: ArrayLike, truth: ArrayLike) -> tuple[float, float]:
    """Pearson r (:func:`pvsquant.cohort.stats.pearson`: NaN when either side is constant or there
    are fewer than 3) and mean absolute error of counts."""
    p, t = np.asarray(pred, float), np.asarray(truth, float)
    return pearson(p, t)[0], float(np.abs(p - t).mean())


def evaluate(model: torch.nn.Module, data: dict[str, np.ndarray], batch_size: int = 8) -> dict[str, float | None]:
    """Pearson r and MAE of predicted vs true count on whole cached samples."""
    p, t = predict_counts(model, data, batch_size), data["count"].astype(float)
    r, mae = count_agreement(p, t)
    empty = round(float(p[t == 0].mean()), 3) if np.any(t == 0) else None
    return {"pearson_r": round(r, 4), "mae": round(mae, 3), "n": len(t),
            "mean_pred": round(float(p.mean()), 3), "mean_true": round(float(t.mean()), 3),
            "mean_pred_when_empty": empty}


def _init_from(model: torch.nn.Module, path: str) -> None:
    """Start from another model's weights: all matching tensors (e.g. a GP-Unet's encoder for a CNN)."""
    state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
    own = model.state_dict()
    shared = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    own.update(shared)
    model.load_state_dict(own)
    log.info("initialised %d of %d tensors from %s", len(shared), len(own), path)


def train(settings: TrainSettings, cache_dir: str | Path, out_dir: str | Path,
          val_dir: str | Path | None = None, device: str = "cpu",
          background_dir: str | Path | None = None) -> dict[str, Any]:
    """Train one model; writes ``checkpoint.pt`` (resumable), the weights ``<region>_<model>.pt``
    (what ``pvsquant run --models`` loads) and ``train_log.json``. With ``background_dir``
    (cached real-background samples) and ``settings.background_fraction`` > 0, that fraction of
    every batch is real scans with injected PVS (:func:`background_loss`)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    regions = list(REGION_CODES) if settings.region == "all" else [settings.region]
    data = load_shards(cache_dir, regions)
    log.info("training %s for %s on %d cached samples", settings.model, settings.region, len(data["image"]))
    model = build_model(settings.model, settings.width, settings.in_channels).to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=settings.learning_rate)
    warmup = max(1, settings.steps // 20)

    def lr_factor(i: int) -> float:  # linear warm-up, then cosine decay to 5%
        cosine = 0.05 + 0.475 * (1 + np.cos(np.pi * min(i, settings.steps) / settings.steps))
        return min(1.0, (i + 1) / warmup) * cosine

    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lr_factor)
    rng = np.random.default_rng(settings.seed)
    step, history, elapsed = 0, [], 0.0
    checkpoint = out_dir / "checkpoint.pt"
    if checkpoint.exists():
        state = torch.load(checkpoint, map_location=device, weights_only=False)
        model.load_state_dict(state["state_dict"])
        optimiser.load_state_dict(state["optimiser"])
        schedule.load_state_dict(state["schedule"])
        rng.bit_generator.state = state["rng"]
        step, history, elapsed = state["step"], state["history"], state["elapsed_s"]
        log.info("resuming at step %d", step)
    elif settings.init:
        _init_from(model, settings.init)
    batches = PatchBatches(data, settings.crop, rng)
    n_real = round(settings.batch_size * settings.background_fraction) if background_dir is not None else 0
    real_batches = (PatchBatches(load_background_shards(background_dir, regions), settings.crop, rng)
                    if n_real and background_dir is not None else None)
    train_clean = (settings.outside_weight > 0 or settings.floor_weight > 0) and settings.model == "gpunet"

    def save_checkpoint() -> None:
        state = {"state_dict": model.state_dict(), "optimiser": optimiser.state_dict(),
                 "schedule": schedule.state_dict(), "rng": rng.bit_generator.state, "step": step,
                 "history": history, "elapsed_s": elapsed}
        with atomic_file(checkpoint) as tmp:
            torch.save(state, tmp)

    start = time.perf_counter() - elapsed
    running: list[float] = []
    while step < settings.steps:
        if settings.max_minutes and (time.perf_counter() - start) > 60 * settings.max_minutes:
            log.warning("stopping at step %d: the %.0f-minute budget is spent", step, settings.max_minutes)
            break
        image, mask, density, count = (t.to(device) for t in batches.next(settings.batch_size - n_real))
        pred, attention = model(image, mask)
        loss, parts = loss_terms(model, pred, attention, density, count, settings)
        if real_batches is not None:
            injected, clean, mask, density, count = (t.to(device) for t in real_batches.next_pair(n_real))
            with torch.set_grad_enabled(train_clean):
                pred_clean, attention_clean = model(clean, mask)
            outside = mask * (1.0 - clean[:, 2:3]) if train_clean else None  # channel 2: the region
            pred, attention = model(injected, mask)
            real_loss, real_parts = background_loss(model, pred, attention, pred_clean, attention_clean, density,
                                                    count, settings, outside, mask if train_clean else None)
            share = n_real / settings.batch_size
            loss = (1 - share) * loss + share * real_loss
            parts.update(real_parts)
        optimiser.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimiser.step()
        schedule.step()
        step += 1
        running.append(float(loss.detach()))
        if step % 20 == 0 or step == settings.steps:
            elapsed = time.perf_counter() - start
            eta = elapsed / step * (settings.steps - step) if step else 0
            history.append({"step": step, "loss": float(np.mean(running)), **parts, "elapsed_s": round(elapsed, 1)})
            bar = "#" * int(20 * step / settings.steps)
            log.info(
                "[%-20s] step %5d/%d  loss %.4f  %s  %.0f s elapsed, ~%.0f s left",
                bar,
                step,
                settings.steps,
                np.mean(running),
                " ".join(f"{k} {v:.4f}" for k, v in parts.items()),
                elapsed,
                eta,
            )
            running = []
        if step % settings.checkpoint_every == 0:
            elapsed = time.perf_counter() - start
            save_checkpoint()
    elapsed = time.perf_counter() - start
    save_checkpoint()
    result: dict[str, Any] = {
        "settings": asdict(settings),
        "steps_done": step,
        "train_seconds": round(elapsed, 1),
        "samples": len(data["image"]),
        "real_background_samples": len(real_batches.data["image"]) if real_batches is not None else 0,
        "pvsquant_version": __version__,
        "torch_version": str(torch.__version__),
    }
    if val_dir is not None:
        result["validation"] = evaluate(model, load_shards(val_dir, regions))
        log.info("validation on %d synthetic patches: %s", result["validation"]["n"], result["validation"])
    save_weights(model, out_dir / f"{settings.region}_{settings.model}.pt", settings.model, settings.region, result)
    (out_dir / "train_log.json").write_text(json.dumps({**result, "history": history}, indent=1))
    return result
