"""The smoke study end to end: report, data beside it, browser rendering, kill and resume."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from html import unescape
from pathlib import Path

import pandas as pd
import pytest

from probe.placements import PLACEMENT_NAMES, parse_placement
from probe.analysis.compare import reference_label
from studies.memory_decay import PRESETS
from browser import chromium_binary, is_blank, render_in_chromium

REPO = Path(__file__).resolve().parents[1]
SMOKE = ["-m", "studies.memory_decay", "--preset", "smoke", "--no-progress", "--jobs", "2"]
SMOKE_SPECS = [parse_placement(p).spec for p in PRESETS["smoke"].placements]


def run_study(out: Path, *extra, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, *SMOKE, "--out", str(out), *extra], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600, **kwargs)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("smoke")
    proc = run_study(out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (out / "stderr.txt").write_text(proc.stderr)
    return out


def test_the_study_prints_its_estimated_wall_time_before_the_grid_and_the_real_one_at_the_end(smoke):
    lines = (smoke / "stderr.txt").read_text().splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("estimated wall time on this machine: about "))
    assert "for 18 runs on 2 workers (calibrated at" in lines[first]
    assert first < next(i for i, line in enumerate(lines) if line.startswith("report: "))
    assert re.match(r"done in \d+ s \(estimated \d+ s before the grid\)", lines[-1]), lines[-1]


def comparable(data: pd.DataFrame) -> pd.DataFrame:
    """The data without wall-clock times, which differ between any two runs of anything."""
    return data[data["measure"] != "train_seconds"].reset_index(drop=True)


def test_smoke_report_names_every_placement_and_has_every_figure(smoke):
    html = unescape((smoke / "memory_decay_smoke.html").read_text())
    assert {parse_placement(s).name for s in SMOKE_SPECS} == set(PLACEMENT_NAMES)
    for spec in SMOKE_SPECS:
        assert spec in html, spec
    figures = re.findall(r'<figure id="fig-([a-z_]+)"', html)
    expected = {"tradeoff", "forest", "dose", "perplexity", "influence", "probe", "gradient", "recall", "context",
                "position", "training"}
    assert expected <= set(figures), figures
    assert figures[0] == "tradeoff"  # the question in one picture, first in the answer
    notes = re.findall(r'<figure id="fig-[a-z_]+">\s*<h3>[^<]*</h3>\s*<p class="note">', html)
    assert html.count("<svg") == len(figures) - len(notes)


def test_title_and_headline_name_placements_and_corpora_in_words_not_specs(smoke):
    page = json.loads((smoke / "memory_decay_smoke.json").read_text())
    for text in [page["title"], *page["headline"]]:
        assert "synthetic:" not in text and ":p=" not in text and "rec=" not in text, text
    assert page["title"] == "Memory decay under dropout placements: synthetic language (8 tokens, marked copies 2, 5 and 10 back)"
    html = unescape((smoke / "memory_decay_smoke.html").read_text())
    assert re.search(r"<title>([^<]*)</title>", html).group(1) == page["title"]


def test_data_beside_the_report_parses_and_matches_its_numbers(smoke):
    data = pd.read_csv(smoke / "memory_decay_smoke_data.csv")
    tests = pd.read_csv(smoke / "memory_decay_smoke_tests.csv")
    assert set(data["seed"]) == {0, 1}
    assert set(SMOKE_SPECS) == set(data["placement"])
    html = unescape((smoke / "memory_decay_smoke.html").read_text())
    # Every placement's mean test perplexity, as the CSV gives it, is printed in the report.
    ppl = data[data["measure"] == "test_ppl"].groupby("placement")["value"].mean()
    for placement, value in ppl.items():
        assert f"{value:.2f}" in html, (placement, value)
    # So is every test's difference, to the precision the table prints.
    assert len(tests) == (len(SMOKE_SPECS) - 1) * tests["label"].nunique()
    assert (tests["n"] == 2).all() and (tests["n_ref"] == 2).all()


def test_report_warns_that_two_seeds_cannot_reach_significance(smoke):
    html = unescape((smoke / "memory_decay_smoke.html").read_text())
    assert "no test can reach significance" in html


def test_report_answers_first_with_headline_checks_and_answer_table(smoke):
    html = unescape((smoke / "memory_decay_smoke.html").read_text())
    main = html[html.index("<main"):]
    # The first section is the answer; the full list of comparisons comes after it, collapsed.
    assert main.index('id="answer"') < main.index('id="comparisons"') < main.index('id="placements"')
    answer = main[main.index('id="answer"'):main.index('id="comparisons"')]
    headline = re.findall(r"<p>(.*?)</p>", answer[:answer.index("</div>")], re.S)
    assert 1 <= len(headline) <= 6
    assert any("verdicts are not settled" in s for s in headline)  # 2 vs 2 seeds: one seed decides every finding
    assert "Can this study answer the question?" in answer
    report = json.loads((smoke / "memory_decay_smoke.json").read_text())
    keys = [c["key"] for c in report["checks"]]
    assert keys == ["overfits", "dropout_helps", "lag_span", "memory_learned", "fitted"]
    for check in report["checks"]:
        assert check["verdict"] in ("pass", "fail", "not computable") and check["detail"] in answer
    # A failed check is said in the headline's first sentence.
    if any(c["verdict"] == "fail" for c in report["checks"]):
        assert headline[0].startswith("This study cannot fully answer its question")
    assert "Placements at a glance" in answer and "copy log-prob above chance, lag 10" in answer
    assert report["headline"] == [unescape(h) for h in headline]


def test_report_stays_small_with_its_data_beside_it(smoke):
    assert (smoke / "memory_decay_smoke.html").stat().st_size < 2_000_000
    assert (smoke / "memory_decay_smoke_data.csv").stat().st_size > 0


@pytest.mark.skipif(chromium_binary() is None, reason="headless Chromium not installed (.ci/run installs it)")
def test_report_renders_in_headless_chromium_without_errors(smoke):
    errors, png = render_in_chromium(smoke / "memory_decay_smoke.html")
    assert errors == []
    assert not is_blank(png)


def test_a_finished_study_recomputes_nothing(smoke):
    before = {p: p.stat().st_mtime_ns for p in (smoke / "runs").rglob("*") if p.is_file()}
    proc = run_study(smoke)
    assert proc.returncode == 0, proc.stderr[-3000:]
    after = {p: p.stat().st_mtime_ns for p in (smoke / "runs").rglob("*") if p.is_file()}
    assert before == after


def test_killed_study_resumes_without_recomputing_and_matches_an_uninterrupted_one(smoke, tmp_path):
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, *SMOKE, "--out", str(out)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    runs = out / "runs"
    while time.monotonic() < deadline and len(list(runs.rglob("measure-*.csv"))) < 3:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the study and its workers, mid-way
    proc.wait()
    finished = {p: p.stat().st_mtime_ns for p in runs.rglob("measure-*.csv")}
    assert 3 <= len(finished) < 18, "the study must be killed part-way through its 18 runs"
    assert not (out / "memory_decay_smoke.html").exists()

    resumed = run_study(out)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for path, mtime in finished.items():
        assert path.stat().st_mtime_ns == mtime, f"{path} was recomputed"
    pd.testing.assert_frame_equal(
        comparable(pd.read_csv(out / "memory_decay_smoke_data.csv")), comparable(pd.read_csv(smoke / "memory_decay_smoke_data.csv"))
    )
    pd.testing.assert_frame_equal(pd.read_csv(out / "memory_decay_smoke_tests.csv"), pd.read_csv(smoke / "memory_decay_smoke_tests.csv"))


def test_bad_arguments_exit_with_a_clear_error(tmp_path):
    proc = run_study(tmp_path, "--placements", "zaremba", "bogus")
    assert proc.returncode == 2
    assert "unknown placement 'bogus'" in proc.stderr and "valid names" in proc.stderr
    proc = run_study(tmp_path, "--reference", "naive", "--placements", "zaremba", "none")
    assert proc.returncode == 2 and "reference placement" in proc.stderr


def test_reference_is_found_by_name_or_exact_spec():
    specs = ["none", "zaremba:p=0.25", "naive:p=0.25,rec=0.25"]
    assert reference_label(specs, "zaremba") == "zaremba:p=0.25"
    assert reference_label(specs, "zaremba:p=0.25") == "zaremba:p=0.25"
    assert reference_label(specs, "zaremba:p=0.5") is None  # a spec names one rate, never another
    assert reference_label(specs, "variational") is None


def test_a_real_text_report_sets_its_verdicts_beside_the_synthetic_study(smoke, tmp_path):
    words = [f"w{i % 37}" for i in range(9000)]
    corpus = tmp_path / "book.txt"
    corpus.write_text("\n".join(" ".join(words[i:i + 12]) for i in range(0, len(words), 12)) + "\n")
    out = tmp_path / "out"
    proc = run_study(out, "--corpus", str(corpus), "--placements", "none", "zaremba:p=0.25", "--seeds", "2",
                     "--compare-with", str(smoke / "memory_decay_smoke_data.csv"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "memory_decay_smoke_book.json").read_text())
    (table,) = [t for t in report["tables"] if t["title"].startswith("Transfer")]
    assert table["headers"][:3] == ["placement", "regularisation here", "regularisation, synthetic"]
    assert [row[0] for row in table["rows"]] == ["zaremba, p = 0.25"]
    bad = run_study(tmp_path / "bad", "--corpus", str(corpus), "--compare-with", str(tmp_path / "missing.csv"))
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("error: --compare-with ")


def test_a_real_text_corpus_gets_the_checks_that_apply_to_it(tmp_path):
    # A user's own text: no planted copies and no known optimum, so the report checks overfitting,
    # whether dropout helps and whether the best placement converged.
    words = [f"w{i % 37}" for i in range(9000)]
    text = "\n".join(" ".join(words[i:i + 12]) for i in range(0, len(words), 12)) + "\n"
    corpus = tmp_path / "book.txt"
    corpus.write_text(text)
    out = tmp_path / "out"
    proc = run_study(out, "--corpus", str(corpus), "--placements", "none", "zaremba:p=0.25", "--seeds", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Named for its corpus, so it never overwrites the synthetic study's report.
    report = json.loads((out / "memory_decay_smoke_book.json").read_text())
    assert [c["key"] for c in report["checks"]] == ["overfits", "dropout_helps", "converged"]
    html = unescape((out / "memory_decay_smoke_book.html").read_text())
    assert "book.txt" in html and "sha256" in html
