"""Stable-Baselines3 on TextGen tasks: observation/action wrappers, a token-embedding features
extractor, and an adapter from `TextGenVectorEnv` to SB3's `VecEnv`.

SB3 already accepts `TextGenEnv` as it is (`PPO("MultiInputPolicy", env)`; its observation passes
`stable_baselines3.common.env_checker.check_env`). What this module adds is what makes SB3 *learn*:

- `OneHotTokens`: the token ids as a `MultiDiscrete` observation, which SB3 one-hot encodes per
  position. With the default MLP on a 12-token toy task this reached reward 1.0 where raw `Box`
  ids (fed to the MLP as floats) reached 0.04, both after 60k steps. Fine for the char tokenizer
  (97 tokens); its input grows as L x (vocab + 1), so use `TokenEmbedding` for large vocabularies.
- `AllowedActions`: the action space shrunk to the tokens the task allows (`env.action_masks()`),
  so plain PPO/A2C explore over 3 letters + the end token instead of 97 characters. (sb3-contrib's
  MaskablePPO gets the same effect from `action_masks()`, which every class here forwards.)
- `TokenEmbedding`: a `BaseFeaturesExtractor` that embeds the raw `input_ids` (learnt token and
  position embeddings), for vocabularies where one-hot inputs are too wide:
  `PPO("MultiInputPolicy", env, policy_kwargs=dict(features_extractor_class=TokenEmbedding))`.
- `SB3VecEnv`: SB3 does not accept Gymnasium `VectorEnv`s. This adapter runs a natively batched
  `TextGenVectorEnv` (built with `autoreset_mode="same_step"`, which is SB3's convention: the
  observation returned for a finished slot is already the next episode's first one) and converts
  its outputs to SB3's: `dones = terminated | truncated`, a list of per-slot info dicts, the
  finished episode's `final_obs` as `info["terminal_observation"]`, its `final_info` entries
  (completion, answer, ended_by, ...) as the slot's info, `info["TimeLimit.truncated"]`, and the
  new episode's info in `reset_infos`. Step for step it returns what SB3's `DummyVecEnv` of
  `TextGenEnv`s returns (slot i seeded seed+i).

## Truncation, bootstrapping and `budget_is_terminal`

When an episode ends by truncation (`TimeLimit.truncated` in the info), SB3's on-policy algorithms
add gamma * V(terminal_observation) to the reward of that step: they assume the episode was cut off
by a time limit and would have gone on paying. In textgym the token budget is part of the task:
the verifier has already scored the completion on that very step, and nothing more can be earned.
The bootstrap then adds a value that does not exist (biasing V and the advantages towards whatever
V predicts for a state with a full budget). Create the env with `budget_is_terminal=True` (the
default of `make_env` and `make_vec_env` below): a spent budget is reported as `terminated`, SB3
does not bootstrap, and the reward is exactly the verifier's score.

## Example

```python
import torch
from stable_baselines3 import PPO
from agents.sb3 import make_vec_env

torch.set_num_threads(1)   # SB3's small MLPs run ~10x faster on 1 thread than on 2 here
env = make_vec_env(8, task="copy", task_kwargs={"length": 2, "alphabet": "abc"}, max_new_tokens=3)
model = PPO("MultiInputPolicy", env, seed=0).learn(20_000)
```
"""

from __future__ import annotations

from typing import Any, Sequence

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.vec_env import VecEnv, VecMonitor

from textgym.env import TextGenEnv
from textgym.vector import TextGenVectorEnv

__all__ = [
    "OneHotTokens",
    "AllowedActions",
    "TokenEmbedding",
    "SB3VecEnv",
    "one_hot_space",
    "make_env",
    "make_vec_env",
    "episode_rewards",
]


# -- observations and actions ------------------------------------------------------------------


def one_hot_space(obs_space: spaces.Dict) -> spaces.Dict:
    """The `OneHotTokens` observation space for a TextGen observation space: `input_ids` as
    `MultiDiscrete([vocab_size + 1] * L)` (the extra value is the padding id)."""
    ids = obs_space["input_ids"]
    length = ids.shape[-1]
    values = int(np.max(ids.high)) + 1  # ids run 0..vocab_size, where vocab_size is the padding
    return spaces.Dict({"input_ids": spaces.MultiDiscrete(np.full(length, values, dtype=np.int64))})


def _one_hot_obs(obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    # Works for one observation (L,) and for a batch (N, L): only the key set changes.
    return {"input_ids": np.asarray(obs["input_ids"], dtype=np.int64).copy()}


class OneHotTokens(gym.ObservationWrapper):
    """Observe the token ids as `MultiDiscrete`, which SB3 one-hot encodes position by position.

    The observation is `{"input_ids": MultiDiscrete([V + 1] * L)}` (V: vocab size, L: the env's
    observation length; sized from the env's observation space), so use `"MultiInputPolicy"`.
    The prompt/sequence lengths are not kept: the padding id marks where the sequence ends.
    """

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.observation_space = one_hot_space(env.observation_space)

    def observation(self, observation: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return _one_hot_obs(observation)

    def action_masks(self) -> np.ndarray:
        return self.env.get_wrapper_attr("action_masks")()


class AllowedActions(gym.ActionWrapper):
    """Shrink `Discrete(vocab_size)` to `Discrete(k)`: the k tokens the task allows.

    Action j is the j-th allowed token id (`self.tokens[j]`, from `env.action_masks()`: the task's
    `allowed_chars` plus the end token). For PPO/A2C this is what masking is for MaskablePPO; the
    env still receives and records real token ids.
    """

    def __init__(self, env: gym.Env, tokens: Sequence[int] | None = None):
        super().__init__(env)
        if tokens is None:
            tokens = np.flatnonzero(env.get_wrapper_attr("action_masks")())
        self.tokens = np.asarray(tokens, dtype=np.int64)
        if self.tokens.ndim != 1 or len(self.tokens) == 0:
            raise ValueError("AllowedActions needs at least one allowed token")
        self.action_space = spaces.Discrete(len(self.tokens))

    def action(self, action: Any) -> int:
        return int(self.tokens[int(np.asarray(action).reshape(()))])

    def action_masks(self) -> np.ndarray:
        return np.ones(len(self.tokens), dtype=bool)


class TokenEmbedding(BaseFeaturesExtractor):
    """Features of a raw TextGen observation from learnt token and position embeddings.

    For vocabularies where one-hot inputs (L x V) are too wide. Each position's token id (the
    padding id included, with its own zero embedding) is embedded, a learnt position embedding is
    added, padding positions are zeroed, and the (L x embed_dim) result is flattened and projected
    to `features_dim` with a ReLU. Use with `"MultiInputPolicy"` on the env's own observation:

        PPO("MultiInputPolicy", env, policy_kwargs=dict(
            features_extractor_class=TokenEmbedding,
            features_extractor_kwargs=dict(embed_dim=32, features_dim=128)))

    Args:
        observation_space: the env's `Dict` space (its `input_ids` Box sizes vocab and length).
        embed_dim: size of the token and position embeddings.
        features_dim: size of the output features.
    """

    def __init__(self, observation_space: spaces.Dict, embed_dim: int = 32, features_dim: int = 128):
        super().__init__(observation_space, features_dim)
        ids = observation_space["input_ids"]
        self.length = int(ids.shape[-1])
        self.pad_id = int(np.max(ids.high))
        self.tokens = torch.nn.Embedding(self.pad_id + 1, embed_dim, padding_idx=self.pad_id)
        self.positions = torch.nn.Embedding(self.length, embed_dim)
        self.project = torch.nn.Sequential(torch.nn.Linear(self.length * embed_dim, features_dim), torch.nn.ReLU())

    def forward(self, observations: dict[str, torch.Tensor]) -> torch.Tensor:
        # SB3 hands Box observations over as floats; token ids are exact in float32 below 2**24.
        ids = observations["input_ids"].round().long().clamp(0, self.pad_id)
        real = (ids != self.pad_id).unsqueeze(-1).float()
        x = (self.tokens(ids) + self.positions.weight) * real
        return self.project(x.flatten(1))


# -- the VecEnv adapter --------------------------------------------------------------------------


def _unbatch(infos: dict[str, Any], n: int) -> list[dict[str, Any]]:
    """Gymnasium's batched info dict (values + `_key` masks, nested for dicts) -> one dict per slot."""
    out: list[dict[str, Any]] = [{} for _ in range(n)]
    for key, value in infos.items():
        if key.startswith("_"):
            continue
        mask = infos.get(f"_{key}", np.ones(n, dtype=bool))
        per_slot = _unbatch(value, n) if isinstance(value, dict) else None
        for i in np.flatnonzero(mask):
            item = per_slot[i] if per_slot is not None else value[i]
            out[i][key] = item.item() if isinstance(item, np.generic) else item
    return out


class SB3VecEnv(VecEnv):
    """A `TextGenVectorEnv` as a Stable-Baselines3 `VecEnv` (SB3 does not take Gymnasium VectorEnvs).

    Args:
        venv: a `TextGenVectorEnv` with `autoreset_mode=SAME_STEP` (SB3's reset convention).
        one_hot: observe `OneHotTokens`' observation instead of the raw one.
        allowed_actions: act over the task's allowed tokens only, like `AllowedActions`.

    `reset()` honours `seed()` (slot i gets seed+i, as in `DummyVecEnv`); reset options are not
    supported. `env_method("action_masks")` / `action_masks()` give each slot's mask for
    sb3-contrib's MaskablePPO; `get_attr` returns the vector env's attribute for every slot.
    Wrap it in `VecMonitor` (as `make_vec_env` does) to get SB3's episode statistics.
    """

    def __init__(self, venv: TextGenVectorEnv, one_hot: bool = False, allowed_actions: bool = False):
        if not isinstance(venv, TextGenVectorEnv):
            raise TypeError(f"SB3VecEnv adapts a textgym TextGenVectorEnv, got {type(venv).__name__}")
        if venv.autoreset_mode != AutoresetMode.SAME_STEP:
            raise ValueError(
                "SB3 expects the observation of a finished env to be the next episode's first one: "
                f"build the TextGenVectorEnv with autoreset_mode='same_step' (got {venv.autoreset_mode.value!r})"
            )
        self.venv = venv
        self.one_hot = bool(one_hot)
        self.tokens = np.flatnonzero(venv.action_masks()[0]) if allowed_actions else None
        obs_space = venv.single_observation_space
        if self.one_hot:
            obs_space = one_hot_space(obs_space)
        act_space = venv.single_action_space if self.tokens is None else spaces.Discrete(len(self.tokens))
        self._actions: np.ndarray | None = None
        super().__init__(venv.num_envs, obs_space, act_space)

    def _obs(self, obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return _one_hot_obs(obs) if self.one_hot else obs

    def reset(self):
        seeds = None if all(s is None for s in self._seeds) else list(self._seeds)
        if any(self._options):
            raise NotImplementedError("SB3VecEnv does not support reset options")
        obs, infos = self.venv.reset(seed=seeds)
        self.reset_infos = _unbatch(infos, self.num_envs)
        self._reset_seeds()
        self._reset_options()
        return self._obs(obs)

    def step_async(self, actions: np.ndarray) -> None:
        actions = np.asarray(actions).reshape(self.num_envs).astype(np.int64)
        self._actions = actions if self.tokens is None else self.tokens[actions]

    def step_wait(self):
        obs, rewards, terminated, truncated, infos = self.venv.step(self._actions)
        n = self.num_envs
        dones = terminated | truncated
        final_obs = infos.pop("final_obs", None)
        final_info = infos.pop("final_info", None)
        infos.pop("_final_obs", None)
        finished_infos = _unbatch(final_info, n) if final_info is not None else [{} for _ in range(n)]
        step_infos = _unbatch(infos, n)
        out: list[dict[str, Any]] = []
        for i in range(n):
            if dones[i]:
                # Like DummyVecEnv: the finished episode's info, its last obs, and the truncation flag;
                # the new episode's reset info goes to reset_infos.
                info = dict(finished_infos[i])
                info["terminal_observation"] = self._obs(final_obs[i])
                info["TimeLimit.truncated"] = bool(truncated[i] and not terminated[i])
                self.reset_infos[i] = step_infos[i]
            else:
                info = step_infos[i]
                info["TimeLimit.truncated"] = False
            out.append(info)
        return self._obs(obs), rewards.astype(np.float32), dones, out

    def action_masks(self) -> np.ndarray:
        """(num_envs, n_actions) bool: the allowed actions of every slot (MaskablePPO)."""
        if self.tokens is not None:
            return np.ones((self.num_envs, len(self.tokens)), dtype=bool)
        return self.venv.action_masks()

    def close(self) -> None:
        self.venv.close()

    def get_attr(self, attr_name: str, indices=None) -> list[Any]:
        rows = list(self._get_indices(indices))
        if attr_name == "action_masks":
            masks = self.action_masks()
            return [(lambda m=masks[i]: m.copy()) for i in rows]
        value = getattr(self.venv, attr_name)  # AttributeError tells has_attr() it is missing
        return [value for _ in rows]

    def set_attr(self, attr_name: str, value: Any, indices=None) -> None:
        if len(list(self._get_indices(indices))) != self.num_envs:
            raise NotImplementedError("SB3VecEnv slots share one vector env: set attributes on all of them")
        setattr(self.venv, attr_name, value)

    def env_method(self, method_name: str, *method_args, indices=None, **method_kwargs) -> list[Any]:
        rows = list(self._get_indices(indices))
        if method_name == "action_masks":
            masks = self.action_masks()
            return [masks[i] for i in rows]
        if method_name == "render":
            texts = self.venv.render() or [None] * self.num_envs
            return [texts[i] for i in rows]
        raise NotImplementedError(
            f"SB3VecEnv cannot call {method_name!r} per slot; use the vector env itself (.venv)"
        )

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices=None) -> list[bool]:
        return [False for _ in self._get_indices(indices)]

    def get_images(self):
        raise NotImplementedError("TextGen envs render text: use env_method('render')")


# -- constructors ------------------------------------------------------------------------------


def make_env(one_hot: bool = True, allowed_actions: bool = False, budget_is_terminal: bool = True, **env_kwargs: Any) -> gym.Env:
    """A `TextGenEnv` ready for SB3: budget as terminal (no truncation bootstrap), optionally
    `OneHotTokens` observations and `AllowedActions` actions."""
    env: gym.Env = TextGenEnv(budget_is_terminal=budget_is_terminal, **env_kwargs)
    if one_hot:
        env = OneHotTokens(env)
    if allowed_actions:
        env = AllowedActions(env)
    return env


def make_vec_env(
    num_envs: int = 8,
    one_hot: bool = True,
    allowed_actions: bool = False,
    budget_is_terminal: bool = True,
    monitor: bool = True,
    group_size: int = 1,
    **env_kwargs: Any,
) -> VecEnv:
    """A natively batched TextGenVectorEnv as an SB3 VecEnv (in `VecMonitor` unless monitor=False)."""
    venv = TextGenVectorEnv(
        num_envs=num_envs, group_size=group_size, autoreset_mode=AutoresetMode.SAME_STEP,
        budget_is_terminal=budget_is_terminal, **env_kwargs,
    )  # fmt: skip
    env: VecEnv = SB3VecEnv(venv, one_hot=one_hot, allowed_actions=allowed_actions)
    return VecMonitor(env) if monitor else env


def episode_rewards(
    model: Any, env: gym.Env, episodes: int | None = None, deterministic: bool = True, seed: int = 0
) -> list[float]:
    """Rewards of an SB3 model's episodes on a single env (e.g. one of `make_env`).

    With `episodes=None` on a finite split, every problem of the split once (by index); otherwise
    `episodes` episodes reset with seeds seed, seed+1, ... MaskablePPO models get the env's masks.
    """
    masked = "Maskable" in type(model).__name__
    size = env.unwrapped.task.num_examples(env.unwrapped.split)
    if episodes is None and not size:
        raise ValueError("the split is unbounded: pass episodes=")
    by_index = episodes is None
    out: list[float] = []
    for k in range(size if by_index else episodes):
        obs, _ = env.reset(seed=seed + k, options={"index": k} if by_index else None)
        total, done = 0.0, False
        while not done:
            kwargs = {"action_masks": env.get_wrapper_attr("action_masks")()} if masked else {}
            action, _ = model.predict(obs, deterministic=deterministic, **kwargs)
            obs, reward, terminated, truncated, _ = env.step(int(action))
            total, done = total + float(reward), terminated or truncated
        out.append(total)
    return out

