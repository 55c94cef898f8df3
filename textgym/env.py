"""TextGenEnv: text generation as a token-level Gymnasium environment."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Callable, Sequence

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from textgym.rewards import RewardResult, get_reward, score
from textgym.rewards.core import ISOLATIONS, check_isolatable
from textgym.tasks import Example, Task, make_task
from textgym.tokenizers import Tokenizer, as_tokenizer

__all__ = ["TextGenEnv", "EpisodeRules", "observation_space"]

# How many examples are tokenized to size the observation when max_prompt_tokens is not given.
_PROMPT_PROBE = 4096


def observation_space(length: int, vocab_size: int) -> spaces.Dict:
    """The observation space of TextGenEnv: a flat Dict of Box spaces (passes SB3's checker)."""
    return spaces.Dict(
        {
            "input_ids": spaces.Box(0, vocab_size, shape=(length,), dtype=np.int64),
            "attention_mask": spaces.Box(0, 1, shape=(length,), dtype=np.int8),
            "prompt_len": spaces.Box(0, length, shape=(1,), dtype=np.int64),
            "seq_len": spaces.Box(0, length, shape=(1,), dtype=np.int64),
        }
    )


def check_action(action: Any, vocab_size: int) -> int:
    """Validate one action and return it as a Python int."""
    if isinstance(action, np.ndarray):
        if action.shape not in ((), (1,)):
            raise ValueError(
                f"action must be a single token id, got an array of shape {action.shape}; "
                "a vector env takes one id per slot"
            )
        action = action.reshape(()).item()
    if isinstance(action, (bool, np.bool_)) or not isinstance(action, numbers.Integral):
        raise TypeError(
            f"action must be an integer token id in [0, {vocab_size}), got {type(action).__name__} {action!r}"
        )
    action = int(action)
    if not 0 <= action < vocab_size:
        raise ValueError(f"action {action} is outside the action space [0, {vocab_size})")
    return action


@dataclass
class EpisodeRules:
    """Everything about an episode that the single and the vector env share.

    It turns an Example into prompt ids, decides when a completion ends (end token, stop strings,
    budget) and scores finished completions through `textgym.rewards.score`, which never raises.
    """

    task: Task
    tokenizer: Tokenizer
    reward_fn: Callable[..., Any]
    max_new_tokens: int
    obs_len: int
    stop_strings: tuple[str, ...]
    chat_template: bool
    system_prompt: str | None
    reward_timeout: float | None
    reward_isolation: str
    budget_is_terminal: bool

    @classmethod
    def build(
        cls,
        task: str | Task = "addition",
        tokenizer: Any = "char",
        max_new_tokens: int = 16,
        reward: str | Callable | None = None,
        task_kwargs: dict | None = None,
        split: str = "train",
        chat_template: bool | None = None,
        system_prompt: str | None = None,
        max_prompt_tokens: int | None = None,
        stop_strings: Sequence[str] | None = None,
        reward_timeout: float | None = 10.0,
        reward_isolation: str = "thread",
        budget_is_terminal: bool = False,
    ) -> "EpisodeRules":
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, numbers.Integral) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
        task_obj = make_task(task, **(task_kwargs or {}))
        if split not in Task.SPLITS:
            raise ValueError(f"unknown split {split!r}; use one of {Task.SPLITS}")
        tok = as_tokenizer(tokenizer)
        if chat_template is None:
            chat_template = tok.has_chat_template
        elif chat_template and not tok.has_chat_template:
            raise ValueError(
                f"chat_template=True but tokenizer {tok.name!r} has no chat template; pass chat_template=False"
            )
        reward_fn = get_reward(reward) if reward is not None else task_obj.reward
        if reward_isolation not in ISOLATIONS:
            raise ValueError(f"reward_isolation must be one of {ISOLATIONS}, got {reward_isolation!r}")
        if reward_isolation == "process":
            check_isolatable(reward_fn)
        if reward_timeout is not None and not reward_timeout > 0:
            raise ValueError(f"reward_timeout must be a positive number of seconds or None, got {reward_timeout!r}")
        stops = tuple(task_obj.stop_strings if stop_strings is None else stop_strings)
        if any(not isinstance(s, str) or not s for s in stops):
            raise ValueError(f"stop_strings must be non-empty strings, got {stops!r}")
        if system_prompt is None:
            system_prompt = task_obj.system_prompt
        rules = cls(
            task=task_obj,
            tokenizer=tok,
            reward_fn=reward_fn,
            max_new_tokens=int(max_new_tokens),
            obs_len=0,
            stop_strings=stops,
            chat_template=bool(chat_template),
            system_prompt=system_prompt,
            reward_timeout=reward_timeout,
            reward_isolation=reward_isolation,
            budget_is_terminal=bool(budget_is_terminal),
        )
        num = task_obj.num_examples(split)
        if num == 0:
            raise ValueError(
                f"task {task_obj.name!r} has no examples in split {split!r}; "
                "pick another split or give the task more examples"
            )
        if max_prompt_tokens is None:
            max_prompt_tokens = rules._probe_prompt_tokens(split, num)
        elif max_prompt_tokens < 1:
            raise ValueError(f"max_prompt_tokens must be positive, got {max_prompt_tokens}")
        rules.obs_len = int(max_prompt_tokens) + rules.max_new_tokens
        rules._stop_window = max((len(s) for s in stops), default=0) + 4
        return rules

    def _probe_prompt_tokens(self, split: str, num: int | None) -> int:
        """Size the prompt part of the observation from the task's own examples.

        A small task is measured exactly (every split, so train and eval envs agree); an unbounded
        one from its first examples, with headroom: a longer prompt later raises a clear error.
        """
        if num is not None and sum(self.task.num_examples(s) or 0 for s in Task.SPLITS) <= _PROMPT_PROBE:
            lengths = [
                len(self.prompt_ids(self.task.example(s, i)))
                for s in Task.SPLITS
                for i in range(self.task.num_examples(s) or 0)
            ]
            return max(lengths)
        lengths = [len(self.prompt_ids(self.task.example(s, i))) for s in Task.SPLITS for i in range(64)]
        return int(math.ceil(max(lengths) * 1.25)) + 8

    def prompt_text(self, example: Example) -> str:
        text = self.task.format_prompt(example)
        if not self.chat_template:
            return text
        messages = [{"role": "user", "content": text}]
        if self.system_prompt:
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        return self.tokenizer.apply_chat_template(messages)

    def prompt_ids(self, example: Example) -> list[int]:
        return self.tokenizer.encode_prompt(self.prompt_text(example))

    def check_prompt(self, ids: list[int]) -> None:
        limit = self.obs_len - self.max_new_tokens
        if len(ids) > limit:
            raise ValueError(
                f"a prompt of {len(ids)} tokens does not fit max_prompt_tokens={limit}; "
                f"create the env with max_prompt_tokens>={len(ids)}"
            )

    def hits_stop(self, completion: Sequence[int], last: int) -> bool:
        """Whether the completion (ids, `last` its newest) now ends in one of the stop strings.

        Only the newest few tokens are decoded, and only when the newest token could complete a
        stop string, so the check costs nothing on most steps.
        """
        if not self.stop_candidates[last]:
            return False
        tail = self.tokenizer.decode(completion[-self._stop_window :])
        return any(s in tail for s in self.stop_strings)

    @cached_property
    def stop_candidates(self) -> np.ndarray:
        """Bool per token id: can this token be the one that completes a stop string?

        Only a token whose text holds the string's last character can; the test is exact when
        those characters are ASCII (byte-level tokens may split other characters, so then every
        token is a candidate).
        """
        vocab = self.tokenizer.vocab_size
        if not self.stop_strings:
            return np.zeros(vocab, dtype=bool)
        last_chars = {s[-1] for s in self.stop_strings}
        if not all(ch.isascii() for ch in last_chars):
            return np.ones(vocab, dtype=bool)
        return np.array([any(ch in piece for ch in last_chars) for piece in self.tokenizer.token_strings], dtype=bool)

    def completion_text(self, completion: Sequence[int]) -> str:
        ids = list(completion)
        if ids and ids[-1] == self.tokenizer.eos_token_id:
            ids = ids[:-1]
        return self.tokenizer.decode(ids)

    def finish(self, completion: Sequence[int], example: Example, ended_by: str) -> tuple[float, dict]:
        """Score a finished completion; returns the reward and the final step's info entries."""
        text = self.completion_text(completion)
        result: RewardResult = score(self.reward_fn, text, example, self.reward_timeout, self.reward_isolation)
        info = {
            "completion": text,
            "answer": example.answer,
            "ended_by": ended_by,
            "episode_length": len(completion),
            "reward_components": dict(result.components),
        }
        if result.error is not None:
            info["reward_error"] = result.error
        return float(result.reward), info

    def action_mask(self) -> np.ndarray:
        """Tokens allowed by the task (all when it sets no `allowed_chars`); the end token always."""
        return self._allowed_tokens.copy()

    @cached_property
    def _allowed_tokens(self) -> np.ndarray:
        allowed = self.task.allowed_chars
        if allowed is None:
            return np.ones(self.tokenizer.vocab_size, dtype=np.int8)
        chars = set(allowed)
        mask = np.array([bool(s) and set(s) <= chars for s in self.tokenizer.token_strings], dtype=np.int8)
        if self.tokenizer.eos_token_id is not None:
            mask[self.tokenizer.eos_token_id] = 1
        return mask


class TextGenEnv(gym.Env):
    """Text generation as reinforcement learning, one token per step.

    ## Description

    A verifier task supplies a prompt; the agent writes the completion one token at a time and is
    paid at the end by the task's verifier (reward function). This is the language-model RL problem
    written as an MDP: the state is the prefix (prompt ids plus the tokens chosen so far), the action
    is the next token id, the transition is deterministic concatenation s_{t+1} = s_t ‖ a_t, and the
    reward is terminal.

    ```python
    import gymnasium as gym
    import textgym

    env = gym.make("TextGen-v0", task="reverse", tokenizer="char", max_new_tokens=8)
    obs, info = env.reset(seed=0)
    done = False
    while not done:
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        done = terminated or truncated
    print(repr(info["completion"]), info["answer"], reward)
    ```

    ## Action Space

    `Discrete(vocab_size)`: the id of the next token. `action_masks()` returns the tokens the task
    allows (for sb3-contrib's MaskablePPO); pass `action_mask_in_info=True` to also get it in
    `info["action_mask"]` (it is vocab-sized, so it is off by default).

    ## Observation Space

    A `Dict` of `Box` spaces, all of fixed length `L = max_prompt_tokens + max_new_tokens`:

    | key | dtype, shape | meaning |
    |---|---|---|
    | `input_ids` | int64 (L,) | prompt ids, then the completion so far, right-padded with `vocab_size` (outside the vocabulary) |
    | `attention_mask` | int8 (L,) | 1 on real tokens, 0 on padding |
    | `prompt_len` | int64 (1,) | number of prompt tokens |
    | `seq_len` | int64 (1,) | number of real tokens (prompt + completion) |

    Every returned array is fresh: keeping an observation is safe.

    ## Rewards

    0.0 on every step but the last; on the last, the verifier's score of the completion text
    (decoded once, without the end token). Built-in verifiers pay 1.0 for a correct answer, some
    with partial or format credit (see `textgym.list_tasks()` and each task's docstring). A reward
    function that raises, returns something that is not a finite number, or runs past
    `reward_timeout` scores the episode 0.0 and says why in `info["reward_error"]`. With
    `reward_isolation="process"` the verifier runs in a worker process that is killed on timeout.

    ## Starting State

    `reset` draws an example from the task's `split` with the env's seeded generator and returns
    the prompt, formatted raw or with the tokenizer's chat template. `options={"index": i}` picks
    example i; `options={"example": Example(...)}` uses a given one.

    ## Episode End

    - `terminated`: the agent chose the tokenizer's end token, or the completion now contains one of
      the stop strings (the task's, e.g. `</answer>`, which can span several tokens).
    - `truncated`: `max_new_tokens` tokens were generated without either. The verifier scores this
      last step too. With `budget_is_terminal=True` it is reported as `terminated` instead (for
      learners that bootstrap a value on truncation, such as Stable-Baselines3).

    The final `info` holds `completion`, `answer`, `ended_by` ("eos", "stop", "budget"),
    `episode_length`, `reward_components` and, if the reward failed, `reward_error`. Every `info`
    holds `prompt_len` and the example's `index`.

    ## Arguments

    - `task`: a task name from `textgym.list_tasks()` or a `Task` (default "addition").
    - `tokenizer`: "char", an HF tokenizer, a model name or path, or an object with `.tokenizer`
      (such as `agents.LMPolicy`).
    - `max_new_tokens`: the token budget per episode.
    - `reward`: a reward name from `textgym.list_rewards()` or a callable; default: the task's.
    - `task_kwargs`: keyword arguments of the task (difficulty, prompt style, seed...).
    - `split`: "train", "validation" or "test".
    - `chat_template`: wrap the prompt in the tokenizer's chat template (default: if it has one).
    - `system_prompt`: system message when a chat template is used (default: the task's).
    - `max_prompt_tokens`: prompt part of the observation; default: measured from the task.
    - `stop_strings`: override the task's stop strings.
    - `reward_timeout`: seconds a reward function may take (None: no limit).
    - `reward_isolation`: "thread" (default; a timed-out verifier is abandoned but keeps running)
      or "process" (it runs in a forked worker process, killed on timeout or replaced if it
      crashes; where processes cannot be forked, e.g. Windows, the reward function must pickle).
    - `budget_is_terminal`: report the end of the budget as `terminated`.
    - `action_mask_in_info`: add `action_mask` to every `info`.
    - `render_mode`: "ansi" (render returns the text) or "human" (prints it).

    ## Vectorized environment

    `gym.make_vec("TextGen-v0", num_envs=N, vectorization_mode="vector_entry_point",
    group_size=G, ...)` builds `textgym.vector.TextGenVectorEnv`: natively batched, step for step
    identical to `SyncVectorEnv` of this env (slot i seeded seed+i), plus group resets (consecutive
    blocks of G slots get the same example on every reset, for group baselines).

    ## Version History

    - v0: initial release.
    """

    metadata = {"render_modes": ["ansi", "human", "rgb_array"], "render_fps": 4}

    def __init__(
        self,
        task: str | Task = "addition",
        tokenizer: Any = "char",
        max_new_tokens: int = 16,
        reward: str | Callable | None = None,
        task_kwargs: dict | None = None,
        split: str = "train",
        chat_template: bool | None = None,
        system_prompt: str | None = None,
        max_prompt_tokens: int | None = None,
        stop_strings: Sequence[str] | None = None,
        reward_timeout: float | None = 10.0,
        reward_isolation: str = "thread",
        budget_is_terminal: bool = False,
        action_mask_in_info: bool = False,
        render_mode: str | None = None,
    ):
        self.rules = EpisodeRules.build(
            task=task, tokenizer=tokenizer, max_new_tokens=max_new_tokens, reward=reward,
            task_kwargs=task_kwargs, split=split, chat_template=chat_template,
            system_prompt=system_prompt, max_prompt_tokens=max_prompt_tokens,
            stop_strings=stop_strings, reward_timeout=reward_timeout, reward_isolation=reward_isolation,
            budget_is_terminal=budget_is_terminal,
        )  # fmt: skip
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']}, got {render_mode!r}")
        self.render_mode = render_mode
        self.split = split
        self.action_mask_in_info = action_mask_in_info
        self.task = self.rules.task
        self.tokenizer = self.rules.tokenizer
        self.vocab_size = self.tokenizer.vocab_size
        self.pad_token_id = self.vocab_size
        self.max_new_tokens = self.rules.max_new_tokens
        self.obs_len = self.rules.obs_len
        self.action_space = spaces.Discrete(self.vocab_size)
        self.observation_space = observation_space(self.obs_len, self.vocab_size)
        self._num_examples = self.task.num_examples(split)
        self._ids = np.full(self.obs_len, self.pad_token_id, dtype=np.int64)
        self._prompt_len = 0
        self._seq_len = 0
        self._example: Example | None = None
        self._index = -1
        self._done = True
        self._started = False

    # -- Gymnasium API ---------------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        options = options or {}
        if "example" in options:
            example, index = options["example"], -1
            if not isinstance(example, Example):
                raise TypeError(f"options['example'] must be a textgym Example, got {type(example).__name__}")
        else:
            index = options.get("index")
            if index is None:
                index = draw_index(self.np_random, self._num_examples)
            example = self.task.example(self.split, int(index))
        self._start(example, int(index))
        return self._obs(), self._info()

    def step(self, action):
        if not self._started:
            raise RuntimeError("step() was called before reset(); call env.reset() first")
        if self._done:
            raise RuntimeError("the episode has ended; call env.reset() before stepping again")
        action = check_action(action, self.vocab_size)
        self._ids[self._seq_len] = action
        self._seq_len += 1
        completion = self._ids[self._prompt_len : self._seq_len]
        if action == self.tokenizer.eos_token_id:
            ended_by = "eos"
        elif self.rules.hits_stop(completion, action):
            ended_by = "stop"
        elif len(completion) >= self.max_new_tokens:
            ended_by = "budget"
        else:
            return self._obs(), 0.0, False, False, self._info()
        self._done = True
        reward, final = self.rules.finish(completion.tolist(), self._example, ended_by)
        truncated = ended_by == "budget" and not self.rules.budget_is_terminal
        info = self._info()
        info.update(final)
        if self.render_mode == "human":
            self.render()
        return self._obs(), reward, not truncated, truncated, info

    def render(self):
        text = self.tokenizer.decode(self._ids[: self._seq_len].tolist()) if self._started else ""
        if self.render_mode == "human":
            print(text)
            return None
        if self.render_mode == "rgb_array":
            return _text_image(text)
        return text

    def action_masks(self) -> np.ndarray:
        """Tokens the task allows, as a bool array of vocab_size (sb3-contrib MaskablePPO reads it)."""
        return self.rules.action_mask().astype(bool)

    # -- internals -------------------------------------------------------------------------------

    @property
    def example(self) -> Example | None:
        """The example of the current episode."""
        return self._example

    def _start(self, example: Example, index: int) -> None:
        ids = self.rules.prompt_ids(example)
        self.rules.check_prompt(ids)
        self._ids.fill(self.pad_token_id)
        self._ids[: len(ids)] = ids
        self._prompt_len = self._seq_len = len(ids)
        self._example, self._index = example, index
        self._done, self._started = False, True

    def _obs(self) -> dict[str, np.ndarray]:
        mask = np.zeros(self.obs_len, dtype=np.int8)
        mask[: self._seq_len] = 1
        return {
            "input_ids": self._ids.copy(),
            "attention_mask": mask,
            "prompt_len": np.array([self._prompt_len], dtype=np.int64),
            "seq_len": np.array([self._seq_len], dtype=np.int64),
        }

    def _info(self) -> dict[str, Any]:
        info: dict[str, Any] = {"prompt_len": self._prompt_len, "index": self._index}
        if self.action_mask_in_info:
            info["action_mask"] = self.rules.action_mask()
        return info


def draw_index(rng: np.random.Generator, num_examples: int | None) -> int:
    """The example index a reset draws: uniform over a finite split, else over 2**31."""
    return int(rng.integers(0, num_examples if num_examples else 2**31 - 1))


def _text_image(text: str, width_chars: int = 60) -> np.ndarray:
    """An RGB frame with the prefix text drawn on it, for render_mode="rgb_array" (video recorders)."""
    import textwrap

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    lines = textwrap.wrap(text, width_chars, replace_whitespace=False, drop_whitespace=False) or [""]
    fig = Figure(figsize=(6.4, 0.25 * len(lines) + 0.3), dpi=100)
    fig.text(0.01, 0.98, "\n".join(lines), family="monospace", fontsize=9, va="top")
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()
