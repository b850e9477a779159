#!/usr/bin/env python3
"""Plot WER (and CER) against recording length for one or more experiments.

    python local/plot_results.py exp/asr_*/results.json --out wer_vs_length.png
    python local/plot_results.py --table exp/asr_*/results.json   # markdown table only

Reads the results.json that local/score.py writes next to each RESULTS.md; the x axis is the
mean recording length of each test set (test: single utterances, test_<N>s: concatenations).
--plot_sets (a regular expression) plots only the sets whose whole name matches it (the table
keeps every set); --title names the plot (egs2/synth_speech/asr1 shares this script).
"""

import argparse
import json
import re
import sys
from pathlib import Path

LABELS = {"samba_asr": "Samba-ASR", "speech_mamba": "Speech-Mamba", "conformer": "Conformer + Transformer"}


def label(run: dict) -> str:
    enc = run.get("encoder") or run["exp"]
    for k, v in LABELS.items():
        if k in enc:
            name = v + (f" + {run['decoder']}" if run.get("decoder") and run["decoder"] != enc
                        and k != "conformer" else "")
            # the readings of Samba-ASR's cross-connection are different models; attention is
            # the default since espnet-mamba 0.3, and a run that records none predates the
            # option (prefix)
            if run.get("decoder") == "samba_asr" and run.get("cross_connection") != "attention":
                name += f" ({run.get('cross_connection') or 'prefix'} reading)"
            return name
    return run["exp"]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("results", nargs="+", type=Path)
    p.add_argument("--out", type=Path, default=Path("wer_vs_length.png"))
    p.add_argument("--table", action="store_true", help="print a markdown table, no plot")
    p.add_argument("--plot_sets", default=".*", help="regular expression of the sets to plot")
    p.add_argument("--title", default="mini_synth: error rate vs length")
    args = p.parse_args()
    runs = [json.loads(r.read_text()) for r in args.results]
    sets = sorted({s for r in runs for s in r["sets"]},
                  key=lambda s: next(r["sets"][s]["mean_duration_s"] or 0 for r in runs if s in r["sets"]))

    # epochs: the models of one table may have trained for different numbers of them
    # (egs2/synth_speech/asr1/run_comparison.sh --train_minutes); "?" for older results.json
    head = "|model|epochs|" + "|".join(f"{s} WER / CER" for s in sets) + "|"
    print(head + "\n|" + "---|" * (len(sets) + 2))
    for r in runs:
        cells = [f"{r['sets'][s]['WER']:.1f} / {r['sets'][s]['CER']:.1f}" if s in r["sets"] else "-"
                 for s in sets]
        print(f"|{label(r)}|{r.get('max_epoch') or '?'}|" + "|".join(cells) + "|")
    if args.table:
        return

    try:
        import matplotlib
    except ImportError:  # the table is the result; the plot is a view of it
        print(f"no matplotlib here: {args.out} not drawn", file=sys.stderr)
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(7.5, 3.0), dpi=80)
    for r in runs:
        ss = [s for s in sets if s in r["sets"] and re.fullmatch(args.plot_sets, s)]
        x = [r["sets"][s]["mean_duration_s"] for s in ss]
        for ax, m in zip(axes, ("WER", "CER")):
            ax.plot(x, [r["sets"][s][m] for s in ss], marker="o", label=label(r))
    for ax, m in zip(axes, ("WER", "CER")):
        ax.set_xscale("log")
        ax.set_xlabel("recording length (s, mean)")
        ax.set_ylabel(f"{m} (%)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(args.title, fontsize=10)
    fig.tight_layout()
    fig.savefig(args.out)
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
