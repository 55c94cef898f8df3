"""LoRA vs full fine-tuning: the training samples each needs until the validation reward reaches a target.

Each (setup, seed) is one `textgym train` run in its own process, with `--early-stop-reward`
TARGET and at most `--iterations` updates; "samples to target" is the number of episodes the agent
had sampled for training at the first evaluation at or above the target (the metrics' `samples`).
Everything else is the model's preset (for `tiny`: copy 6 characters over "abc", 8 prompts x 8
samples per update, lr 1e-3, an entropy bonus); LoRA adds `--lora-rank` and its own `--lora-lr`.

    python examples/benchmarks/lora_learning.py                          # tiny: full vs LoRA r16, seeds 0-2
    python examples/benchmarks/lora_learning.py --jobs 2 --json examples/results/lora_learning.json
    python examples/benchmarks/lora_learning.py --model smollm2-135m-instruct --iterations 100 --lora-lr 2e-4 \\
        --out-dir runs/lora_learning_smollm2                              # the default task (hours on a CPU)

Runs are kept in --out-dir/<setup>-seed<k>: a rerun reads the finished ones, resumes a cut-off one,
and adds what is missing (more seeds, another setup). Flags it does not know go to `textgym train`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

TRAIN = "import sys; from agents.train import main; sys.exit(main(sys.argv[1:]))"


def read_run(run: Path, target: float) -> dict:
    """What a run's metrics.jsonl says: the first evaluation at or above `target`, the best, the last."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()] if (run / "metrics.jsonl").exists() else []
    evals = [(r["iteration"], r["val_reward"], int(r.get("samples", 0))) for r in rows if "val_reward" in r]
    reached = next(((it, samples) for it, val, samples in evals if val >= target), None)
    return {
        "updates_run": max((r["iteration"] for r in rows), default=0),
        "samples_to_target": None if reached is None else reached[1],
        "updates_to_target": None if reached is None else reached[0],
        "best_val_reward": max((val for _, val, _ in evals), default=None),
        "last_val_reward": evals[-1][1] if evals else None,
        "wall_s": rows[-1].get("wall_s") if rows else None,  # the last row's (since the run or its last resume)
    }


def one_run(setup: str, seed: int, args: argparse.Namespace, extra: list[str]) -> dict:
    run = Path(args.out_dir) / f"{setup}-seed{seed}"
    lr = args.lora_lr if setup == "lora" else args.full_lr
    result = read_run(run, args.target)
    if result["samples_to_target"] is None and result["updates_run"] < args.iterations:
        if (run / "latest").exists():
            flags = ["--resume", str(run), "--iterations", str(args.iterations)]
        else:
            flags = ["--model", args.model, "--seed", str(seed), "--iterations", str(args.iterations), "--early-stop-reward",
                     str(args.target), "--eval-every", str(args.eval_every), "--threads", str(args.threads), "--no-progress-bar",
                     "--out", str(run), "--overwrite", *(["--lr", str(lr)] if lr is not None else []),
                     *(["--lora-rank", str(args.lora_rank)] if setup == "lora" else []), *extra]  # fmt: skip
        log = run.with_suffix(".log")
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a") as f:
            subprocess.run([sys.executable, "-c", TRAIN, *flags], stdout=f, stderr=subprocess.STDOUT, check=True)
        result = read_run(run, args.target)
    config = json.loads((run / "config.json").read_text())
    return {"setup": setup, "seed": seed, "lr": config["lr"], "lora_rank": config.get("lora_rank"), **result}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny")
    p.add_argument("--setups", nargs="+", choices=("full", "lora"), default=["full", "lora"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--target", type=float, default=0.9, help="validation reward to reach")
    p.add_argument("--iterations", type=int, default=300, help="the most updates of a run")
    p.add_argument("--eval-every", type=int, default=5)
    p.add_argument("--full-lr", type=float, default=None, help="full fine-tuning's lr (None: the preset's or the default)")
    p.add_argument("--lora-lr", type=float, default=3e-3, help="LoRA's lr (the tiny model learned at 3e-3, not at 1e-2)")
    p.add_argument("--lora-rank", type=int, default=16)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads per run")
    p.add_argument("--jobs", type=int, default=1, help="runs at once")
    p.add_argument("--out-dir", default="runs/lora_learning")
    p.add_argument("--json", default=None, help="write the results here")
    args, extra = p.parse_known_args()
    todo = [(setup, seed) for setup in args.setups for seed in args.seeds]
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda job: one_run(*job, args, extra), todo))
    summary = {}
    print(f"\n{args.model}: training samples to validation reward >= {args.target} (at most {args.iterations} updates)")
    print("| setup | lr | samples per seed | mean of those that reached it | reached |\n|---|---|---|---|---|")
    for setup in args.setups:
        rows = [r for r in results if r["setup"] == setup]
        reached = [r["samples_to_target"] for r in rows if r["samples_to_target"] is not None]
        cells = ", ".join(str(r["samples_to_target"]) if r["samples_to_target"] is not None
                          else f"- (best {r['best_val_reward']:.2f} in {r['updates_run']} updates)" for r in rows)  # fmt: skip
        mean = sum(reached) / len(reached) if reached else None
        summary[setup] = {"samples_mean_of_reached": mean, "reached": f"{len(reached)}/{len(rows)}"}
        label = setup + (f" r{rows[0]['lora_rank']}" if setup == "lora" else "")
        print(f"| {label} | {rows[0]['lr']:g} | {cells} | {'-' if mean is None else f'{mean:.0f}'} | {len(reached)}/{len(rows)} |")
    if args.json:
        command = "python examples/benchmarks/lora_learning.py " + " ".join(sys.argv[1:])
        out = {"command": command, "model": args.model, "target": args.target, "max_updates": args.iterations,
               "train_flags": extra, "runs": results, "summary": summary}  # fmt: skip
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
