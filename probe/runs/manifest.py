"""A folder's artifacts with their digests: every file written through a manifest, verified on read.

``Manifest(folder).write(name, data)`` writes ``folder/name`` atomically and
records its sha256, size and (for tables) row count in ``folder/manifest.json``,
which is itself written atomically and carries a digest of its own entries.
Recording is two-phase: before the file is replaced the manifest accepts
both the old and the new content, afterwards only the new. So a process
killed at any moment leaves a folder whose every file matches its entry,
and a file that matches nothing was damaged after it was written (a cut
copy, a flipped byte, an editor, a full disk).

``check(name)`` is what every read goes through: it returns whether the
file is the one recorded; with ``repair=True`` a damaged or unlisted file
is moved aside into ``folder/damaged/`` (never deleted) with one line on
stderr saying which file and why, so that the reader recomputes it.
Repairs change the folder, so only the holder of its lock may make them.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
import time
from pathlib import Path

from probe.files import write_atomic

MANIFEST = "manifest.json"
DAMAGED = "damaged"
FORMAT = 1


class Manifest:
    """The manifest of one folder; every method reads it afresh (another process may have written it)."""

    def __init__(self, folder: str | Path, *, ignore: tuple[str, ...] = ()):
        self.folder = Path(folder)
        self.path = self.folder / MANIFEST
        # Files the manifest does not govern (locks, logs): never verified, never moved.
        self.ignore = set(ignore) | {MANIFEST, DAMAGED}

    # --- reading the manifest -------------------------------------------------

    def entries(self, *, repair: bool = False) -> dict[str, dict] | None:
        """name -> entry; {} when there is no manifest; None when it is damaged (moved aside if ``repair``)."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        try:
            doc = json.loads(raw)
            files = doc["files"]
            if doc.get("format") != FORMAT or doc.get("digest") != _digest(files):
                raise ValueError("its digest does not match its entries")
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            if repair:
                self.move_aside(MANIFEST, f"unreadable ({_short(e)})")
            return None
        return files

    # --- writing ----------------------------------------------------------------

    def write(self, name: str, data: str | bytes, *, rows: int | None = None) -> Path:
        """Write ``folder/name`` atomically and record it (two-phase, see the module docstring)."""
        blob = data.encode("utf-8") if isinstance(data, str) else data
        entry = {"sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob)}
        if rows is not None:
            entry["rows"] = rows
        files = self.entries() or {}
        old = files.get(name)
        if old is not None and (self.folder / name).exists():
            # Whichever version is on disk (the last one written, or the one before if that write was
            # killed) stays accepted until the new one is in place.
            self._save({**files, name: {**entry, "previous": [_plain(old), *old.get("previous", [])][:3]}})
        else:
            self._save({**files, name: entry})
        path = write_atomic(self.folder / name, blob)
        self._save({**(self.entries() or {}), name: entry})
        return path

    def write_json(self, name: str, obj) -> Path:
        return self.write(name, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")

    def write_table(self, name: str, table) -> Path:
        """A pandas DataFrame as CSV, with its row count recorded."""
        return self.write(name, table.to_csv(index=False), rows=len(table))

    def _save(self, files: dict) -> None:
        doc = {"format": FORMAT, "files": files, "digest": _digest(files)}
        write_atomic(self.path, json.dumps(doc, indent=2, sort_keys=True) + "\n")

    # --- verifying ----------------------------------------------------------------

    def check(self, name: str, *, repair: bool = False) -> bool:
        """Whether ``folder/name`` exists and is a recorded version. A damaged or unlisted one is moved
        aside when ``repair``; a missing one is simply absent (False)."""
        path = self.folder / name
        if not path.exists():
            return False
        return self._verdict(name, lambda entry: _mismatch(*_file_digest(path), entry), repair)

    def read(self, name: str, *, repair: bool = False) -> bytes | None:
        """The content of ``folder/name`` if it is a recorded version, else None (moved aside if ``repair``).

        The bytes checked are the bytes returned, so a concurrent writer can never slip another in."""
        try:
            blob = (self.folder / name).read_bytes()
        except FileNotFoundError:
            return None
        ok = self._verdict(name, lambda entry: _mismatch(hashlib.sha256(blob).hexdigest(), len(blob), entry), repair)
        return blob if ok else None

    def read_json(self, name: str, *, repair: bool = False):
        blob = self.read(name, repair=repair)
        return None if blob is None else json.loads(blob)

    def read_table(self, name: str, *, repair: bool = False):
        """A table written by ``write_table`` (None if absent or damaged); its row count is checked too."""
        import pandas as pd

        blob = self.read(name, repair=repair)
        if blob is None:
            return None
        # Only empty fields are missing values: a placement or mode is never parsed as NaN.
        table = pd.read_csv(io.BytesIO(blob), keep_default_na=False, na_values=[""])
        rows = (self.entries() or {}).get(name, {}).get("rows")
        if rows is not None and len(table) != rows:  # cannot happen with a matching digest; checked anyway
            raise ValueError(f"{self.folder / name} has {len(table)} rows where {rows} were written")
        return table

    def _verdict(self, name: str, mismatch, repair: bool) -> bool:
        files = self.entries(repair=repair)
        if files is None:
            why = "the folder's manifest.json is damaged, so nothing in it can be verified"
        elif name not in files:
            why = ("not listed in manifest.json (written by an older version, or by hand)" if files else
                   "the folder has no manifest.json (written by an older version, or it was deleted)")
        else:
            why = mismatch(files[name])
            if why is None:
                return True
        if repair:
            self.move_aside(name, why)
        return False

    def verify_all(self, *, repair: bool = True) -> list[str]:
        """Check every file of the folder; return the names that were damaged or unlisted."""
        names = [p.name for p in sorted(self.folder.iterdir()) if p.is_file() and p.name not in self.ignore
                 and not p.name.startswith(".")] if self.folder.is_dir() else []  # hidden: locks, temporaries
        files = self.entries(repair=repair)
        if names and not files:  # no manifest, or a damaged one: nothing can be verified, said once per folder
            if repair:
                why = "its manifest.json is damaged" if files is None else \
                      "it has no manifest.json (written by an older version, or the manifest was deleted)"
                moved = [self.move_aside(n, why, quiet=True) for n in names]
                print(f"run folder {self.folder}: {why}, so none of its {len(names)} files can be verified; "
                      f"moved them to {moved[0].parent}, recomputing", file=sys.stderr)
            return names
        bad = []
        for name in names:
            if not self.check(name, repair=repair):
                bad.append(name)
        if repair:
            files = self.entries() or {}
            gone = [n for n in files if not (self.folder / n).exists()]
            if gone:  # listed but deleted (a user forcing a recompute): the entry goes too
                self._save({n: e for n, e in files.items() if n not in gone})
        return bad

    def clean_temporary(self) -> None:
        """Remove write_atomic temporaries left by a killed writer (only under the folder's lock)."""
        for tmp in self.folder.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)

    def move_aside(self, name: str, why: str, *, quiet: bool = False) -> Path:
        dest_dir = self.folder / DAMAGED
        dest_dir.mkdir(exist_ok=True)
        dest = dest_dir / f"{name}.{time.strftime('%Y%m%dT%H%M%S')}"
        n = 1
        while dest.exists():
            dest = dest_dir / f"{name}.{time.strftime('%Y%m%dT%H%M%S')}.{n}"
            n += 1
        (self.folder / name).replace(dest)
        if not quiet:
            print(f"damaged run file {self.folder / name}: {why}; moved to {dest}, recomputing", file=sys.stderr)
        return dest


def _plain(entry: dict) -> dict:
    return {k: v for k, v in entry.items() if k != "previous"}


def _digest(files: dict) -> str:
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def _file_digest(path: Path) -> tuple[str, int]:
    h, n = hashlib.sha256(), 0
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
            n += len(block)
    return h.hexdigest(), n


def _mismatch(digest: str, size: int, entry: dict) -> str | None:
    """None if (digest, size) is a recorded version of the file, else why not (for the one-line report)."""
    for version in (entry, *entry.get("previous", [])):
        if digest == version["sha256"] and size == version["bytes"]:
            return None
    if size != entry["bytes"]:
        return f"{size} bytes where {entry['bytes']} were written (cut short or appended to)"
    return "its sha256 differs from the one recorded when it was written (changed in place)"


def _short(e: BaseException) -> str:
    return str(e).splitlines()[0][:120] if str(e) else type(e).__name__
