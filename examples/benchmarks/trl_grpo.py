"""TRL's GRPOTrainer set up on a textgym task, for the benchmarks that compare against it.

TRL is an optional, bench-only dependency (`pip install trl`, or `pip install -e .[bench]`). The
trainer sees exactly what textgym's REINFORCE sees: the prompts as the env builds them (chat template
included), the task's verifier as its reward function (through `textgym.rewards.score`, so a
crashing verifier scores 0 the same way), P prompts x G samples per step, the same temperature,
token budget and learning rate, no KL term.
"""

from __future__ import annotations

import tempfile
import warnings
from typing import Any

import numpy as np
import torch

from textgym.integrations.trl import trl_tokenizer

TRL_MISSING = (
    "TRL is not installed; this benchmark compares against TRL's GRPOTrainer. Install it with:\n"
    "    pip install trl\n(or `pip install -e .[bench]`), then run this script again."
)


def trl_available() -> bool:
    try:
        import trl  # noqa: F401
    except ImportError:
        return False
    return True


def grpo_trainer(model: torch.nn.Module, tokenizer: Any, rules: Any, *, prompts: int, group_size: int,
                 max_new_tokens: int, temperature: float, lr: float, steps: int, seed: int,
                 callbacks: list | None = None, random_prompts: bool = False, **config: Any):  # fmt: skip
    """A GRPOTrainer over `rules.task`'s train split for `steps` steps of `prompts` x `group_size`.

    `rules` is a `textgym.transition.Transition` (prompt formatting + verifier). The prompts are the
    train split in order (`random_prompts=False`) or drawn uniformly at random with `seed`, as the
    env draws them. Extra keyword arguments go to `GRPOConfig` (TRL's defaults otherwise).
    """
    from datasets import Dataset
    from transformers.trainer_callback import PrinterCallback
    from trl import GRPOConfig, GRPOTrainer

    size = rules.task.num_examples("train") or 2**31 - 1
    rng = np.random.default_rng(seed)
    indices = rng.integers(0, size, steps * prompts) if random_prompts else [(seed * 7919 + i) % size for i in range(steps * prompts)]
    examples = [rules.task.example("train", int(i)) for i in indices]
    data = Dataset.from_dict({"prompt": [rules.prompt_text(e) for e in examples], "row": list(range(len(examples)))})

    def textgym_reward(prompts, completions, row, **_):
        return [result.reward for result in rules.score(completions, [examples[r] for r in row])]

    # transformers' deprecation notices about names TRL still uses say nothing about the benchmark.
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
    args = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="trl-bench-"), per_device_train_batch_size=prompts * group_size,
        num_generations=group_size, max_completion_length=max_new_tokens, temperature=temperature,
        learning_rate=lr, max_steps=steps, logging_steps=1, report_to="none", save_strategy="no",
        beta=0.0, seed=seed, bf16=False, use_cpu=not torch.cuda.is_available(), disable_tqdm=True,
        shuffle_dataset=False, **config,
    )  # fmt: skip
    trainer = GRPOTrainer(model=model, reward_funcs=textgym_reward, args=args, train_dataset=data,
                          processing_class=trl_tokenizer(tokenizer), callbacks=callbacks or [])  # fmt: skip
    trainer.remove_callback(PrinterCallback)  # the benchmarks print their own lines, not a dict per step
    return trainer
