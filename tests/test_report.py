"""The HTML report: files, figures, numbers, escaping, determinism; the kernel timings report; Chromium."""

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from browser import chromium_binary, is_blank, render_in_chromium
from probe.report import figures, plotting
from probe.report import html as report
from probe.report import text as report_text
from probe.analysis import compare, inference
from probe.analysis.verdicts import decide
from studies import kernel_bench

HOSTILE = "<script>alert(1)</script>"
PLACEMENTS = ("zaremba", "naive", "variational", "none")
# Memory time constants (tokens) and perplexities the synthetic measurements are drawn around.
MEMORY = {"none": 8.0, "zaremba": 7.0, "naive": 1.5, "variational": 5.0}
PPL = {"none": 120.0, "zaremba": 86.0, "naive": 95.0, "variational": 82.0}
ENVIRONMENT = {"date (UTC)": "2026-01-01 00:00:00", "python": "3.11", "torch": "2.13", "device": "CPU", "git commit": "abc"}


def synthetic_tidy(placements=PLACEMENTS, seeds=range(5), *, lags=range(1, 13), skip=(), seed=0) -> pd.DataFrame:
    """A tidy table in the measurements' format, with every measure a study produces (except those in ``skip``)."""
    rng = np.random.default_rng(seed)
    rows = []

    def add(p, s, measure, value, x_name="", x=np.nan, layer=-1, mode=""):
        if measure not in skip:
            rows.append({"placement": p, "seed": int(s), "run_id": f"{p}-s{s}", "measure": measure, "x_name": x_name,
                         "x": float(x), "value": float(value), "layer": int(layer), "mode": mode})

    for p in placements:
        tau, base = MEMORY.get(p, 5.0), PPL.get(p, 90.0)
        for s in seeds:
            def noisy(v, scale=0.05):
                return v * (1 + scale * rng.standard_normal())

            b = noisy(base, 0.01)
            add(p, s, "valid_ppl", b * 1.04)
            add(p, s, "test_ppl", b)
            add(p, s, "influence_kl_eval_half_life", noisy(tau * np.log(2), 0.1))
            add(p, s, "effective_context", noisy(20 * tau, 0.1))
            for k in lags:
                add(p, s, "influence_kl", noisy(0.8 * np.exp(-k / tau)), "lag", k, mode="eval")
                add(p, s, "influence_kl", noisy(0.8 * np.exp(-k / (tau * (0.3 if p == "naive" else 0.8)))),
                    "lag", k, mode="train")
                add(p, s, "influence_hidden", noisy(2 * np.exp(-k / tau)), "lag", k, mode="eval")
                for layer in (0, 1):
                    add(p, s, "probe_bits", noisy(3 * np.exp(-k / tau)) + 0.05, "lag", k, layer=layer)
                    add(p, s, "probe_bits_untrained", noisy(0.6 * np.exp(-k / 2)) + 0.02, "lag", k, layer=layer)
                add(p, s, "probe_bits_baseline", 0.02, "lag", k)
                add(p, s, "gradient_norm", noisy(1.5 * np.exp(-k / tau)), "lag", k)
            for length in (1, 2, 5, 10, 20, 50, 100):
                add(p, s, "context_ppl", noisy(b * (1 + 1.5 * np.exp(-length / (3 * tau))), 0.01), "context_length", length)
            for pos in range(0, 30, 3):
                add(p, s, "position_ppl", noisy(b * (1 + 2 * np.exp(-pos / tau)), 0.01), "position", pos)
            for epoch in range(1, 5):
                add(p, s, "train_ppl", noisy(b * (1 + 3 / epoch), 0.02), "epoch", epoch)
                add(p, s, "valid_ppl_epoch", noisy(b * (1 + 2 / epoch), 0.02), "epoch", epoch)
    return pd.DataFrame(rows)


METRICS = ["test_ppl", compare.Metric("influence_kl", x=10, mode="train"), "influence_kl_eval_half_life"]


def render(path: Path, tidy: pd.DataFrame, *, placements=PLACEMENTS, config=None, title="Memory under dropout") -> Path:
    tests = decide(compare.test_against_reference(tidy, "zaremba", METRICS), test="permutation", alpha=0.05)
    return report.render_report(path, report.Report(
        title=title, question="Where can dropout go in an LSTM without destroying its memory?",
        config=config or {"corpus": "synthetic", "model": {"layers": 2, "hidden": 64}, "seeds": [0, 1, 2, 3, 4]},
        placements=list(placements), tidy=tidy, tests=tests, summary=report_text.summarize(tests),
        environment=dict(ENVIRONMENT), figures=figures.standard_figures(tidy),
        methods=["Corpus: synthetic text, split 90/5/5."],
    ))


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    tidy = synthetic_tidy()
    path = render(tmp_path_factory.mktemp("report") / "study.html", tidy)
    return path, path.read_text(encoding="utf-8"), tidy


def section(html: str, name: str) -> str:
    return re.search(rf'<section id="{name}">(.*?)</section>', html, re.S).group(1)


def table_rows(html: str) -> list[str]:
    return re.findall(r"<tr>(.*?)</tr>", html, re.S)


# --- the study report -------------------------------------------------------


def test_report_and_its_data_files_are_written(rendered):
    path, html, tidy = rendered
    assert path.name == "study.html" and path.exists()
    for name in ("study_data.csv", "study_tests.csv", "study.json"):
        assert (path.parent / name).exists(), name
    assert not list(path.parent.glob("*.tmp")), "temporary files left behind"
    assert html.startswith("<!DOCTYPE html>") and "</html>" in html


def test_report_names_every_placement_with_its_registry_entry(rendered):
    _, html, _ = rendered
    placements = section(html, "placements")
    for name in PLACEMENTS:
        assert f"{name}</td>" in placements
    assert "Gal &amp; Ghahramani 2016" in placements  # citations from probe.placements
    assert "recurrent 0.3, sequence" in placements


def test_every_figure_is_one_inline_svg(rendered):
    path, html, tidy = rendered
    figs = figures.standard_figures(tidy)
    drawn = [f for f in figs if f.svg]
    assert len(drawn) == len(figs) >= 8  # every measure is present, so no notes
    assert html.count("<svg") == len(drawn)
    for f in drawn:
        assert f'<figure id="fig-{f.key}">' in html
    assert "<?xml" not in html and "<!DOCTYPE svg" not in html
    assert html.count('role="img"') == len(drawn)
    ids = re.findall(r'\bid="([^"]+)"', html)
    assert len(ids) == len(set(ids)), "duplicate ids across inline SVGs"
    for ref in set(re.findall(r'href="#([^"]+)"', html) + re.findall(r"url\(#([^)]+)\)", html)):
        assert ref in ids, f"dangling reference #{ref}"


def test_a_missing_measure_leaves_a_note_instead_of_a_figure(tmp_path):
    tidy = synthetic_tidy(seeds=range(2), lags=range(1, 11), skip=("gradient_norm", "train_ppl", "valid_ppl_epoch"))
    figs = {f.key: f for f in figures.standard_figures(tidy)}
    assert figs["gradient"].svg is None and "gradient_norm" in figs["gradient"].note
    assert figs["training"].svg is None
    html = render(tmp_path / "r.html", tidy).read_text()
    assert figs["gradient"].note in html
    assert html.count("<svg") == sum(1 for f in figs.values() if f.svg)


def test_placements_keep_one_colour_in_every_figure():
    styles = plotting.placement_styles(["variational", "zaremba", "my_new_one", "zaremba:p=0.3"])
    again = plotting.placement_styles(["zaremba"])
    assert styles["zaremba"].colour == again["zaremba"].colour == plotting.PALETTE[1]  # registry order
    assert styles["zaremba:p=0.3"].colour == styles["zaremba"].colour  # same placement, other line style
    assert styles["zaremba:p=0.3"].dashes != styles["zaremba"].dashes
    assert styles["my_new_one"].colour not in plotting.PALETTE


def test_csv_beside_the_report_matches_the_printed_numbers(rendered):
    path, html, _ = rendered
    data = pd.read_csv(path.parent / "study_data.csv", keep_default_na=False, na_values=[""])
    assert len(data) > 0 and set(data.columns) >= {"placement", "seed", "measure", "x", "value", "layer", "mode"}
    rows = {re.search(r"</span>([^<]+)</td>", r).group(1): r for r in table_rows(section(html, "perplexity"))[1:]}
    for placement in PLACEMENTS:
        for measure in ("valid_ppl", "test_ppl"):
            values = data[(data["placement"] == placement) & (data["measure"] == measure)]
            ci = inference.mean_ci(values.groupby("seed")["value"].mean())
            printed = f"{report_text.fmt(ci.mean)} <span class=\"ci\">[{report_text.fmt(ci.low)}, {report_text.fmt(ci.high)}]</span>"
            assert printed in rows[placement], (placement, measure)
            assert f"n = {ci.n}" in rows[placement]

    tests = pd.read_csv(path.parent / "study_tests.csv", keep_default_na=False, na_values=[""])
    sig = section(html, "tests")
    assert len(tests) == 3 * (len(PLACEMENTS) - 1)
    for _, t in tests.iterrows():
        row = next(r for r in table_rows(sig) if f"{t['placement']}</td>" in r and report_text.fmt(t["mean"]) in r)
        for text in (report_text.fmt(t["mean_ref"]), report_text.fmt(t["diff"]), report_text.fmt_p(t["p_perm"]), report_text.fmt_p(t["p_holm"]),
                     report_text.fmt(t["hedges_g"], 3), f"{t['n']} vs {t['n_ref']}"):
            assert text in row, (t["metric"], t["placement"], text)


def test_json_and_linked_data_files_hold_the_same_data(rendered):
    path, html, tidy = rendered
    doc = json.loads((path.parent / "study.json").read_text())
    assert len(doc["data"]) == len(tidy) and len(doc["tests"]) == 3 * (len(PLACEMENTS) - 1)
    assert doc["environment"] == ENVIRONMENT
    # The page links to the files beside it instead of embedding them, so it stays small.
    for name in ("study_data.csv", "study_tests.csv", "study.json"):
        assert f'href="{name}"' in html and (path.parent / name).exists()
    assert "base64," not in html
    assert len(pd.read_csv(path.parent / "study_data.csv")) == len(tidy)


def test_hostile_labels_are_escaped(tmp_path):
    tidy = synthetic_tidy(("zaremba", "naive"), seeds=range(3), lags=range(1, 11))
    tidy.loc[tidy["placement"] == "naive", "placement"] = HOSTILE
    tidy["run_id"] = tidy["run_id"] + HOSTILE
    html = render(tmp_path / "r.html", tidy, placements=["zaremba", HOSTILE], config={"corpus": HOSTILE},
                  title=f"Study {HOSTILE}").read_text()
    assert "<script" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert HOSTILE in (tmp_path / "r_data.csv").read_text()  # the data keep the label as it was


def test_rendering_is_deterministic(tmp_path):
    tidy = synthetic_tidy(seeds=range(3), lags=range(1, 11))
    a = render(tmp_path / "a" / "study.html", tidy)
    b = render(tmp_path / "b" / "study.html", tidy.copy())
    assert a.read_bytes() == b.read_bytes()
    for name in ("study_data.csv", "study_tests.csv", "study.json"):
        assert (a.parent / name).read_bytes() == (b.parent / name).read_bytes()


def test_collect_environment_names_versions_and_commit():
    env = report.collect_environment(run_time="12 s")
    assert {"date (UTC)", "python", "numpy", "scipy", "git commit"} <= set(env) and env["run_time"] == "12 s"


# --- the kernel timings report -------------------------------------------------

BENCH_JSON = """{
 "machine_info": {"node": "gpu-box", "processor": "x86_64", "machine": "x86_64", "python_implementation": "CPython",
  "python_version": "3.11.7", "release": "6.18.44", "system": "Linux",
  "cpu": {"arch": "X86_64", "bits": 64, "count": 16, "brand_raw": "AMD EPYC"}},
 "commit_info": {"id": "0123456789abcdef0123456789abcdef01234567", "time": "2026-01-01T00:00:00+00:00", "dirty": false,
  "project": "dropout-probe", "branch": "main"},
 "benchmarks": [
  {"group": "medium", "name": "test_lstm[medium-forward_backward-cudnn-none]",
   "fullname": "tests/benchmarks/test_lstm.py::test_lstm[medium-forward_backward-cudnn-none]",
   "params": {"shape": "medium", "pass_": "forward_backward", "impl": "cudnn", "placement": "none"},
   "param": "medium-forward_backward-cudnn-none", "extra_info": {}, "options": {"timer": "perf_counter"},
   "stats": {"min": 0.0050, "max": 0.0056, "mean": 0.0052, "stddev": 0.00015, "rounds": 20, "median": 0.0050,
    "iqr": 0.0001, "q1": 0.00495, "q3": 0.00505, "iqr_outliers": 0, "stddev_outliers": 2, "outliers": "2;0",
    "ld15iqr": 0.005, "hd15iqr": 0.0056, "ops": 192.3, "total": 0.104, "iterations": 1}},
  {"group": "medium", "name": "test_lstm[medium-forward_backward-triton-variational]",
   "fullname": "tests/benchmarks/test_lstm.py::test_lstm[medium-forward_backward-triton-variational]",
   "params": {"shape": "medium", "pass_": "forward_backward", "impl": "triton", "placement": "variational"},
   "param": "medium-forward_backward-triton-variational", "extra_info": {}, "options": {"timer": "perf_counter"},
   "stats": {"min": 0.0110, "max": 0.0130, "mean": 0.0120, "stddev": 0.0004, "rounds": 20, "median": 0.0120,
    "iqr": 0.0005, "q1": 0.0118, "q3": 0.0123, "iqr_outliers": 0, "stddev_outliers": 3, "outliers": "3;0",
    "ld15iqr": 0.011, "hd15iqr": 0.013, "ops": 83.3, "total": 0.24, "iterations": 1}},
  {"group": "small", "name": "test_lstm[small-forward-torch.nn.LSTM-none]",
   "fullname": "tests/benchmarks/test_lstm.py::test_lstm[small-forward-torch.nn.LSTM-none]",
   "params": null, "param": "small-forward-torch.nn.LSTM-none", "extra_info": {}, "options": {},
   "stats": {"min": 0.0009, "max": 0.0012, "mean": 0.0010, "stddev": 0.00005, "rounds": 50, "median": 0.0010,
    "iqr": 0.00005, "q1": 0.00098, "q3": 0.00103, "iqr_outliers": 1, "stddev_outliers": 3, "outliers": "3;1",
    "ld15iqr": 0.0009, "hd15iqr": 0.0012, "ops": 1000, "total": 0.05, "iterations": 1}},
  {"group": "small", "name": "test_lstm[small-forward-reference-naive]",
   "fullname": "tests/benchmarks/test_lstm.py::test_lstm[small-forward-reference-naive]",
   "params": null, "param": "small-forward-reference-naive", "extra_info": {}, "options": {},
   "stats": {"min": 0.028, "max": 0.035, "mean": 0.030, "stddev": 0.0015, "rounds": 10, "median": 0.030,
    "iqr": 0.002, "q1": 0.029, "q3": 0.031, "iqr_outliers": 0, "stddev_outliers": 2, "outliers": "2;0",
    "ld15iqr": 0.028, "hd15iqr": 0.035, "ops": 33.3, "total": 0.3, "iterations": 1}}
 ],
 "datetime": "2026-01-01T00:00:00.000000+00:00",
 "version": "5.2.3"
}
"""


@pytest.fixture
def bench_json(tmp_path) -> Path:
    path = tmp_path / "bench.json"
    path.write_text(BENCH_JSON)
    return path


def test_benchmark_names_split_into_shape_pass_and_implementation(bench_json):
    df, meta = kernel_bench.load(bench_json)
    rows = {(r["shape"], r["pass"], r["implementation"]): r for r in df.to_dict("records")}
    assert set(rows) == {("medium", "forward_backward", "cudnn-none"), ("medium", "forward_backward", "triton-variational"),
                         ("small", "forward", "torch.nn.LSTM-none"), ("small", "forward", "reference-naive")}
    assert rows[("medium", "forward_backward", "triton-variational")]["ratio"] == pytest.approx(2.4)
    assert rows[("small", "forward", "reference-naive")]["ratio"] == pytest.approx(30.0)
    assert rows[("small", "forward", "reference-naive")]["reference"] == "torch.nn.LSTM-none"
    assert meta["machine_info"]["node"] == "gpu-box"


def test_benchmark_without_group_or_params_falls_back_to_the_name():
    row = kernel_bench.parse_benchmark({"name": "test_lstm[large-backward-triton-zoneout]", "stats": {"median": 1.0}})
    assert (row["shape"], row["pass"], row["implementation"]) == ("large", "backward", "triton-zoneout")


def test_kernel_report_renders_from_a_benchmark_file(bench_json, tmp_path):
    path = kernel_bench.render_kernel_report(bench_json, tmp_path / "reports")
    assert path == tmp_path / "reports" / "kernels.html"
    html = path.read_text()
    assert html.count("<svg") == 1 and "2.40" in html and "30.00" in html
    assert "gpu-box" in html and "AMD EPYC" in html
    assert (tmp_path / "reports" / "kernels_data.csv").exists()
    kernel_bench.main([str(bench_json), "--out", str(tmp_path / "cli")])
    assert (tmp_path / "cli" / "kernels.html").read_text() == html


# --- the page in a browser -----------------------------------------------------

needs_chromium = pytest.mark.skipif(chromium_binary() is None,
                                    reason="chromium is not installed (apt-get update && apt-get install -y chromium)")


@needs_chromium
def test_browser_helper_reports_errors_on_a_broken_page(tmp_path):
    page = tmp_path / "broken.html"
    page.write_text("<!DOCTYPE html><html><head><title>x</title></head><body><h1>broken</h1>"
                    "<script>console.error('deliberate'); notDefined();</script><img src='missing.png'></body></html>")
    errors, png = render_in_chromium(page)
    assert any("deliberate" in e for e in errors)
    assert any("notDefined" in e for e in errors)
    assert any("missing.png" in e for e in errors)
    assert png.exists() and not is_blank(png)


@needs_chromium
def test_browser_helper_passes_a_good_page_and_spots_a_blank_one(tmp_path):
    good = tmp_path / "good.html"
    good.write_text("<!DOCTYPE html><html><head><title>ok</title></head><body><h1>fine</h1>"
                    "<script>console.log('not an error')</script></body></html>")
    errors, png = render_in_chromium(good)
    assert errors == [] and not is_blank(png)
    blank = tmp_path / "blank.html"
    blank.write_text("<!DOCTYPE html><html><head><title>blank</title></head><body></body></html>")
    errors, png = render_in_chromium(blank)
    assert errors == [] and is_blank(png)


@needs_chromium
def test_report_opens_in_chromium_without_errors(rendered):
    path, _, _ = rendered
    errors, png = render_in_chromium(path)
    assert errors == []
    assert not is_blank(png)


@needs_chromium
def test_kernel_report_opens_in_chromium_without_errors(bench_json, tmp_path):
    errors, png = render_in_chromium(kernel_bench.render_kernel_report(bench_json, tmp_path))
    assert errors == [] and not is_blank(png)


def test_panels_split_by_mode_and_show_the_top_layer_of_per_layer_measures():
    # probe.measure writes "influence_kl" with mode eval/train and per-layer "influence_hidden"; figures draw
    # the top layer (every layer stays in the data files).
    rows = []
    for p in ("zaremba", "naive"):
        for s in range(2):
            for k in range(1, 6):
                for mode in ("eval", "train"):
                    rows.append({"placement": p, "seed": s, "run_id": "r", "measure": "influence_kl", "x_name": "lag",
                                 "x": float(k), "value": 0.5 ** k, "layer": -1, "mode": mode})
                    for layer in (0, 1):
                        rows.append({"placement": p, "seed": s, "run_id": "r", "measure": "influence_hidden",
                                     "x_name": "lag", "x": float(k), "value": 0.7 ** k, "layer": layer, "mode": mode})
    tidy = pd.DataFrame(rows)
    spec = {s.key: s for s in figures.CURVES}
    influence = figures.curve_figure(tidy, spec["influence"])
    assert influence.svg.count('id="influence-axes_') == 2
    hidden = figures.curve_figure(tidy, spec["hidden_distance"])
    assert hidden.svg.count('id="hidden_distance-axes_') == 2
    assert "top layer (1)" in hidden.svg and "layer 0" not in hidden.svg


def test_figures_survive_a_diverged_run_with_infinite_perplexity():
    tidy = synthetic_tidy()
    diverged = (tidy["measure"] == "train_ppl") & (tidy["seed"] == 0) & (tidy["x"] == 4)
    assert diverged.any()
    tidy.loc[diverged, "value"] = np.inf  # a run that blew up in its last epoch
    figs = {f.key: f for f in figures.standard_figures(tidy)}
    assert figs["training"].svg and "<svg" in figs["training"].svg


def test_bands_on_log_axes_come_from_log_values_and_never_reach_zero():
    from probe.report.figures import curve_estimate

    # Seeds spread over two orders of magnitude: a t-interval of the raw values would reach below zero.
    rows = pd.DataFrame({"placement": "none", "x": 20.0, "seed": range(6),
                         "value": [1e-6, 1e-4, 2e-6, 3e-4, 5e-6, 1e-5], "measure": "influence_kl"})
    raw = curve_estimate(rows, log_y=False, floor=None).iloc[0]
    logged = curve_estimate(rows, log_y=True, floor=1e-12).iloc[0]
    assert raw["low"] < 0 < logged["low"] < logged["mean"] < logged["high"]
    assert logged["mean"] == pytest.approx(float(np.exp(np.log(rows["value"]).mean())))
