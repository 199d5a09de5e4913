"""Side-by-side CPU timing of the masked LSTM layer against ``torch.nn.LSTM``.

    python -m studies.cpu_speed [--rounds 30] [--shapes 35x20x650 20x20x200]
    python -m studies.cpu_speed --masked-lstm [--shapes 35x20x650]   # MaskedLSTM module vs nn.LSTM

Both run in one process on the same inputs, interleaved round by round so
that drift in machine load hits both alike; the reported figure is the
median over rounds and the ratio is taken between medians. "layer" is what a
model trains: the input projection (``kernels.linear``) plus the masked
recurrence with variational masks (one recurrent mask per sequence), forward
and backward (``kernels.lstm_layer_from_input``, the projection fused into
the recurrence's autograd Function); "recurrence" leaves the input projection out. ``torch.nn.LSTM``
runs without masks (oneDNN on CPU), as it cannot apply them.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from kernels import linear, lstm_layer, lstm_layer_from_input


def _shape(text: str) -> tuple[int, int, int]:
    try:
        T, B, H = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape must be TxBxH, e.g. 35x20x650; got {text!r}")
    return T, B, H


def interleaved_medians(runs: dict, rounds: int, warmup: int = 3) -> dict[str, float]:
    """Median milliseconds of each callable, timed round by round in turn so drift hits all alike."""
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(warmup):
        for f in runs.values():
            f()
    for _ in range(rounds):
        for name, f in runs.items():
            start = time.perf_counter()
            f()
            times[name].append((time.perf_counter() - start) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def _one_layer(T: int, B: int, H: int):
    """A generator, an nn.LSTM, its input and upstream gradient, and its weights as leaves for our layer."""
    g = torch.Generator().manual_seed(0)
    lstm = torch.nn.LSTM(H, H)
    x = torch.randn(T, B, H, generator=g, requires_grad=True)
    grad_out = torch.randn(T, B, H, generator=g)
    w_ih = lstm.weight_ih_l0.detach().clone().requires_grad_()
    w_hh = lstm.weight_hh_l0.detach().clone().requires_grad_()
    bias = (lstm.bias_ih_l0 + lstm.bias_hh_l0).detach().clone().requires_grad_()
    h0 = c0 = torch.zeros(B, H)
    return g, lstm, x, grad_out, w_ih, w_hh, bias, h0, c0


def measure(T: int, B: int, H: int, rounds: int, p: float = 0.3) -> dict[str, float]:
    """Median milliseconds for one forward+backward of each implementation."""
    g, lstm, x, grad_out, w_ih, w_hh, bias, h0, c0 = _one_layer(T, B, H)
    rec = (torch.rand(B, H, generator=g) > p).float() / (1 - p)
    gx_leaf = linear(x, w_ih, bias).detach().requires_grad_()

    def nn_lstm():
        lstm(x)[0].backward(grad_out)

    def layer():
        lstm_layer_from_input(x, w_ih, bias, h0, c0, w_hh, recurrent=rec, backend="compiled")[0].backward(grad_out)

    def recurrence():
        lstm_layer(gx_leaf, h0, c0, w_hh, recurrent=rec, backend="compiled")[0].backward(grad_out)

    runs = {"torch.nn.LSTM": nn_lstm, "layer": layer, "recurrence": recurrence}
    return interleaved_medians(runs, rounds)


def measure_modules(T: int, B: int, H: int, rounds: int, p: float = 0.3) -> dict[str, float]:
    """Median milliseconds for forward+backward of whole one-layer modules with the same weights:
    torch.nn.LSTM, MaskedLSTM without masks, MaskedLSTM with variational masks (training mode)."""
    from probe.model.masked_lstm import MaskedLSTM

    g = torch.Generator().manual_seed(0)
    lstm = torch.nn.LSTM(H, H)
    plain = MaskedLSTM(H, H, placement="none")
    masked = MaskedLSTM(H, H, placement="variational", p=p, rec=p).train()
    for m in (plain, masked):
        m.load_state_dict(lstm.state_dict())
    x = torch.randn(T, B, H, generator=g, requires_grad=True)
    grad_out = torch.randn(T, B, H, generator=g)
    masks = torch.Generator().manual_seed(1)
    runs = {
        "torch.nn.LSTM": lambda: lstm(x)[0].backward(grad_out),
        "MaskedLSTM, no masks": lambda: plain(x)[0].backward(grad_out),
        f"MaskedLSTM, variational p={p:g}": lambda: masked(x, generator=masks)[0].backward(grad_out),
    }
    return interleaved_medians(runs, rounds)


# One mask per kind the placements put on the recurrence: (label, mask field, scope).
MASK_KINDS = (
    ("no masks", None, None),
    ("recurrent, sequence (variational)", "recurrent", "sequence"),
    ("recurrent, step (naive)", "recurrent", "step"),
    ("cell update, step (semeniuta)", "cell_update", "step"),
    ("cell, sequence (rnndrop)", "cell", "sequence"),
    ("zoneout h and c, step (zoneout)", "zoneout", "step"),
)


def measure_kinds(T: int, B: int, H: int, rounds: int, p: float = 0.3) -> dict[str, float]:
    """Median ms of one layer's forward+backward with its input projection (``lstm_layer_from_input`` on the
    masked recurrence) for each mask kind, beside ``torch.nn.LSTM`` without masks."""
    g, lstm, x, grad_out, w_ih, w_hh, bias, h0, c0 = _one_layer(T, B, H)

    def mask(scope, zoneout=False):
        shape = (B, H) if scope == "sequence" else (T, B, H)
        keep = (torch.rand(shape, generator=g) > p).float()
        return 1 - keep if zoneout else keep / (1 - p)

    runs = {"torch.nn.LSTM": lambda: lstm(x)[0].backward(grad_out)}
    for label, field, scope in MASK_KINDS:
        if field is None:
            masks = {}
        elif field == "zoneout":
            masks = {"zoneout_h": mask(scope, True), "zoneout_c": mask(scope, True)}
        else:
            masks = {field: mask(scope)}

        def run(masks=masks):
            hs = lstm_layer_from_input(x, w_ih, bias, h0, c0, w_hh, **masks, backend="compiled")[0]
            hs.backward(grad_out)

        runs[label] = run
    return interleaved_medians(runs, rounds)


def kinds_table(shapes, threads: list[int], rounds: int) -> None:
    """Ratio to torch.nn.LSTM of every mask kind, per shape and thread count (a markdown table)."""
    from kernels import reference

    loop = "compiled loop (kernels.cpu_ext)" if reference.compiled_loop(torch.zeros(1)) else "Python loop"
    print(f"masked recurrence on the {loop}; ratios of medians to torch.nn.LSTM (ms in parentheses)")
    print("| T x B x H | threads | torch.nn.LSTM ms | " + " | ".join(k for k, _, _ in MASK_KINDS) + " |")
    print("|---|---|---|" + "---|" * len(MASK_KINDS))
    for T, B, H in shapes:
        for n in threads:
            torch.set_num_threads(n)
            m = measure_kinds(T, B, H, rounds)
            ref = m["torch.nn.LSTM"]
            cells = " | ".join(f"{m[k] / ref:.2f}x ({m[k]:.2f})" for k, _, _ in MASK_KINDS)
            print(f"| {T} x {B} x {H} | {n} | {ref:.2f} | {cells} |", flush=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=30, help="timed rounds per implementation (default 30)")
    parser.add_argument(
        "--shapes", type=_shape, nargs="+", default=None,
        help="shapes as TxBxH (default: 35x20x650 20x20x200, Zaremba medium and small; with --mask-kinds "
             "35x20xH for H = 64, 128, 200, 650)",
    )
    parser.add_argument("--masked-lstm", action="store_true",
                        help="time the MaskedLSTM module (no masks; variational masks) against torch.nn.LSTM")
    parser.add_argument("--mask-kinds", action="store_true",
                        help="every mask kind the placements put on the recurrence, against torch.nn.LSTM, at each "
                             "of --threads (default shapes: H = 64, 128, 200, 650 at T=35, B=20)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                        help="torch intra-op thread counts for --mask-kinds (default 1 2)")
    args = parser.parse_args(argv)
    if args.mask_kinds:
        shapes = args.shapes or [(35, 20, h) for h in (64, 128, 200, 650)]
        print(f"torch {torch.__version__}, median of {args.rounds} interleaved rounds")
        kinds_table(shapes, args.threads, args.rounds)
        return
    args.shapes = args.shapes or [(35, 20, 650), (20, 20, 200)]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.rounds} rounds")
    if args.masked_lstm:
        print("| T x B x H | implementation | fwd+bwd ms | ratio to torch.nn.LSTM |")
        print("|---|---|---|---|")
        for T, B, H in args.shapes:
            m = measure_modules(T, B, H, args.rounds)
            ref = m["torch.nn.LSTM"]
            for name, ms in m.items():
                print(f"| {T} x {B} x {H} | {name} | {ms:.2f} | {ms / ref:.2f}x |")
        return
    print("| T x B x H | torch.nn.LSTM ms | layer ms | layer ratio | recurrence ms | recurrence ratio |")
    print("|---|---|---|---|---|---|")
    for T, B, H in args.shapes:
        m = measure(T, B, H, args.rounds)
        ref = m["torch.nn.LSTM"]
        print(
            f"| {T} x {B} x {H} | {ref:.2f} | {m['layer']:.2f} | {m['layer'] / ref:.2f}x "
            f"| {m['recurrence']:.2f} | {m['recurrence'] / ref:.2f}x |"
        )


if __name__ == "__main__":
    main()
