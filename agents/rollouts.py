"""Rollouts: episodes of an LMPolicy in TextGen environments, as records and as the update's tensors.

    episodes, timing = collect_episodes(policy, envs, seed=0)    # one episode per vector-env slot
    batch = to_batch(episodes, group_size=envs.group_size)       # tensors for REINFORCE.update
    evaluate(policy, eval_env, episodes=64, seed=0)              # mean reward ± 95% CI, accuracy, length,
                                                                 # prior, lift and answer diversity

Episodes run through the ordinary Gymnasium loop, `policy.act(obs, active=~done)` then
`envs.step(actions)`, with the vector env in `AutoresetMode.DISABLED` for the duration: a slot whose
episode has ended keeps its final state and ignores its actions, so every episode asked for costs
exactly one verifier call and no episode is started only to be thrown away. The env's own mode is
restored afterwards, so an env made in any mode works.

An episode's tokens are the env's final observation, not the prompt followed by the actions: a
multi-turn env may append its own tokens after a policy turn, and those stay in the sequence
without ever counting as actions. Each action is recorded at the position it was written to (the
observation's `seq_len` when the policy chose it), with its behaviour log-prob and its step reward.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from gymnasium.vector import AutoresetMode, SyncVectorEnv

from agents.answers import evaluation_answers, is_success

__all__ = ["Episode", "Batch", "collect_episodes", "sample_episodes", "to_batch", "summarize", "evaluate"]


@dataclass
class Episode:
    """One finished episode as the env and the policy saw it (numpy arrays, plain Python values).

    Attributes:
        token_ids: (S,) int64, the env's final observation: the prompt, then every token written
            after it (the policy's actions and, in multi-turn tasks, the env's own tokens).
        prompt_len: `token_ids[:prompt_len]` is the prompt.
        action_positions: (A,) int64, the index in `token_ids` of each token the policy sampled,
            in order (the observation's `seq_len` when it was chosen).
        log_probs: (A,) float32, the behaviour log π(a|s) of each action, recorded when it was
            sampled under the exact sampling distribution (temperature, top-k/p, allowed tokens).
        rewards: (A,) float64, the env's reward on the step of each action (a verifier pays on the
            last; multi-turn tasks may pay per turn).
        info: the final step's info for this slot: `completion` (the text the verifier read),
            `answer`, `ended_by` ("eos", "stop", "budget"), `episode_length`, `reward_components`
            (name -> score), `reward_error` (None when the verifier succeeded), `reply_error` (only
            when a multi-turn task's reply failed and ended the episode), `index` (the example's
            index in its split), `prompt_len`, and whatever else the env reports.
        slot: the vector-env slot it ran in (slots [kG, (k+1)G) share a prompt with group size G).
    """

    token_ids: np.ndarray
    prompt_len: int
    action_positions: np.ndarray
    log_probs: np.ndarray
    rewards: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)
    slot: int = 0

    @property
    def prompt_ids(self) -> np.ndarray:
        return self.token_ids[: self.prompt_len]

    @property
    def actions(self) -> np.ndarray:
        """The tokens the policy sampled, in order."""
        return self.token_ids[self.action_positions]

    @property
    def turns(self) -> np.ndarray:
        """(A,) the turn of each action: a new turn starts where env tokens separate two actions."""
        gaps = np.diff(self.action_positions) > 1
        return np.concatenate([[0], np.cumsum(gaps)]).astype(np.int64) if len(self.action_positions) else np.zeros(0, np.int64)

    @property
    def reward(self) -> float:
        """R(τ): the sum of the step rewards (eq. 5)."""
        return float(self.rewards.sum())

    @property
    def success(self) -> bool:
        """Solved: the verifier's `answer` component (or, without one, the reward) is >= 1."""
        return is_success(self.reward, self.info.get("reward_components"))


@dataclass
class Batch:
    """B episodes as the update's tensors, right-padded to S tokens (CPU; the update moves them).

    The per-token tensors are (B, S-1) and aligned with `LMPolicy.log_probs`: column j scores token
    j+1, so the action written at position p sits in column p-1. `turns` numbers the policy's turns
    (0, 1, ...; -1 off the actions): a new turn begins wherever environment tokens separate two
    actions, so a single-turn episode is all turn 0.
    """

    input_ids: torch.Tensor  # (B, S) the episodes' tokens, 0 after the end
    attention_mask: torch.Tensor  # (B, S) 1 on real tokens
    action_mask: torch.Tensor  # (B, S-1) bool: the columns that score an action
    old_log_probs: torch.Tensor  # (B, S-1) behaviour log-probs of the actions
    rewards: torch.Tensor  # (B, S-1) the step reward of each action
    episode_returns: torch.Tensor  # (B,) R(τ)
    turns: torch.Tensor | None = None  # (B, S-1) long: the turn of each action, -1 elsewhere
    group_size: int = 1  # episodes [kG, (k+1)G) answer the same prompt
    truncated: torch.Tensor | None = None  # (B,) bool: the token budget ended the episode

    def __post_init__(self) -> None:
        if self.turns is None:  # one turn: every action is in turn 0
            self.turns = torch.where(self.action_mask, 0, -1)
        if self.truncated is None:
            self.truncated = torch.zeros(self.input_ids.shape[0], dtype=torch.bool)

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def select(self, rows: slice) -> "Batch":
        """The episodes `rows` (keep whole groups when a group baseline will see them)."""
        return Batch(self.input_ids[rows], self.attention_mask[rows], self.action_mask[rows], self.old_log_probs[rows],
                     self.rewards[rows], self.episode_returns[rows], self.turns[rows], self.group_size,
                     self.truncated[rows])  # fmt: skip

    def with_action_mask(self, action_mask: torch.Tensor) -> "Batch":
        """The same episodes, training on the actions `action_mask` keeps (a subset of `self.action_mask`)."""
        return dataclasses.replace(self, action_mask=action_mask & self.action_mask)


def to_batch(episodes: list[Episode], group_size: int = 1) -> Batch:
    """The update's tensors for `episodes` (in slot order, so groups stay consecutive)."""
    if not episodes:
        raise ValueError("to_batch needs at least one episode")
    n, width = len(episodes), max(len(e.token_ids) for e in episodes)
    ids = torch.zeros(n, width, dtype=torch.long)
    attention = torch.zeros(n, width, dtype=torch.long)
    action_mask = torch.zeros(n, width - 1, dtype=torch.bool)
    old_log_probs = torch.zeros(n, width - 1)
    rewards = torch.zeros(n, width - 1)
    turns = torch.full((n, width - 1), -1, dtype=torch.long)
    for i, e in enumerate(episodes):
        ids[i, : len(e.token_ids)] = torch.from_numpy(e.token_ids)
        attention[i, : len(e.token_ids)] = 1
        columns = torch.from_numpy(e.action_positions - 1)  # column j scores token j+1
        action_mask[i, columns] = True
        old_log_probs[i, columns] = torch.from_numpy(e.log_probs.astype(np.float32))
        rewards[i, columns] = torch.from_numpy(e.rewards.astype(np.float32))
        turns[i, columns] = torch.from_numpy(e.turns)
    returns = torch.tensor([e.reward for e in episodes], dtype=torch.float32)
    truncated = torch.tensor([e.info.get("ended_by") == "budget" for e in episodes], dtype=torch.bool)
    return Batch(ids, attention, action_mask, old_log_probs, rewards, returns, turns, int(group_size), truncated)


def collect_episodes(
    policy: Any, envs: Any, seed: int | None = None, greedy: bool = False, options: dict | None = None
) -> tuple[list[Episode], dict[str, float]]:
    """Run one episode in every slot of a vector env, acting with `policy` through `env.step`.

    Slots that finish early idle (the policy spends nothing on them) until every slot is done.
    `seed` seeds the env's reset (slot i: seed + i); `options` go to that reset (e.g. an example
    index per slot); the policy samples from its own generator.

    Returns:
        (episodes in slot order, {"generate_s": time in policy.act, "env_s": time in envs.step}).
    """
    envs = envs.unwrapped
    mode = envs.autoreset_mode
    envs.autoreset_mode = AutoresetMode.DISABLED  # one episode per slot: finished slots ignore their actions
    try:
        return _collect(policy, envs, seed, greedy, options)
    finally:
        envs.autoreset_mode = mode


def _collect(policy: Any, envs: Any, seed: int | None, greedy: bool, options: dict | None) -> tuple[list[Episode], dict[str, float]]:
    obs, _ = envs.reset(seed=seed, options=options)
    n = envs.num_envs
    prompt_len = obs["prompt_len"][:, 0].copy()
    done = np.zeros(n, dtype=bool)
    finals: list[dict] = [{} for _ in range(n)]
    acting, positions, actions, log_probs, rewards = [], [], [], [], []  # one (n,) row per step
    t_generate = t_env = 0.0
    while not done.all():
        t0 = time.perf_counter()
        action, log_prob = policy.act(obs, greedy=greedy, active=~done)
        t1 = time.perf_counter()
        acting.append(~done)
        positions.append(obs["seq_len"][:, 0])  # where the env writes each slot's action
        obs, reward, terminated, truncated, info = envs.step(action)
        t_env += time.perf_counter() - t1
        t_generate += t1 - t0
        actions.append(action)
        log_probs.append(log_prob)
        rewards.append(reward)
        finished = (terminated | truncated) & ~done
        for i in np.flatnonzero(finished):
            finals[i] = _slot_info(info, int(i))
        done |= finished

    acting_, positions_, actions_, log_probs_, rewards_ = map(np.stack, (acting, positions, actions, log_probs, rewards))
    episodes = []
    for i in range(n):
        steps = acting_[:, i]  # the steps on which slot i's policy acted
        length = int(obs["seq_len"][i, 0])
        info = finals[i]
        info.setdefault("reward_error", None)
        episode = Episode(
            token_ids=obs["input_ids"][i, :length].astype(np.int64),
            prompt_len=int(prompt_len[i]),
            action_positions=positions_[steps, i].astype(np.int64),
            log_probs=log_probs_[steps, i].astype(np.float32),
            rewards=rewards_[steps, i].astype(np.float64),
            info=info,
            slot=i,
        )
        if not np.array_equal(episode.actions, actions_[steps, i]):  # what the policy sampled is never re-encoded
            raise RuntimeError(
                f"slot {i}: the env's final observation does not hold the tokens the policy chose at the positions "
                "it wrote them to; an env must append actions as they are and only add its own tokens after them"
            )
        episodes.append(episode)
    return episodes, {"generate_s": t_generate, "env_s": t_env}


def _slot_info(info: dict, i: int) -> dict:
    """Slot i's entries of a vector env's info dict (Gymnasium's `key` / `_key` layout), unbatched."""
    out = {}
    for key, value in info.items():
        if key.startswith("_"):
            continue
        present = info.get("_" + key)
        if present is not None and not present[i]:
            continue
        out[key] = _slot_info(value, i) if isinstance(value, dict) else _plain(value[i])
    return out


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def sample_episodes(
    policy: Any, env: Any, episodes: int, greedy: bool = False, seed: int | None = 0
) -> list[Episode]:
    """`episodes` episodes on a vector env (num_envs at a time) or a single TextGenEnv.

    On a split with a known number of problems, episode k is problem k (mod the split's size;
    the split's order is a seeded shuffle), so `episodes` episodes cover that many distinct problems
    and every evaluation sees the same ones. On an unbounded split, episode k starts from
    `reset(seed=seed + k)` of its slot. Either way the same seed gives the same episodes on either
    kind of env; the policy samples from `seed` too, and its own sampling stream is restored
    afterwards (training that evaluates along the way is not perturbed).
    """
    if isinstance(episodes, bool) or not isinstance(episodes, (int, np.integer)) or episodes < 1:
        raise ValueError(f"episodes must be a positive integer, got {episodes!r}")
    envs = env.unwrapped
    if not hasattr(envs, "num_envs"):  # a single env: its vector of one (the same loop, the same records)
        envs = SyncVectorEnv([lambda: env], autoreset_mode=AutoresetMode.DISABLED)
    state = policy.generator.get_state()
    if seed is not None:
        policy.seed(seed)
    out: list[Episode] = []
    problems = getattr(envs, "core", getattr(env.unwrapped, "core", None))
    size = getattr(problems, "num_examples", None)
    try:
        for start in range(0, episodes, envs.num_envs):
            options = None
            if size:  # walk the split: distinct problems first, in the split's (seeded) order
                index = np.arange(start, start + envs.num_envs) % size
                options = {"index": index} if hasattr(envs, "core") else {"index": int(index[0])}
            batch, _ = collect_episodes(policy, envs, seed=None if seed is None else seed + start, greedy=greedy, options=options)
            out += batch[: episodes - start]
    finally:
        if seed is not None:
            policy.generator.set_state(state)
    return out


def summarize(episodes: list[Episode], env: Any = None, priors: dict | None = None, seed: int = 0) -> dict[str, Any]:
    """Mean reward with a 95% confidence interval, accuracy, mean length, reward components, and how
    many episodes a failing verifier (`reward_errors`) or a failing multi-turn reply (`reply_errors`) scored 0.

    With the `env` the episodes ran in, also what they answer (`agents.answers.evaluation_answers`):
    the prior (what always giving the commonest reference answer scores), the lift over it with its
    95% bootstrap interval over problems (seeded by `seed`), and the answers' diversity. `priors`
    caches the prior per problem set.
    """
    r = np.array([e.reward for e in episodes])
    half_width = 1.96 * r.std(ddof=1) / math.sqrt(len(r)) if len(r) > 1 else float("nan")
    components: dict[str, list[float]] = {}
    for e in episodes:
        for name, value in (e.info.get("reward_components") or {}).items():
            components.setdefault(name, []).append(float(value))
    return {
        "reward": float(r.mean()),
        "reward_ci95": float(half_width),
        "accuracy": float(np.mean([e.success for e in episodes])),
        "episode_length": float(np.mean([len(e.action_positions) for e in episodes])),
        "episodes": len(episodes),
        "reward_errors": sum(e.info.get("reward_error") is not None for e in episodes),
        "reply_errors": sum(e.info.get("reply_error") is not None for e in episodes),
        **{f"reward/{name}": float(np.sum(v) / len(episodes)) for name, v in sorted(components.items())},
        **(evaluation_answers(episodes, env, priors=priors, seed=0 if seed is None else seed) if env is not None else {}),
    }


def evaluate(
    policy: Any, env: Any, episodes: int = 100, greedy: bool = False, seed: int | None = 0, priors: dict | None = None
) -> dict[str, Any]:
    """Mean reward (± 95% CI), accuracy and length of `policy` over `episodes` episodes of `env`, and
    what it answers: the prior, the lift over it and the answers' diversity (see `summarize`).

    `env` is a vector env or a single TextGenEnv. The same seed gives the same prompts and the same
    samples, so evaluations along a run are comparable; the policy's sampling stream is untouched.
    `priors` (a dict the caller keeps) caches the prior: the same problems are scored once.
    For the episodes themselves (per-sample records, pass@k) use `sample_episodes`.
    """
    return summarize(sample_episodes(policy, env, episodes, greedy=greedy, seed=seed), env=env, priors=priors, seed=seed)
