"""The folder `serve --workers N` shares Prometheus metrics through: cleared of an earlier run's files, and
owned by one running instance at a time."""

from __future__ import annotations

import fcntl
import os
import re
from pathlib import Path
from typing import IO, NoReturn

import typer

from gateway.cli_common import err, plain
from gateway.settings import Settings

METRIC_FILE = re.compile(r"(counter|histogram|summary|gauge_[a-z]+)_\d+\.db")  # prometheus_client's {kind}_{pid}.db
METRICS_LOCK = ".draftgate-serve.lock"  # held by the serve that owns the folder, for as long as it runs


def share_metrics_between_workers(settings: Settings) -> IO[bytes]:
    """Prometheus multiprocess mode: workers write values to files that any worker's /metrics adds up. Counters
    from an earlier run must not carry over, so its files are removed first: only those files. A folder holding
    anything else (PROMETHEUS_MULTIPROC_DIR set to the data dir: the ledger) is refused, never emptied, since
    /metrics would also read every other *.db in it as metrics. So is a folder another running serve holds (a
    second instance on the same data dir): emptying it would wipe that one's counters. Returns the held lock,
    which the caller keeps open while the server runs. By default the folder is named after the worker (the host
    name): replicas that share a data dir volume (docker compose `--scale`) each get their own."""
    folder = Path(os.environ.get("PROMETHEUS_MULTIPROC_DIR") or settings.data_dir / "metrics" / settings.worker_name())
    try:
        folder.mkdir(parents=True, exist_ok=True)
        others = sorted(p.name for p in folder.iterdir()
                        if p.name != METRICS_LOCK and not (METRIC_FILE.fullmatch(p.name) and p.is_file()))
    except OSError as exc:
        _metrics_folder_error(folder, exc)
    if others:  # checked before the lock file is made: a folder that is not ours gets nothing added either
        shown = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
        err.print(f"error: PROMETHEUS_MULTIPROC_DIR {folder} holds files that are not Prometheus metric files "
                  f"({shown}); give the workers' metrics a folder of their own", markup=False, soft_wrap=True)
        raise typer.Exit(2)
    try:
        lock = (folder / METRICS_LOCK).open("ab")
    except OSError as exc:
        _metrics_folder_error(folder, exc)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.close()
        err.print(f"error: the metrics folder {folder} is in use by another `draftgate serve --workers`; give each "
                  "instance a data dir (or PROMETHEUS_MULTIPROC_DIR) of its own", markup=False, soft_wrap=True)
        raise typer.Exit(2) from None
    try:
        for stale in folder.iterdir():
            if METRIC_FILE.fullmatch(stale.name):
                stale.unlink()
    except OSError as exc:
        lock.close()
        _metrics_folder_error(folder, exc)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder.resolve())
    return lock


def _metrics_folder_error(folder: Path, exc: OSError) -> NoReturn:
    err.print(f"[red]error:[/red] metrics folder {plain(folder)}: {plain(exc.strerror or exc)}",
              markup=True, highlight=False, soft_wrap=True)
    raise typer.Exit(2) from None
