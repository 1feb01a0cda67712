"""What runs per subject: one module per stage, chained by :mod:`.run`.

registration (T1 -> T2) -> anatomy (labels on the T1) -> regions (on the T2) -> roi (crops on the
0.5 x 0.5 x 0.8 mm grid) -> counting (networks, Frangi baseline, detections). ``run`` chains them
and writes the run folder. ``pvsquant.pipeline.run_subject`` is kept as the public entry point.
"""
from __future__ import annotations

from typing import Any

__all__ = ["prepare_subject", "quantify_subject", "run_subject"]


def __getattr__(name: str) -> Any:  # lazy: importing one stage should not import them all
    if name in __all__:
        from . import run

        return getattr(run, name)
    raise AttributeError(f"module 'pvsquant.pipeline' has no attribute {name!r}")
