"""Command-line options every grid study shares: where data, runs and reports live, and who runs them."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from probe.preflight import PreflightError, check_device, check_device_name, check_folder
from probe.runs.folder import LOG
from probe.runs.cells import CellResult
from probe.runs.config import RunStatus
from probe.runs.grid import GridInterrupted
from probe.signals import exit_code, handled_signals


def run_interruptible(body, *args):
    """``body(*args)``, or on SIGINT/SIGTERM one line and the exit code 128 + signal (workers stopped,
    finished runs and lock files left as they are): ``(True, result)`` or ``(False, exit code)``."""
    try:
        with handled_signals():
            return True, body(*args)
    except GridInterrupted as e:
        print(e.line, file=sys.stderr)
        return False, exit_code(e)
    except KeyboardInterrupt as e:  # before or after the grid: nothing is half-written
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return False, exit_code(e)


def parse_seeds(text: str) -> list[int]:
    """``--seeds``: a count (``6``: seeds 0-5), a range (``6-11``), a list (``0,2,5``) or lists of ranges
    (``0-2,6-8``); the seeds in the order given, each once. Disjoint seeds give an independent replication."""
    text = str(text).strip()
    valid = "give a count (6), a range (6-11) or a list (0,2,5)"
    if text.isdigit():
        if int(text) < 1:
            raise argparse.ArgumentTypeError(f"a seed count must be at least 1; got {text}; {valid}")
        return list(range(int(text)))
    seeds: list[int] = []
    for part in text.split(","):
        lo, dash, hi = part.strip().partition("-")
        if not lo.isdigit() or (dash and not hi.isdigit()):
            raise argparse.ArgumentTypeError(f"bad seeds {text!r} at {part.strip()!r}; {valid}")
        if dash and int(hi) < int(lo):
            raise argparse.ArgumentTypeError(f"bad seed range {part.strip()!r}: it runs backwards; {valid}")
        for s in range(int(lo), int(hi if dash else lo) + 1):
            if s in seeds:
                raise argparse.ArgumentTypeError(f"seed {s} is given twice in {text!r}; give each seed once")
            seeds.append(s)
    return seeds


def add_grid_options(p: argparse.ArgumentParser, *, study: str, jobs: int) -> None:
    """--data-dir, --out, --runs-dir, --jobs, --device, --executor, --address, --no-progress."""
    p.add_argument("--data-dir", help="corpora folder (else $DROPOUT_PROBE_DATA, else the user cache)")
    p.add_argument("--out", type=Path, default=Path("reports"), help="where reports go (default reports/)")
    p.add_argument("--runs-dir", type=Path, help=f"run cache (default <out>/runs/{study})")
    p.add_argument("--jobs", type=int, default=jobs, help=f"worker processes training runs in parallel (default {jobs})")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--executor", choices=["local", "ray"], default="local",
                   help="local: --jobs worker processes here (default); ray: one task per run on the cluster at --address")
    p.add_argument("--address", help="Ray cluster address HOST:PORT, with --executor ray")
    p.add_argument("--download", action="store_true",
                   help="download missing corpus files from their canonical sources (checksummed)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def finish_grid_options(args: argparse.Namespace, *, study: str) -> argparse.Namespace:
    if args.runs_dir is None:
        args.runs_dir = args.out / "runs" / study
    return args


def preflight(args: argparse.Namespace, *, folders: bool = True) -> None:
    """Before any training: --jobs, the device exists, and (``folders``) ``preflight_folders`` (PreflightError)."""
    if args.jobs < 1:
        raise PreflightError(f"--jobs must be at least 1; got {args.jobs}")
    if args.executor == "ray":
        check_device_name(args.device)  # the cluster's nodes, not this one, must have it (checked on connect)
    else:
        check_device(args.device)
    if folders:
        preflight_folders(args)


def preflight_folders(args: argparse.Namespace) -> None:
    """--out and --runs-dir are folders this process can write (created if missing, so checked last)."""
    check_folder(args.out, "--out")
    check_folder(args.runs_dir, "--runs-dir")


def report_failures(results: list[CellResult]) -> int:
    """One line per failed run, with where its traceback is; returns how many failed."""
    failed = [r for r in results if r.status == RunStatus.FAILED]
    for r in failed:
        where = f"traceback in {r.log}" if r.log else "no traceback could be written"
        print(f"run {r.cell.run.run_id()} ({r.cell.run.placement} seed {r.cell.run.seed}) failed: {r.error} "
              f"({where})", file=sys.stderr)
    return len(failed)


# Failures a rerun can fix (the machine's state, not the input): anything else fails the same way again.
RETRYABLE = ("OSError", "MemoryError", "TimeoutError", "ConnectionError", "BrokenProcessPool", "Timeout")


def retryable(results: list[CellResult]) -> bool:
    """Whether every failed run failed in a way a rerun can fix."""
    failed = [r for r in results if r.status == RunStatus.FAILED]
    return all(str(r.error or "").split(":", 1)[0].strip() in RETRYABLE for r in failed)


def failure_summary(failed: int, total: int, retry: bool = True) -> str:
    advice = ("rerun the same command to retry them, finished runs are reused" if retry else
              "the same input fails the same way again, so fix what the lines above name before rerunning")
    return (f"{failed} of {total} runs failed (one line each above; each run folder's {LOG} holds the "
            f"traceback); {advice}")
