"""Which problems the agent trains on: frontier sampling (eq. 26d of `agents.losses`) and a
curriculum of levels driven by the same signal (`LevelUp`).

    sampler = FrontierSampler(num_problems=826, group_size=8, weight=0.1)
    index = sampler.draw(rng, prompts=2)     # one problem per group, e.g. array([17, 503])
    ...                                      # collect the episodes of those groups, then
    sampler.record(indices, successes)       # what each visit scored

A group of samples of a problem the policy always solves (or never does) has rewards that are all
equal, so under a group baseline it carries no gradient: the update is spent on it for nothing.
The sampler keeps, for every problem of the training split, the pass rate of its most recent visit
and draws problems with probability proportional to

    weight  if that pass rate is 0 or 1,    1  otherwise (and for problems not seen yet),

so the update goes where the policy is uncertain: the frontier. Mastered and unsolved problems keep
a non-zero weight, so the sampler notices when the policy forgets one or starts to solve one. The
state is plain lists (checkpoints store it and a resumed run draws the same problems).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from agents.callbacks import Callback

__all__ = ["FrontierSampler", "LevelUp"]


class FrontierSampler:
    """Draws training problems by their last pass rate (see the module docstring).

    Args:
        num_problems: size of the training split (problems are its indices 0 … n-1).
        group_size: episodes per problem in an update (slots [kG, (k+1)G) share a problem).
        weight: the relative weight w ∈ (0, 1] of a problem last solved by none or all of its samples.
    """

    def __init__(self, num_problems: int, group_size: int, weight: float):
        if isinstance(num_problems, bool) or not isinstance(num_problems, (int, np.integer)) or num_problems < 1:
            raise ValueError(
                f"frontier sampling draws from a finite training split; this task's has {num_problems!r} problems "
                "(an unbounded procedural task): turn frontier sampling off (frontier_weight=None)"
            )
        if not 0 < weight <= 1:
            raise ValueError(f"frontier_weight must be in (0, 1] (1: uniform), got {weight!r}")
        self.num_problems, self.group_size, self.weight = int(num_problems), int(group_size), float(weight)
        self.passes = np.full(self.num_problems, -1, dtype=np.int64)  # -1: never visited
        self.tries = np.zeros(self.num_problems, dtype=np.int64)

    def weights(self) -> np.ndarray:
        """(n,) the unnormalised weight of every problem (eq. 26d)."""
        seen = self.passes >= 0
        extreme = seen & ((self.passes == 0) | (self.passes == self.tries))
        return np.where(extreme, self.weight, 1.0)

    def draw(self, rng: np.random.Generator, prompts: int) -> np.ndarray:
        """One problem per group, distinct while the split has enough: `(prompts * group_size,)` per-slot indices."""
        w = self.weights()
        chosen = rng.choice(self.num_problems, size=prompts, replace=prompts > self.num_problems, p=w / w.sum())
        return np.repeat(chosen.astype(np.int64), self.group_size)

    def record(self, indices: Sequence[int], successes: Sequence[bool]) -> None:
        """Remember each visited problem's pass rate (the last visit replaces earlier ones)."""
        indices = np.asarray(indices, dtype=np.int64)
        successes = np.asarray(successes, dtype=bool)
        for index in np.unique(indices):
            if not 0 <= index < self.num_problems:
                continue  # an episode from outside the split (it cannot be drawn again anyway)
            mine = indices == index
            self.passes[index] = int(successes[mine].sum())
            self.tries[index] = int(mine.sum())

    def stats(self) -> dict[str, float]:
        """Share of the split seen, and of the seen problems at pass rate 0 and 1."""
        seen = self.passes >= 0
        n = max(int(seen.sum()), 1)
        return {
            "frontier_seen": float(seen.mean()),
            "frontier_unsolved": float((seen & (self.passes == 0)).sum() / n),
            "frontier_mastered": float((seen & (self.passes == self.tries) & (self.tries > 0)).sum() / n),
        }

    def state_dict(self) -> dict[str, Any]:
        return {"passes": self.passes.tolist(), "tries": self.tries.tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        passes, tries = np.asarray(state["passes"], dtype=np.int64), np.asarray(state["tries"], dtype=np.int64)
        if passes.shape != (self.num_problems,) or tries.shape != (self.num_problems,):
            raise ValueError(
                f"the checkpoint's frontier sampler covers {len(passes)} problems, this task's training split has "
                f"{self.num_problems}: resume with the task the run was trained on"
            )
        self.passes, self.tries = passes, tries


class LevelUp(Callback):
    """A callback that raises a reasoning-gym dataset's level when the policy has mastered the current one.

        curriculum = ReasoningGymCurriculum("chain_sum", threshold=0.8, patience=5, size=1000)
        envs = TextGenVectorEnv(..., task=curriculum.task, max_prompt_tokens=...)   # room for the top level
        agent.learn(envs, iterations=200, callback=LevelUp(curriculum, envs, eval_env))

    The signal is the one frontier sampling reads: the pass rate of the problems the update sampled
    (`train_accuracy`). When it is at or above the curriculum's threshold for `patience` updates in
    a row, the training env (and the evaluation env, if given) serve the next level from the next
    update on, and the frontier sampler starts afresh on the new problems. Every metrics row gets
    `curriculum_level`.
    """

    before_logging = True  # learn() runs it before the standard callbacks, so the row it changes is logged

    def __init__(self, curriculum: Any, envs: Any, eval_env: Any = None):
        self.curriculum, self.envs, self.eval_env = curriculum, envs, eval_env

    def on_training_start(self, agent: Any, metrics: dict) -> None:
        self.agent = agent
        metrics["curriculum_level"] = self.curriculum.level

    def on_iteration_end(self, metrics: dict) -> bool:
        if "train_accuracy" in metrics and self.curriculum.update(metrics["train_accuracy"]):
            for env in (self.envs, self.eval_env):
                if env is not None:
                    env.unwrapped.set_task(self.curriculum.task)
            if self.agent is not None:
                self.agent.frontier, self.agent._frontier_state = None, None  # a new split: nothing seen yet
            metrics["curriculum_level_up"] = 1.0
        metrics["curriculum_level"] = self.curriculum.level
        return True
