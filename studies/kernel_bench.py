"""Turn a pytest-benchmark JSON file into an HTML report of LSTM kernel timings.

    pytest tests/benchmarks --benchmark-only --benchmark-json=bench.json
    python -m studies.kernel_bench bench.json --out reports/     # -> reports/kernels.html

Benchmarks are named like ``test_lstm[medium-forward_backward-triton-variational]``
with pytest-benchmark's ``group`` set to the shape. Each row is split into
shape (the group), pass (forward, backward, forward_backward) and
implementation (everything else); every implementation's median time is
divided by the median of ``torch.nn.LSTM`` (cuDNN on GPU, oneDNN on CPU)
for the same shape and pass. The report shows a table and a chart per shape,
and the machine the timings came from (the JSON's ``machine_info``, not the
machine that renders the report).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from probe.report.plotting import EXTRA_COLOURS, PALETTE, figure_style, new_figure, plain_numbers, to_svg
from probe.files import write_atomic
from probe.report.html import data_uri, render, to_json

PASS_KEYS = ("pass", "direction", "phase", "mode")
PASSES = ("forward", "backward", "forward_backward", "fwd", "bwd", "fwd_bwd", "fwdbwd", "train", "inference")
SHAPE_KEYS = ("shape", "size", "config", "group")
# How the baseline is recognised among implementation labels, most specific first.
REFERENCE_PATTERNS = (r"torch\.nn\.lstm", r"\bnn[._]lstm\b", r"\bcudnn\b", r"\bonednn\b", r"^torch$", r"^torch\b")
STAT_FIELDS = ("min", "max", "mean", "median", "stddev", "q1", "q3", "iqr")


def _bracket(name: str) -> tuple[str, str]:
    """``test_lstm[a-b-c]`` -> ("test_lstm", "a-b-c"); a name without brackets has no id."""
    m = re.fullmatch(r"(.*?)\[(.*)\]", name)
    return (m.group(1), m.group(2)) if m else (name, "")


def parse_benchmark(bench: dict) -> dict:
    """One pytest-benchmark entry as a flat row: shape, pass, implementation and its timings in seconds."""
    name = str(bench.get("name") or bench.get("fullname", "?"))
    test, ident = _bracket(name.split("::")[-1])
    params = {str(k): str(v) for k, v in (bench.get("params") or {}).items()}
    group = bench.get("group")
    tokens = ident.split("-") if ident else []

    # A parameter names the shape if it is called so or equals the group; the pass, if called so or one of PASSES.
    shape_key = next((k for k, v in params.items() if k.rstrip("_") in SHAPE_KEYS or (group and v == str(group))), None)
    shape = str(group) if group else (params[shape_key] if shape_key else (tokens[0] if tokens else ""))
    pass_key = next((k for k, v in params.items() if k.rstrip("_") in PASS_KEYS or v in PASSES), None)
    if pass_key:
        pass_ = params[pass_key]
    else:
        pass_ = next((t for t in tokens if t in PASSES), "")
    if params:
        rest = [v for k, v in params.items() if k not in (shape_key, pass_key) and v != shape]
    else:
        rest = list(tokens)
        for used in (shape, pass_):
            if used in rest:
                rest.remove(used)
    implementation = "-".join(rest) or test
    stats = bench.get("stats") or {}
    row = {"shape": shape, "pass": pass_, "implementation": implementation, "name": name, "test": test}
    row.update({f"{k}_s": float(stats[k]) if stats.get(k) is not None else np.nan for k in STAT_FIELDS})
    row["rounds"] = int(stats.get("rounds", 0) or 0)
    return row


def reference_of(implementations, override: str | None = None) -> str | None:
    """The implementation label to divide by: ``override`` if given, else the most torch.nn.LSTM-like label."""
    labels = list(dict.fromkeys(implementations))
    if override:
        return override if override in labels else None
    for pattern in REFERENCE_PATTERNS:
        hit = next((label for label in labels if re.search(pattern, label, re.I)), None)
        if hit:
            return hit
    return None


def load(path: str | Path, reference: str | None = None) -> tuple[pd.DataFrame, dict]:
    """Parse a pytest-benchmark JSON file: (one row per benchmark with ``ratio``, the file's metadata)."""
    data = json.loads(Path(path).read_text())
    benchmarks = data.get("benchmarks")
    if not isinstance(benchmarks, list):
        raise ValueError(f"{path} is not a pytest-benchmark JSON file (no 'benchmarks' list)")
    columns = ["shape", "pass", "implementation", "name", "test", *(f"{k}_s" for k in STAT_FIELDS), "rounds"]
    df = pd.DataFrame([parse_benchmark(b) for b in benchmarks], columns=columns)
    df["reference"] = ""
    df["ratio"] = np.nan
    for _, idx in df.groupby(["shape", "pass"], sort=False).groups.items():
        ref = reference_of(df.loc[idx, "implementation"], reference)
        if ref is None:
            continue
        ref_median = df.loc[idx][df.loc[idx, "implementation"] == ref]["median_s"].iloc[0]
        df.loc[idx, "reference"] = ref
        df.loc[idx, "ratio"] = df.loc[idx, "median_s"] / ref_median
    meta = {k: data.get(k) for k in ("machine_info", "commit_info", "datetime", "version")}
    return df, meta


def _unit(df: pd.DataFrame) -> tuple[str, float]:
    top = df["median_s"].max() if len(df) else 1.0
    return ("µs", 1e6) if top < 1e-3 else ("ms", 1e3) if top < 10 else ("s", 1.0)


def _colours(implementations, reference_labels) -> dict[str, str]:
    """The reference in dark grey, the others in the palette's colours, by sorted label."""
    others = sorted(set(implementations) - set(reference_labels))
    palette = [c for c in PALETTE[1:] + EXTRA_COLOURS]
    out = {label: "#444444" for label in reference_labels}
    out.update({label: palette[i % len(palette)] for i, label in enumerate(others)})
    return out


def figure(df: pd.DataFrame) -> str:
    """Median time per implementation, one panel per shape; whiskers span the interquartile range."""
    unit, scale = _unit(df)
    shapes = list(dict.fromkeys(df["shape"]))
    colours = _colours(df["implementation"], set(df["reference"]) - {""})
    heights = [len(df[df["shape"] == s]) for s in shapes]
    fig, axes = new_figure(1, len(shapes), width=9.0, height=0.32 * max(heights) + 1.2)
    with figure_style():
        for ax, shape in zip(axes.flat, shapes):
            rows = df[df["shape"] == shape].sort_values(["pass", "median_s"])
            y = np.arange(len(rows))
            med = rows["median_s"].to_numpy() * scale
            q1, q3 = rows["q1_s"].to_numpy() * scale, rows["q3_s"].to_numpy() * scale
            colour = [colours[i] for i in rows["implementation"]]
            ax.hlines(y, q1, q3, color=colour, lw=5, alpha=0.35)  # interquartile range
            ax.scatter(med, y, color=colour, s=36, zorder=3)
            labels = [f"{i} · {p}" if p else i for i, p in zip(rows["implementation"], rows["pass"])]
            ax.set_yticks(y, labels)
            ax.set_ylim(len(rows) - 0.5, -0.5)
            ax.set_xscale("log")
            plain_numbers(ax.xaxis)
            ax.set_xlabel(f"median time per call ({unit}), log scale")
            ax.set_title(f"shape: {shape}")
            ax.grid(axis="y", visible=False)
            for yi, (m, r) in enumerate(zip(np.fmax(med, q3), rows["ratio"])):
                if np.isfinite(r):
                    ax.annotate(f"×{r:.2f}", (m, yi), xytext=(8, 0), textcoords="offset points", va="center", fontsize=8.5)
            low, high = np.nanmin(np.fmin(med, q1)), np.nanmax(np.fmax(med, q3))
            ax.set_xlim(low / 1.5, high * 2.2)
    alt = "Median time per call of each LSTM implementation, one panel per shape, with ratios to torch.nn.LSTM."
    return to_svg(fig, "kernels", alt)


def render_kernel_report(bench_json: str | Path, out_dir: str | Path = "reports", *, reference: str | None = None,
                         title: str = "LSTM kernel timings") -> Path:
    """Write ``out_dir/kernels.html`` (with kernels_data.csv and kernels.json beside it); returns its path."""
    df, meta = load(bench_json, reference)
    out = Path(out_dir)
    unit, scale = _unit(df)
    tables = []
    for shape in dict.fromkeys(df["shape"]):
        rows = df[df["shape"] == shape].sort_values(["pass", "median_s"])
        tables.append({"shape": shape, "reference": ", ".join(sorted(set(rows["reference"]) - {""})) or "none found",
                       "rows": rows.to_dict("records")})
    machine = meta.get("machine_info") or {}
    cpu = machine.get("cpu") or {}
    commit = meta.get("commit_info") or {}
    environment = {
        "benchmarks run": meta.get("datetime") or "unknown", "pytest-benchmark": meta.get("version") or "unknown",
        "machine": machine.get("node", "unknown"), "cpu": cpu.get("brand_raw", machine.get("processor", "unknown")),
        "cpu count": cpu.get("count", "unknown"),
        "system": f"{machine.get('system', '')} {machine.get('release', '')}".strip(),
        "python": machine.get("python_version", "unknown"),
        "commit": f"{commit.get('id', 'unknown')}{' (dirty)' if commit.get('dirty') else ''}",
        "branch": commit.get("branch", "unknown"), "source file": Path(bench_json).name,
    }
    csv = df.to_csv(index=False, lineterminator="\n")
    html = render(
        "kernels.html.j2", title=title, tables=tables, unit=unit, scale=scale, environment=environment,
        figure=figure(df) if len(df) else None, download={"name": "kernels_data.csv", "uri": data_uri(csv)},
    )
    write_atomic(out / "kernels_data.csv", csv)
    write_atomic(out / "kernels.json", to_json({"title": title, "environment": environment, "meta": meta, "timings": df}))
    return write_atomic(out / "kernels.html", html)


def _latest_benchmark_json() -> Path | None:
    found = sorted(Path(".benchmarks").glob("**/*.json"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bench_json", nargs="?", type=Path,
                        help="pytest-benchmark JSON file (default: the newest under .benchmarks/)")
    parser.add_argument("--out", type=Path, default=Path("reports"), help="output folder (default: reports/)")
    parser.add_argument("--reference", default=None,
                        help="implementation label to divide by (default: the one that looks like torch.nn.LSTM)")
    args = parser.parse_args(argv)
    path = args.bench_json or _latest_benchmark_json()
    if path is None:
        parser.error("no benchmark JSON given and none found under .benchmarks/")
    print(render_kernel_report(path, args.out, reference=args.reference))


if __name__ == "__main__":
    main()
