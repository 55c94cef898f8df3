"""TextGenVectorEnv: N TextGenEnv slots stepped together in numpy, with group resets."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from gymnasium import spaces
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from textgym.env import EpisodeRules, draw_index, observation_space
from textgym.tasks import Example

__all__ = ["TextGenVectorEnv"]


class TextGenVectorEnv(VectorEnv):
    """A natively batched TextGenEnv: the state of all slots lives in one (N, L) array.

    Step for step it returns what `gymnasium.vector.SyncVectorEnv` of N `TextGenEnv`s returns
    (slot i seeded seed+i; same observations, rewards, flags and infos), without a Python loop
    over the slots except for the ones that finish an episode (decode and verify).

    Group resets: with `group_size=G`, slots [kG, (k+1)G) form group k and every reset gives them
    the same example, which group baselines (GRPO-style) need. The n-th episode of every slot in a
    group uses the group's n-th example, drawn from the generator of the group's first slot, so
    slots that finish at different steps still line up and the draw does not depend on timing.
    `reset()` of all slots starts every group on a fresh example together.

    Args:
        num_envs: number of slots N (a multiple of `group_size`).
        group_size: slots per group G (default 1: each slot draws its own examples).
        autoreset_mode: `AutoresetMode.NEXT_STEP` (default), `SAME_STEP` or `DISABLED`
            (then reset finished slots with `reset(options={"reset_mask": mask})`).
        render_mode: "ansi" (render returns one text per slot) or None.
        action_mask_in_info: add each slot's `action_mask` to the infos.
        **env_kwargs: the arguments of `TextGenEnv` (task, tokenizer, max_new_tokens, ...).
    """

    def __init__(
        self,
        num_envs: int = 1,
        group_size: int = 1,
        autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
        render_mode: str | None = None,
        action_mask_in_info: bool = False,
        **env_kwargs: Any,
    ):
        if isinstance(num_envs, bool) or not isinstance(num_envs, (int, np.integer)) or num_envs < 1:
            raise ValueError(f"num_envs must be a positive integer, got {num_envs!r}")
        if isinstance(group_size, bool) or not isinstance(group_size, (int, np.integer)) or group_size < 1:
            raise ValueError(f"group_size must be a positive integer, got {group_size!r}")
        if num_envs % group_size:
            raise ValueError(
                f"num_envs={num_envs} is not a multiple of group_size={group_size}; "
                f"use num_envs={group_size * max(1, round(num_envs / group_size))}"
            )
        if render_mode not in (None, "ansi"):
            raise ValueError(f"TextGenVectorEnv renders only 'ansi', got render_mode={render_mode!r}")
        self.autoreset_mode = AutoresetMode(autoreset_mode)
        self.split = env_kwargs.get("split", "train")
        self.rules = EpisodeRules.build(**env_kwargs)
        self.task, self.tokenizer = self.rules.task, self.rules.tokenizer
        self.num_envs, self.group_size = int(num_envs), int(group_size)
        self.render_mode = render_mode
        self.action_mask_in_info = action_mask_in_info
        self.metadata = {"autoreset_mode": self.autoreset_mode, "render_modes": ["ansi"]}

        self.vocab_size = self.tokenizer.vocab_size
        self.pad_token_id = self.vocab_size
        self.max_new_tokens = self.rules.max_new_tokens
        self.obs_len = self.rules.obs_len
        self.single_action_space = spaces.Discrete(self.vocab_size)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.single_observation_space = observation_space(self.obs_len, self.vocab_size)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)

        n = self.num_envs
        self._ids = np.full((n, self.obs_len), self.pad_token_id, dtype=np.int64)
        self._prompt_len = np.zeros(n, dtype=np.int64)
        self._seq_len = np.zeros(n, dtype=np.int64)
        self._done = np.zeros(n, dtype=bool)
        self._index = np.full(n, -1, dtype=np.int64)
        self._examples: list[Example | None] = [None] * n
        self._episode = np.zeros(n, dtype=np.int64)
        self._queues: list[dict[int, tuple[int, Example]]] = [{} for _ in range(n // self.group_size)]
        self._rngs: list[np.random.Generator] | None = None
        self._num_examples = self.task.num_examples(self.split)
        self._eos = -1 if self.tokenizer.eos_token_id is None else self.tokenizer.eos_token_id
        # Tokens after which a stop string can be complete: a table lookup replaces most decodes.
        self._stop_candidate = self.rules.stop_candidates
        self._prompt_cache: dict[int, list[int]] = {}

    # -- Gymnasium API ---------------------------------------------------------------------------

    def reset(self, *, seed: int | Sequence[int] | None = None, options: dict | None = None):
        n = self.num_envs
        if seed is not None or self._rngs is None:
            seeds = _slot_seeds(seed, n)
            self._rngs = [seeding.np_random(s)[0] for s in seeds]
        options = options or {}
        mask = options.get("reset_mask")
        if mask is None:
            rows = np.arange(n)
            self._queues = [{} for _ in self._queues]
            self._episode[:] = 0
        else:
            mask = np.asarray(mask, dtype=bool)
            if mask.shape != (n,):
                raise ValueError(f"options['reset_mask'] must be a bool array of shape ({n},), got {mask.shape}")
            rows = np.flatnonzero(mask)
            self._episode[rows] += self._started_rows(rows)
        for i in rows:
            self._start(int(i))
        self._needs_reset = np.zeros(n, dtype=bool)
        return self._obs(), self._infos()

    def step(self, actions):
        if self._rngs is None:
            raise RuntimeError("step() was called before reset(); call envs.reset() first")
        actions = self._check_actions(actions)
        n = self.num_envs
        rewards = np.zeros(n, dtype=np.float64)
        terminated = np.zeros(n, dtype=bool)
        truncated = np.zeros(n, dtype=bool)

        if self.autoreset_mode == AutoresetMode.NEXT_STEP:
            resetting = self._needs_reset
            for i in np.flatnonzero(resetting):
                self._episode[i] += 1
                self._start(int(i))
            active = ~resetting
        elif self.autoreset_mode == AutoresetMode.DISABLED:
            active = ~self._done  # a finished slot ignores its action until reset(options={"reset_mask": ...})
        else:
            active = np.ones(n, dtype=bool)

        rows = np.flatnonzero(active)
        pos = self._seq_len[rows]
        self._ids[rows, pos] = actions[rows]
        self._seq_len[rows] += 1
        eos = active & (actions == self._eos)
        budget = active & (self._seq_len - self._prompt_len >= self.max_new_tokens)
        stop = np.zeros(n, dtype=bool)
        for i in np.flatnonzero(active & ~eos & self._stop_candidate[actions]):
            completion = self._ids[i, self._prompt_len[i] : self._seq_len[i]]
            stop[i] = self.rules.hits_stop(completion, int(actions[i]))
        finished = eos | stop | budget
        truncated[:] = budget & ~eos & ~stop & (not self.rules.budget_is_terminal)
        terminated[:] = finished & ~truncated

        final_infos: dict[int, dict] = {}
        for i in np.flatnonzero(finished):
            ended_by = "eos" if eos[i] else "stop" if stop[i] else "budget"
            completion = self._ids[i, self._prompt_len[i] : self._seq_len[i]].tolist()
            rewards[i], final_infos[int(i)] = self.rules.finish(completion, self._examples[i], ended_by)
        self._done |= finished

        if self.autoreset_mode == AutoresetMode.SAME_STEP and finished.any():
            final_obs = self._obs()
            finals: dict[str, Any] = {}
            for i in np.flatnonzero(finished):
                self._add_info(finals, {"final_obs": {k: v[i] for k, v in final_obs.items()}}, int(i))
                self._add_info(finals, {"final_info": self._slot_info(int(i), final_infos[int(i)])}, int(i))
                self._episode[i] += 1
                self._start(int(i))
            infos = self._infos()
            infos.update(finals)
            return self._obs(), rewards, terminated, truncated, infos

        self._needs_reset = finished if self.autoreset_mode == AutoresetMode.NEXT_STEP else self._needs_reset
        return self._obs(), rewards, terminated, truncated, self._infos(final_infos)

    def render(self):
        texts = [self.tokenizer.decode(self._ids[i, : self._seq_len[i]].tolist()) for i in range(self.num_envs)]
        return texts if self.render_mode == "ansi" else None

    def action_masks(self) -> np.ndarray:
        """The task's allowed tokens for every slot, a bool array (num_envs, vocab_size)."""
        return np.broadcast_to(self.rules.action_mask().astype(bool), (self.num_envs, self.vocab_size)).copy()

    # -- internals -------------------------------------------------------------------------------

    @property
    def examples(self) -> list[Example | None]:
        """The example of each slot's current episode."""
        return list(self._examples)

    def _started_rows(self, rows: np.ndarray) -> np.ndarray:
        """1 for slots that already had an episode (their next reset moves to the next example)."""
        return (self._index[rows] >= 0).astype(np.int64)

    def _example_for(self, slot: int) -> tuple[int, Example]:
        group = slot // self.group_size
        queue = self._queues[group]
        episode = int(self._episode[slot])
        if episode not in queue:
            leader = self._rngs[group * self.group_size]
            index = draw_index(leader, self._num_examples)
            queue[episode] = (index, self.task.example(self.split, index))
            members = self._episode[group * self.group_size : (group + 1) * self.group_size]
            for old in [k for k in queue if k < members.min()]:
                del queue[old]
        return queue[episode]

    def _start(self, slot: int) -> None:
        index, example = self._example_for(slot)
        ids = self._prompt_cache.get(index) if index >= 0 else None
        if ids is None:
            ids = self.rules.prompt_ids(example)
            self.rules.check_prompt(ids)
            if len(self._prompt_cache) > 4096:
                self._prompt_cache.clear()
            self._prompt_cache[index] = ids
        row = self._ids[slot]
        row.fill(self.pad_token_id)
        row[: len(ids)] = ids
        self._prompt_len[slot] = self._seq_len[slot] = len(ids)
        self._index[slot] = index
        self._examples[slot] = example
        self._done[slot] = False

    def _check_actions(self, actions) -> np.ndarray:
        arr = np.asarray(actions)
        if arr.shape != (self.num_envs,):
            raise ValueError(f"actions must have shape ({self.num_envs},), one token id per slot; got {arr.shape}")
        if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
            raise TypeError(f"actions must be integer token ids, got dtype {arr.dtype}")
        bad = (arr < 0) | (arr >= self.vocab_size)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"action {int(arr[i])} of slot {i} is outside the action space [0, {self.vocab_size})")
        return arr.astype(np.int64, copy=False)

    def _obs(self) -> dict[str, np.ndarray]:
        positions = np.arange(self.obs_len)
        return {
            "input_ids": self._ids.copy(),
            "attention_mask": (positions[None, :] < self._seq_len[:, None]).astype(np.int8),
            "prompt_len": self._prompt_len[:, None].copy(),
            "seq_len": self._seq_len[:, None].copy(),
        }

    def _slot_info(self, slot: int, extra: dict | None = None) -> dict[str, Any]:
        info: dict[str, Any] = {"prompt_len": int(self._prompt_len[slot]), "index": int(self._index[slot])}
        if self.action_mask_in_info:
            info["action_mask"] = self.rules.action_mask()
        if extra:
            info.update(extra)
        return info

    def _infos(self, final_infos: dict[int, dict] | None = None) -> dict[str, Any]:
        n = self.num_envs
        everyone = np.ones(n, dtype=bool)
        infos: dict[str, Any] = {
            "prompt_len": self._prompt_len.copy(),
            "_prompt_len": everyone.copy(),
            "index": self._index.copy(),
            "_index": everyone.copy(),
        }
        if self.action_mask_in_info:
            infos["action_mask"] = np.broadcast_to(self.rules.action_mask(), (n, self.vocab_size)).copy()
            infos["_action_mask"] = everyone.copy()
        for slot, extra in sorted((final_infos or {}).items()):
            self._add_info(infos, extra, slot)
        return infos


def _slot_seeds(seed: int | Sequence[int] | None, n: int) -> list[int | None]:
    if seed is None:
        return [None] * n
    if isinstance(seed, (int, np.integer)):
        return [int(seed) + i for i in range(n)]
    seeds = list(seed)
    if len(seeds) != n:
        raise ValueError(f"reset(seed=...) got {len(seeds)} seeds for {n} slots")
    return seeds
