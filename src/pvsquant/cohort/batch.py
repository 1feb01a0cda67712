"""Many subjects as tasks on Dask: a local cluster or an existing scheduler, failures recorded
and the rest going on, finished subjects skipped on a rerun (completion records), one log per
subject, progress with the time left.

A completion record (``logs/completed/<key>.json``) holds the sha256 of the inputs, the software
version, the weights' sha256 and the settings; a subject is skipped only when all of them match
and its outputs exist, so a changed input, version or setting is recomputed.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import platform
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .. import __version__
from ..io import write_json
from ..types import Settings

log = logging.getLogger(__name__)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def weights_sha256(models_dir: str | Path | None) -> dict[str, str]:
    """sha256 of every weights file a run would load: the shipped ones, then a user's folder over them."""
    from ..pipeline.counting import shipped_models_dir

    found: dict[str, str] = {}
    for folder in [shipped_models_dir()] + ([Path(models_dir)] if models_dir else []):
        for f in sorted(Path(folder).glob("*.pt")):
            found[f.stem] = sha256_file(f)
    return found


def fingerprint(inputs: dict[str, Path | None], settings: Settings) -> dict[str, Any]:
    """What decides a subject's result: the inputs' sha256, the version, the weights and the settings
    (less the thread count, which does not change the result)."""
    return {
        "inputs": {role: None if p is None else {"path": str(p), "sha256": sha256_file(p)}
                   for role, p in inputs.items()},
        "pvsquant_version": __version__,
        "weights": weights_sha256(settings.models_dir),
        "settings": {k: v for k, v in settings.to_json().items() if k != "threads"},
    }


def _same_work(record: dict[str, Any], current: dict[str, Any]) -> bool:
    def strip(fp: dict[str, Any]) -> dict[str, Any]:  # the same files moved elsewhere are the same work
        return {**fp, "inputs": {r: None if v is None else v["sha256"] for r, v in fp["inputs"].items()}}

    return strip(record["fingerprint"]) == strip(current)


@dataclass(frozen=True)
class Outcome:
    """What became of one subject."""

    key: str
    status: str
    """``done`` (computed now), ``skipped`` (finished earlier, same inputs/version/settings), ``failed``."""
    qc_status: str | None = None
    error: str | None = None
    seconds: float = 0.0
    worker: str | None = None


def completed(record_path: Path, current: dict[str, Any], output_root: Path) -> dict[str, Any] | None:
    """The completion record when it matches ``current`` and every output it lists exists, else None."""
    import json

    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError):
        return None
    if not _same_work(record, current):
        return None
    if not all((output_root / f).is_file() for f in record.get("outputs", [])):
        return None
    return record


class SubjectLog:
    """Sends the ``pvsquant`` log of one subject to its own file for the duration of a ``with``."""

    def __init__(self, path: Path, key: str):
        self.path, self.key = path, key
        self.handler: logging.Handler | None = None

    def __enter__(self) -> SubjectLog:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.handler = logging.FileHandler(self.path, mode="a", encoding="utf-8")
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", "%H:%M:%S"))
        root = logging.getLogger("pvsquant")
        root.addHandler(self.handler)
        self._level = root.level
        root.setLevel(logging.INFO)
        root.info("pvsquant %s: %s on %s, process %d", __version__, self.key, platform.node(), os.getpid())
        return self

    def __exit__(self, *exc: object) -> None:
        root = logging.getLogger("pvsquant")
        if self.handler is not None:
            root.removeHandler(self.handler)
            self.handler.close()
        root.setLevel(self._level)


def timed_outcome(key: str, work: Callable[[], Outcome]) -> Outcome:
    """``work()``, with any exception turned into a ``failed`` outcome (its message and where it arose)."""
    start = time.perf_counter()
    try:
        outcome = work()
    except Exception as exc:  # one subject's failure must not stop the cohort
        logging.getLogger("pvsquant").error("%s failed: %s: %s\n%s", key, type(exc).__name__, exc,
                                            traceback.format_exc())
        outcome = Outcome(key, "failed", error=f"{type(exc).__name__}: {exc}")
    return dataclasses.replace(outcome, seconds=round(time.perf_counter() - start, 1),
                               worker=f"{platform.node()}:{os.getpid()}")


def write_record(path: Path, key: str, current: dict[str, Any], outputs: list[Path], qc_status: str) -> None:
    """The completion record, written last (atomically) once every output is in place."""
    write_json({"key": key, "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "qc_status": qc_status, "fingerprint": current, "outputs": [str(p) for p in outputs]}, path)


def run_tasks(function: Callable[..., Outcome], items: Sequence[Any], keys: Sequence[str], workers: int = 1,
              scheduler: str | None = None, progress: bool = True, **kwargs: Any) -> list[Outcome]:
    """``function(item, **kwargs)`` for every item as Dask tasks; returns the outcomes in item order.

    ``scheduler``: the address of a running Dask scheduler (``tcp://host:8786``); otherwise a
    ``LocalCluster`` of ``workers`` processes with one thread each is started and closed. A worker
    that dies mid-task is replaced and its task rerun elsewhere (Dask's allowed failures); a task
    that keeps killing workers is recorded as failed.
    """
    from distributed import Client, LocalCluster, as_completed
    from tqdm import tqdm

    if not items:
        return []
    cluster = None
    if scheduler:
        client = Client(scheduler, timeout="30s")
        log.info("Dask scheduler %s (%d workers)", scheduler, len(client.scheduler_info().get("workers", {})))
    else:
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0")
        client = Client(cluster)
        log.info("Dask local cluster: %d worker processes, 1 thread each", workers)
    outcomes: dict[str, Outcome] = {}
    try:
        futures = {client.submit(function, item, pure=False, key=f"pvsquant-{key}-{time.time_ns()}", **kwargs): key
                   for item, key in zip(items, keys, strict=True)}
        with tqdm(total=len(futures), unit="subject", disable=not progress, smoothing=0) as bar:
            for future in as_completed(futures):
                key = futures[future]
                try:
                    outcome = future.result()
                except Exception as exc:  # e.g. KilledWorker: the task took down every worker it met
                    outcome = Outcome(key, "failed", error=f"{type(exc).__name__}: {exc}")
                outcomes[key] = outcome
                failed = sum(o.status == "failed" for o in outcomes.values())
                bar.set_postfix_str(f"last {key} {outcome.status}; failed {failed}")
                bar.update(1)
                log.info("%s: %s%s", key, outcome.status, f" ({outcome.error})" if outcome.error else "")
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    return [outcomes[k] for k in keys]
