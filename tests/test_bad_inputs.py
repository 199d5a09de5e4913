"""Bad input fails before anything trains, with one line: corpora too short for the measurements, a
placement given twice, a repeated key, binary files of any size; and a text corpus loads in a small
multiple of its size."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from probe.data.corpus import CorpusError
from probe.data.registry import load_corpus
from studies import memory_decay

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ["--preset", "smoke", "--no-progress"]


def words(n: int, seed: int = 0) -> str:
    import random

    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(50)]
    lines, line = [], []
    for _ in range(n):
        line.append(rng.choice(vocab))
        if len(line) == 9:
            lines.append(" ".join(line))
            line = []
    return "\n".join(lines + [" ".join(line)]) + "\n"


def one_error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    assert err[0].startswith("error: "), err
    return err[0]


def nothing_trained(runs: Path) -> bool:
    return not runs.exists() or not any(runs.glob("*/checkpoint.pt"))


def test_a_corpus_too_short_for_the_measurements_fails_before_training(tmp_path, capsys):
    book = tmp_path / "short.txt"
    book.write_text(words(2000))  # enough to batch, too short for the smoke preset's lags and probe positions
    runs = tmp_path / "runs"
    code = memory_decay.main([*SMOKE, "--corpus", str(book), "--runs-dir", str(runs), "--out", str(tmp_path / "o")])
    assert code == 2
    line = one_error_line(capsys)
    assert "too short for this preset's measurements" in line, line
    assert nothing_trained(runs)


def test_the_same_placement_twice_is_one_line_naming_both_spellings(tmp_path, capsys):
    runs = tmp_path / "runs"
    code = memory_decay.main([*SMOKE, "--placements", "none", "zaremba", "zaremba:p=0.5", "--runs-dir", str(runs),
                              "--out", str(tmp_path / "o")])
    assert code == 2
    line = one_error_line(capsys)
    assert "'zaremba'" in line and "'zaremba:p=0.5'" in line and "same placement" in line, line
    assert nothing_trained(runs)


def test_a_key_given_twice_is_one_line(tmp_path, capsys):
    runs = tmp_path / "runs"
    code = memory_decay.main([*SMOKE, "--placements", "none", "variational:rec=0.3,rec=0.4", "--runs-dir", str(runs),
                              "--out", str(tmp_path / "o")])
    assert code == 2
    line = one_error_line(capsys)
    assert "sets 'rec' twice" in line, line
    assert nothing_trained(runs)


def test_a_huge_binary_file_is_refused_from_its_first_bytes_in_seconds(tmp_path):
    blob = tmp_path / "huge.txt"
    with open(blob, "wb") as f:  # 20 GiB, sparse: reading it whole would take minutes
        f.write(b"\x7fELF\x02\x01\x01\x00")
        f.truncate(20 << 30)
    start = time.perf_counter()
    with pytest.raises(CorpusError, match="looks binary"):
        load_corpus(str(blob))
    proc = subprocess.run([sys.executable, "-m", "probe.train", "--corpus", str(blob), "--runs-dir",
                           str(tmp_path / "runs"), "--no-progress"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert time.perf_counter() - start < 30
    assert proc.returncode == 2 and "looks binary" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_a_text_corpus_that_cannot_fit_in_memory_is_refused_before_reading(tmp_path, monkeypatch):
    from probe.data import text_stream

    book = tmp_path / "book.txt"
    book.write_text(words(5000))
    monkeypatch.setattr(text_stream, "available_memory", lambda: 1000)  # bytes
    with pytest.raises(CorpusError, match="needs about .* of memory to load"):
        load_corpus(str(book))


PEAK = """
import resource, sys
from probe.data.registry import load_corpus
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
corpus = load_corpus(sys.argv[1])
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((after - before) * 1024, corpus.train.numel() + corpus.valid.numel() + corpus.test.numel())
"""


@pytest.mark.parametrize("level", ["word", "char"])
def test_loading_a_text_corpus_costs_a_small_multiple_of_its_tokens(tmp_path, level):
    book = tmp_path / "book.txt"
    book.write_text(words(3_000_000))  # about 8 MB
    spec = str(book) if level == "word" else f"text,level=char:{book}"
    proc = subprocess.run([sys.executable, "-c", PEAK, spec], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    grown, tokens = map(int, proc.stdout.split())
    # ids are 8 bytes a token; the peak also holds a chunk of text and the joined copy of the ids
    assert grown < 40 * tokens, (grown, tokens, grown / book.stat().st_size)
