"""``python -m probe.train``, and the names users import from ``probe.train`` (now in ``probe.runs``)."""

from probe.runs.cli import main
from probe.runs.config import PRESETS, RunConfig, RunResult, preset
from probe.runs.train import evaluate, train

__all__ = ["PRESETS", "RunConfig", "RunResult", "evaluate", "main", "preset", "train"]

if __name__ == "__main__":
    raise SystemExit(main())
