"""SmolLM2-135M-Instruct before and after `textgym train` on reasoning-gym datasets: pass@1 and pass@8.

Two steps, each a series of `textgym` commands that this script prints before it runs them, and each
resumable (run it again after a kill and it goes on where it stopped):

    # 1. which datasets suit a 135M model: base pass@1 on a small budget, best first
    python examples/benchmarks/reasoning_gym_table.py scan --problems 12 --samples 4
    # 2. per dataset: evaluate the base model, train it, evaluate the trained checkpoint; a markdown table
    python examples/benchmarks/reasoning_gym_table.py table --datasets syllogism isomorphic_strings --iterations 60
    # the same, scored by the last number of the reply instead of each dataset's verifier
    python examples/benchmarks/reasoning_gym_table.py table --reward numeric_match --datasets products chain_sum \
        --iterations 60 --out runs/rg-numeric
    # the same with TRL's GRPOTrainer in place of `textgym train` (the same flags; its loss, changed by --trl-args)
    python examples/benchmarks/reasoning_gym_table.py table --datasets syllogism products --iterations 60 --trainer trl \
        --trl-args '{"loss_type": "dapo", "epsilon_high": 0.28, "mask_truncated_completions": true}'

The README's table and what it shows (SmolLM2-135M-Instruct rarely gives a bare answer; the
datasets' partial credit and answer priors are what the default recipe learns first) came from
these commands with `--threads 1 --train-args --eval-every 20 --eval-episodes 128`.

Held out: every evaluation is on the dataset's test split and training samples the train split
(validation during training: the validation split). The three never share a question: reasoning-gym
generates `--size` entries from seed 0 and textgym splits them by a hash of the question, the same
way in every command. The intervals are textgym eval's: a 95% bootstrap over the test problems.

The base evaluation, the training run and the trained evaluation of a dataset live in
OUT/<dataset>/{base, run, trained-<iteration>}; `textgym eval --resume` and `textgym train --resume`
continue whatever a killed invocation left.
With `--trainer trl` the run is OUT/<dataset>/trl-<updates> (its HF model in model/, written last) and
its evaluation trl-trained-<updates>, beside the textgym run and sharing its base evaluation; a TRL run
killed before it saved its model starts over.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

# Short answers (a number, a word, yes/no) that the verifier can match when the model answers
# tersely; the datasets whose answers are long structures (grids, move lists, programs) are left
# out, and so are those that take seconds per entry to generate. game_of_life_halting is left out
# too: its verifier (reasoning-gym 0.1.25) compares bool(answer) with bool(reference), so every
# non-empty completion scores 1.0.
CANDIDATES = [
    "acre", "aiw", "basic_arithmetic", "binary_alternation", "calendar_arithmetic", "chain_sum", "circuit_logic",
    "coin_flip", "color_cube_rotation", "count_bits", "count_primes", "course_schedule", "decimal_arithmetic", "dice",
    "family_relationships", "gcd", "gsm_symbolic", "isomorphic_strings", "largest_island",
    "lcm", "leg_counting", "letter_counting", "mahjong_puzzle", "needle_haystack", "number_format", "number_sequence",
    "power_function", "products", "ransom_note", "rectangle_count", "rotten_oranges", "self_reference",
    "simple_equations", "simple_geometry", "spell_backward", "string_splitting", "syllogism", "time_intervals",
]  # fmt: skip
SYSTEM_PROMPT = "Reply with only the final answer: a single word or number, no explanation."
TRL_SCRIPT = Path(__file__).resolve().parents[1] / "trl_grpo_textgym.py"  # --trainer trl


def textgym(*args: str) -> list[str]:
    return [sys.executable, "-m", "textgym.cli", *args]


def show(cmd: list[str]) -> str:
    if cmd[1:3] != ["-m", "textgym.cli"]:  # a script: python examples/...
        return "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(cmd[1]), *cmd[2:]])
    return "textgym " + " ".join(shlex.quote(a) for a in cmd[3:])


def call(cmd: list[str], log: Path | None = None) -> int:
    print(f"$ {show(cmd)}", flush=True)
    if log is None:
        return subprocess.call(cmd)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as f:
        return subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT)


def task_kwargs(args: argparse.Namespace, name: str) -> dict:
    """The dataset's size, and its curriculum level where it has a curriculum (level 0: its easiest)."""
    import reasoning_gym

    level = {} if args.level is None or name not in reasoning_gym.factory.CURRICULA else {"level": args.level}
    return {"size": args.size, **level}


def common_env(args: argparse.Namespace, name: str) -> list[str]:
    """The settings every command of a dataset shares: the task, its size, the budget, the prompt."""
    prompt = [] if args.system_prompt is None else ["--system-prompt", args.system_prompt]
    stops = ["--stop-strings", *args.stop_strings] if args.stop_strings else []
    reward = ["--reward", args.reward] if args.reward else []
    return ["--task", f"reasoning_gym:{name}", "--task-kwargs", json.dumps(task_kwargs(args, name)),
            "--max-new-tokens", str(args.max_new_tokens), *prompt, "--chat-template", args.chat_template, *stops, *reward,
            "--temperature", str(args.temperature), "--threads", str(args.threads)]  # fmt: skip


def eval_command(args: argparse.Namespace, name: str, model: str, out: Path, samples: int, ks: list[int]) -> list[str]:
    return textgym("eval", "--model", model, *common_env(args, name), "--split", "test", "--problems", str(args.problems),
                   "--samples", str(samples), "--k", *map(str, ks), "--batch-size", str(args.batch_size),
                   "--seed", str(args.seed), "--no-progress-bar", "--out", str(out), "--resume")  # fmt: skip


def task_row(out: Path) -> dict | None:
    summary = out / "summary.json"
    if not summary.exists():
        return None
    rows = json.loads(summary.read_text())["tasks"]
    return rows[0] if rows else None


def prior_cell(row: dict | None) -> str:
    """What always giving the commonest reference answer scores on the evaluated problems, and that answer:
    `textgym eval`'s prior (scored by the dataset's verifier on every problem; a policy that collapses to
    "Yes" on a dataset that is 90% "Yes" scores 0.9)."""
    if row is None or row.get("prior") is None:
        return "—"
    return f"{row['prior']:.3f} ({row['prior_answer']})"


def lift_cell(row: dict | None) -> str:
    """pass@1 - prior with its 95% interval (textgym eval's lift)."""
    if row is None or row.get("lift") is None:
        return "—"
    return f"{row['lift']:+.3f} [{row['lift_lo']:+.2f}, {row['lift_hi']:+.2f}]"


def cell(row: dict | None, metric: str) -> str:
    if row is None or metric not in row:
        return "—"
    return f"{row[metric]:.3f} [{row[metric + '_lo']:.2f}, {row[metric + '_hi']:.2f}]"


# -- scan ------------------------------------------------------------------------------------------


def scan(args: argparse.Namespace) -> int:
    results = []
    for name in args.datasets or CANDIDATES:
        out = args.out / "scan" / name
        cmd = eval_command(args, name, args.model, out, args.samples, [1, args.samples]) + ["--no-greedy"]
        code = call(cmd, log=out / "eval.log")
        row = task_row(out) if code == 0 else None
        if row is None:
            print(f"  {name}: failed (exit {code}); see {out / 'eval.log'}")
            continue
        results.append((name, row))
        print(f"  {name}: pass@1 {cell(row, 'pass@1')}, mean reward {row[f'mean@{args.samples}']:.3f}, "
              f"{row['tokens']:.1f} tokens, {row['truncated']:.0%} truncated", flush=True)  # fmt: skip
    results.sort(key=lambda item: (-item[1]["pass@1"], item[0]))
    print(f"\n{args.model}, {args.problems} test problems x {args.samples} samples, T = {args.temperature}, "
          f"{args.max_new_tokens} new tokens, curriculum level {args.level}:\n")  # fmt: skip
    print(f"| dataset | pass@1 | pass@{args.samples} | mean reward | tokens |")
    print("|---|---|---|---|---|")
    for name, row in results:
        print(f"| {name} | {cell(row, 'pass@1')} | {cell(row, f'pass@{args.samples}')} | "
              f"{row[f'mean@{args.samples}']:.3f} | {row['tokens']:.1f} |")  # fmt: skip
    return 0


# -- table -----------------------------------------------------------------------------------------


def trained_iteration(run: Path) -> int | None:
    from agents.checkpoints import latest_checkpoint  # the one reader of `latest` (it stays inside the run)

    checkpoint = latest_checkpoint(run)
    return None if checkpoint is None else int(checkpoint.name.split("-")[1])


def train_with_textgym(args: argparse.Namespace, name: str, root: Path, train: list[str]) -> tuple | None:
    """`textgym train` into ROOT/run, resumed where a killed run stopped: (the command, the model to
    evaluate, where its evaluation goes, updates), or None when training stopped."""
    run = root / "run"
    done = trained_iteration(run)
    if done is None or done < args.iterations:
        more = textgym("train", "--resume", str(run), "--iterations", str(args.iterations), "--no-progress-bar",
                       "--threads", str(args.threads))  # fmt: skip
        again = [*train, "--overwrite"] if run.exists() else train  # a first run that stopped before its first checkpoint
        if call(again if done is None else more, log=root / "train.log"):
            print(f"  {name}: training stopped; see {root / 'train.log'} (run again to resume)")
            return None
    iteration = trained_iteration(run)
    return train, str(run), root / f"trained-{iteration}", iteration  # a run trained further is evaluated afresh


def train_with_trl(args: argparse.Namespace, name: str, root: Path, train: list[str]) -> tuple | None:
    """TRL's GRPOTrainer in place of `textgym train`, into ROOT/trl-<updates>: the same flags, so the same
    model, task, prompt, system prompt, chat template, temperature, token budget, train split, budget
    (one optimizer step per update of prompts x group-size samples), learning rate and seed
    (examples/trl_grpo_textgym.py), with TRL's loss changed by --trl-args. The HF model it saves is
    evaluated by the same `textgym eval` command as a textgym checkpoint. A finished run is not trained
    again; a killed one starts over."""
    if train[-2] != "--out":
        raise ValueError(f"the train command should end with --out DIR: {show(train)}")
    run = root / f"trl-{args.iterations}"
    command = [sys.executable, str(TRL_SCRIPT), *train[4:-2], "--trl-args", json.dumps(args.trl_args), "--out", str(run)]
    if call(command, log=root / "trl-train.log"):
        print(f"  {name}: TRL training stopped; see {root / 'trl-train.log'} (run again to start it over)")
        return None
    return command, str(run / "model"), root / f"trl-trained-{args.iterations}", args.iterations


def table(args: argparse.Namespace) -> int:
    k = args.samples
    lines, commands = [], []
    for name in args.datasets:
        root = args.out / name
        base, run = root / "base", root / "run"
        train = textgym("train", "--model", args.model, *common_env(args, name), "--iterations", str(args.iterations),
                        "--seed", str(args.seed), "--no-progress-bar", *args.train_args, "--out", str(run))  # fmt: skip
        base_eval = eval_command(args, name, args.model, base, k, [1, k])
        if call(base_eval, log=root / "base.log"):
            print(f"  {name}: the base evaluation failed; see {root / 'base.log'}")
            continue
        trained_by = train_with_trl if args.trainer == "trl" else train_with_textgym
        step = trained_by(args, name, root, train)
        if step is None:
            continue
        train, model, trained, iteration = step
        trained_eval = eval_command(args, name, model, trained, k, [1, k])
        if call(trained_eval, log=root / "trained.log"):
            print(f"  {name}: the trained evaluation failed; see {root / 'trained.log'}")
            continue
        commands += [show(base_eval), show(train), show(trained_eval)]
        before, after = task_row(base), task_row(trained)
        lines.append(f"| {name} | {before['problems']} | {cell(before, 'pass@1')} | {cell(after, 'pass@1')} | "
                     f"{cell(before, f'pass@{k}')} | {cell(after, f'pass@{k}')} | {prior_cell(before)} | "
                     f"{lift_cell(after)} | {iteration} |")  # fmt: skip
    print(f"\n{args.model} before and after `textgym train` ({args.iterations} updates), {args.problems} held-out test "
          f"problems x {k} samples, T = {args.temperature}, {args.max_new_tokens} new tokens, "
          f"{'reward ' + args.reward if args.reward else 'the datasets verifiers'}; 95% bootstrap intervals:\n")  # fmt: skip
    print(f"| dataset | problems | pass@1 base | pass@1 trained | pass@{k} base | pass@{k} trained | "
          f"one answer for all (prior) | lift trained | updates |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(lines))
    if args.trainer == "trl":
        print(f"\ntrained by TRL's GRPOTrainer in place of `textgym train`, --trl-args {json.dumps(args.trl_args)}")
    print("\nThe commands (run again, they resume):\n\n" + "\n".join(commands))
    return 0


def json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not JSON ({e}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"a JSON object of GRPOConfig fields is expected, got {text!r}")
    return value


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("step", choices=["scan", "table"])
    p.add_argument("--datasets", nargs="+", default=None, help="reasoning-gym dataset names (scan: default the candidates)")
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--size", type=int, default=1000, help="entries reasoning-gym generates (80/10/10 train/validation/test)")
    p.add_argument("--level", type=lambda v: None if v.lower() == "none" else int(v), default=0,
                   help="reasoning-gym curriculum level of the datasets that have one (none: their default config)")
    p.add_argument("--problems", type=int, default=64, help="test problems evaluated")
    p.add_argument("--samples", type=int, default=8, help="samples per problem (pass@1 and pass@samples)")
    p.add_argument("--iterations", type=int, default=100, help="table: training updates")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--system-prompt", type=lambda v: None if v.lower() == "none" else v, default=SYSTEM_PROMPT,
                   help="the system message (none: the model's own)")
    p.add_argument("--chat-template", choices=["auto", "on", "off"], default="auto")
    p.add_argument("--stop-strings", nargs="+", default=None, help="end a completion at these strings (e.g. a newline)")
    p.add_argument("--reward", default=None,
                   help="a textgym reward instead of the dataset's own verifier, in every command (e.g. numeric_match: "
                        "the last number the reply writes equals the reference)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads of every command")
    p.add_argument("--trainer", choices=["textgym", "trl"], default="textgym",
                   help="table: `textgym train`, or TRL's GRPOTrainer given the same flags (examples/trl_grpo_textgym.py)")
    p.add_argument("--trl-args", type=json_object, default={},
                   help="table, --trainer trl: GRPOConfig fields as a JSON object, e.g. "
                        '\'{"loss_type": "dapo", "epsilon_high": 0.28, "mask_truncated_completions": true}\'')
    p.add_argument("--train-args", nargs=argparse.REMAINDER, default=[], help="table: more `textgym train` flags (last)")
    p.add_argument("--out", type=Path, default=Path("runs/reasoning_gym_table"))
    args = p.parse_args(argv)
    if args.step == "table" and not args.datasets:
        p.error("table needs --datasets (run the scan step to pick them)")
    return scan(args) if args.step == "scan" else table(args)


if __name__ == "__main__":
    sys.exit(main())
