"""The two counting networks of Dubost et al., sized for a CPU.

Both share the paper's encoder: two 3x3x3 convolutions, the input concatenated to their
output, 2x2x2 max-pooling, two more 3x3x3 convolutions, the pooled input concatenated
again. The paper used 32 and 64 filters; we use ``width`` and ``2 * width`` (default 8 and
16) because a full-resolution 32-filter layer over a centrum semiovale crop takes over 2 s
on two CPU cores and the target is 1 s per region (see ``benchmarks/counting``).

* :class:`CountCNN` (the paper's "CNN"): encoder, global pooling, one linear output.
* :class:`GPUnet`: the same encoder, a third level, an upsampling path with skip connections
  back to full resolution, a last convolution, global pooling and a linear output. Its
  attention map is the last feature maps weighted by the output layer's weights
  (class-activation style), at input resolution.

Global pooling is a sum over the region's counting mask (:func:`pvsquant.pipeline.roi.count_mask`):
the paper's global average pooling times the number of voxels, so the output of a
sub-volume is the count of that sub-volume. This makes counting additive in space: the
networks train on small patches and run on a whole region.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn
from torch.nn import functional as F

from .errors import InputImageError
from .labels import NETWORKS

MODEL_NAMES = NETWORKS


def _conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(cin, cout, 3, padding=1), nn.LeakyReLU(0.1, inplace=True))


class Encoder(nn.Module):
    """The paper's encoder: conv, conv, concat input, max-pool, conv, conv, concat pooled input."""

    def __init__(self, width: int = 8, in_channels: int = 3) -> None:
        super().__init__()
        self.level1 = nn.Sequential(_conv(in_channels, width), _conv(width, width))
        self.level2 = nn.Sequential(_conv(width + in_channels, 2 * width), _conv(2 * width, 2 * width))
        self.channels = (width + in_channels, 2 * width + in_channels)
        self.in_channels = in_channels

    def parts(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The two levels' features as blocks of channels: ``torch.cat(f1, 1)`` and
        ``torch.cat(f2, 1)`` are the paper's concatenations, never built here (see :func:`conv_of_parts`)."""
        level1 = self.level1(x)
        pooled_x = F.max_pool3d(x, 2)
        level2 = conv_of_parts(self.level2, [F.max_pool3d(level1, 2), pooled_x])
        return [level1, x], [level2, pooled_x]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        f1, f2 = self.parts(x)
        return torch.cat(f1, dim=1), torch.cat(f2, dim=1), f2[1]


def _channel_blocks(parts: list[torch.Tensor]) -> list[tuple[torch.Tensor, slice]]:
    """Each part with the slice of channels it takes in the concatenation ``torch.cat(parts, 1)``."""
    blocks, start = [], 0
    for part in parts:
        n = int(part.shape[1])
        blocks.append((part, slice(start, start + n)))
        start += n
    return blocks


def conv_of_parts(block: nn.Sequential, parts: list[torch.Tensor]) -> torch.Tensor:
    """``block(torch.cat(parts, 1))`` without the concatenation: the first convolution's weights
    split by input channels, one convolution per part, summed. The same numbers to rounding
    (~1e-6 relative); on a centrum semiovale crop the decoder's concatenations were its largest
    tensors (~1 GB) and a tenth of the count stage's time."""
    first = cast(nn.Sequential, block[0])
    conv = cast(nn.Conv3d, first[0])
    blocks = _channel_blocks(parts)
    if not blocks or blocks[-1][1].stop != conv.in_channels:
        raise ValueError(f"parts of {blocks[-1][1].stop if blocks else 0} channels for a convolution "
                         f"of {conv.in_channels}")
    out: torch.Tensor | None = None
    for part, channels in blocks:
        y = F.conv3d(part, conv.weight[:, channels], conv.bias if channels.start == 0 else None,
                     padding=conv.padding)
        out = y if out is None else out.add_(y)
    return cast(torch.Tensor, block[1:](first[1](out)))


def weighted_channels(parts: list[torch.Tensor], weight: torch.Tensor) -> torch.Tensor:
    """``einsum('bcxyz,c->bxyz', torch.cat(parts, 1), weight)`` without the concatenation."""
    return cast(torch.Tensor, sum(torch.einsum("bcxyz,c->bxyz", part, weight[channels])
                                  for part, channels in _channel_blocks(parts)))


class CountCNN(nn.Module):
    """Encoder, global (sum) pooling over the counting mask at half resolution, linear output."""

    def __init__(self, width: int = 8, in_channels: int = 3) -> None:
        super().__init__()
        self.encoder = Encoder(width, in_channels)
        self.output = nn.Linear(self.encoder.channels[1], 1)
        self.scale = 8.0 * 1e-3  # voxels per pooled voxel, and a fixed gain: keeps the output's scale tame

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Count per image (B,) and the per-voxel contribution map (B, 1, X/2, Y/2, Z/2)."""
        _, f2 = self.encoder.parts(x)
        pooled_mask = F.max_pool3d(mask, 2)
        contribution = weighted_channels(f2, self.output.weight[0]) + self.output.bias[0]
        contribution = contribution.unsqueeze(1) * self.scale
        return (contribution * pooled_mask).sum(dim=(1, 2, 3, 4)), contribution


class GPUnet(nn.Module):
    """Encoder, third level, decoder with skip connections, attention map and its sum."""

    def __init__(self, width: int = 8, in_channels: int = 3, features: int = 8) -> None:
        super().__init__()
        self.encoder = Encoder(width, in_channels)
        c1, c2 = self.encoder.channels
        self.level3 = nn.Sequential(_conv(c2, 4 * width), _conv(4 * width, 4 * width))
        self.up2 = nn.Sequential(_conv(4 * width + c2, 2 * width), _conv(2 * width, 2 * width))
        self.up1 = nn.Sequential(_conv(2 * width + c1, width), _conv(width, features))
        self.output = nn.Linear(features, 1)
        self.segment = nn.Linear(features, 1)  # the gate: is this voxel on a PVS?
        self.scale = 1e-2  # attention in PVS per voxel: a PVS is a blob of mass 1 with a peak of ~0.04
        nn.init.zeros_(self.output.bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Count per image (B,) and the attention (density) map (B, 1, X, Y, Z), in PVS per voxel.

        The map is gated: ``gate(segment . f) * (output . f)``, the probability that a voxel
        lies on a PVS (a second linear read-out of the last features ``f``, trained voxel-wise),
        cut to zero below 0.5 (:func:`gate`), times the output layer's PVS mass per voxel. Where
        no PVS is, the gate is 0, so the map cannot trace tissue borders with positive values
        offset by negative ones elsewhere (the purely linear map of pvsquant 0.1 did), and the
        count and the detections agree."""
        f1, f2 = self.encoder.parts(x)
        f3 = conv_of_parts(self.level3, [F.max_pool3d(part, 2) for part in f2])
        up = F.interpolate(f3, size=f2[0].shape[2:], mode="trilinear", align_corners=False)
        u2 = conv_of_parts(self.up2, [up, *f2])
        up = F.interpolate(u2, size=f1[0].shape[2:], mode="trilinear", align_corners=False)
        last = conv_of_parts(self.up1, [up, *f1])
        self.last_features = last  # kept for the segmentation loss
        self.gate_logit = (
            torch.einsum("bcxyz,c->bxyz", last, self.segment.weight[0]) + self.segment.bias[0]
        ).unsqueeze(1)
        mass = torch.einsum("bcxyz,c->bxyz", last, self.output.weight[0]) + self.output.bias[0]
        attention = gate(self.gate_logit) * mass.unsqueeze(1) * self.scale
        return (attention * mask).sum(dim=(1, 2, 3, 4)), attention


def gate(logit: torch.Tensor) -> torch.Tensor:
    """The GP-Unet's gate: the PVS probability ``sigmoid(logit)`` where it is at least 0.5, else 0.

    Cut, so that the mass read-out only has to be right on the PVS themselves: with a soft gate,
    the small probabilities over the whole region (~0.06 per voxel, measured) summed to several
    false PVS and pushed the mass towards zero everywhere."""
    return torch.sigmoid(logit) * (logit >= 0).to(logit.dtype)


def head_features(model: nn.Module, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The features the output layer weighs, pooled over the counting mask: (B, C + 1), such that
    ``count = head_features @ [w, b]`` with ``[w, b]`` the output layer (:func:`get_head`).

    Both networks are linear in their output layer after the sum pooling (the GP-Unet's gate
    weighs the pooling and is kept fixed), so a count is a linear function of these pooled
    features: fine-tuning that layer on image-level counts is a
    (regularised) linear regression on them.
    """
    if isinstance(model, GPUnet):
        model(x, mask)
        features, weights = model.last_features, mask * gate(model.gate_logit)
    elif isinstance(model, CountCNN):
        features, weights = model.encoder(x)[1], F.max_pool3d(mask, 2)
    else:
        raise TypeError(f"no head features for {type(model).__name__}")
    pooled = (features * weights).sum(dim=(2, 3, 4))
    voxels = weights.sum(dim=(1, 2, 3, 4))[:, None]
    return torch.cat([pooled, voxels], dim=1) * model.scale


def get_head(model: nn.Module) -> torch.Tensor:
    """The output layer as one vector ``[w, b]`` (C + 1)."""
    output = cast(nn.Conv3d, model.output)
    assert output.bias is not None
    return torch.cat([output.weight[0], output.bias]).detach().clone()


def set_head(model: nn.Module, head: torch.Tensor) -> None:
    output = cast(nn.Conv3d, model.output)
    assert output.bias is not None
    with torch.no_grad():
        output.weight[0].copy_(head[:-1])
        output.bias.copy_(head[-1:])


def build_model(name: str, width: int = 8, in_channels: int = 3) -> nn.Module:
    if name == "cnn":
        return CountCNN(width, in_channels)
    if name == "gpunet":
        return GPUnet(width, in_channels)
    raise ValueError(f"unknown model {name!r}; expected one of {MODEL_NAMES}")


def pad_to_multiple(x: torch.Tensor, multiple: int = 4) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """Zero-pad the spatial dims up to a multiple (the U-net pools twice); returns the original size."""
    size = tuple(int(s) for s in x.shape[2:])
    pad = [(-s) % multiple for s in size]
    return F.pad(x, (0, pad[2], 0, pad[1], 0, pad[0])), size  # type: ignore[return-value]


# --- weight files: one format, written and read here only ---

@dataclass
class Weights:
    """A network loaded from a weights file, with what identifies it."""

    network: nn.Module
    model: str
    """'gpunet' or 'cnn'."""
    region: str
    """The region it counts in (a network trained on 'all' is shipped once per region)."""
    info: dict[str, Any] = field(default_factory=dict)
    """Provenance: training run, validation, fine-tuning."""
    source: str | None = None
    """The file it was read from."""
    sha256: str | None = None
    """First 12 hex digits of the file's sha256 (recorded in qc.json)."""

    @property
    def in_channels(self) -> int:
        return encoder_of(self.network).in_channels


def encoder_of(network: nn.Module) -> Encoder:
    """The encoder shared by both networks."""
    return cast(Encoder, network.encoder)


def network_width(network: nn.Module) -> int:
    """Channels of the first convolution (the width every layer's channels derive from)."""
    first = cast(nn.Conv3d, cast(nn.Sequential, encoder_of(network).level1[0])[0])
    return int(first.out_channels)


def save_weights(network: nn.Module, path: str | Path, model: str, region: str, info: dict[str, Any]) -> Path:
    """Write a weights file (atomically): state dict, architecture, region and provenance."""
    from .io import atomic_file

    record = {"state_dict": network.state_dict(), "model": model, "width": network_width(network),
              "in_channels": encoder_of(network).in_channels, "region": region, "info": info}
    with atomic_file(path) as tmp:
        torch.save(record, tmp)
    return Path(path)


def load_weights(path: str | Path) -> Weights:
    """Read a weights file written by :func:`save_weights` (or by pvsquant 0.1, 2 channels).

    Raises InputImageError naming the file when it is not pvsquant weights.
    """
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        network = build_model(state["model"], state["width"], state.get("in_channels", 2))
        network.load_state_dict(state["state_dict"])
    except Exception as exc:
        raise InputImageError(f"{path}: not pvsquant weights ({type(exc).__name__}: {exc}); "
                              "expected a file written by pvsquant train") from exc
    network.eval()
    info = state.get("info") or ({"finetuned": state["finetuned"]} if "finetuned" in state else {})
    return Weights(network, state["model"], state["region"], info, str(path),
                   hashlib.sha256(path.read_bytes()).hexdigest()[:12])
