"""REINFORCE for language-model policies in TextGen environments, read top to bottom.

One iteration of `learn` is collect → update → callbacks:

  1. collect one episode per vector-env slot through the ordinary `env.step` loop
     (`agents.rollouts`), recording the behaviour log-prob of every action as it is taken;
  2. update (`REINFORCE.update`): per-token returns G_t (eq. 6a), advantages A_t = G_t - b(s_t) from
     the baseline's pure function (`agents.baselines`, eq. 22a-e), then one gradient step per epoch
     on the REINFORCE loss (`agents.losses.reinforce_loss`: eq. 26, or the clipped importance-ratio
     form eq. 27a when several epochs reuse the batch). `compute_gradients` is the plumbing around
     that loss: micro-batches, gradient accumulation, DDP's `no_sync`, autocast;
  3. callbacks (`agents.callbacks`): validation reward, metrics.jsonl, checkpoints, plot, progress
     bar, early stopping, experiment tracking — and SIGINT/SIGTERM stop at this boundary.

The equations, numbered, are in the docstring of `agents.losses`.
"""

from __future__ import annotations

import copy
import dataclasses
import errno
import os
import pickle
import shutil
import signal
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from safetensors import SafetensorError

from agents import distributed
from agents import losses as L
from agents.answers import update_answers
from agents.checkpoints import (
    FORMAT as CHECKPOINT_FORMAT,
    CheckpointError,
    disk_full,
    disk_full_error,
    fsync_dir,
    fsync_tree,
    read_agent_state,
    recovery,
    resolve_checkpoint,
)
from agents.baselines import BASELINES, GROUPED, BaselineInputs, group_std
from agents.callbacks import (
    Callback,
    RunManagementConfig,
    TrainingInterrupted,
    as_callback,
    standard_callbacks,
    stop_on_signals,
)
from agents.curriculum import FrontierSampler
from agents.policy import LMPolicy
from agents.rollouts import Batch, Episode, collect_episodes, evaluate, summarize, to_batch
from textgym.config import check_choices, describe, replace, setting

__all__ = ["REINFORCE", "REINFORCEConfig"]

BaselineName = Literal[tuple(BASELINES)]  # the names of agents.baselines.BASELINES
SAMPLING = ("temperature", "top_k", "top_p")  # the policy's settings a checkpoint keeps


@dataclass(frozen=True)
class REINFORCEConfig:
    """The REINFORCE agent's settings: one default and one help text each (the `textgym train` flags)."""

    baseline: BaselineName = setting(
        "group",
        "b(s_t) subtracted from the return (eq. 22a-e): none; mean (running mean of past returns); group (mean "
        "of the prompt's G completions, GRPO); leave_one_out (mean of the other G-1, RLOO: unbiased); value "
        "(a learned V(s_t) head on the LM's last hidden state)",
    )
    lr: float = setting(2e-5, "AdamW learning rate of the policy")
    lr_schedule: Literal["constant", "linear"] = setting(
        "constant",
        "linear: lr * (1 - i / end) at iteration i, `end` the iteration the learn call runs to "
        "(a resumed run continues the same line)",
    )
    seed: int = setting(0, "seeds every iteration's env resets and policy samples: same seed, same run")
    gamma: float = setting(1.0, "discount of the reward-to-go G_t (1: undiscounted, eq. 5; < 1: eq. 6)")
    normalize_std: bool = setting(False, "divide the advantages by the std of the group's returns (GRPO); needs a group baseline")
    loss_aggregation: Literal["token_mean", "sequence_mean", "sum"] = setting(
        "token_mean",
        "how the per-token terms are averaged: every token weighs the same, every completion weighs the "
        "same, or eq. 26's sum over each completion",
    )
    epochs: int = setting(1, "update epochs per batch; > 1 uses the clipped importance-ratio loss (eq. 27a) against the behaviour log-probs")
    cliprange: float = setting(0.2, "ε of the clipped loss (epochs > 1): the ratio's floor 1 - ε, and its ceiling unless cliprange_high is set")
    cliprange_high: float | None = setting(
        None, "ε_high of the clipped loss (eq. 27b, 'clip-higher'): the ratio's ceiling 1 + ε_high (None: cliprange)"
    )
    kl_coef: float = setting(0.0, "weight of the k3 KL penalty to a frozen copy of the initial policy (0: off, no copy kept)")
    entropy_coef: float = setting(0.0, "weight of the entropy bonus (with entropy_target: its starting value)")
    entropy_target: float | None = setting(
        None,
        "target mean token entropy H* in nats: after every update the entropy bonus weight moves by dual ascent, "
        "β <- max(0, β + entropy_lr (H* - H)) (eq. 26b). None: a fixed bonus entropy_coef",
    )
    entropy_lr: float = setting(0.05, "η of the entropy bonus's dual ascent (entropy_target)")
    mask_truncated: bool = setting(
        False, "no gradient from episodes the token budget cut off (eq. 26c); their rewards still count in the baselines"
    )
    dynamic_sampling: bool = setting(
        False,
        "drop groups whose rewards are all equal (no gradient under a group baseline) and sample more prompts until "
        "the update has `prompts` informative groups, or max_sampling_rounds rounds ran (DAPO; eq. 22f)",
    )
    max_sampling_rounds: int = setting(4, "dynamic_sampling: the most rounds of sampling per update (the first included)")
    frontier_weight: float | None = setting(
        None,
        "frontier sampling (eq. 26d): draw training problems with weight w when their last pass rate was 0 or 1, "
        "1 otherwise; needs a finite training split. None: off (the env draws problems uniformly)",
    )
    max_grad_norm: float | None = setting(1.0, "clip the gradient's global norm to this (None: no clipping)")
    micro_batch_size: int | None = setting(
        None, "episodes per forward/backward; gradients accumulate over the batch, so memory follows it (None: all at once)"
    )
    weight_decay: float = setting(0.0, "AdamW weight decay")
    mean_baseline_decay: float = setting(0.1, "β of the running-mean baseline m <- (1-β) m + β mean(R)")
    value_lr: float = setting(1e-3, "Adam learning rate of the value head (baseline=value)")
    max_bad_updates: int = setting(3, "consecutive updates with a non-finite loss or gradient that are skipped before training stops with an error")
    amp: Literal["auto", "bf16", "off"] = setting(
        "auto",
        "mixed precision of the update: bf16 autocast (weights, gradients and optimizer stay float32), off, or "
        "auto = bf16 where the hardware has native bf16 (recent CUDA GPUs; CPUs with AVX512-BF16/AMX: 1.8x "
        "faster for SmolLM2-135M on 2 cores) and the policy is float32. Acting is never autocast",
    )

    def __post_init__(self) -> None:
        check_choices(self)
        _require(self.lr > 0, f"lr must be > 0, got {self.lr}")
        _require(0.0 <= self.gamma <= 1.0, f"gamma must be in [0, 1], got {self.gamma}")
        _require(_is_int(self.epochs, 1), f"epochs must be an integer >= 1, got {self.epochs!r}")
        _require(self.cliprange > 0, f"cliprange must be > 0, got {self.cliprange}")
        _require(self.cliprange_high is None or self.cliprange_high > 0,
                 f"cliprange_high must be > 0, or None for the symmetric window; got {self.cliprange_high}")  # fmt: skip
        _require(self.entropy_target is None or self.entropy_target >= 0,
                 f"entropy_target must be >= 0 nats, or None for a fixed bonus; got {self.entropy_target}")  # fmt: skip
        _require(self.entropy_lr > 0, f"entropy_lr must be > 0, got {self.entropy_lr}")
        _require(_is_int(self.max_sampling_rounds, 1), f"max_sampling_rounds must be an integer >= 1, got {self.max_sampling_rounds!r}")
        _require(self.frontier_weight is None or 0 < self.frontier_weight <= 1,
                 f"frontier_weight must be in (0, 1] (1: uniform), or None for off; got {self.frontier_weight}")  # fmt: skip
        _require(not self.dynamic_sampling or self.baseline in GROUPED,
                 f"dynamic_sampling drops groups whose advantages are all 0 under a group baseline: use baseline='group' or "
                 f"'leave_one_out', not {self.baseline!r}")  # fmt: skip
        _require(self.kl_coef >= 0 and self.entropy_coef >= 0, "kl_coef and entropy_coef must be >= 0 (0 turns the term off)")
        _require(self.max_grad_norm is None or self.max_grad_norm > 0, f"max_grad_norm must be > 0, or None for no clipping; got {self.max_grad_norm}")
        _require(self.micro_batch_size is None or _is_int(self.micro_batch_size, 1),
                 f"micro_batch_size must be an integer >= 1, or None for the whole batch; got {self.micro_batch_size!r}")  # fmt: skip
        _require(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        _require(0 < self.mean_baseline_decay <= 1, f"mean_baseline_decay must be in (0, 1], got {self.mean_baseline_decay}")
        _require(self.value_lr > 0, f"value_lr must be > 0, got {self.value_lr}")
        _require(_is_int(self.max_bad_updates, 1), f"max_bad_updates must be an integer >= 1, got {self.max_bad_updates!r}")
        _require(not self.normalize_std or self.baseline in GROUPED,
                 f"normalize_std divides by the std of a group's returns: use baseline='group' or 'leave_one_out', not {self.baseline!r}")  # fmt: skip

    kind = "REINFORCE"  # how errors name these settings (a class attribute, not a setting)

    def replace(self, **changes: Any) -> "REINFORCEConfig":
        """A copy with some settings changed (an unknown name raises a TypeError listing the known)."""
        return replace(self, **changes)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _is_int(value: Any, minimum: int) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= minimum


class REINFORCE:
    """The REINFORCE agent (Williams, 1992) for an LMPolicy, with its variance reducers (baselines, eq. 22a-e).

        agent = REINFORCE(policy, baseline="group", lr=2e-5)          # or REINFORCE(policy, config)
        agent.learn(envs, iterations=50, eval_env=val_env, log_dir="runs/x")
        agent.evaluate(val_env, episodes=100)
        agent = REINFORCE.load("runs/x", lr=1e-5)                     # continue, with a new lr

    The policy's device and dtype are used throughout. Settings (`REINFORCEConfig`; `agent.config`):

{settings}
    """

    def __init__(self, policy: LMPolicy, config: REINFORCEConfig | None = None, **settings: Any):
        self.config = (config or REINFORCEConfig()).replace(**settings)
        cfg = self.config
        self.policy = policy
        self.iteration = 0
        self.end_iteration = 0  # where the current learn call stops (the linear schedule's end)
        self.running_mean: list[float] = []  # the "mean" baseline's m (eq. 22b), per turn
        self.entropy_coef = cfg.entropy_coef  # β_H: fixed, or adapted towards entropy_target (eq. 26b)
        self.samples = 0  # episodes sampled for training so far (dynamic sampling's extra rounds included)
        self.frontier: FrontierSampler | None = None  # made by learn(), which knows the training split
        self._frontier_state: dict | None = None  # a checkpoint's, until then
        self.bad_updates = 0
        self.autocast_dtype = _autocast_dtype(cfg.amp, policy)
        self.optimizer = _adamw(policy.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.reference = copy.deepcopy(policy.model).eval().requires_grad_(False) if cfg.kl_coef > 0 else None
        # Under torchrun, DDP all-reduces the gradients; its constructor also broadcasts rank 0's
        # weights, so every rank starts from the same policy.
        self.dist = distributed.context()
        self.ddp = None
        if self.dist.enabled:
            device_ids = [policy.device.index] if policy.device.type == "cuda" else None
            self.ddp = torch.nn.parallel.DistributedDataParallel(policy.model, device_ids=device_ids)
        self.value_head = None
        if cfg.baseline == "value":
            self.value_head = torch.nn.Linear(policy.model.config.hidden_size, 1).to(device=policy.device, dtype=torch.float32)
            torch.nn.init.zeros_(self.value_head.weight)  # V = 0 at first: the "none" baseline until it learns
            torch.nn.init.zeros_(self.value_head.bias)
            self.value_optimizer = torch.optim.Adam(self.value_head.parameters(), lr=cfg.value_lr)

    # -- the update ------------------------------------------------------------------------------

    def advantages(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(A_t, G_t, hidden states at the actions or None) for a batch; changes no state."""
        cfg = self.config
        returns = L.discounted_returns(batch.rewards, batch.action_mask, cfg.gamma)  # eq. 6a: G_t over the actions
        hidden, values = self._value_estimates(batch) if self.value_head is not None else (None, None)
        x = BaselineInputs(returns, batch.action_mask, batch.episode_returns, batch.group_size, tuple(self.running_mean),
                           values, batch.turns)  # fmt: skip
        advantages = BASELINES[cfg.baseline](x)  # eq. 22: A_t = G_t - b(s_t)
        if cfg.normalize_std:
            advantages = advantages / group_std(x)  # GRPO: A / std of the group's returns
        return advantages, returns, hidden

    def _update_running_mean(self, batch: Batch, returns: torch.Tensor) -> None:
        """m_k <- m_k + β (mean return-to-go from turn k of this batch - m_k), for the next batch (eq. 22b)."""
        values, present = BaselineInputs(returns, batch.action_mask, batch.episode_returns, turns=batch.turns).turn_returns
        for k in range(int(self.dist.max(values.shape[1]))):  # every rank takes as many turns (collectives pair up)
            count = self.dist.sum(float(present[:, k].sum()) if k < values.shape[1] else 0.0)
            if count == 0:
                break  # no episode reached turn k, so none reached a later one
            mean = self.dist.sum(float(values[:, k][present[:, k]].sum()) if k < values.shape[1] else 0.0) / count
            if k == len(self.running_mean):
                self.running_mean.append(0.0)
            self.running_mean[k] += self.config.mean_baseline_decay * (mean - self.running_mean[k])

    def update(self, batch: Batch) -> dict[str, float]:
        """One gradient step per epoch on a batch of episodes; returns the update's statistics."""
        cfg = self.config
        advantages, returns, hidden = self.advantages(batch)
        self._update_running_mean(batch, returns)
        stats: dict[str, list[float]] = defaultdict(list)
        skipped = False
        if cfg.mask_truncated and batch.truncated is not None:
            # eq. 26c: the budget decided these episodes' rewards, so their tokens leave the loss (the
            # advantages above already used their returns in the group baselines).
            stats["truncated_masked"].append(float(batch.truncated.float().mean()))
            batch = batch.with_action_mask(batch.action_mask & ~batch.truncated[:, None])
            if self.dist.sum(int(batch.action_mask.sum())) == 0:  # nothing left to train on: no step at all
                return {**{k: float(np.mean(v)) for k, v in stats.items()}, **_no_update(self)}
        for _ in range(cfg.epochs):
            # One epoch is on-policy (eq. 26). With more, every epoch uses eq. 27a against the
            # behaviour log-probs: after the first step the batch comes from an older policy.
            finite = self.compute_gradients(batch, advantages, clipped=cfg.epochs > 1, stats=stats)
            norm = torch.nn.utils.clip_grad_norm_(self.policy.model.parameters(), cfg.max_grad_norm or float("inf"))
            if not finite or not torch.isfinite(norm):
                self._skip_update("loss" if not finite else "gradient")
                skipped = True
                break
            self.optimizer.step()
            stats["grad_norm"].append(float(norm))
        self.optimizer.zero_grad(set_to_none=True)
        self.policy.reset_cache()  # the weights changed: cached keys/values are stale
        if not skipped:
            self.bad_updates = 0
            if self.value_head is not None:
                stats["value_loss"].append(self._fit_value_head(hidden, returns, batch.action_mask))
        out = {k: float(np.mean(v)) for k, v in stats.items() if v}
        if not skipped and cfg.entropy_target is not None and stats.get("entropy"):
            # eq. 26b: dual ascent on β_H, from the entropy of this update's first epoch (the samples' policy)
            entropy = self.dist.sum(stats["entropy"][0]) / self.dist.world_size
            self.entropy_coef = L.adapt_entropy_coef(self.entropy_coef, entropy, cfg.entropy_target, cfg.entropy_lr)
        out["entropy_coef"] = self.entropy_coef
        out["skipped_update"] = float(skipped)
        return out

    def compute_gradients(
        self, batch: Batch, advantages: torch.Tensor, clipped: bool = False, stats: dict[str, list] | None = None
    ) -> bool:
        """Set the policy's `.grad` to the gradient of the batch's REINFORCE loss; no optimizer step.

        The batch goes through in micro-batches of `micro_batch_size` episodes whose losses are
        weighted so that the accumulated gradient is the whole batch's — and, under DDP, the
        gradient one process would get on every rank's episodes. `clipped` selects eq. 27a against
        the recorded behaviour log-probs. Appends per-micro-batch statistics to `stats`. Returns
        False when a loss was not finite on any rank (the caller must discard the gradient).
        """
        cfg, policy = self.config, self.policy
        stats = {} if stats is None else stats
        n = len(batch)
        size = cfg.micro_batch_size or n
        # DDP averages the ranks' gradients; scaling each loss by world_size over global counts
        # makes the result the gradient of the loss over every rank's episodes.
        world = self.dist.world_size
        total_tokens = max(self.dist.sum(int(batch.action_mask.sum())), 1)
        total_episodes = self.dist.sum(n)
        finite = True
        self.optimizer.zero_grad(set_to_none=True)
        policy.model.train()
        try:
            for start in range(0, n, size):
                rows = slice(start, start + size)
                last = start + size >= n
                with distributed.grad_sync(self.ddp, enabled=last), self._autocast():  # DDP all-reduces on the last
                    mb = self._forward(batch, rows, with_reference=self.reference is not None)
                    loss, loss_stats = L.reinforce_loss(
                        mb["log_probs"], advantages[rows, mb["columns"]].to(policy.device), mb["mask"], cfg.loss_aggregation,
                        old_log_probs=mb["old_log_probs"] if clipped else None, cliprange=cfg.cliprange,
                        cliprange_high=cfg.cliprange_high, ref_log_probs=mb.get("ref_log_probs"), kl_coef=cfg.kl_coef,
                        entropy=mb["entropy"], entropy_coef=self.entropy_coef,
                    )  # fmt: skip
                    if cfg.loss_aggregation == "token_mean":
                        share = mb["mask"].sum() * world / total_tokens  # this micro-batch's tokens of the whole
                    else:
                        share = mb["mask"].shape[0] * world / total_episodes  # its episodes of the whole
                    loss = loss * share
                    # A non-finite loss still goes backward (its NaNs then fail the gradient check on
                    # every rank alike): a rank that skipped backward would leave DDP's others waiting.
                    finite = finite and bool(torch.isfinite(loss))
                    loss.backward()
                stats.setdefault("entropy", []).append(float(L.masked_mean(mb["entropy"].detach(), mb["mask"])))
                for k, v in loss_stats.items():
                    stats.setdefault(k, []).append(float(v))
        finally:
            policy.model.eval()
        return self.dist.all_true(finite)

    def _forward(self, batch: Batch, rows: slice, with_reference: bool = False) -> dict[str, Any]:
        """Log-probs (with gradients) and entropies of a micro-batch's columns that hold actions."""
        policy = self.policy
        width = int(batch.attention_mask[rows].sum(dim=1).max())  # trim the right padding
        ids = batch.input_ids[rows, :width]
        attention = batch.attention_mask[rows, :width]
        # Columns before the micro-batch's first action score prompt tokens: skip their logits (the
        # LM head is the biggest matmul per token).
        first = int(batch.action_mask[rows].any(dim=0).float().argmax())
        columns = slice(first, width - 1)
        model = self.ddp if self.ddp is not None else policy.model
        out = policy.log_probs(ids, attention, with_entropy=True, model=model, start=first)
        mb = {
            "columns": columns,
            "mask": batch.action_mask[rows, columns].to(policy.device),
            "log_probs": out["log_probs"],
            "entropy": out["entropy"],
            "old_log_probs": batch.old_log_probs[rows, columns].to(policy.device),
        }
        if with_reference:
            with torch.no_grad():
                mb["ref_log_probs"] = policy.log_probs(ids, attention, model=self.reference, start=first)["log_probs"]
        return mb

    @torch.no_grad()
    def _value_estimates(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """V(s_t) at every action (eq. 22e) from the LM's last hidden states, in a no-grad pass.

        Returns (hidden states (B, S-1, H) aligned with the action columns, values (B, S-1) on the
        CPU, 0 off the actions). The states are kept to fit the head after the policy step.
        """
        policy, n = self.policy, len(batch)
        size = self.config.micro_batch_size or n
        hidden = None
        for start in range(0, n, size):
            rows = slice(start, start + size)
            width = int(batch.attention_mask[rows].sum(dim=1).max())
            with self._autocast():
                # The LM head runs on the last column only: only the hidden states are wanted here.
                out = policy.log_probs(batch.input_ids[rows, :width], batch.attention_mask[rows, :width], with_hidden=True, start=width - 2)
            states = out["hidden"][:, : width - 1].float()  # state t predicts token t+1: column t
            if hidden is None:
                hidden = states.new_zeros(n, batch.action_mask.shape[1], states.shape[-1])
            hidden[rows, : width - 1] = states
        values = self.value_head(hidden).squeeze(-1).cpu()
        return hidden, torch.where(batch.action_mask, values, torch.zeros_like(values))

    def _fit_value_head(self, hidden: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
        """One Adam step regressing V(s_t) to G_t on the detached states; returns the mean squared error."""
        total = max(self.dist.sum(int(mask.sum())), 1)
        mask = mask.to(hidden.device)
        error = self.value_head(hidden[mask]).squeeze(-1) - returns.to(hidden.device)[mask]
        loss = (error**2).sum() / total  # mean over every rank's actions
        self.value_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.dist.all_reduce_grads(self.value_head)
        self.value_optimizer.step()
        self.value_optimizer.zero_grad(set_to_none=True)
        return self.dist.sum(float(loss.detach()))

    def _autocast(self) -> torch.autocast:
        dtype = self.autocast_dtype
        return torch.autocast(device_type=self.policy.device.type, dtype=dtype or torch.float32, enabled=dtype is not None)

    def _skip_update(self, what: str) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.bad_updates += 1
        if self.bad_updates >= self.config.max_bad_updates:
            raise FloatingPointError(
                f"non-finite {what} in {self.bad_updates} consecutive updates; the weights were not changed "
                "by them. Lower lr, enable max_grad_norm, or use float32 (dtype='float32')."
            )

    # -- the loop --------------------------------------------------------------------------------

    def learn(
        self,
        envs: Any,
        iterations: int,
        callback: Callback | Any = None,
        eval_env: Any = None,
        log_dir: str | os.PathLike | None = None,
        **run_management: Any,
    ) -> "REINFORCE":
        """Train for `iterations` iterations from `self.iteration`: one episode per env slot each.

        The standard callbacks (`agents.callbacks.standard_callbacks`) run first: validation reward
        on `eval_env` before the first iteration, every `eval_every` and after the last; with
        `log_dir`, metrics.jsonl, checkpoints and rewards.png; a progress bar. `callback` (a
        Callback, a function of the metrics dict, or a list of them) runs after those (a callback
        with `before_logging = True` before them, so the rows it adds to are logged); one
        returning False stops training. Under torchrun the standard callbacks run on rank 0 only,
        `callback` on every rank. The keyword settings (`RunManagementConfig`):

{run_management}

        SIGINT (Ctrl-C) or SIGTERM stop training after the current iteration, as if a callback had
        stopped it (so the checkpoint callback saves), then `TrainingInterrupted` (a
        KeyboardInterrupt) is raised; a second signal aborts at once without saving.
        """
        if isinstance(iterations, bool) or not isinstance(iterations, (int, np.integer)) or iterations < 0:
            raise ValueError(f"iterations must be an integer >= 0, got {iterations!r}")
        envs, group_size = self._check_env(envs)
        settings = RunManagementConfig.make(**run_management)
        main = self.dist.is_main  # under torchrun only rank 0 evaluates, logs, draws and checkpoints
        standard = standard_callbacks(settings, eval_env=eval_env, log_dir=log_dir) if main else []
        user = as_callback(callback).callbacks
        first = [c for c in user if getattr(c, "before_logging", False)]  # they change the row the writer logs
        callbacks = as_callback([*first, *standard, *(c for c in user if c not in first)])
        self.end_iteration = self.iteration + int(iterations)
        error: BaseException | None = None
        with stop_on_signals() as stop:
            try:
                callbacks.on_training_start(self, {"iteration": self.iteration})
                # Every rank stops at the same iteration when any rank got a signal or was told to stop.
                signalled = not self.dist.all_true(stop.signum is None)
                keep_going = not signalled
                while keep_going and self.iteration < self.end_iteration:
                    t0 = time.perf_counter()
                    episodes, kept, timing, sampling = self.collect(envs, group_size)  # collect
                    t1 = time.perf_counter()
                    lr = self._scheduled_lr()
                    stats = self.update(to_batch(kept, group_size)) if self._worth_a_step(sampling) else _no_update(self)  # update
                    self.iteration += 1
                    metrics = _iteration_metrics(self.iteration, episodes, {**sampling, **stats}, lr, timing, t1 - t0,
                                                 time.perf_counter() - t1, answers=update_answers(episodes, envs, group_size))  # fmt: skip
                    metrics = self.dist.mean_dict(metrics)  # every rank's episodes count
                    keep_going = self.dist.all_true(callbacks.on_iteration_end(metrics) is not False)  # callbacks
                    signalled = not self.dist.all_true(stop.signum is None)
                    keep_going = keep_going and not signalled
            except BaseException as e:
                error = e
                raise
            finally:
                callbacks.on_training_end(error)
        if signalled or stop.signum is not None:
            raise TrainingInterrupted(stop.signum or signal.SIGTERM)  # SIGTERM: another rank's signal
        return self

    def collect(self, envs: Any, group_size: int) -> tuple[list[Episode], list[Episode], dict[str, float], dict[str, float]]:
        """This iteration's episodes: (all sampled, those the update trains on, timing, statistics).

        One episode per slot through `env.step`; with `frontier_weight` the agent picks each group's
        problem (eq. 26d), otherwise the env draws it. With `dynamic_sampling`, groups whose rewards
        are all equal are dropped and further rounds are sampled (fresh problems, the same slots)
        until `prompts` informative groups are kept or `max_sampling_rounds` rounds ran (eq. 22f);
        when the bound runs out first, the last round's uninformative groups fill the update (zero
        advantages: they carry only the entropy and KL terms). Without it, every episode of the one
        round is trained on, as before.
        """
        cfg = self.config
        prompts = envs.num_envs // group_size
        if cfg.frontier_weight is not None and self.frontier is None:
            self.frontier = FrontierSampler(getattr(envs.core, "num_examples", None), group_size, cfg.frontier_weight)
            if self._frontier_state is not None:
                self.frontier.load_state_dict(self._frontier_state)
        self.policy.seed(self._iteration_seed(1))
        sampled: list[Episode] = []
        kept: list[Episode] = []
        timing = {"generate_s": 0.0, "env_s": 0.0}
        rounds, uninformative_first = 0, 0.0
        while True:
            # Round 0 draws what a run without these guards draws (same seeds); later rounds fresh ones.
            seed = self._iteration_seed(0) if rounds == 0 else self._iteration_seed(0, rounds)
            options = None
            if self.frontier is not None:
                options = {"index": self.frontier.draw(np.random.default_rng(self._iteration_seed(2, rounds)), prompts)}
            episodes, t = collect_episodes(self.policy, envs, seed=seed, options=options)
            for key in timing:
                timing[key] += t[key]
            rounds += 1
            sampled += episodes
            if self.frontier is not None:
                self.frontier.record([e.info.get("index", -1) for e in episodes], [e.success for e in episodes])
            informative = L.informative_groups(torch.tensor([e.reward for e in episodes]), group_size).tolist()
            if rounds == 1:
                uninformative_first = 1.0 - float(np.mean(informative))
            if not cfg.dynamic_sampling:
                kept = episodes
                break
            for k, useful in enumerate(informative):
                if useful and len(kept) < prompts * group_size:
                    kept += episodes[k * group_size : (k + 1) * group_size]
            full = len(kept) >= prompts * group_size
            if self.dist.all_true(full or rounds >= cfg.max_sampling_rounds):  # every rank samples as many rounds
                last = [episodes[k * group_size : (k + 1) * group_size] for k, useful in enumerate(informative) if not useful]
                break
        useful_groups = len(kept) // group_size if cfg.dynamic_sampling else round(prompts * (1 - uninformative_first))
        if cfg.dynamic_sampling:
            # The bound ran out: fill the update with the last round's uninformative groups. Their
            # advantages are 0, so they add no policy gradient, only the entropy and KL terms — which
            # is what lets entropy control pull a collapsed policy back to where groups disagree
            # (skipping the update instead would freeze it there).
            for group in last[: prompts - len(kept) // group_size]:
                kept += group
        self.samples += len(sampled)
        stats = {
            "groups_all_equal": uninformative_first,  # share of the first round's groups with no gradient (eq. 22f)
            "sampling_rounds": float(rounds),
            "informative_groups": float(useful_groups),
            "samples": float(self.samples),
        }
        if self.frontier is not None:
            stats.update(self.frontier.stats())
        return sampled, kept, timing, stats

    def _worth_a_step(self, sampling: dict[str, float]) -> bool:
        """False when dynamic sampling found no informative group on any rank and no entropy or KL term
        would act: the gradient is 0, and an optimizer step would still move the weights (Adam's momentum)."""
        cfg = self.config
        if not cfg.dynamic_sampling or cfg.entropy_target is not None or cfg.entropy_coef > 0 or cfg.kl_coef > 0:
            return True
        return not self.dist.all_true(sampling["informative_groups"] == 0)

    def _check_env(self, envs: Any) -> tuple[Any, int]:
        envs = envs.unwrapped
        if not hasattr(envs, "num_envs"):
            raise TypeError(
                "learn() needs a vector env: gym.make_vec('TextGen-v0', num_envs=..., "
                "vectorization_mode='vector_entry_point', ...) or textgym.TextGenVectorEnv(...)"
            )
        self.policy.check_env(envs)
        group_size = int(getattr(envs, "group_size", 1))
        if (self.config.baseline in GROUPED or self.config.normalize_std) and group_size < 2:
            raise ValueError(
                f"baseline={self.config.baseline!r} compares completions of the same prompt: make the env with "
                "group_size >= 2 (textgym train --group-size), or use baseline='mean' or 'none'"
            )
        return envs, group_size

    def _scheduled_lr(self) -> float:
        """Set (and return) this iteration's learning rate."""
        lr = self.config.lr
        if self.config.lr_schedule == "linear":
            lr *= max(0.0, 1.0 - self.iteration / max(self.end_iteration, 1))
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def _iteration_seed(self, stream: int, *more: int) -> int:
        """A seed per (run seed, iteration, stream, ...): resuming at iteration k replays iteration k."""
        key = [self.config.seed, self.iteration, stream, *more] + ([self.dist.rank] if self.dist.enabled else [])
        return int(np.random.SeedSequence(key).generate_state(1)[0])

    def evaluate(self, env: Any, episodes: int = 100, greedy: bool = False, seed: int | None = 0) -> dict[str, float]:
        """Mean reward ± 95% CI, accuracy and mean length of the current policy (`agents.rollouts.evaluate`)."""
        return evaluate(self.policy, env, episodes=episodes, greedy=greedy, seed=seed)

    def predict(self, obs: Any, deterministic: bool = False) -> tuple[Any, None]:
        """SB3-style: the policy's action(s) for an observation (or a vector env's batch)."""
        action, _ = self.policy.act(obs, greedy=deterministic)
        return action, None

    # -- persistence -----------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> Path:
        """Write the policy, optimizer, value head, baseline state, config and iteration to `path`.

        The directory is written beside `path`, fsynced, and renamed into place, so it is complete
        or absent. An existing `path` is moved aside first and deleted only after the new one is
        in place. agent.pt holds only tensors and plain containers, so `load` reads it without
        unpickling code. A save that fails (a full disk: an OSError that says "disk full") leaves
        nothing behind.
        """
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        if tmp.exists():
            shutil.rmtree(tmp)
        try:
            tmp.mkdir(parents=True)
            self.policy.save(tmp / "policy")
            with open(tmp / "agent.pt", "wb") as f:  # a file object: a full disk surfaces as ENOSPC, not a zip error
                torch.save(self._state(), f)
            fsync_tree(tmp)  # on the disk before anything that names it, or deletes what it replaces
        except BaseException as error:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(error, Exception) and disk_full(error):
                raise disk_full_error(path, "the checkpoint") from error
            raise
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        fsync_dir(path.parent)
        if old.exists():
            shutil.rmtree(old)
        return path

    def _state(self) -> dict[str, Any]:
        """agent.pt's content: tensors and plain Python containers only (what weights_only loads)."""
        state = {
            "format": CHECKPOINT_FORMAT,
            "iteration": int(self.iteration),
            "running_mean": [float(m) for m in self.running_mean],
            "config": _plain(dataclasses.asdict(self.config)),
            "optimizer": self.optimizer.state_dict(),
            "policy_sampling": _plain({k: getattr(self.policy, k) for k in SAMPLING}),
            "allowed_tokens": None if self.policy.allowed_tokens is None else self.policy.allowed_tokens.cpu(),
            "generator": self.policy.generator.get_state(),
            "entropy_coef": self.entropy_coef,
            "samples": self.samples,
        }
        if self.frontier is not None:
            state["frontier"] = self.frontier.state_dict()
        if self.value_head is not None:
            state["value_head"] = self.value_head.state_dict()
            state["value_optimizer"] = self.value_optimizer.state_dict()
        if self.reference is not None:  # the KL anchor is the initial policy, not the resumed one
            state["reference"] = self.reference.state_dict()
        return state

    def checkpoint(self, run_dir: str | os.PathLike, keep: int = 1) -> Path:
        """Save into a new `run_dir/checkpoint-<iteration>` and then point `run_dir/latest` at it.

        `latest` only ever names a complete checkpoint: the new directory is written under a name
        `latest` does not use (a suffix is added if this iteration was saved before), the pointer
        moves by an atomic rename, and older checkpoints (beyond the newest `keep`) go only after
        the new checkpoint and the pointer are fsynced.
        """
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        for stale in run_dir.glob(".checkpoint-*.*-*"):  # a save killed midway left it; nothing names it
            shutil.rmtree(stale, ignore_errors=True)
        base = f"checkpoint-{self.iteration:06d}"
        name, n = base, 0
        while (run_dir / name).exists():
            n += 1
            name = f"{base}-{n}"
        try:
            target = self.save(run_dir / name)
        except OSError as error:
            if error.errno != errno.ENOSPC:
                raise
            raise disk_full_error(run_dir / name, "the checkpoint", run_dir=run_dir) from error.__cause__
        pointer = run_dir / ".latest.tmp"
        try:
            with open(pointer, "w") as f:
                f.write(name + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(pointer, run_dir / "latest")
            fsync_dir(run_dir)
        except Exception as error:
            pointer.unlink(missing_ok=True)
            shutil.rmtree(target, ignore_errors=True)  # nothing names it; `latest` still names the previous one
            if disk_full(error):
                raise disk_full_error(run_dir / "latest", "the pointer", run_dir=run_dir) from error
            raise
        others = sorted((p for p in run_dir.glob("checkpoint-*") if p != target), key=lambda p: p.lstat().st_mtime)  # lstat: a dangling link sorts too
        for old in others[: max(len(others) - (keep - 1), 0)]:
            shutil.rmtree(old, ignore_errors=True)
        return target

    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "auto", dtype: str = "auto", **overrides: Any) -> "REINFORCE":
        """Restore an agent saved by `save`/`checkpoint` (a checkpoint or a run directory) to continue.

        `overrides` change settings of the saved config (`lr=1e-5`, ...) or the policy's sampling
        (`temperature`, `top_k`, `top_p`). Nothing in the checkpoint is run as code: agent.pt is
        read with `torch.load(weights_only=True)` and the policy's weights are safetensors. A
        damaged, foreign or unsafe checkpoint, or a `latest` that leaves the run directory, raises
        `agents.checkpoints.CheckpointError` naming the path and what to do.
        """
        checkpoint = resolve_checkpoint(path)
        if checkpoint is None:
            raise FileNotFoundError(f"{path} holds no textgym checkpoint (agent.pt is missing, and no 'latest' pointer)")
        state = read_agent_state(checkpoint)
        try:
            sampling = {**state["policy_sampling"], **{k: overrides.pop(k) for k in SAMPLING if k in overrides}}
            saved = dict(state.get("config") or state["hparams"])
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{checkpoint / 'agent.pt'} is not a textgym agent state ({e}); start a new run") from None
        config = REINFORCEConfig(**saved).replace(**overrides)
        if config.kl_coef > 0 and "reference" not in state:
            raise ValueError(
                f"kl_coef={config.kl_coef} needs the KL reference (the initial policy), which {checkpoint} does not hold "
                "(it was trained with kl_coef=0); start a new run to use a KL penalty"
            )
        policy = _load_policy(checkpoint, device=device, dtype=dtype, **sampling)
        try:
            policy.restrict_actions(None if state.get("allowed_tokens") is None else state["allowed_tokens"].numpy())
            agent = cls(policy, config)
            agent.optimizer.load_state_dict(state["optimizer"])
            _check_optimizer_fits(agent.optimizer)
            if agent.reference is not None:
                agent.reference.load_state_dict(state["reference"])
            policy.generator.set_state(state["generator"])
            if agent.value_head is not None and "value_head" in state:
                agent.value_head.load_state_dict(state["value_head"])
                agent.value_optimizer.load_state_dict(state["value_optimizer"])
        except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as e:
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise CheckpointError(f"{checkpoint}: agent.pt does not fit its policy/ ({reason}); the checkpoint is damaged "
                                  f"or was assembled from two runs. {recovery(checkpoint, weights=False)}") from None  # fmt: skip
        for group in agent.optimizer.param_groups:  # the config's values, not the saved ones (overrides)
            group.update(lr=config.lr, weight_decay=config.weight_decay)
        agent.iteration = int(state["iteration"])
        m = state["running_mean"]
        agent.running_mean = [float(m)] if isinstance(m, (int, float)) else [float(v) for v in m]  # one turn in older checkpoints
        agent.entropy_coef = float(state.get("entropy_coef", config.entropy_coef))
        if "entropy_coef" in overrides and config.entropy_target is None:
            agent.entropy_coef = config.entropy_coef  # a fixed bonus given on resume wins
        agent.samples = int(state.get("samples", 0))
        agent._frontier_state = state.get("frontier")
        if agent.value_head is not None and "value_head" in state:
            for group in agent.value_optimizer.param_groups:
                group["lr"] = config.value_lr
        return agent


def _load_policy(checkpoint: Path, **kwargs: Any) -> LMPolicy:
    """The checkpoint's policy/ (safetensors, never pickles, never remote code), or a CheckpointError."""
    weights = checkpoint / "policy"
    if not (weights / "config.json").is_file():
        raise CheckpointError(f"{weights} is missing or incomplete (no config.json): {checkpoint} is damaged. "
                              f"{recovery(checkpoint)}")  # fmt: skip
    try:
        return LMPolicy.from_pretrained(weights, **kwargs)
    except (OSError, ValueError, RuntimeError, KeyError, EOFError, SafetensorError, pickle.UnpicklingError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{weights} cannot be loaded ({reason}); the checkpoint is damaged. "
                              f"{recovery(checkpoint, weights=False)}") from None  # fmt: skip


def _check_optimizer_fits(optimizer: torch.optim.Optimizer) -> None:
    """Raise ValueError when a loaded optimizer's moments do not have their parameter's shape
    (`load_state_dict` checks only the count; the first step would fail far from the cause)."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            for name, value in optimizer.state.get(p, {}).items():
                if torch.is_tensor(value) and value.dim() > 0 and value.shape != p.shape:
                    raise ValueError(f"optimizer {name} of shape {tuple(value.shape)} for a parameter of shape {tuple(p.shape)}")


def _plain(value: Any) -> Any:
    """`value` with numpy scalars and tuples made plain Python (what a weights_only load accepts)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value.item() if isinstance(value, np.generic) else value


REINFORCE.__doc__ = REINFORCE.__doc__.replace("{settings}", describe(REINFORCEConfig, indent="    "))
REINFORCE.learn.__doc__ = REINFORCE.learn.__doc__.replace("{run_management}", describe(RunManagementConfig, indent="        "))


def _iteration_metrics(
    iteration: int, episodes: list[Episode], stats: dict, lr: float, timing: dict, collect_s: float, update_s: float,
    answers: dict | None = None,
) -> dict[str, Any]:
    """One metrics.jsonl row: train reward and accuracy, what the samples answer (`answers`, from
    `agents.answers.update_answers`: train_answer_entropy is the mean over prompt groups, in bits;
    train_distinct_answers over the update), the update's statistics, timings, a sample."""
    summary = summarize(episodes)
    return {
        "iteration": iteration,
        "train_reward": summary["reward"],
        "train_accuracy": summary["accuracy"],
        **{f"train_{k}": v for k, v in (answers or {}).items()},
        "episode_length": summary["episode_length"],
        "reward_errors": summary["reward_errors"],
        "reply_errors": summary["reply_errors"],
        **{k: v for k, v in summary.items() if k.startswith("reward/")},
        **stats,
        "lr": lr,
        "time_generate_s": timing["generate_s"],
        "time_env_s": timing["env_s"],
        "time_update_s": update_s,
        "tokens_per_s": sum(len(e.action_positions) for e in episodes) / max(collect_s, 1e-9),
        "sample_completion": str(episodes[0].info.get("completion", ""))[:200],
    }


def _no_update(agent: REINFORCE) -> dict[str, float]:
    """The statistics of an iteration whose sampling kept no informative group (on some rank): no step."""
    agent.policy.reset_cache()
    return {"skipped_update": 1.0, "entropy_coef": agent.entropy_coef}


def _autocast_dtype(amp: str, policy: LMPolicy) -> torch.dtype | None:
    """bf16 for amp="bf16"; for "auto" only where the hardware has native bf16; None: no autocast."""
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
