"""One run's folder: its layout, its lock, and the one check that it holds a given configuration.

    <runs_dir>/<run_id>/
        config.json        the RunConfig, with run_id (and a text corpus's sha256)
        metrics.json       per-epoch metrics so far
        checkpoint.pt      weights, optimizer and RNG states after the last epoch, and the best epoch's weights
        result.json        what the finished run reports (probe.runs.config.RunResult)
        measure-<id>.csv   one table per measurement configuration (probe.runs.cells)
        manifest.json      sha256, size (and rows) of every file above, written after each (probe.runs.manifest)
        error.log          the traceback of the last failure, if any (a log, not verified)
        damaged/           files that failed verification, moved aside (never deleted)
        .lock              held by the process that trains or measures the run

``run_id`` is ``RunConfig.run_id()``, a hash of the whole configuration. The
lock (``filelock``, an flock(2) on ``.lock``) makes two processes, or two
machines on a shared folder that supports locks, train a run once: the
second waits and then reads the first one's result. The kernel releases an
flock when its process dies, so a killed process never leaves a run locked.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
import tempfile
from pathlib import Path

from filelock import FileLock, Timeout

from probe.runs.manifest import Manifest

CONFIG = "config.json"
METRICS = "metrics.json"
CHECKPOINT = "checkpoint.pt"
RESULT = "result.json"
LOG = "error.log"
LOCK = ".lock"


_LOCKS: dict[str, FileLock] = {}


def measure_file(measure_id: str) -> str:
    return f"measure-{measure_id}.csv"


class RunFolder:
    """A run folder; ``files`` reads and writes its artifacts through the manifest."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.files = Manifest(self.path, ignore=(LOG, LOCK))

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    # --- the lock -----------------------------------------------------------------

    def _lock(self) -> FileLock:
        # One lock object per path and process, kept alive here: a holder may take it again (run_cell holds
        # it around train, which takes it too), where a second object on the same file would deadlock, and
        # a lock object that is garbage-collected releases its lock.
        key = str(self.path.resolve() / LOCK)
        if key not in _LOCKS:
            _LOCKS[key] = FileLock(key, thread_local=False, fallback_to_soft=False)
        return _LOCKS[key]

    def acquire(self, *, wait: bool = True) -> bool:
        """Take the folder's lock; False if another process holds it and ``wait`` is False."""
        self.path.mkdir(parents=True, exist_ok=True)
        lock = self._lock()
        try:
            lock.acquire(timeout=0)
            return True
        except Timeout:
            if not wait:
                return False
        print(f"run {self.path.name}: another process is training or measuring it (it holds {self.path / LOCK}); "
              "waiting to reuse its result", file=sys.stderr, flush=True)
        lock.acquire()
        return True

    def release(self) -> None:
        self._lock().release()

    @contextlib.contextmanager
    def locked(self):
        self.acquire(wait=True)
        try:
            yield self
        finally:
            self.release()

    # --- identity ---------------------------------------------------------------------

    def foreign_config(self, config) -> str | None:
        """Why this folder holds another configuration's run, or None if it holds ``config``'s (or nothing).

        The one place that decides whether a run folder is a configuration's own: training and the
        cache both ask it. ``config`` is a ``probe.runs.config.RunConfig``.
        """
        saved = self.files.read_json(CONFIG)
        if saved is None:
            return None
        saved = dict(saved)
        saved.pop("run_id", None)
        if saved.pop("corpus_sha256", None) not in (None, config.corpus_sha256()):
            return (f"run folder {self.path} holds a run trained on other contents of the corpus file(s) "
                    f"{config.corpus!r}; use a fresh folder (run folders are keyed by RunConfig.run_id(), which "
                    "hashes the files in)")
        if saved != json.loads(json.dumps(dataclasses.asdict(config))):
            return (f"run folder {self.path} holds a run of a different configuration; use a fresh folder "
                    "(run folders are keyed by RunConfig.run_id())")
        return None

    def write_config(self, config) -> None:
        provenance = {"run_id": config.run_id()}
        if config.corpus_sha256() is not None:
            provenance["corpus_sha256"] = config.corpus_sha256()
        self.files.write_json(CONFIG, dataclasses.asdict(config) | provenance)

    # --- failures ---------------------------------------------------------------------

    def log_failure(self, text: str) -> Path | None:
        """Keep a failure's traceback in the folder, or in the temporary folder when this one cannot be
        written (a full disk, a folder made read-only); None if neither can."""
        for path in (self.path / LOG, Path(tempfile.gettempdir()) / f"dropout-probe-{self.path.name}-{LOG}"):
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
                return path
            except OSError:
                continue
        return None

    def clear_failure(self) -> None:
        (self.path / LOG).unlink(missing_ok=True)
