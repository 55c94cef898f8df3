"""REINFORCE for language-model policies in TextGen environments, read top to bottom.

One iteration of `learn`:
  1. collect one episode per vector-env slot through the ordinary `env.step` loop, recording the
     behaviour log-prob of every action as it is taken (DESIGN.md, invariant 4);
  2. turn terminal verifier rewards into per-token returns G_t (seed 004, eq. 5/6) and subtract a
     state-only baseline b(s_t) (eq. 22-25): none, a running mean, the group mean, leave-one-out,
     or a learned value head;
  3. ascend the policy gradient (eq. 21/26) — or, with several epochs over the same rollouts, the
     clipped importance-ratio estimator (eq. 27) against the recorded behaviour log-probs —
     with micro-batches and gradient accumulation, an optional KL penalty to the initial policy,
     an optional entropy bonus and gradient clipping;
  4. log train reward and, every `eval_every` iterations, validation reward (seed 004, §6.5:
     "always log and report train and validation rewards").
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from agents import distributed
from agents import losses as L
from agents.policy import LMPolicy

__all__ = ["REINFORCE", "Rollouts", "BASELINES", "evaluate"]

BASELINES = ("none", "mean", "group", "leave_one_out", "value")
LR_SCHEDULES = ("constant", "linear")


@dataclass
class Rollouts:
    """One batch of finished episodes, in tensors ready for the update.

    `input_ids`/`attention_mask` are (B, S) prompt + completion, right-padded. The per-token
    tensors are (B, S-1) and aligned with `LMPolicy.log_probs`: column j scores token j+1, and
    `completion_mask` marks the columns that score completion tokens (the actions).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    completion_mask: torch.Tensor
    old_log_probs: torch.Tensor
    step_rewards: torch.Tensor
    episode_rewards: torch.Tensor
    accuracy: torch.Tensor
    lengths: torch.Tensor
    completions: list[str] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)
    reward_errors: int = 0
    components: dict[str, float] = field(default_factory=dict)


def _success(reward: float, components: dict) -> float:
    """An episode counts as solved if its answer component (or, without one, its reward) is >= 1."""
    value = components.get("answer", reward) if components else reward
    return float(value >= 1.0 - 1e-9)


def collect_rollouts(policy: LMPolicy, envs: Any, seed: int | None = None, greedy: bool = False) -> tuple[Rollouts, dict]:
    """Run one episode in every slot of a TextGenVectorEnv, acting with `policy` via `env.step`.

    Slots that finish early idle (the policy spends nothing on them) until every slot is done.
    Returns the rollouts and the time split {"generate_s", "env_s"}.
    """
    obs, _ = envs.reset(seed=seed)
    n = envs.num_envs
    prompt_len = obs["prompt_len"][:, 0].copy()
    prompts = [obs["input_ids"][i, : prompt_len[i]].copy() for i in range(n)]
    actions: list[list[int]] = [[] for _ in range(n)]
    behaviour: list[list[float]] = [[] for _ in range(n)]
    rewards: list[list[float]] = [[] for _ in range(n)]
    final: list[dict] = [{} for _ in range(n)]
    done = np.zeros(n, dtype=bool)
    t_generate = t_env = 0.0
    while not done.all():
        t0 = time.perf_counter()
        action, log_prob = policy.act(obs, greedy=greedy, active=~done)
        t1 = time.perf_counter()
        obs, reward, terminated, truncated, info = envs.step(action)
        t_env += time.perf_counter() - t1
        t_generate += t1 - t0
        for i in np.flatnonzero(~done):
            actions[i].append(int(action[i]))
            behaviour[i].append(float(log_prob[i]))
            rewards[i].append(float(reward[i]))
        finished = (terminated | truncated) & ~done
        for i in np.flatnonzero(finished):
            final[i] = {k: info[k][i] for k in ("completion", "answer") if k in info}
            comps = info.get("reward_components", {})
            final[i]["reward_components"] = {
                k: float(v[i]) for k, v in comps.items() if not k.startswith("_") and comps[f"_{k}"][i]
            }
            final[i]["reward_error"] = info["reward_error"][i] if info.get("_reward_error", np.zeros(n, bool))[i] else None
        done |= finished

    width = max(len(p) + len(a) for p, a in zip(prompts, actions))
    ids = torch.zeros(n, width, dtype=torch.long)
    mask = torch.zeros(n, width, dtype=torch.long)
    comp_mask = torch.zeros(n, width - 1, dtype=torch.bool)
    old = torch.zeros(n, width - 1)
    step_rewards = torch.zeros(n, width - 1)
    for i in range(n):
        p, a = len(prompts[i]), len(actions[i])
        ids[i, :p] = torch.as_tensor(prompts[i])
        ids[i, p : p + a] = torch.as_tensor(actions[i])
        mask[i, : p + a] = 1
        # Column j of the log-prob tensor scores token j+1, so action k (token p+k) sits at p-1+k.
        comp_mask[i, p - 1 : p - 1 + a] = True
        old[i, p - 1 : p - 1 + a] = torch.as_tensor(behaviour[i])
        step_rewards[i, p - 1 : p - 1 + a] = torch.as_tensor(rewards[i])
    episode_rewards = torch.tensor([sum(r) for r in rewards])
    comps = [f.get("reward_components") or {} for f in final]
    components = {k: float(np.mean([c.get(k, 0.0) for c in comps])) for k in sorted({k for c in comps for k in c})}
    rollouts = Rollouts(
        input_ids=ids,
        attention_mask=mask,
        completion_mask=comp_mask,
        old_log_probs=old,
        step_rewards=step_rewards,
        episode_rewards=episode_rewards,
        accuracy=torch.tensor([_success(float(r), c) for r, c in zip(episode_rewards, comps)]),
        lengths=torch.tensor([len(a) for a in actions], dtype=torch.float32),
        completions=[str(f.get("completion", "")) for f in final],
        answers=[str(f.get("answer", "")) for f in final],
        reward_errors=sum(f.get("reward_error") is not None for f in final),
        components=components,
    )
    return rollouts, {"generate_s": t_generate, "env_s": t_env}


def evaluate(
    policy: LMPolicy, env: Any, episodes: int = 100, greedy: bool = False, seed: int | None = 0
) -> dict[str, float]:
    """Mean reward (with a 95% confidence interval), accuracy and length over `episodes` episodes.

    `env` is a TextGenVectorEnv (episodes run num_envs at a time) or a single TextGenEnv.
    The same seed gives the same prompts and the same samples, so evaluations along a run are
    comparable; the policy's own sampling stream is left where it was.
    """
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    if seed is None:
        return _evaluate(policy, env, episodes, greedy, None)
    state = policy.generator.get_state()
    policy.seed(seed)
    try:
        return _evaluate(policy, env, episodes, greedy, seed)
    finally:
        policy.generator.set_state(state)


def _evaluate(policy: LMPolicy, env: Any, episodes: int, greedy: bool, seed: int | None) -> dict[str, float]:
    envs = env.unwrapped if hasattr(env, "unwrapped") else env
    rewards, accuracy, lengths = [], [], []
    if hasattr(envs, "num_envs"):
        round_ = 0
        while len(rewards) < episodes:
            batch_seed = None if seed is None else seed + round_ * envs.num_envs
            rollouts, _ = collect_rollouts(policy, envs, seed=batch_seed, greedy=greedy)
            take = min(episodes - len(rewards), envs.num_envs)
            rewards += rollouts.episode_rewards[:take].tolist()
            accuracy += rollouts.accuracy[:take].tolist()
            lengths += rollouts.lengths[:take].tolist()
            round_ += 1
    else:
        for k in range(episodes):
            obs, _ = env.reset(seed=None if seed is None else seed + k)
            total, steps, done = 0.0, 0, False
            while not done:
                action, _ = policy.act(obs, greedy=greedy)
                obs, reward, terminated, truncated, info = env.step(action)
                total, steps, done = total + reward, steps + 1, terminated or truncated
            rewards.append(total)
            accuracy.append(_success(total, info.get("reward_components") or {}))
            lengths.append(steps)
    r = np.asarray(rewards)
    half_width = 1.96 * r.std(ddof=1) / math.sqrt(len(r)) if len(r) > 1 else float("nan")
    return {
        "reward": float(r.mean()),
        "reward_ci95": float(half_width),
        "accuracy": float(np.mean(accuracy)),
        "episode_length": float(np.mean(lengths)),
        "episodes": len(r),
    }


class REINFORCE:
    """The REINFORCE agent (Williams, 1992) for LMPolicy, with the seeds' variance reducers.

    Args:
        policy: the LMPolicy to train (its device and dtype are used throughout).
        baseline: "none" (eq. 21), "mean" (running average of past rewards), "group" (mean of the
            G completions of the same prompt; G = the vector env's group_size), "leave_one_out"
            (mean of the other G-1: unbiased), or "value" (a learned state-value head V(s_t) on the
            LM's last hidden state, regressed to the return; the LM is not trained by it).
        lr: AdamW learning rate of the policy.
        lr_schedule: "constant", or "linear" (TRL's default): the learning rate of iteration i is
            lr * (1 - i / end), where end is the iteration the `learn` call runs to. A run stopped
            early and resumed for its remaining iterations (`textgym train --resume`) continues
            the same line.
        seed: seeds the env resets and the policy's sampling of every iteration (same seed, same run).
        gamma: discount of per-token returns (1.0: undiscounted, eq. 5; < 1: eq. 6).
        normalize_std: divide group advantages by the group's std (GRPO).
        loss_aggregation: "token_mean" (every token weighs the same), "sequence_mean" (every
            completion weighs the same) or "sum" (eq. 26 exactly); see `agents.losses`.
        epochs: update epochs per batch. With more than one, later epochs are off-policy and use the
            clipped importance-ratio loss (eq. 27) against the recorded behaviour log-probs.
        cliprange: ε of the clipped loss.
        kl_coef: weight of a k3 KL penalty to a frozen copy of the initial policy (0: off, no copy).
        entropy_coef: weight of an entropy bonus.
        max_grad_norm: gradient clipping (None: off).
        micro_batch_size: episodes per forward/backward; gradients accumulate over the batch, so
            peak memory follows the micro-batch, not the batch (None: the whole batch at once).
        weight_decay: AdamW weight decay.
        mean_baseline_decay: β of the running-mean baseline b ← (1-β) b + β mean(R).
        value_lr: learning rate of the value head.
        max_bad_updates: consecutive non-finite losses/gradients tolerated (each is skipped)
            before training stops with an error.
        amp: mixed precision of the update's forward and backward: "off" (the policy's dtype),
            "bf16" (autocast to bfloat16; weights, gradients and optimizer stay float32), or
            "auto" (bf16 when the policy is float32 on hardware with native bf16: recent CUDA GPUs,
            CPUs with AVX512-BF16/AMX). Acting is never autocast. On a 2-core AVX512-BF16 CPU it
            made SmolLM2-135M's forward+backward 1.8x faster.
    """

    def __init__(
        self,
        policy: LMPolicy,
        baseline: str = "group",
        lr: float = 1e-5,
        seed: int = 0,
        lr_schedule: str = "constant",
        gamma: float = 1.0,
        normalize_std: bool = False,
        loss_aggregation: str = "token_mean",
        epochs: int = 1,
        cliprange: float = 0.2,
        kl_coef: float = 0.0,
        entropy_coef: float = 0.0,
        max_grad_norm: float | None = 1.0,
        micro_batch_size: int | None = None,
        weight_decay: float = 0.0,
        mean_baseline_decay: float = 0.1,
        value_lr: float = 1e-3,
        max_bad_updates: int = 3,
        amp: str = "off",
    ):
        if baseline not in BASELINES:
            raise ValueError(f"unknown baseline {baseline!r}; choose one of {BASELINES}")
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"unknown lr_schedule {lr_schedule!r}; choose one of {LR_SCHEDULES}")
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {gamma}")
        if loss_aggregation not in L.AGGREGATIONS:
            raise ValueError(f"unknown loss_aggregation {loss_aggregation!r}; choose one of {L.AGGREGATIONS}")
        if int(epochs) < 1:
            raise ValueError(f"epochs must be >= 1, got {epochs}")
        if micro_batch_size is not None and int(micro_batch_size) < 1:
            raise ValueError(f"micro_batch_size must be >= 1 or None, got {micro_batch_size}")
        if kl_coef < 0 or entropy_coef < 0:
            raise ValueError("kl_coef and entropy_coef must be >= 0")
        self.policy = policy
        self.baseline = baseline
        self.hparams = dict(
            baseline=baseline, lr=lr, lr_schedule=lr_schedule, seed=seed, gamma=gamma, normalize_std=normalize_std,
            loss_aggregation=loss_aggregation, epochs=int(epochs), cliprange=cliprange, kl_coef=kl_coef,
            entropy_coef=entropy_coef, max_grad_norm=max_grad_norm, micro_batch_size=micro_batch_size,
            weight_decay=weight_decay, mean_baseline_decay=mean_baseline_decay, value_lr=value_lr,
            max_bad_updates=max_bad_updates, amp=amp,
        )  # fmt: skip
        self.autocast_dtype = _resolve_amp(amp, policy)
        self.seed = int(seed)
        self.iteration = 0
        self.running_mean = 0.0
        self.bad_updates = 0
        self.optimizer = _adamw(policy.model.parameters(), lr=lr, weight_decay=weight_decay)
        self.reference = None
        if kl_coef > 0:
            self.reference = copy.deepcopy(policy.model).eval().requires_grad_(False)
        # Under torchrun, DDP all-reduces the gradients; its constructor also broadcasts rank 0's
        # weights, so every rank starts from the same policy.
        self.dist = distributed.context()
        self.ddp = None
        if self.dist.enabled:
            device_ids = [policy.device.index] if policy.device.type == "cuda" else None
            self.ddp = torch.nn.parallel.DistributedDataParallel(policy.model, device_ids=device_ids)
        self.value_head = None
        if baseline == "value":
            hidden = policy.model.config.hidden_size
            self.value_head = torch.nn.Linear(hidden, 1).to(device=policy.device, dtype=torch.float32)
            torch.nn.init.zeros_(self.value_head.weight)
            torch.nn.init.zeros_(self.value_head.bias)
            self.value_optimizer = torch.optim.Adam(self.value_head.parameters(), lr=value_lr)

    # -- the update ------------------------------------------------------------------------------

    def _advantages(self, batch: Rollouts, group_size: int) -> tuple[torch.Tensor, torch.Tensor, str]:
        """Per-token returns G_t (B, S-1) and advantages, and the loss type to use."""
        mask = batch.completion_mask
        returns = L.discounted_returns(batch.step_rewards, mask, self.hparams["gamma"])  # eq. 5 / 6
        episode_return = batch.episode_rewards.float()
        if self.baseline == "none":
            return returns, returns, "no_baseline"  # eq. 21: weight every log π by R(τ)
        if self.baseline == "mean":
            b = self.running_mean  # from earlier batches only, so it does not depend on these actions
            beta = self.hparams["mean_baseline_decay"]
            batch_mean = self.dist.mean(float(episode_return.mean()))  # the same on every rank
            self.running_mean = (1 - beta) * self.running_mean + beta * batch_mean
            return returns, returns - b, "reinforce_with_baseline"  # eq. 22 with b(s) = const
        if self.baseline in ("group", "leave_one_out"):
            if len(episode_return) % group_size:
                raise ValueError(f"{len(episode_return)} episodes do not split into groups of {group_size}")
            adv, _ = L.group_normalized_rewards(
                episode_return, group_size, normalize_by_std=self.hparams["normalize_std"],
                leave_one_out=self.baseline == "leave_one_out",
            )  # fmt: skip
            b = (episode_return - adv)[:, None] if not self.hparams["normalize_std"] else None
            if b is not None:  # the baseline is per prompt: subtract it from every token's return
                return returns, torch.where(mask, returns - b, torch.zeros_like(returns)), "reinforce_with_baseline"
            return returns, adv[:, None].expand_as(returns) * mask, "reinforce_with_baseline"
        return returns, returns, "value"  # the value baseline is subtracted per micro-batch

    def update(self, batch: Rollouts, group_size: int = 1) -> dict[str, float]:
        """One policy-gradient step (per epoch) on a batch of rollouts; returns its metrics."""
        hp = self.hparams
        model = self.policy.model
        advantages = self._advantages(batch, group_size)
        stats: dict[str, list[float]] = {k: [] for k in ("entropy", "kl", "clip_fraction", "grad_norm", "value_loss")}
        for epoch in range(hp["epochs"]):
            finite = self.compute_gradients(batch, advantages=advantages, epoch=epoch, stats=stats)
            grad_norm = torch.nn.utils.clip_grad_norm_(
                model.parameters(), hp["max_grad_norm"] if hp["max_grad_norm"] else float("inf")
            )
            if not finite or not torch.isfinite(grad_norm):
                self._skip_update("loss" if not finite else "gradient")
                break
            self.bad_updates = 0
            self.optimizer.step()
            stats["grad_norm"].append(float(grad_norm))
            if self.value_head is not None:
                self.value_optimizer.step()
                self.value_optimizer.zero_grad(set_to_none=True)
        self.optimizer.zero_grad(set_to_none=True)
        self.policy.reset_cache()  # the weights changed: cached keys/values are stale
        out = {k: float(np.mean(v)) for k, v in stats.items() if v}
        out["skipped_update"] = float(self.bad_updates > 0)
        return out

    def compute_gradients(
        self,
        batch: Rollouts,
        group_size: int = 1,
        *,
        advantages: tuple[torch.Tensor, torch.Tensor, str] | None = None,
        epoch: int = 0,
        stats: dict[str, list[float]] | None = None,
    ) -> bool:
        """Set `.grad` of the policy (and value head) to the gradient of the batch's loss; no step.

        The batch goes through in micro-batches of `micro_batch_size` whose losses are weighted so
        that the accumulated gradient is the whole batch's. `advantages` is what `_advantages`
        returned (computed here when None, which advances the running-mean baseline); `epoch` > 0
        is off-policy. Per-micro-batch metrics are appended to `stats`. Returns False when a
        micro-batch loss (on any rank) was not finite; the caller must then discard the gradient.
        """
        hp = self.hparams
        policy, model = self.policy, self.policy.model
        device = policy.device
        stats = {} if stats is None else stats
        returns, advantages, loss_type = self._advantages(batch, group_size) if advantages is None else advantages
        n = batch.input_ids.shape[0]
        mb = hp["micro_batch_size"] or n
        # Normalise by counts over all ranks: DDP averages the ranks' gradients, so scaling each
        # loss by world_size makes the result the gradient of the loss over every rank's episodes.
        world = self.dist.world_size
        total_tokens = self.dist.sum(int(batch.completion_mask.sum()))
        n_total = self.dist.sum(n)
        forward_model = self.ddp if self.ddp is not None else model
        finite = True
        self.optimizer.zero_grad(set_to_none=True)
        if self.value_head is not None:
            self.value_optimizer.zero_grad(set_to_none=True)
        off_policy = epoch > 0
        model.train()
        try:
            for start in range(0, n, mb):
                sl = slice(start, start + mb)
                width = int(batch.attention_mask[sl].sum(dim=1).max())  # trim right padding
                ids = batch.input_ids[sl, :width].to(device)
                attn = batch.attention_mask[sl, :width].to(device)
                # Columns before the first action of the micro-batch score prompt tokens: skip their
                # logits (the LM head is the biggest matmul per token).
                first = int(batch.completion_mask[sl].any(dim=0).float().argmax())
                cols = slice(first, width - 1)
                mask = batch.completion_mask[sl, cols].to(device)
                last = start + mb >= n
                sync = self.ddp.no_sync() if self.ddp is not None and not last else contextlib.nullcontext()
                autocast = torch.autocast(
                    device_type=device.type, dtype=self.autocast_dtype or torch.float32, enabled=self.autocast_dtype is not None
                )
                with sync, autocast:  # DDP: accumulate locally, all-reduce on the last micro-batch
                    out = policy.log_probs(
                        ids, attn, with_entropy=True, with_hidden=self.value_head is not None, model=forward_model,
                        start=first,
                    )  # fmt: skip
                    log_probs = out["log_probs"]
                    adv = advantages[sl, cols].to(device)
                    if self.value_head is not None:
                        values = self.value_head(out["hidden"][:, cols].detach().float()).squeeze(-1)
                        ret = returns[sl, cols].to(device)
                        value_loss = L.masked_mean((values - ret) ** 2, mask)  # regress V(s_t) to G_t
                        (value_loss * (mask.sum() / max(total_tokens, 1))).backward()  # summed over ranks below
                        stats.setdefault("value_loss", []).append(float(value_loss.detach()))
                        adv = torch.where(mask, ret - values.detach(), torch.zeros_like(ret))  # eq. 22, b = V(s_t)
                    if off_policy or hp["epochs"] > 1:
                        old = batch.old_log_probs[sl, cols].to(device)
                        per_token, meta = L.policy_gradient_loss(
                            log_probs, "clipped", advantages=adv, old_log_probs=old, cliprange=hp["cliprange"], mask=mask
                        )  # eq. 27: importance ratio π_θ / π_θold against the recorded behaviour
                        stats.setdefault("clip_fraction", []).append(float(meta["clip_fraction"]))
                    elif loss_type == "no_baseline":
                        per_token, _ = L.policy_gradient_loss(log_probs, "no_baseline", raw_rewards=adv)  # eq. 21
                    else:
                        per_token, _ = L.policy_gradient_loss(log_probs, "reinforce_with_baseline", advantages=adv)  # eq. 22
                    if hp["entropy_coef"] > 0:
                        per_token = per_token - hp["entropy_coef"] * out["entropy"]
                    if self.reference is not None:
                        with torch.no_grad():
                            ref = _reference_log_probs(self.reference, policy, ids, attn, first)
                        # Only completion tokens are actions. Elsewhere a restricted policy (allowed tokens,
                        # top-k/p) gives prompt tokens log-prob -inf, and exp(-inf - -inf) is NaN, which
                        # the mask does not keep out of the gradient.
                        kl = L.kl_penalty(torch.where(mask, log_probs, 0.0), torch.where(mask, ref, 0.0), kind="k3")
                        per_token = per_token + hp["kl_coef"] * kl
                        stats.setdefault("kl", []).append(float(L.masked_mean(kl.detach(), mask)))
                    loss = L.aggregate_loss(per_token, mask, hp["loss_aggregation"])
                    # Weight the micro-batch so the accumulated gradient is the whole batch's.
                    if hp["loss_aggregation"] == "token_mean":
                        loss = loss * (mask.sum() * world / max(total_tokens, 1))
                    else:
                        loss = loss * (ids.shape[0] * world / n_total)
                    # A non-finite loss still goes backward (its NaNs then fail the gradient check on
                    # every rank alike): a rank that skipped backward would leave DDP's others waiting.
                    finite = finite and bool(torch.isfinite(loss))
                    if loss.requires_grad:
                        loss.backward()
                stats.setdefault("entropy", []).append(float(L.masked_mean(out["entropy"].detach(), mask)))
        finally:
            model.eval()
        if self.value_head is not None:
            self.dist.all_reduce_grads(self.value_head)
        return self.dist.all_true(finite)

    def _skip_update(self, what: str) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        if self.value_head is not None:  # its gradient came from the same bad batch
            self.value_optimizer.zero_grad(set_to_none=True)
        self.bad_updates += 1
        if self.bad_updates >= self.hparams["max_bad_updates"]:
            raise FloatingPointError(
                f"non-finite {what} in {self.bad_updates} consecutive updates; the weights were not changed "
                "by them. Lower lr, enable max_grad_norm, or use float32 (dtype='float32')."
            )

    # -- the loop --------------------------------------------------------------------------------

    def learn(
        self,
        envs: Any,
        iterations: int,
        eval_env: Any = None,
        eval_every: int = 5,
        eval_episodes: int = 64,
        callback: Callable[[dict], bool | None] | None = None,
        progress_bar: bool = True,
        log_dir: str | os.PathLike | None = None,
        save_every: int | None = None,
    ) -> "REINFORCE":
        """Train for `iterations` iterations (one episode per env slot each) from `self.iteration`.

        Logs train reward every iteration and validation reward (on `eval_env`) before the first
        iteration, every `eval_every` iterations and after the last. With `log_dir`, appends one
        JSON line per iteration to metrics.jsonl (flushed), saves a checkpoint every `save_every`
        iterations and at the end (atomically), and draws reward curves into rewards.png.
        `callback(metrics)` returning False stops training. Ctrl-C saves and returns.
        """
        if int(iterations) < 0:
            raise ValueError(f"iterations must be >= 0, got {iterations}")
        envs_u = envs.unwrapped if hasattr(envs, "unwrapped") else envs
        if not hasattr(envs_u, "num_envs"):
            raise TypeError("learn() needs a vector env: gym.make_vec('TextGen-v0', num_envs=..., vectorization_mode='vector_entry_point', ...)")
        self.policy.check_env(envs_u)
        group_size = int(getattr(envs_u, "group_size", 1))
        if self.baseline in ("group", "leave_one_out") and group_size < 2:
            raise ValueError(
                f"baseline={self.baseline!r} compares completions of the same prompt: make the env with group_size >= 2"
            )
        # Under torchrun only rank 0 evaluates, logs, draws and checkpoints (the weights are equal).
        main = self.dist.is_main
        log_path = Path(log_dir) if log_dir is not None and main else None
        if log_path is not None:
            _check_writable(log_path)
        eval_env = eval_env if main else None
        end = self.iteration + int(iterations)
        bar = _progress(total=int(iterations), enabled=progress_bar and main)
        if log_path:
            _truncate_metrics(log_path / "metrics.jsonl", self.iteration if self.iteration > 0 else -1)
        metrics_file = open(log_path / "metrics.jsonl", "a", buffering=1) if log_path else None
        last_eval: dict[str, float] = {}
        interrupted = False
        try:
            if eval_env is not None and (self.iteration == 0 or not last_eval):
                last_eval = self._evaluate(eval_env, eval_episodes)
                bar.write(f"validation reward before iteration {self.iteration}: {_fmt_eval(last_eval)}")
                if metrics_file and self.iteration == 0:
                    metrics_file.write(json.dumps({"iteration": 0, **{f"val_{k}": v for k, v in last_eval.items()}}) + "\n")
            while self.iteration < end:
                t0 = time.perf_counter()
                self.policy.seed(self._iteration_seed(1))
                batch, timing = collect_rollouts(self.policy, envs_u, seed=self._iteration_seed(0))
                t1 = time.perf_counter()
                lr = self._scheduled_lr(end)
                update_stats = self.update(batch, group_size)
                t2 = time.perf_counter()
                self.iteration += 1
                metrics = {
                    "iteration": self.iteration,
                    "train_reward": float(batch.episode_rewards.mean()),
                    "train_accuracy": float(batch.accuracy.mean()),
                    "episode_length": float(batch.lengths.mean()),
                    "reward_errors": batch.reward_errors,
                    **{f"reward/{k}": v for k, v in batch.components.items()},
                    **update_stats,
                    "lr": lr,
                    "time_generate_s": timing["generate_s"],
                    "time_env_s": timing["env_s"],
                    "time_update_s": t2 - t1,
                    "tokens_per_s": float(batch.lengths.sum()) / max(t1 - t0, 1e-9),
                    "sample_completion": batch.completions[0][:200],
                }
                metrics = self.dist.mean_dict(metrics)  # every rank's episodes count
                if eval_env is not None and (self.iteration % eval_every == 0 or self.iteration == end):
                    last_eval = self._evaluate(eval_env, eval_episodes)
                    metrics.update({f"val_{k}": v for k, v in last_eval.items()})
                if metrics_file:
                    metrics_file.write(json.dumps(metrics) + "\n")
                    metrics_file.flush()
                    os.fsync(metrics_file.fileno())
                bar.update(1)
                postfix = {"train": f"{metrics['train_reward']:.2f}"}
                if last_eval:
                    postfix["val"] = f"{last_eval['reward']:.2f}"
                bar.set_postfix(postfix)
                if log_path and save_every and self.iteration % save_every == 0:
                    self.checkpoint(log_path)
                if callback is not None and callback(metrics) is False:
                    break
        except KeyboardInterrupt:
            interrupted = True
            bar.write("interrupted: saving a checkpoint and stopping")
        finally:
            bar.close()
            if metrics_file:
                metrics_file.close()
        if log_path:
            self.checkpoint(log_path)
            plot_metrics(log_path / "metrics.jsonl", log_path / "rewards.png")
        if interrupted:
            raise KeyboardInterrupt
        return self

    def _scheduled_lr(self, end: int) -> float:
        """Set (and return) this iteration's learning rate; `end` is the learn call's last iteration."""
        lr = self.hparams["lr"]
        if self.hparams["lr_schedule"] == "linear":
            lr *= max(0.0, 1.0 - self.iteration / max(end, 1))
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def evaluate(self, env: Any, episodes: int = 100, greedy: bool = False, seed: int | None = 0) -> dict[str, float]:
        """Mean reward ± 95% CI, accuracy and mean length of the current policy on `env`."""
        return evaluate(self.policy, env, episodes=episodes, greedy=greedy, seed=seed)

    def predict(self, obs: Any, deterministic: bool = False) -> tuple[Any, None]:
        """SB3-style: the policy's action(s) for an observation (or a vector env's batch)."""
        action, _ = self.policy.act(obs, greedy=deterministic)
        return action, None

    def _evaluate(self, env: Any, episodes: int) -> dict[str, float]:
        # The same prompts and samples at every evaluation; training's random stream is untouched.
        return evaluate(self.policy, env, episodes=episodes, seed=self.seed + 104729)

    def _iteration_seed(self, stream: int) -> int:
        """A seed per (run seed, iteration, stream): resuming at iteration k replays iteration k."""
        key = [self.seed, self.iteration, stream] + ([self.dist.rank] if self.dist.enabled else [])
        return int(np.random.SeedSequence(key).generate_state(1)[0])

    # -- persistence -----------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> Path:
        """Write policy weights, optimizer, value head, baseline state and iteration to `path`.

        The directory appears complete or not at all (written beside it, then renamed); an
        existing `path` is replaced.
        """
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        self.policy.save(tmp / "policy")
        state = {
            "iteration": self.iteration,
            "running_mean": self.running_mean,
            "hparams": self.hparams,
            "optimizer": self.optimizer.state_dict(),
            "policy_sampling": {"temperature": self.policy.temperature, "top_k": self.policy.top_k, "top_p": self.policy.top_p},
            "allowed_tokens": None if self.policy.allowed_tokens is None else self.policy.allowed_tokens.cpu(),
            "generator": self.policy.generator.get_state(),
        }
        if self.value_head is not None:
            state["value_head"] = self.value_head.state_dict()
            state["value_optimizer"] = self.value_optimizer.state_dict()
        if self.reference is not None:  # the KL anchor is the initial policy, not the resumed one
            state["reference"] = self.reference.state_dict()
        torch.save(state, tmp / "agent.pt")
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
        return path

    def checkpoint(self, run_dir: str | os.PathLike, keep: int = 1) -> Path:
        """Save into run_dir/checkpoint-<iteration> and point run_dir/latest at it, atomically.

        A kill at any moment leaves `latest` naming a complete checkpoint: the new directory is
        complete before the pointer moves (temp file + rename), and old ones go only after.
        """
        run_dir = Path(run_dir)
        target = self.save(run_dir / f"checkpoint-{self.iteration:06d}")
        pointer = run_dir / ".latest.tmp"
        pointer.write_text(target.name + "\n")
        os.replace(pointer, run_dir / "latest")
        for old in sorted(run_dir.glob("checkpoint-*"))[:-keep]:
            if old != target:
                shutil.rmtree(old, ignore_errors=True)
        return target

    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "auto", dtype: str = "auto", **overrides: Any) -> "REINFORCE":
        """Restore an agent saved by `save` (weights, optimizer, iteration) to continue training."""
        path = Path(path)
        if not (path / "agent.pt").exists() and (path / "latest").exists():
            path = path / (path / "latest").read_text().strip()  # a run directory: its latest checkpoint
        if not (path / "agent.pt").exists():
            raise FileNotFoundError(f"{path} holds no textgym checkpoint (agent.pt is missing, and no 'latest' pointer)")
        state = torch.load(path / "agent.pt", map_location="cpu", weights_only=False)
        policy = LMPolicy.from_pretrained(path / "policy", device=device, dtype=dtype, **state["policy_sampling"])
        hparams = {**state["hparams"], **overrides}
        policy.restrict_actions(None if state.get("allowed_tokens") is None else state["allowed_tokens"].numpy())
        agent = cls(policy, **hparams)
        agent.optimizer.load_state_dict(state["optimizer"])
        if agent.reference is not None and "reference" in state:
            agent.reference.load_state_dict(state["reference"])
        agent.iteration = state["iteration"]
        agent.running_mean = state["running_mean"]
        policy.generator.set_state(state["generator"])
        if agent.value_head is not None and "value_head" in state:
            agent.value_head.load_state_dict(state["value_head"])
            agent.value_optimizer.load_state_dict(state["value_optimizer"])
        return agent


def _reference_log_probs(reference: torch.nn.Module, policy: LMPolicy, ids: torch.Tensor, attn: torch.Tensor, start: int) -> torch.Tensor:
    return policy.log_probs(ids, attn, model=reference, start=start)["log_probs"]


def _resolve_amp(amp: str, policy: LMPolicy) -> torch.dtype | None:
    if amp not in ("off", "bf16", "auto"):
        raise ValueError(f"amp must be 'off', 'bf16' or 'auto', got {amp!r}")
    if amp == "off" or policy.dtype != torch.float32:
        return None
    if amp == "bf16":
        return torch.bfloat16
    device = policy.device.type
    if device == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    if device == "cpu":
        return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else None
    return None


def _adamw(params: Any, **kwargs: Any) -> torch.optim.Optimizer:
    """AdamW with the fused kernel where this torch has one for the device (one pass over memory)."""
    params = list(params)
    try:
        return torch.optim.AdamW(params, fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(params, **kwargs)


def _truncate_metrics(path: Path, iteration: int) -> None:
    """Keep the metrics of iterations up to `iteration` (the checkpoint being resumed), atomically.

    A run killed after logging iteration k but before its next checkpoint would otherwise log
    iterations past the checkpoint twice; a line cut off mid-write is dropped too. Iterations are
    seeded from (seed, iteration), so the resumed run logs the same iterations again.
    """
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if row.get("iteration", 0) <= iteration:
            keep.append(line)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in keep))
    os.replace(tmp, path)


def _check_writable(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise PermissionError(f"cannot write to the output directory {path}: {e}; pick another with log_dir/--out") from e


def _fmt_eval(ev: dict[str, float]) -> str:
    return f"{ev['reward']:.3f} ± {ev['reward_ci95']:.3f} (accuracy {ev['accuracy']:.3f}, {ev['episodes']} episodes)"


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc="REINFORCE", unit="it", dynamic_ncols=True)


def plot_metrics(metrics_path: Path, out: Path) -> Path | None:
    """Train and validation reward against iteration, from metrics.jsonl, as a PNG."""
    if not metrics_path.exists():
        return None
    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4), dpi=110)
    ax = fig.add_subplot()
    train = [(r["iteration"], r["train_reward"]) for r in rows if "train_reward" in r]
    if train:
        ax.plot(*zip(*train), label="train reward", alpha=0.6)
    val = [(r["iteration"], r["val_reward"], r.get("val_reward_ci95", 0.0)) for r in rows if "val_reward" in r]
    if val:
        x, y, e = map(np.asarray, zip(*val))
        ax.errorbar(x, y, yerr=e, marker="o", capsize=3, label="validation reward (95% CI)")
    ax.set_xlabel("iteration")
    ax.set_ylabel("reward")
    ax.set_ylim(-0.05, max([1.05] + [r + 0.05 for _, r in train]))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out)
    return out
