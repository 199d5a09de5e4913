"""Text files read as a stream: refused from their first bytes when binary, decoded and tokenised in chunks
into token ids, so that loading costs a small multiple of the token count (8 bytes a token), never of the
text as Python strings.

``TokenStream`` assigns ids in order of first appearance across every file it reads, so the types of a
prefix of the stream (a single file's training part, or the training file read first) are exactly the
ids below the largest id seen in it: the training vocabulary is a prefix of the id space.
"""

from __future__ import annotations

import codecs
import hashlib
from pathlib import Path

import numpy as np

from probe.data.corpus import EOS, CorpusError

BINARY_SNIFF = 8192  # bytes searched for a NUL before anything else is read
CHUNK = 1 << 20  # bytes decoded and tokenised at a time
BYTES_PER_TOKEN = 8  # an int64 id
# Tokens per byte at most, and the copies alive while the id chunks are joined: for the memory estimate.
TOKENS_PER_BYTE = {"char": 1.0, "word": 0.5}
PEAK_COPIES = 2.5


def sniff(path: Path) -> int:
    """The file's size; a one-line CorpusError if it is unreadable, empty or binary (a NUL in its first
    ``BINARY_SNIFF`` bytes), read from those bytes alone."""
    try:
        with open(path, "rb") as f:
            head = f.read(BINARY_SNIFF)
            size = f.seek(0, 2)
    except OSError as err:
        raise CorpusError(f"cannot read text corpus file {path}: {err.strerror or err}") from None
    if not head:
        raise CorpusError(f"text corpus file {path} is empty (0 bytes)")
    nul = head.find(b"\0")
    if nul >= 0:
        raise CorpusError(
            f"text corpus file {path} looks binary (a NUL byte at byte offset {nul}); a corpus must be UTF-8 text"
        )
    return size


def available_memory() -> int | None:
    """Bytes of memory available to this process (MemAvailable), or None where it cannot be read."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def check_fits(path: Path, size: int, level: str) -> None:
    """A one-line CorpusError, before reading, when the file's ids could not fit the available memory."""
    need = int(size * TOKENS_PER_BYTE[level] * BYTES_PER_TOKEN * PEAK_COPIES) + CHUNK * 64
    have = available_memory()
    if have is not None and need > have:
        raise CorpusError(
            f"text corpus file {path} ({size / 2**30:.2f} GiB) needs about {need / 2**30:.1f} GiB of memory to load "
            f"at {level} level but {have / 2**30:.1f} GiB are available; use a smaller file or free memory"
        )


class TokenStream:
    """Token ids of one or more UTF-8 files, with one vocabulary in order of first appearance."""

    def __init__(self, level: str):
        self.level = level
        self.stoi: dict[str, int] = {}
        self.itos: list[str] = []

    def _ids(self, tokens) -> np.ndarray:
        stoi, itos = self.stoi, self.itos
        out = np.empty(len(tokens), dtype=np.int64)
        for i, t in enumerate(tokens):
            j = stoi.get(t)
            if j is None:
                j = stoi[t] = len(itos)
                itos.append(t)
            out[i] = j
        return out

    def _char_ids(self, text: str) -> np.ndarray:
        """Every character a token: mapped through its code point, types in order of first appearance."""
        points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        values, first, inverse = np.unique(points, return_index=True, return_inverse=True)
        ids = np.empty(len(values), dtype=np.int64)
        for k in np.argsort(first, kind="stable"):  # new types get ids in the order they appear
            ids[k] = self._ids([chr(int(values[k]))])[0]
        return ids[inverse.reshape(-1)]

    def read(self, path: Path) -> tuple[np.ndarray, str]:
        """The ids of ``path`` and the sha256 of its bytes; one-line CorpusErrors for unusable text."""
        size = sniff(path)
        check_fits(path, size, self.level)
        decoder = codecs.getincrementaldecoder("utf-8")("strict")
        sha = hashlib.sha256()
        chunks: list[np.ndarray] = []
        carry, offset, started, any_text = "", 0, False, False
        with open(path, "rb") as f:
            while True:
                raw = f.read(CHUNK)
                last = not raw
                sha.update(raw)
                pending = decoder.getstate()[0]
                try:
                    text = decoder.decode(raw, final=last)
                except UnicodeDecodeError as err:
                    data = pending + raw
                    raise CorpusError(
                        f"text corpus file {path} is not UTF-8: byte 0x{data[err.start]:02x} at byte offset "
                        f"{offset - len(pending) + err.start} is invalid; convert the file to UTF-8 "
                        "(e.g. iconv -f latin1 -t utf-8)"
                    ) from None
                offset += len(raw)
                if not started and (text or last):
                    text, started = text.removeprefix("\ufeff"), True
                text = carry + text
                carry = ""
                if not last and text.endswith("\r"):  # a \r\n may straddle two chunks
                    text, carry = text[:-1], "\r"
                text = text.replace("\r\n", "\n").replace("\r", "\n")
                any_text = any_text or bool(text)
                if self.level == "char":
                    if text:
                        chunks.append(self._char_ids(text))
                else:
                    cut = len(text) if last else text.rfind("\n") + 1  # whole lines only, but at the end
                    body, carry = text[:cut], text[cut:] + carry
                    if body:
                        chunks.append(self._ids(_words(body)))
                if last:
                    break
        if not any_text:
            raise CorpusError(f"text corpus file {path} is empty (only a byte-order mark)")
        ids = np.concatenate(chunks) if chunks else np.empty(0, dtype=np.int64)
        return ids, sha.hexdigest()


def _words(text: str) -> list[str]:
    """Whitespace tokens with ``<eos>`` at every line end (a trailing newline ends the last line rather
    than starting an empty one); ``text`` holds whole lines, the last one possibly without its newline."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    tokens: list[str] = []
    for line in lines:
        tokens.extend(line.split())
        tokens.append(EOS)
    return tokens
