"""Learning curves of several `textgym train` runs side by side: reward, token entropy, answer entropy.

Each run is `LABEL=RUN_DIR` (a directory `textgym train` wrote); the figure has one panel per
metric, one line per run, against the update number. Training rewards are noisy at 16 samples per
update, so they are drawn as a moving average (`--smooth` updates) over the raw points; validation
rewards (every `--eval-every` updates) are drawn as markers. The answer entropy (bits over the
extracted answers of each update's samples; 0 = every sample gave the same answer) is what shows a
policy collapsing onto one answer, often many updates before the reward says so.

    python examples/benchmarks/learning_curves.py old=runs/rg/syllogism/run new=runs/rg-new/syllogism/run \
        --title "syllogism, level 0" --out curves.png

Also writes the plotted series as CSV beside the figure (`--out` with `.csv`), one row per run and update.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from agents.callbacks import read_metrics

PANELS = [("train_reward", "reward (train: moving average; val: markers)"), ("entropy", "token entropy (nats)"),
          ("train_answer_entropy", "answer entropy (bits)")]  # fmt: skip


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Mean of the last `window` finite values at each point (fewer at the start); NaN where none."""
    out = np.full(len(values), np.nan)
    for i in range(len(values)):
        recent = values[max(0, i - window + 1) : i + 1]
        recent = recent[np.isfinite(recent)]
        if len(recent):
            out[i] = recent.mean()
    return out


def series(run_dir: Path) -> dict[str, np.ndarray]:
    rows = read_metrics(run_dir)
    if not rows:
        raise SystemExit(f"error: no metrics.jsonl rows in {run_dir}: give a directory `textgym train` wrote")
    train = [r for r in rows if "train_reward" in r]
    out = {"iteration": np.array([r["iteration"] for r in train], dtype=float)}
    for key, _ in PANELS:
        out[key] = np.array([r.get(key, np.nan) for r in train], dtype=float)
    val = [r for r in rows if "val_reward" in r]
    out["val_iteration"] = np.array([r["iteration"] for r in val], dtype=float)
    out["val_reward"] = np.array([r["val_reward"] for r in val], dtype=float)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", metavar="LABEL=RUN_DIR")
    parser.add_argument("--out", default="learning_curves.png")
    parser.add_argument("--title", default="")
    parser.add_argument("--smooth", type=int, default=5, help="moving-average window for train rewards (updates)")
    args = parser.parse_args(argv)

    runs: dict[str, dict] = {}
    for spec in args.runs:
        label, sep, path = spec.partition("=")
        if not sep or not path:
            raise SystemExit(f"error: {spec!r} is not LABEL=RUN_DIR (e.g. old=runs/rg/syllogism/run)")
        runs[label] = series(Path(path))

    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2 * len(PANELS), 3.4), layout="constrained")
    axes = fig.subplots(1, len(PANELS))
    for (label, s), color in zip(runs.items(), [f"C{i}" for i in range(10)]):
        for ax, (key, name) in zip(axes, PANELS):
            y = s[key]
            if key == "train_reward":
                ax.plot(s["iteration"], y, color=color, alpha=0.2, lw=0.8)
                ax.plot(s["iteration"], moving_average(y, args.smooth), color=color, label=label)
                ax.plot(s["val_iteration"], s["val_reward"], "o", color=color, ms=5, mec="black", mew=0.5)
            elif np.isfinite(y).any():
                ax.plot(s["iteration"], y, color=color, label=label)
            ax.set_title(name, fontsize=9)
            ax.set_xlabel("update")
    axes[0].legend(fontsize=8)
    if args.title:
        fig.suptitle(args.title, fontsize=10)
    out = Path(args.out)
    fig.savefig(out, dpi=110)

    with open(out.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["run", "iteration", *[k for k, _ in PANELS], "val_reward"])
        for label, s in runs.items():
            val = dict(zip(s["val_iteration"], s["val_reward"]))
            for i, it in enumerate(s["iteration"]):
                writer.writerow([label, int(it), *[_fmt(s[k][i]) for k, _ in PANELS], _fmt(val.get(it, np.nan))])
    print(f"wrote {out} and {out.with_suffix('.csv')}")
    return 0


def _fmt(x: float) -> str:
    return "" if not np.isfinite(x) else f"{x:.4g}"


if __name__ == "__main__":
    raise SystemExit(main())
