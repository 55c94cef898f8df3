"""TRL's GRPOTrainer on a textgym task, set up with `textgym train`'s flags; the model it trains is
evaluated with `textgym eval` like any other.

    python examples/trl_grpo_textgym.py --model tiny --task copy --task-kwargs '{"length": 3, "alphabet": "ab"}' \
        --max-new-tokens 4 --iterations 30 --out runs/trl-copy
    python examples/trl_grpo_textgym.py --task comparison --iterations 50 --out runs/trl-comparison \
        --trl-args '{"loss_type": "dapo", "epsilon_high": 0.28, "mask_truncated_completions": true}'
    textgym eval --model runs/trl-comparison/model --task comparison --split test

Every `textgym train` flag means what it means there, with the same defaults and presets, and the
run takes from them what a `textgym train` run with those flags would use: the model, the env (task,
prompt, system prompt, chat template, token budget, stop strings, reward), the sampling, the budget
(`--iterations` optimizer steps of `--prompts` x `--group-size` samples), the learning rate and its
schedule, and the seed (`agents.trl.grpo_config_kwargs`). The loss is TRL's: its defaults, changed
by `--trl-args` (a JSON object of GRPOConfig fields, applied last). textgym's own recipe flags
(baseline, normalize_std, entropy_coef, ...) and its run management (eval_every, save_every, ...)
do nothing here; the ones given are listed. Single-turn tasks train on
`textgym.integrations.trl`'s dataset and reward; multi-turn ones add `agents.trl`'s rollout function.

Writes OUT/settings.json (the settings and the GRPOConfig), OUT/log.jsonl (TRL's log, a row per
step) and, last, OUT/model: an HF model directory with its tokenizer. A run whose OUT/model exists
is not trained again (unless its settings differ: then it stops with an error); a run killed before
that starts over.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import warnings
from pathlib import Path

from agents.callbacks import RunManagementConfig
from agents.reinforce import REINFORCEConfig
from agents.train import RunConfig, SamplingConfig, add_arguments, resolve_settings, split_settings
from textgym.config import EnvConfig, given

CONFIGS = (RunConfig, RunManagementConfig, EnvConfig, REINFORCEConfig, SamplingConfig)
# The flags that reach the TRL run (the env's come from EnvConfig; progress is a line per step either way).
USED = {"model", "iterations", "prompts", "group_size", "device", "dtype", "threads", "out", "progress_bar", "lr",
        "lr_schedule", "seed", "weight_decay", "max_grad_norm", "kl_coef", "temperature", "top_k", "top_p"}  # fmt: skip


def parse(argv: list[str] | None) -> tuple[dict, dict, Path]:
    """(the run's settings as `textgym train` resolves them, the GRPOConfig overrides, the output directory)."""
    p = argparse.ArgumentParser(prog="trl_grpo_textgym.py")
    add_arguments(p)
    p.description, p.epilog = __doc__, None
    p.add_argument("--trl-args", type=json_object, default={}, help="GRPOConfig fields as a JSON object, applied last")
    args = p.parse_args(argv)
    flags = {k: v for cls in CONFIGS for k, v in given(args, cls).items()}
    if flags.pop("resume", None):
        p.error("--resume is textgym train's; a TRL run that was killed starts over (run it again with the same --out)")
    ignored = sorted(k for k in flags if k not in USED and k not in {f.name for f in dataclasses.fields(EnvConfig)})
    if ignored:
        print(f"note: no effect on a TRL run (textgym's own recipe or run management): {' '.join('--' + k.replace('_', '-') for k in ignored)}")
    settings = resolve_settings(flags)
    out = Path(settings["out"] or f"runs/trl-{settings['task']}")
    return settings, args.trl_args, out


def json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not JSON ({e}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"--trl-args must be a JSON object of GRPOConfig fields, got {text!r}")
    return value


def main(argv: list[str] | None = None) -> int:
    settings, trl_args, out = parse(argv)
    recorded = json.loads(json.dumps({"settings": settings, "trl_args": trl_args}, default=str))
    if (out / "model").exists():
        previous = json.loads((out / "settings.json").read_text()) if (out / "settings.json").exists() else {}
        if {k: previous.get(k) for k in recorded} != recorded:
            raise SystemExit(f"error: {out / 'model'} was trained with other settings (see {out / 'settings.json'}); choose another --out")
        print(f"{out / 'model'} is trained already")
        return 0
    try:
        run, _, env, agent, sampling = split_settings(settings)
    except (TypeError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None

    import torch
    import trl
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback
    from transformers.utils import logging as hf_logging

    from agents.models import load_model, resolve_device, resolve_dtype, save_model
    from agents.trl import grpo_config_kwargs, textgym_rollout_func
    from textgym.integrations.trl import env_rules, textgym_dataset, textgym_reward_funcs, trl_tokenizer
    from textgym.tasks import make_task

    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")  # names TRL still uses
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # rollout_func is "experimental" in TRL 1.16
    unknown = sorted(set(trl_args) - {f.name for f in dataclasses.fields(trl.GRPOConfig)})
    if unknown:
        raise SystemExit(f"error: --trl-args names {unknown}, which are not GRPOConfig fields (TRL {trl.__version__})")
    device = resolve_device(run.device)
    try:
        config = trl.GRPOConfig(output_dir=str(out / "trainer"), report_to="none", save_strategy="no", logging_steps=1,
                                disable_tqdm=True, use_cpu=device.type == "cpu",
                                bf16=resolve_dtype(run.dtype, device) == torch.bfloat16,
                                **{**grpo_config_kwargs(run, env, agent, sampling), **trl_args})  # fmt: skip
    except (TypeError, ValueError) as e:
        raise SystemExit(f"error: GRPOConfig refused the settings (--trl-args {json.dumps(trl_args)}): {e}") from None
    if run.threads:
        torch.set_num_threads(run.threads)
    model, tokenizer = load_model(run.model, device=device, dtype=run.dtype, seed=agent.seed)
    # The env's settings for dataset, reward and rollout alike; the task built once, so all three see its examples.
    # The trainer's dataset is the train split, as textgym train's episodes are.
    env_settings = {f.name: getattr(env, f.name) for f in dataclasses.fields(EnvConfig) if f.name != "split"}
    try:
        env_settings.update(task=make_task(env.task, **env.task_kwargs), task_kwargs={}, tokenizer=tokenizer)
        rules = env_rules(env_settings["task"], tokenizer, env_settings)
        size = None if rules.num_examples else run.iterations * run.prompts  # an unbounded split: one example per prompt
        dataset = textgym_dataset(split="train", size=size, **env_settings)
    except (TypeError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    if run.mask_actions and rules.task.allowed_chars is not None:
        print("note: mask_actions is not applied: GRPOTrainer samples from the whole vocabulary")
    out.mkdir(parents=True, exist_ok=True)
    (out / "settings.json").write_text(json.dumps({**recorded, "grpo_config": json.loads(config.to_json_string())}, indent=2) + "\n")
    (out / "log.jsonl").write_text("")

    class Log(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "reward" in logs:
                with open(out / "log.jsonl", "a") as f:
                    f.write(json.dumps({"step": state.global_step, **logs}) + "\n")
                print(f"step {state.global_step}/{state.max_steps}: reward {logs['reward']:.3f} "
                      f"(std {logs.get('reward_std', float('nan')):.3f}), {logs.get('completions/mean_length', 0):.1f} tokens, "
                      f"entropy {logs.get('entropy', float('nan')):.3f}", flush=True)  # fmt: skip

    print(f"task {env.task}: {run.prompts} prompts x {run.group_size} samples per step, {run.iterations} steps, "
          f"lr {agent.lr} ({agent.lr_schedule}), loss_type {config.loss_type}, scale_rewards {config.scale_rewards} -> {out}")  # fmt: skip
    trainer = trl.GRPOTrainer(model=model, processing_class=trl_tokenizer(tokenizer), args=config, train_dataset=dataset,
                              reward_funcs=textgym_reward_funcs(**env_settings), callbacks=[Log()],
                              rollout_func=textgym_rollout_func(**env_settings) if rules.multi_turn else None)  # fmt: skip
    trainer.remove_callback(PrinterCallback)  # Log prints a shorter line per step
    trainer.train()
    partial = out / "model.partial"
    shutil.rmtree(partial, ignore_errors=True)
    hf_logging.disable_progress_bar()  # a bar for writing one small file
    save_model(trainer.model, tokenizer, partial)
    partial.rename(out / "model")  # last: its presence means the run finished
    print(f"model: {out / 'model'} (textgym eval --model {out / 'model'} ...)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
