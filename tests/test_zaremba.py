"""studies.zaremba on the substitute split, cut to a test-sized budget."""

from __future__ import annotations

from html import unescape

import pandas as pd
import pytest

from studies import zaremba


@pytest.fixture(scope="module")
def report(shared_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("zaremba")
    code = zaremba.main(["--sizes", "small", "--seeds", "2", "--split", "substitute", "--epochs", "1",
                         "--train-tokens", "20000", "--data-dir", str(shared_data), "--out", str(out),
                         "--no-progress"])
    assert code == 0
    return out


def test_substitute_split_report_says_prominently_it_is_not_comparable(report):
    html = unescape((report / "zaremba.html").read_text())
    title = html[html.index("<h1"):html.index("</h1>")]
    assert "SUBSTITUTE SPLIT" in title and "not comparable" in title
    assert "NOT comparable with the paper's" in html


def test_report_sets_our_perplexities_beside_the_papers(report):
    html = unescape((report / "zaremba.html").read_text())
    data = pd.read_csv(report / "zaremba_data.csv")
    assert set(data["seed"]) == {0, 1} and set(data["placement"]) == {"small · none"}
    valid = data.loc[data["measure"] == "valid_ppl", "value"]
    assert len(valid) == 2 and valid.notna().all()
    assert f"valid {valid.mean():.1f}" in html and "against the paper's 120.7" in html and "114.5" in html
    for measure in ("words_per_sec", "seconds_per_epoch", "train_ppl", "valid_ppl_epoch"):
        assert (data["measure"] == measure).any(), measure


def test_plan_follows_the_papers_configurations():
    args = zaremba.build_parser().parse_args(["--placements", "variational", "--seeds", "2"])
    cells = zaremba.plan(args)
    sizes = {size for size, _ in cells}
    assert sizes == {"small", "medium", "large"}
    medium = [c.run for size, c in cells if size == "medium"]
    assert {r.placement for r in medium} == {"zaremba:p=0.5", "variational:p=0.5,rec=0.3,emb=0.0"}
    assert all((r.hidden_size, r.bptt, r.epochs, r.lr_decay) == (650, 35, 39, 1.2) for r in medium)
    large = [c.run for size, c in cells if size == "large"]
    assert large[0].placement == "zaremba:p=0.65" and large[0].clip == 10.0


def test_missing_training_file_stops_with_a_clear_error(shared_data, tmp_path, capsys):
    code = zaremba.main(["--sizes", "small", "--seeds", "1", "--data-dir", str(shared_data), "--out", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    assert "ptb.train.txt" in err and "--split substitute" in err and "https://" in err


def test_another_corpus_runs_and_the_report_says_it_is_not_comparable(tmp_path):
    words = [f"w{i % 29}" for i in range(12000)]
    book = tmp_path / "book.txt"
    book.write_text("\n".join(" ".join(words[i:i + 10]) for i in range(0, len(words), 10)) + "\n")
    out = tmp_path / "out"
    code = zaremba.main(["--sizes", "small", "--seeds", "1", "--corpus", str(book), "--epochs", "1",
                         "--out", str(out), "--no-progress"])
    assert code == 0
    html = unescape((out / "zaremba.html").read_text())
    title = html[html.index("<h1"):html.index("</h1>")]
    assert "not comparable" in title and "book.txt" in title
    assert "OTHER CORPUS" in html and "sha256" in html
