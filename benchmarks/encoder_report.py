"""Tables, target checks and plots from benchmarks/encoder_gpu.py's JSON.

    python benchmarks/encoder_report.py encoder_h100.json --plot-prefix encoder_h100 \
        > encoder_h100.md

Ratios compare each Mamba encoder with the better of ESPnet's two Conformer settings (default
attention, ``use_sdpa``) at the same length, batch and mode, from the same run.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

BASELINES = ("conformer", "conformer_sdpa")


def index(report):
    """(model, mode, batch, seconds) -> result.  A peak that exceeds the peak of a longer
    length of the same model, mode and batch is not a property of this setting (seen on the
    first setting after an out-of-memory one): it is dropped and the result marked."""
    idx = {(r["model"], r["mode"], r["batch"], r["seconds"]): dict(r) for r in report["results"]}
    for (m, mode, b, s), r in idx.items():
        longer = [o.get("peak_gib") for (m2, mode2, b2, s2), o in idx.items()
                  if (m2, mode2, b2) == (m, mode, b) and s2 > s and "peak_gib" in o]
        if "peak_gib" in r and longer and r["peak_gib"] > min(longer):
            r["suspect_peak_gib"] = r.pop("peak_gib")
    return idx


def cell(r):
    if r is None:
        return "-"
    if "median_ms" not in r:
        return "OOM" if "OOM" in r.get("error", "") else r.get("error", "-")
    mem = f" / {r['peak_gib']:.1f}" if "peak_gib" in r else ""
    if "suspect_peak_gib" in r:
        mem = " / (n/a)"
    return f"{r['median_ms']:.1f}{mem}"


def best_baseline(idx, mode, batch, seconds):
    runs = [idx.get((b, mode, batch, seconds)) for b in BASELINES]
    runs = [r for r in runs if r and "median_ms" in r]
    return min(runs, key=lambda r: r["median_ms"]) if runs else None


def fit_exponent(points):
    """Least-squares slope of log(time) on log(length)."""
    xs = [math.log(s) for s, _ in points]
    ys = [math.log(t) for _, t in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def modes_run(report):
    """train and/or infer, in that order: a run with --modes train gets no empty infer part."""
    run = {r["mode"] for r in report["results"]}
    return [m for m in ("train", "infer") if m in run]


def tables(report, idx):
    models = list(report["models"])
    lengths = sorted({r["seconds"] for r in report["results"]})
    lines = []
    for mode in modes_run(report):
        for batch in sorted({r["batch"] for r in report["results"]}, reverse=True):
            lines += [f"\n**{mode}, batch {batch}** (median ms / peak GiB)\n",
                      "| length (s) | " + " | ".join(models) + " |",
                      "|---" * (len(models) + 1) + "|"]
            for s in lengths:
                cells = [cell(idx.get((m, mode, batch, s))) for m in models]
                if any(c != "-" for c in cells):  # a length not run at this batch: no row
                    lines.append(f"| {s:g} | " + " | ".join(cells) + " |")
    return lines


def ratios(report, idx):
    ours = [m for m in report["models"] if m not in BASELINES and "branchformer" not in m]
    lengths = sorted({r["seconds"] for r in report["results"]})
    lines = ["\n**Speed-up over the better Conformer setting** (time ratio Conformer/ours; "
             "memory ratio ours/Conformer in brackets)\n",
             "| mode | batch | length (s) | " + " | ".join(ours) + " |",
             "|---" * (len(ours) + 3) + "|"]
    for mode in ("train", "infer"):
        for batch in sorted({r["batch"] for r in report["results"]}, reverse=True):
            for s in lengths:
                base = best_baseline(idx, mode, batch, s)
                if not any((m, mode, batch, s) in idx for m in report["models"]):
                    continue
                row = []
                for m in ours:
                    r = idx.get((m, mode, batch, s))
                    if not r or "median_ms" not in r:
                        row.append(cell(r))
                    elif base is None:
                        row.append("baseline OOM")
                    else:
                        mem = (f" ({r['peak_gib'] / base['peak_gib']:.2f})"
                               if "peak_gib" in r and "peak_gib" in base else "")
                        row.append(f"{base['median_ms'] / r['median_ms']:.2f}x{mem}")
                lines.append(f"| {mode} | {batch} | {s:g} | " + " | ".join(row) + " |")
    return lines


def targets(report, idx):
    """The speed and memory targets against the Conformer, each with the measured value and
    pass/fail."""
    ours = [m for m in report["models"] if m not in BASELINES and "branchformer" not in m]
    lines = ["\n**Targets** (speed and memory against the better Conformer setting)\n",
             "| target | " + " | ".join(ours) + " |", "|---" * (len(ours) + 1) + "|"]

    def speed(m, mode, batch, s):
        r, base = idx.get((m, mode, batch, s)), best_baseline(idx, mode, batch, s)
        if not r or "median_ms" not in r or base is None:
            return None, None
        return base["median_ms"] / r["median_ms"], (
            r.get("peak_gib", math.nan) / base.get("peak_gib", math.nan))

    def row(name, fn):
        lines.append(f"| {name} | " + " | ".join(fn(m) for m in ours) + " |")

    def need(m, mode, batch, s, at_least, mem_at_most=None):
        x, mem = speed(m, mode, batch, s)
        if x is None:
            return "not measured"
        ok = x >= at_least and (mem_at_most is None or mem <= mem_at_most)
        memtxt = f", memory {mem:.3f}x" if mem_at_most is not None else ""
        return f"{'PASS' if ok else 'FAIL'} {x:.2f}x{memtxt}"

    row("train B8 15 s: >= 1x", lambda m: need(m, "train", 8, 15, 1.0))
    row("train B8 30 s: >= 1x", lambda m: need(m, "train", 8, 30, 1.0))
    row("train B8 60 s: >= 2x", lambda m: need(m, "train", 8, 60, 2.0))
    row("train B1 300 s: >= 4x, memory <= 0.25x",
        lambda m: need(m, "train", 1, 300, 4.0, 0.25))

    def linear(m):
        pts = [(s, r["median_ms"]) for (mm, mode, b, s), r in idx.items()
               if mm == m and mode == "infer" and b == 1 and 60 <= s <= 1200 and "median_ms" in r]
        if len(pts) < 2:
            return "not measured"
        top = max(s for s, _ in pts)
        k = fit_exponent(pts)
        mem = idx[(m, "infer", 1, top)].get("peak_gib")
        found = (f"exponent {k:.3f} over 60-{top:g} s"
                 + (f", {mem:.1f} GiB at {top:g} s" if mem is not None else ""))
        if top < 1200:
            # not a failure: a variant run only to its longest length (encoder_gpu.py's
            # apply_variant), or a model stopped by --max-seconds-per-model
            error = idx.get((m, "infer", 1, 1200), {}).get("error")
            if error is None or error.startswith("skipped (time budget"):
                return f"not run to 1200 s ({found})"
            return f"FAIL at 1200 s ({error}); {found}"
        return f"{'PASS' if k <= 1.05 else 'FAIL'} {found}"

    row("infer B1 up to 1200 s, time exponent <= 1.05", linear)
    return lines


def packed(report):
    if not report.get("packed"):
        return []
    lines = ["\n**Packed vs padded training step** (8 utterances, LibriSpeech-like lengths "
             "2.1-34.6 s; the fp32 losses are of a no_grad forward, which runs eagerly; the "
             "training step's loss, under autocast, is the timed step's own, from the graphs "
             "where they run)\n",
             "| model | packed path | padding | padded ms | packed ms | speed-up | "
             "fp32 loss padded | fp32 loss packed | abs diff | training step's loss rel. diff |",
             "|---" * 10 + "|"]
    for e in report["packed"]:
        lines.append(
            f"| {e['model']} | {e.get('packed_path', 'padded')} | "
            f"{e['padding_fraction']:.0%} | {e['padded']['median_ms']:.1f} | "
            f"{e['packed']['median_ms']:.1f} | {e['speedup']:.2f}x | "
            f"{e['padded']['loss_fp32']:.6f} | {e['packed']['loss_fp32']:.6f} | "
            f"{e['loss_fp32_abs_diff']:.2e} | "
            + (f"{e['loss_train_step_rel_diff']:.1e} |" if "loss_train_step_rel_diff" in e
               else "not recorded |"))
    return lines


def plots(report, idx, prefix):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batches = sorted({r["batch"] for r in report["results"]}, reverse=True)
    for key, label, fname in (("median_ms", "median time per step (ms)", "time"),
                              ("peak_gib", "peak GPU memory (GiB)", "memory")):
        modes = modes_run(report)
        fig, axes = plt.subplots(len(modes), len(batches), squeeze=False,
                                 figsize=(6 * len(batches), 4.5 * len(modes)))
        for i, mode in enumerate(modes):
            for j, batch in enumerate(batches):
                ax = axes[i][j]
                for m in report["models"]:
                    pts = sorted((s, r[key]) for (mm, md, b, s), r in idx.items()
                                 if mm == m and md == mode and b == batch and key in r)
                    if pts:
                        ax.plot(*zip(*pts), marker="o", label=m,
                                linestyle="-" if m not in BASELINES and "branch" not in m
                                else "--")
                ax.set(xscale="log", yscale="log", xlabel="audio length (s)", ylabel=label,
                       title=f"{mode}, batch {batch}")
                ax.grid(True, which="both", alpha=0.3)
                ax.legend(fontsize=7)
        env = report["environment"]
        fig.suptitle(f"{env.get('gpu', env['device'])}, {env['date'][:10]}, bf16 autocast")
        fig.tight_layout()
        fig.savefig(f"{prefix}_{fname}.png", dpi=80)
        plt.close(fig)


def labelled(report: dict) -> dict:
    """Models run with ``--recompute-input-layer`` renamed ``NAME+recompute``, so that a table
    can show them beside the same model without it."""
    renamed = {m: f"{m}+recompute" for m, v in report["models"].items()
               if v.get("conf", {}).get("recompute_input_layer")}
    if not renamed:
        return report
    return dict(report, models={renamed.get(m, m): v for m, v in report["models"].items()},
                results=[dict(r, model=renamed.get(r["model"], r["model"]))
                         for r in report["results"]])


def merged(reports: list) -> dict:
    """Several runs as one: their models and results in order, the first run's environment
    with every run's command."""
    report = dict(reports[0], models=dict(reports[0]["models"]),
                  results=list(reports[0]["results"]))
    for other in reports[1:]:
        for part, key in (("environment", "gpu"), ("environment", "torch"),
                          ("settings", "amp"), ("settings", "repeats")):
            mine, theirs = (r.get(part, {}).get(key) for r in (reports[0], other))
            if mine != theirs:
                raise SystemExit(f"encoder_report: runs differ in {part} {key}: {mine!r} vs "
                                 f"{theirs!r}; their ratios would not compare like with like")
        report["models"].update(other["models"])
        report["results"] += other["results"]
    if len(reports) > 1:
        report["environment"] = dict(reports[0]["environment"], command=" ; ".join(
            r["environment"]["command"] for r in reports))
    return report


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("json", type=Path, nargs="+",
                    help="one run's JSON, or several (e.g. one process per model) as one table")
    ap.add_argument("--plot-prefix", help="write PREFIX_time.png and PREFIX_memory.png")
    args = ap.parse_args(argv)
    report = merged([labelled(json.loads(f.read_text())) for f in args.json])
    idx = index(report)
    env = report["environment"]
    lines = [f"Device: {env.get('gpu', env['device'])}; date {env['date']}; torch {env['torch']}; "
             f"mamba-ssm {env.get('mamba-ssm')}; kernels {env.get('kernels_available')}",
             f"Command: `{env['command']}`", ""]
    if report.get("settings", {}).get("interleaved"):
        lines += ["Timing: the models in turn within each setting (benchmarks/"
                  "encoder_interleaved.py); peak memory less the other models' weights.", ""]
    if report["results"]:  # a --packed-only run has the packed table alone
        lines += ["| model | parameters |", "|---|---|"]
        lines += [f"| {m} | {v['params'] / 1e6:.2f}M |" for m, v in report["models"].items()]
        lines += targets(report, idx) + ratios(report, idx) + tables(report, idx)
    lines += packed(report)
    if report["results"]:
        lines += ["", "(n/a): a peak above that of a longer length of the same model and "
                  "setting, seen right after an out-of-memory setting; not a property of the "
                  "setting, left out (`suspect_peak_gib` in the JSON)."]
    print("\n".join(lines))
    if args.plot_prefix:
        plots(report, idx, args.plot_prefix)


if __name__ == "__main__":
    main()
