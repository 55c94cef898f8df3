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
from functools import cached_property
from typing import Callable, Sequence

import torch

__all__ = ["BaselineInputs", "BASELINES", "GROUPED", "group_std"]


@dataclass(frozen=True)
class BaselineInputs:
    """What a baseline may look at; per-token tensors are (B, T) and aligned with the actions.

    returns: G_t at every action (eq. 6a), 0 elsewhere.
    mask: bool, the positions that are actions.
    episode_returns: (B,) R(τ) of each episode (eq. 5), the sum of its step rewards.
    group_size: episodes per prompt; episodes [kG, (k+1)G) answer the same prompt.
    running_mean: per turn k, the mean return-to-go from turn k of earlier batches (eq. 22b; empty
        before the first update, 0 for a turn not seen yet); one number: the same for every turn.
    values: V(s_t) at every action from the value head (eq. 22e), or None.
    turns: (B, T) long, the policy's turn of each action (0, 1, ...; -1 elsewhere), or None: one turn.

    Multi-turn episodes are paid per turn, so the return-to-go G_t of a token in turn k counts only
    the rewards from turn k on. The baselines that average returns (mean, group, leave-one-out)
    therefore average the returns-to-go *from the same turn* — `turn_returns` — so that a late
    turn is compared with what late turns earn, not with whole episodes. With one turn (a verifier
    paying at the end) that is R(τ), and everything reduces to eq. 22b-d as written.
    """

    returns: torch.Tensor
    mask: torch.Tensor
    episode_returns: torch.Tensor
    group_size: int = 1
    running_mean: Sequence[float] | float = ()
    values: torch.Tensor | None = None
    turns: torch.Tensor | None = None

    def minus(self, b: torch.Tensor | float) -> torch.Tensor:
        """A_t = G_t - b(s_t) at the actions, 0 elsewhere (eq. 22)."""
        return torch.where(self.mask, self.returns - b, torch.zeros_like(self.returns))

    @cached_property
    def turn_index(self) -> torch.Tensor:
        """(B, T) long: each action's turn, -1 elsewhere."""
        return self.turns if self.turns is not None else torch.where(self.mask, 0, -1)

    @cached_property
    def turn_returns(self) -> tuple[torch.Tensor, torch.Tensor]:
        """((B, K) return-to-go at the first action of each turn, (B, K) bool: the episode has turn k)."""
        turn = self.turn_index
        k = int(turn.max()) + 1 if bool(self.mask.any()) else 1
        first = self.mask & (turn != torch.nn.functional.pad(turn, (1, 0), value=-1)[:, :-1])  # a turn's first action
        rows, cols = first.nonzero(as_tuple=True)
        values = torch.zeros(self.returns.shape[0], k, dtype=self.returns.dtype, device=self.returns.device)
        present = torch.zeros(values.shape, dtype=torch.bool, device=values.device)
        values[rows, turn[rows, cols]] = self.returns[rows, cols]
        present[rows, turn[rows, cols]] = True
        return values, present

    def per_token(self, b: torch.Tensor) -> torch.Tensor:
        """(B, K) values by turn -> (B, T): each action gets its turn's value."""
        return b.gather(1, self.turn_index.clamp(min=0))


def no_baseline(x: BaselineInputs) -> torch.Tensor:
    return x.minus(0.0)  # eq. 22a: b = 0, the plain estimator of eq. 21


def running_mean(x: BaselineInputs) -> torch.Tensor:
    k = x.turn_returns[0].shape[1]
    m = [float(x.running_mean)] * k if isinstance(x.running_mean, (int, float)) else list(x.running_mean[:k])
    m = torch.tensor(m + [0.0] * (k - len(m)), dtype=x.returns.dtype, device=x.returns.device)
    return x.minus(x.per_token(m.expand(x.returns.shape[0], k)))  # eq. 22b: b = m_k, from earlier batches only


def group_mean(x: BaselineInputs) -> torch.Tensor:
    total, count, _ = _group_sums(x)                                      # Σ_j R_j and how many j, per turn
    b = total / count.clamp(min=1)                                        # eq. 22c: b_i = (1/G) Σ_j R_j (GRPO)
    return x.minus(x.per_token(b))


def leave_one_out(x: BaselineInputs) -> torch.Tensor:
    total, count, own = _group_sums(x)
    b = (total - own) / (count - 1).clamp(min=1)                          # eq. 22d: b_i = Σ_{j≠i} R_j / (G-1) (RLOO)
    return x.minus(x.per_token(b))  # (a turn no other episode of the group reached: b = 0)


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
    """(B, T) std of each action's group of returns from the same turn + eps, for GRPO's A / std
    (Bessel-corrected, over the episodes of the group that reached that turn)."""
    total, count, own = _group_sums(x)
    values, present = x.turn_returns
    g = int(x.group_size)
    mean = (total / count.clamp(min=1)).view(-1, g, total.shape[1])
    deviations = torch.where(present, values, 0.0).view(-1, g, values.shape[1]) - mean
    squares = torch.where(present.view(-1, g, values.shape[1]), deviations**2, 0.0).sum(dim=1, keepdim=True)
    std = (squares / (count.view(-1, g, values.shape[1])[:, :1] - 1).clamp(min=1)).sqrt()
    return x.per_token((std.expand(-1, g, -1).reshape(values.shape)) + eps)


def _group_sums(x: BaselineInputs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per episode and turn k (B, K): the sum of its group's returns from turn k, how many of the
    group's episodes have a turn k, and its own return from turn k (0 if it has none)."""
    g, n = int(x.group_size), x.episode_returns.shape[0]
    if g < 2:
        raise ValueError(
            f"a group baseline compares the completions of one prompt, but group_size is {g}: "
            "make the env with group_size >= 2, or use baseline='mean' or 'none'"
        )
    if n % g:
        raise ValueError(f"{n} episodes do not split into groups of {g}: the batch must hold whole groups")
    values, present = x.turn_returns
    own = torch.where(present, values, 0.0)
    k = values.shape[1]
    total = own.view(-1, g, k).sum(dim=1, keepdim=True).expand(-1, g, -1).reshape(n, k)
    count = present.view(-1, g, k).sum(dim=1, keepdim=True).expand(-1, g, -1).reshape(n, k).to(values.dtype)
    return total, count, own
