"""Checksummed downloads of corpus files: atomic, verified against the registry's sha256."""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from probe.data.corpus import CorpusError


# --------------------------------------------------------------------------- checksums and downloads

# Hashing the 10 MB training files on every load would dominate test time, so a
# file's digest is computed once per process and reused while it is unchanged.


def download(url: str, dest: Path, sha256: str | None, *, timeout: float = 30) -> Path:
    """Fetch ``url`` to ``dest`` atomically, verifying ``sha256`` when it is given.

    The body streams into a temporary file beside ``dest`` and is moved into
    place only after the checksum matches, so a failure of any kind (network,
    HTTP error, wrong checksum, interruption) leaves no partial file behind.
    """
    dest = Path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    except OSError as err:
        raise CorpusError(f"cannot download {url}: cannot write to {dest.parent} ({err})") from err
    tmp = Path(tmp_name)
    try:
        try:
            actual = _stream_to_file(url, fd, timeout)
        except (OSError, http.client.HTTPException, ValueError) as err:
            # URLError, HTTPError, refused connections and timeouts are all OSErrors;
            # ValueError is urllib's answer to a malformed URL.
            raise CorpusError(_download_failed(url, dest, sha256, err)) from err
        if sha256 is not None and actual != sha256.lower():
            raise CorpusError(
                f"checksum mismatch downloading {url}: expected sha256 {sha256}, got {actual}. "
                f"The download was discarded and nothing was written to {dest}; the server may hold "
                "a different version of the file."
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)  # gone already after a successful os.replace
    return dest


def _stream_to_file(url: str, fd: int, timeout: float) -> str:
    """Copy the body of ``url`` into the open file ``fd``; return its sha256."""
    digest = hashlib.sha256()
    with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
        for block in iter(lambda: response.read(1 << 20), b""):
            digest.update(block)
            out.write(block)
    return digest.hexdigest()


def _download_failed(url: str, dest: Path, sha256: str | None, err: BaseException) -> str:
    if isinstance(err, urllib.error.HTTPError):
        why = f"HTTP {err.code} {err.reason}"
    elif isinstance(err, urllib.error.URLError):
        why = str(err.reason)
    else:
        why = f"{type(err).__name__}: {err}"
    check = f" (its sha256 should be {sha256})" if sha256 else ""
    return (
        f"download of {url} failed: {why}. No file was written. To get it by hand, fetch that URL "
        f"on a machine with network access and save it as {dest}{check}."
    )


