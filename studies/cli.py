"""Command-line options every grid study shares: where data, runs and reports live, and who runs them."""

from __future__ import annotations

import argparse
from pathlib import Path


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
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def finish_grid_options(args: argparse.Namespace, *, study: str) -> argparse.Namespace:
    if args.runs_dir is None:
        args.runs_dir = args.out / "runs" / study
    return args
