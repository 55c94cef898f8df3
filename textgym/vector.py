"""TextGenVectorEnv: N TextGenEnv slots stepped together (the N-slot case of
`textgym.transition.Transition`), with group resets."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from gymnasium import spaces
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from textgym.config import EnvConfig
from textgym.env import check_options, pick_example
from textgym.example import Example
from textgym.transition import Transition, batch_infos, check_actions, draw_index

__all__ = ["TextGenVectorEnv"]

_NO_OPTIONS: dict = {}


class TextGenVectorEnv(VectorEnv):
    """A natively batched TextGenEnv: the state of all slots lives in one (N, L) array.

    Step for step it returns what `gymnasium.vector.SyncVectorEnv` of N `TextGenEnv`s returns
    (slot i seeded seed+i; same observations, rewards, flags and infos) in every autoreset mode,
    partial resets (`reset(options={"reset_mask": mask})`) included, without a Python loop over
    the slots except for the ones whose episode ends (decoded, then scored in one hand-off).

    Group resets: with `group_size=G`, slots [kG, (k+1)G) form group k and every reset gives them
    the same example, which group baselines (GRPO-style) need. The n-th episode of every slot in a
    group uses the group's n-th example, drawn from the generator of the group's first slot, so
    slots that finish at different steps still line up and the draw does not depend on timing.
    `reset()` of all slots starts every group on a fresh example together.

    Autoreset: `NEXT_STEP` (Gymnasium's default: the step after an episode ends resets the slot and
    ignores its action), `SAME_STEP` (the slot is reset on the step it ends; the final observation
    and info are under `final_obs` / `final_info`), or `DISABLED`: a finished slot then keeps its
    final state and ignores its actions (reward 0, both flags False) until
    `reset(options={"reset_mask": mask})` restarts it, so a rollout that wants exactly one episode
    per slot starts no episode it would throw away and pays for one verifier call per episode.
    `autoreset_mode` can be changed between episodes (agents switch to `DISABLED` for a rollout).

    Reset options: `index` (an int: that example in every slot reset; or one index per slot,
    a group taking its first slot's) and `example` (an `Example`) as for `TextGenEnv`, plus
    `reset_mask`. An evaluation that walks through a split's problems resets with
    `options={"index": np.arange(k, k + num_envs)}`.

    Args:
        num_envs: number of slots N (a multiple of `group_size`).
        group_size: slots per group G (default 1: each slot draws its own examples).
        autoreset_mode: `AutoresetMode.NEXT_STEP` (default), `SAME_STEP` or `DISABLED` (or their names).
        render_mode: "ansi" (render returns one text per slot) or None.
        config: an `EnvConfig`; the keyword settings (task, tokenizer, max_new_tokens, ...: see
            `TextGenEnv`) override it.
    """

    def __init__(
        self,
        num_envs: int = 1,
        group_size: int = 1,
        autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
        render_mode: str | None = None,
        config: EnvConfig | None = None,
        **settings: Any,
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
        self.config = (config or EnvConfig()).replace(**settings) if settings else (config or EnvConfig())
        self.num_envs, self.group_size = int(num_envs), int(group_size)
        self.core = Transition(self.config, num_slots=self.num_envs)
        self.task, self.tokenizer = self.core.task, self.core.tokenizer
        self.split = self.config.split
        self.render_mode = render_mode
        self.metadata = {"render_modes": ["ansi"]}
        self.autoreset_mode = autoreset_mode

        self.vocab_size = self.core.vocab_size
        self.pad_token_id = self.core.pad_token_id
        self.max_new_tokens = self.core.max_new_tokens
        self.obs_len = self.core.obs_len
        self.single_action_space = spaces.Discrete(self.vocab_size)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.single_observation_space = self.core.single_observation_space
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)

        n = self.num_envs
        self._episode = np.zeros(n, dtype=np.int64)  # episodes each slot started since the last full reset
        self._queues: list[dict[int, tuple[Example, int]]] = [{} for _ in range(n // self.group_size)]
        self._rngs: list[np.random.Generator] = [seeding.np_random(None)[0] for _ in range(n)]
        self._started = False

    @property
    def autoreset_mode(self) -> AutoresetMode:
        return self._autoreset_mode

    @autoreset_mode.setter
    def autoreset_mode(self, mode: AutoresetMode | str) -> None:
        """An `AutoresetMode`, or its value or name in any case ("NextStep", "next_step", "disabled")."""
        if not isinstance(mode, AutoresetMode):
            names = {key.lower(): m for m in AutoresetMode for key in (m.name, m.value, m.name.replace("_", ""))}
            mode = names.get(str(mode).lower())
            if mode is None:
                raise ValueError(f"autoreset_mode must be one of {[m.name.lower() for m in AutoresetMode]}, got {mode!r}")
        self._autoreset_mode = mode
        self.metadata["autoreset_mode"] = mode

    # -- Gymnasium API ---------------------------------------------------------------------------

    def reset(self, *, seed: int | Sequence[int] | None = None, options: dict | None = None):
        n = self.num_envs
        options = check_options(options, extra=("reset_mask",))
        mask = options.pop("reset_mask", None)
        if mask is None:
            rows = np.arange(n)
            self._queues = [{} for _ in self._queues]
            self._episode[:] = 0
        else:
            if not isinstance(mask, np.ndarray) or mask.dtype != np.bool_ or mask.shape != (n,):
                raise ValueError(f"options['reset_mask'] must be a numpy bool array of shape ({n},), got {mask!r}")
            if not mask.any():
                raise ValueError("options['reset_mask'] selects no slot; set at least one True")
            rows = np.flatnonzero(mask)
            started = np.array([self.core.examples[i] is not None for i in rows], dtype=np.int64)
            self._episode[rows] += started  # a slot that had an episode moves on to its group's next example
        for i, s in zip(rows, _slot_seeds(seed, n)[rows] if seed is not None else [None] * len(rows)):
            if s is not None:
                self._rngs[i] = seeding.np_random(int(s))[0]
        for i in rows:
            self._start(int(i), options)
        self._started = True
        return self.core.observations(), self._infos(rows)

    def step(self, actions):
        if not self._started:
            raise RuntimeError("step() was called before reset(); call envs.reset() first")
        actions = check_actions(actions, self.num_envs, self.vocab_size)
        # A slot whose episode ended on the last step: NEXT_STEP resets it now, ignoring its action
        # (so does SAME_STEP, for slots left finished while the mode was DISABLED); DISABLED leaves it.
        resetting = self.core.done.copy() if self.autoreset_mode != AutoresetMode.DISABLED else np.zeros(self.num_envs, bool)
        for i in np.flatnonzero(resetting):
            self._episode[i] += 1
            self._start(int(i))
        outcome = self.core.step(actions, ~resetting)
        finished = outcome.terminated | outcome.truncated

        if self.autoreset_mode == AutoresetMode.SAME_STEP and finished.any():
            final_obs = self.core.observations()
            rows = np.flatnonzero(finished)
            final_infos = {int(i): {**self.core.info(int(i)), **outcome.finals[int(i)]} for i in rows}
            for i in rows:
                self._episode[i] += 1
                self._start(int(i))
            infos = self._infos(np.arange(self.num_envs))
            infos["final_obs"] = np.full(self.num_envs, None, dtype=object)
            for i in rows:
                infos["final_obs"][i] = {k: v[i] for k, v in final_obs.items()}
            infos["_final_obs"] = finished.copy()
            batch_infos({i: {"final_info": v} for i, v in final_infos.items()}, self.num_envs, infos)
            return self.core.observations(), outcome.rewards, outcome.terminated, outcome.truncated, infos

        infos = self._infos(np.arange(self.num_envs))
        if outcome.finals:
            batch_infos(outcome.finals, self.num_envs, infos)
        return self.core.observations(), outcome.rewards, outcome.terminated, outcome.truncated, infos

    def set_task(self, task: Any) -> None:
        """Serve `task` (a Task or a registered name) from the next `reset` on; see `Transition.set_task`.

        The observation space stays as it is; call `reset()` before stepping again.
        """
        from textgym.tasks import make_task

        self.core.set_task(make_task(task))
        self.task = self.core.task
        self._queues = [{} for _ in self._queues]
        self._started = False

    def close_extras(self, **kwargs: Any) -> None:
        """End the multi-turn episodes still running and close the task if the env made it (`TextGenEnv.close`)."""
        self.core.close()

    def render(self):
        return [self.core.text(i) for i in range(self.num_envs)] if self.render_mode == "ansi" else None

    def action_masks(self) -> np.ndarray:
        """The task's allowed tokens for every slot, a bool array (num_envs, vocab_size)."""
        return np.broadcast_to(self.core.action_mask.astype(bool), (self.num_envs, self.vocab_size)).copy()

    @property
    def examples(self) -> list[Example | None]:
        """The example of each slot's current episode."""
        return list(self.core.examples)

    # -- internals -------------------------------------------------------------------------------

    def _start(self, slot: int, options: dict = _NO_OPTIONS) -> None:
        self.core.start(slot, *self._example_for(slot, options))

    def _example_for(self, slot: int, options: dict) -> tuple[Example, int]:
        """The slot's next example: its group's n-th, drawn once by the group's first slot
        (`reset` options such as `index` apply to the reset they come with, not to autoresets)."""
        index = options.get("index")
        if index is not None and np.ndim(index) == 1:  # one index per slot (a group takes its first slot's)
            if len(index) != self.num_envs:
                raise ValueError(f"options['index'] has {len(index)} entries for {self.num_envs} slots; give one per slot or one for all")
            options = {**options, "index": index[slot - slot % self.group_size]}
        if self.group_size == 1:
            if not options:  # the common case, kept short: it runs once per episode
                index = draw_index(self._rngs[slot], self.core.num_examples)
                return self.core.task.example(self.split, index), index
            return pick_example(self.core, options, self._rngs[slot])
        group = slot // self.group_size
        queue = self._queues[group]
        episode = int(self._episode[slot])
        if episode not in queue:
            queue[episode] = pick_example(self.core, options, self._rngs[group * self.group_size])
            members = self._episode[group * self.group_size : (group + 1) * self.group_size]
            for old in [k for k in queue if k < members.min()]:
                del queue[old]
        return queue[episode]

    def _infos(self, rows: np.ndarray) -> dict[str, Any]:
        """The per-step info of `rows` (every slot after a step; the reset slots after a reset)."""
        n = self.num_envs
        present = np.zeros(n, dtype=bool)
        present[rows] = True
        infos: dict[str, Any] = {
            "prompt_len": np.where(present, self.core.prompt_len, 0),
            "_prompt_len": present.copy(),
            "index": np.where(present, self.core.index, 0),
            "_index": present,
        }
        if self.config.action_mask_in_info:
            infos["action_mask"] = np.where(present[:, None], self.core.action_mask[None, :], 0).astype(np.int8)
            infos["_action_mask"] = present.copy()
        return infos


def _slot_seeds(seed: int | Sequence[int], n: int) -> np.ndarray:
    """Slot i's seed: seed + i for an int, else the i-th of a list (None: fresh entropy)."""
    if isinstance(seed, (int, np.integer)):
        return np.array([int(seed) + i for i in range(n)], dtype=object)
    seeds = list(seed)
    if len(seeds) != n:
        raise ValueError(f"reset(seed=...) got {len(seeds)} seeds for {n} slots")
    return np.array(seeds, dtype=object)
