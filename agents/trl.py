"""Multi-turn textgym tasks in TRL's `GRPOTrainer`, and the GRPOConfig of a `textgym train` run.

    from trl import GRPOConfig, GRPOTrainer
    from agents.models import load_model
    from agents.trl import textgym_rollout_func
    from textgym.integrations.trl import textgym_dataset, textgym_reward_funcs, trl_tokenizer

    model, tokenizer = load_model("tiny")
    env = dict(task="guess", task_kwargs={"length": 3, "digits": "12"}, max_turn_tokens=3, tokenizer=tokenizer, max_new_tokens=24)
    config = GRPOConfig(max_completion_length=24, num_generations=4, per_device_train_batch_size=8, max_steps=5, bf16=False)
    trainer = GRPOTrainer(model=model, args=config, processing_class=trl_tokenizer(tokenizer), train_dataset=textgym_dataset(**env),
                          reward_funcs=textgym_reward_funcs(**env), rollout_func=textgym_rollout_func(**env))
    trainer.train()

Why a rollout function. TRL 1.16 brings environments into GRPOTrainer in two ways:

- `environment_factory` (with `tools`): the environment's public methods become tools the model
  calls in its chat template's tool-call format (parsed by the tokenizer's response schema); each
  result comes back as a `tool` turn, and the episode ends at the first assistant turn that calls
  no tool; `get_reward()` scores it. That cannot run textgym's multi-turn tasks unchanged: their
  environment answers *every* turn of the policy, as the user ("higher/lower" in the guessing
  game, "wrong, try again" in retry) or through the task's own text protocol (the calculator's
  `<calc>...</calc>`, which TRL never parses), and an answer turn without a tool call would end
  TRL's episode before the env speaks. It also needs a chat template that renders tool calls,
  which SmolLM2's and the char tokenizer (no template) lack; GRPOTrainer refuses those.
- `rollout_func(prompts, trainer) -> {prompt_ids, completion_ids, logprobs, env_mask, **fields}`:
  the caller plays the episodes and hands over the tokens. `textgym_rollout_func` is one: each
  prompt (tagged by `textgym_dataset` with its example) becomes one episode of textgym's vector
  env, played by the trainer's current model through `LMPolicy` with TRL's temperature, top-k and
  top-p. The env appends its replies as tokens in context and never re-encodes what the model
  sampled; `env_mask` is the env's `policy_mask` (TRL trains on the model's tokens only and counts
  only those in its lengths), `logprobs` the behaviour log-probs recorded when each token was
  sampled (0 on the env's tokens), and the episode's return (the sum of its turns' rewards) goes to
  `textgym_reward_funcs`' reward function as the column `textgym_return`.

TRL calls an episode truncated when its last token is not the end token (`mask_truncated_completions`
and `completions/clipped_ratio` use that): an episode the env ended after a turn cut by
`max_turn_tokens` counts as truncated there.

`grpo_config_kwargs` maps a `textgym train` run's settings onto GRPOConfig: the same budget (one
optimizer step per update of prompts x group_size samples), learning rate and schedule, sampling
and token budget, so the two trainers can be compared sample for sample.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np

from agents.policy import LMPolicy
from agents.rollouts import collect_episodes
from textgym.integrations.trl import EXAMPLE_KEY, env_rules
from textgym.vector import TextGenVectorEnv

__all__ = ["textgym_rollout_func", "grpo_config_kwargs"]


def textgym_rollout_func(task: Any = "guess", *, tokenizer: Any, seed: int | None = None, **settings: Any) -> Callable:
    """A GRPOTrainer `rollout_func` that plays `task`'s episodes in textgym's env (see the module docstring).

    Args:
        task, tokenizer, **settings: the env's settings (`EnvConfig`), the same as given to
            `textgym_dataset` and `textgym_reward_funcs`.
        seed: seed of the sampling stream (None: `GRPOConfig.seed`).
    """
    rules = env_rules(task, tokenizer, settings)
    if not rules.multi_turn:
        raise ValueError(
            f"task {rules.task.name!r} is single-turn: GRPOTrainer samples it itself. Give it textgym_dataset(...) and "
            "textgym_reward_funcs(...) without rollout_func"
        )
    config = rules.config
    envs: dict[tuple[str, int], TextGenVectorEnv] = {}
    policies: dict[int, LMPolicy] = {}

    def textgym_rollout(prompts: list, trainer: Any) -> dict[str, list]:
        args = trainer.args
        if args.max_completion_length != config.max_new_tokens:
            raise ValueError(
                f"GRPOConfig.max_completion_length={args.max_completion_length} but the env's max_new_tokens="
                f"{config.max_new_tokens}: set them equal (the env ends episodes at max_new_tokens, env tokens included)"
            )
        if (args.min_p or 0) > 0 or args.repetition_penalty != 1.0:
            raise ValueError("textgym's policy samples with temperature, top_k and top_p only; leave GRPOConfig.min_p and "
                             "repetition_penalty at their defaults")  # fmt: skip
        model = trainer.accelerator.unwrap_model(trainer.model)
        policy = policies.get(id(model))
        if policy is None:  # one sampling stream for the whole run, seeded once
            policy = policies[id(model)] = LMPolicy(
                model, rules.tokenizer, temperature=args.temperature, top_k=args.top_k or None,
                top_p=args.top_p if args.top_p < 1.0 else None, seed=args.seed if seed is None else seed,
            )  # fmt: skip
        policy.reset_cache()  # the weights changed since the last rollout
        refs = [_example_ref(prompt) for prompt in prompts]
        episodes: list[Any] = [None] * len(prompts)
        training = model.training
        model.eval()  # no dropout, and a KV cache even where training turns on gradient checkpointing
        try:
            for split in sorted({s for s, _ in refs}):
                slots = [k for k, (s, _) in enumerate(refs) if s == split]
                key = (split, len(slots))
                if key not in envs:
                    envs[key] = TextGenVectorEnv(num_envs=len(slots), config=config.replace(split=split))
                done, _ = collect_episodes(policy, envs[key], options={"index": np.array([refs[k][1] for k in slots])})
                for k, episode in zip(slots, done):
                    episodes[k] = episode
        finally:
            model.train(training)
        out: dict[str, list] = {key: [] for key in ("prompt_ids", "completion_ids", "logprobs", "env_mask",
                                                    "textgym_return", "textgym_components", "textgym_error")}  # fmt: skip
        for e in episodes:
            completion = e.token_ids[e.prompt_len :]
            policy_tokens = np.zeros(len(completion), dtype=np.int64)
            log_probs = np.zeros(len(completion), dtype=np.float64)
            policy_tokens[e.action_positions - e.prompt_len] = 1
            log_probs[e.action_positions - e.prompt_len] = e.log_probs
            out["prompt_ids"].append(e.prompt_ids.tolist())
            out["completion_ids"].append(completion.tolist())
            out["logprobs"].append(log_probs.tolist())
            out["env_mask"].append(policy_tokens.tolist())
            out["textgym_return"].append(e.reward)
            out["textgym_components"].append(dict(e.info.get("reward_components") or {}))
            out["textgym_error"].append(e.info.get("reward_error"))
        return out

    return textgym_rollout


def _example_ref(prompt: Any) -> tuple[str, int]:
    """(split, index) of the example a `textgym_dataset` prompt was made from."""
    tag = None
    if isinstance(prompt, list):
        tag = next((m.get(EXAMPLE_KEY) for m in reversed(prompt) if isinstance(m, Mapping) and m.get(EXAMPLE_KEY)), None)
    if not tag:
        raise ValueError(
            "textgym_rollout_func plays the examples of textgym_dataset(...) prompts, which name their example; "
            f"this prompt does not ({str(prompt)[:80]!r}): build the trainer's dataset with textgym_dataset"
        )
    split, index = str(tag).rsplit("/", 1)
    return split, int(index)


def grpo_config_kwargs(run: Any, env: Any, agent: Any, sampling: Any) -> dict[str, Any]:
    """GRPOConfig settings for the budget, learning rate and sampling of a `textgym train` run.

    `run`, `env`, `agent`, `sampling` are that run's RunConfig, EnvConfig, REINFORCEConfig and
    SamplingConfig (`agents.train.split_settings`). One optimizer step takes one generation of
    `prompts` x `group_size` samples (gradient_accumulation_steps=1), as one REINFORCE update does,
    for `iterations` steps; learning rate, its schedule (no warmup), weight decay, gradient clipping,
    KL weight (`kl_coef` as `beta`) and seed are the run's; so are temperature, top-k, top-p and the
    token budget. TRL keeps its own loss (loss_type, scale_rewards, epsilon, ...): override those in
    the GRPOConfig. Gradient checkpointing is off (it only saves memory); bf16 follows the model.
    """
    return dict(
        per_device_train_batch_size=run.prompts * run.group_size, num_generations=run.group_size,
        gradient_accumulation_steps=1, max_steps=run.iterations, max_completion_length=env.max_new_tokens,
        learning_rate=agent.lr, lr_scheduler_type="linear" if agent.lr_schedule == "linear" else "constant",
        warmup_steps=0, weight_decay=agent.weight_decay, max_grad_norm=agent.max_grad_norm or 0.0, beta=agent.kl_coef,
        seed=agent.seed, temperature=sampling.temperature, top_k=sampling.top_k or 0, top_p=sampling.top_p or 1.0,
        gradient_checkpointing=False,
    )  # fmt: skip
