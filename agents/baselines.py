"""Baselines b(s_t) for REINFORCE, each a small pure function returning the advantages A_t = G_t - b(s_t).

The equations (22a-e) and why a baseline that depends only on the state keeps the gradient unbiased
(eq. 24-25) are in the docstring of `agents.losses`. A baseline is found by name in `BASELINES`;
adding one is one function below and one entry in that table.

Every function takes the same `BaselineInputs` (all tensors detached, so a baseline can never leak
into the gradient) and returns a (B, T) tensor of advantages that is 0 wherever `mask` is not set.
State a baseline needs from outside the batch comes in through the inputs: the running mean of
earlier batches (the agent updates it after the step) and V(s_t) (the agent's value head, evaluated
on the LM's hidden states in a no-grad pass before the update).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

__all__ = ["BaselineInputs", "BASELINES", "GROUPED", "group_std"]


@dataclass(frozen=True)
class BaselineInputs:
    """What a baseline may look at; per-token tensors are (B, T) and aligned with the actions.

    returns: G_t at every action (eq. 6a), 0 elsewhere.
    mask: bool, the positions that are actions.
    episode_returns: (B,) R(τ) of each episode (eq. 5), the sum of its step rewards.
    group_size: episodes per prompt; episodes [kG, (k+1)G) answer the same prompt.
    running_mean: mean return of earlier batches (eq. 22b; 0 before the first update).
    values: V(s_t) at every action from the value head (eq. 22e), or None.
    """

    returns: torch.Tensor
    mask: torch.Tensor
    episode_returns: torch.Tensor
    group_size: int = 1
    running_mean: float = 0.0
    values: torch.Tensor | None = None

    def minus(self, b: torch.Tensor | float) -> torch.Tensor:
        """A_t = G_t - b(s_t) at the actions, 0 elsewhere (eq. 22)."""
        return torch.where(self.mask, self.returns - b, torch.zeros_like(self.returns))


def no_baseline(x: BaselineInputs) -> torch.Tensor:
    return x.minus(0.0)  # eq. 22a: b = 0, the plain estimator of eq. 21


def running_mean(x: BaselineInputs) -> torch.Tensor:
    return x.minus(x.running_mean)  # eq. 22b: b = m, from earlier batches only (independent of these actions)


def group_mean(x: BaselineInputs) -> torch.Tensor:
    grouped = _groups(x)                                                  # (prompts, G) returns R_j
    b = grouped.mean(dim=1, keepdim=True)                                 # eq. 22c: b_i = (1/G) Σ_j R_j (GRPO)
    return x.minus(b.expand_as(grouped).reshape(-1, 1))


def leave_one_out(x: BaselineInputs) -> torch.Tensor:
    grouped = _groups(x)                                                  # (prompts, G) returns R_j
    g = grouped.shape[1]
    b = (grouped.sum(dim=1, keepdim=True) - grouped) / (g - 1)            # eq. 22d: b_i = Σ_{j≠i} R_j / (G-1) (RLOO)
    return x.minus(b.reshape(-1, 1))


def learned_value(x: BaselineInputs) -> torch.Tensor:
    if x.values is None:
        raise ValueError("the value baseline needs V(s_t): pass values= (REINFORCE computes them with its value head)")
    return x.minus(x.values)  # eq. 22e: b = V_φ(s_t)


BASELINES: dict[str, Callable[[BaselineInputs], torch.Tensor]] = {
    "none": no_baseline,
    "mean": running_mean,
    "group": group_mean,
    "leave_one_out": leave_one_out,
    "value": learned_value,
}
GROUPED = ("group", "leave_one_out")  # they compare completions of one prompt: they need group_size >= 2


def group_std(x: BaselineInputs, eps: float = 1e-6) -> torch.Tensor:
    """(B, 1) std of each episode's group of returns + eps, for GRPO's A / std (Bessel-corrected)."""
    grouped = _groups(x)
    return (grouped.std(dim=1, keepdim=True) + eps).expand_as(grouped).reshape(-1, 1)


def _groups(x: BaselineInputs) -> torch.Tensor:
    g, n = int(x.group_size), x.episode_returns.shape[0]
    if g < 2:
        raise ValueError(
            f"a group baseline compares the completions of one prompt, but group_size is {g}: "
            "make the env with group_size >= 2, or use baseline='mean' or 'none'"
        )
    if n % g:
        raise ValueError(f"{n} episodes do not split into groups of {g}: the batch must hold whole groups")
    return x.episode_returns.to(x.returns.dtype).view(-1, g)
