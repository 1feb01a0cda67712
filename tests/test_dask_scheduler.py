"""``--scheduler ADDRESS`` against a real, separately started Dask scheduler and workers (the
``dask scheduler`` / ``dask worker`` commands as subprocesses, run from another folder), as on a
user's cluster: results come back, a failing task is recorded while the rest complete, and the
user's scheduler and workers are still running afterwards."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cloudpickle
import pytest

from pvsquant.cli import main
from pvsquant.cohort.batch import Outcome, run_tasks, timed_outcome

from .bids_dataset import add_image, write_description

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # so Dask workers can run this module's functions

N_WORKERS = 2
START_TIMEOUT = 60.0


@dataclass
class ExternalCluster:
    address: str
    scheduler: subprocess.Popen
    workers: list[subprocess.Popen]
    worker_dir: Path


def _logs(folder: Path) -> str:
    return "\n".join(f"--- {f.name}\n{f.read_text(errors='replace')[-3000:]}" for f in sorted(folder.glob("*.log")))


def _stop(procs: list[subprocess.Popen]) -> None:
    """SIGTERM to each process group we started (a nanny and its worker), SIGKILL to what is left."""
    for p in procs:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)  # also any worker child the nanny left behind
        p.wait(timeout=10)


@pytest.fixture(scope="module")
def external_cluster(tmp_path_factory) -> Iterator[ExternalCluster]:
    from distributed import Client

    root = tmp_path_factory.mktemp("dask_cluster")
    worker_dir = root / "worker_cwd"  # not the repository: workers must import pvsquant as installed
    worker_dir.mkdir()
    scheduler_file = root / "scheduler.json"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    procs: list[subprocess.Popen] = []

    def start(name: str, args: list[str]) -> subprocess.Popen:
        with open(root / f"{name}.log", "wb") as log:  # the child keeps its own copy of the descriptor
            proc = subprocess.Popen([sys.executable, "-m", *args], cwd=worker_dir, env=env, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(proc)
        return proc

    try:
        scheduler = start("scheduler", ["distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0",
                                        "--no-dashboard", "--scheduler-file", str(scheduler_file)])
        deadline = time.monotonic() + START_TIMEOUT
        while not scheduler_file.is_file() or not scheduler_file.read_text().strip():
            if scheduler.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the dask scheduler did not start within {START_TIMEOUT:.0f} s "
                            f"(exit code {scheduler.poll()}):\n{_logs(root)}")
            time.sleep(0.2)
        time.sleep(0.2)  # the file is written in one go, but let a slow writer finish
        address = json.loads(scheduler_file.read_text())["address"]
        workers = [start(f"worker{i}", ["distributed.cli.dask_worker", "--scheduler-file", str(scheduler_file),
                                        "--nthreads", "1", "--no-dashboard", "--name", f"external-{i}",
                                        "--local-directory", str(root / f"space{i}")])
                   for i in range(N_WORKERS)]
        with Client(address, timeout="30s") as client:
            try:
                client.wait_for_workers(N_WORKERS, timeout=max(1.0, deadline - time.monotonic()))
            except TimeoutError:
                dead = [w.returncode for w in workers if w.poll() is not None]
                pytest.fail(f"{N_WORKERS} dask workers did not join {address} within {START_TIMEOUT:.0f} s "
                            f"(exited: {dead}):\n{_logs(root)}")
        yield ExternalCluster(address, scheduler, workers, worker_dir)
    finally:
        _stop(procs)


def worker_identities(address: str) -> tuple[set[int], set[str], int]:
    """(worker pids, worker cwds, number of workers) as the running scheduler reports them now."""
    from distributed import Client

    with Client(address, timeout="10s") as client:
        pids = set(client.run(os.getpid).values())
        cwds = set(client.run(os.getcwd).values())
        return pids, cwds, len(client.scheduler_info()["workers"])


def square_or_fail(item: int, offset: int = 0) -> Outcome:
    if item == 3:
        raise RuntimeError("subject 3 is broken")
    return Outcome(f"s{item}", "done", qc_status=str(item * item + offset))


def test_run_tasks_on_an_external_scheduler_keeps_it_running(external_cluster):
    # A local function: Dask pickles a graph that holds a module-level function by reference, and the
    # external scheduler and workers cannot import this test module; a local one goes by value
    # (cloudpickle), along with this module's functions it calls (registered by value above).
    def task(item: int, offset: int) -> Outcome:
        return timed_outcome(f"s{item}", lambda: square_or_fail(item, offset))

    cluster = external_cluster
    pids, cwds, _ = worker_identities(cluster.address)
    assert os.getpid() not in pids and cwds == {str(cluster.worker_dir)}

    keys = ["s1", "s2", "s3", "s4", "s5"]
    outcomes = run_tasks(task, [1, 2, 3, 4, 5], keys, scheduler=cluster.address, progress=False, offset=10)
    assert [o.key for o in outcomes] == keys
    assert [o.status for o in outcomes] == ["done", "done", "failed", "done", "done"], [o.error for o in outcomes]
    assert [o.qc_status for o in outcomes] == ["11", "14", None, "26", "35"]
    assert "RuntimeError: subject 3 is broken" in outcomes[2].error
    assert {int(o.worker.rsplit(":", 1)[1]) for o in outcomes} <= pids  # ran on the external workers

    # the user's cluster is left as it was: scheduler and workers still up, and it takes another run
    assert cluster.scheduler.poll() is None and all(w.poll() is None for w in cluster.workers)
    after_pids, _, n_workers = worker_identities(cluster.address)
    assert n_workers == N_WORKERS and after_pids == pids
    again = run_tasks(task, [6], ["s6"], scheduler=cluster.address, progress=False, offset=0)
    assert again[0].status == "done" and again[0].qc_status == "36"
    assert cluster.scheduler.poll() is None


def test_bids_cli_with_scheduler_runs_subjects_on_the_external_workers(external_cluster, tmp_path, capsys):
    """The real ``process_subject`` (pickled by reference) on the external workers: both subjects
    fail at the input check, before any computation, and are recorded as failed."""
    cluster = external_cluster
    bids_dir = tmp_path / "bids"
    write_description(bids_dir)
    add_image(bids_dir, "03", "T1w")  # no T2w
    add_image(bids_dir, "04", "T2w")  # no T1w (and no --allow-t2-only)
    out = tmp_path / "derivatives"
    code = main(["bids", str(bids_dir), str(out), "participant", "--scheduler", cluster.address, "--no-progress"])
    printed = capsys.readouterr().out
    assert code == 1, printed
    assert "2 subject(s): 0 computed, 0 skipped (finished earlier), 2 failed" in printed
    failures = {f.stem: json.loads(f.read_text()) for f in (out / "logs" / "failed").glob("*.json")}
    assert set(failures) == {"sub-03", "sub-04"}
    assert "no T2w" in failures["sub-03"]["error"] and "--allow-t2-only" in failures["sub-04"]["error"]
    pids, _, _ = worker_identities(cluster.address)
    assert {int(f["worker"].rsplit(":", 1)[1]) for f in failures.values()} <= pids
    assert (out / "logs" / "participant.tsv").is_file() and (out / "logs" / "sub-03.log").is_file()
    assert cluster.scheduler.poll() is None and all(w.poll() is None for w in cluster.workers)
