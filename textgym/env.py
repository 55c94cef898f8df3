"""TextGenEnv: text generation as a token-level Gymnasium environment (the one-slot case of
`textgym.transition.Transition`)."""

from __future__ import annotations

import numbers
from typing import Any, Mapping

import gymnasium as gym
import numpy as np

from textgym.config import EnvConfig, describe
from textgym.example import Example
from textgym.transition import Transition, check_action, draw_index

__all__ = ["TextGenEnv", "check_options"]


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

    A `Dict` of `Box` spaces, all of fixed length `L = max_prompt_tokens + max_new_tokens`
    (`max_prompt_tokens` None: the task's longest prompt, measured when the env is made; a prompt
    longer than 4096 tokens is then refused, naming it, unless `max_prompt_tokens` makes room or
    `prompt_overflow="truncate"` cuts it):

    | key | dtype, shape | meaning |
    |---|---|---|
    | `input_ids` | int64 (L,) | prompt ids, then the completion so far, right-padded with `vocab_size` (outside the vocabulary) |
    | `attention_mask` | int8 (L,) | 1 on real tokens, 0 on padding |
    | `policy_mask` | int8 (L,) | 1 on the tokens the agent chose (its actions), 0 on the prompt, the environment's replies and padding |
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
    example i (an int in [0, size of the split)); `options={"example": Example(...)}` uses a given
    one. Other options are refused.

    ## Episode End

    - `terminated`: the agent chose the tokenizer's end token, or the completion now contains one of
      the stop strings (the task's, e.g. `</answer>`, which can span several tokens).
    - `truncated`: `max_new_tokens` tokens were generated without either. The verifier scores this
      last step too. With `budget_is_terminal=True` it is reported as `terminated` instead (for
      learners that bootstrap a value on truncation, such as Stable-Baselines3).

    The final `info` holds `completion`, `answer`, `ended_by` ("eos", "stop", "budget"),
    `episode_length`, `reward_components` and, if the reward failed, `reward_error`. Every `info`
    holds `prompt_len` and the example's `index`.

    ## Multi-turn tasks

    With a multi-turn task (`calculator`, `guess`, `retry`, or your own `MultiTurnTask` /
    `MessageEnvTask`, see `textgym.tasks.multiturn`) the end token, a stop string or
    `max_turn_tokens` end the agent's *turn*. The task's `reply` answers it; unless the episode is
    over, the reply is appended to the state as tokens of the environment (`policy_mask` 0):
    s_{t+1} = s_t ‖ a_t ‖ o_t. With a chat template the reply goes in as the template writes it
    (the end of the assistant turn, the user or tool turn, the start of the next assistant turn),
    tokenized in context; the tokens the agent sampled are never decoded and re-encoded. Without
    one (plain text, e.g. the char tokenizer) it is appended between newlines. A template that
    renders earlier turns differently once a turn is added (not prefix-preserving) is refused when
    the env is made, naming the first differing tokens (`check_chat_template`).

    Rewards are paid on the step that ends each turn (the reply's `reward`). The episode ends
    `terminated` when the reply says `done` (ended_by "done"), `truncated` when the turns
    (`max_turns`, "turns") or the token budget ("budget": also when a reply would not fit) run
    out. Its final `info` also holds `turns`, `turn_rewards` and `conversation`: one entry per
    turn with its role ("prompt", "assistant", "user", "tool"), text and token span [start, end).

    `reply` reads the agent's text, so it runs under the verifier's guard (`reward_timeout`,
    `reward_isolation`): a reply that raises, returns something that is not a valid `Reply`, runs
    past the timeout or cannot be tokenized ends that slot's episode `terminated` (ended_by
    "reply_error", so a learner never bootstraps a value onto a failure the agent may have caused)
    with reward 0 for the turn and the reason in `info["reply_error"]`; other slots go on. With
    `reward_isolation="process"` replies run in the worker process, which gets the task as it was
    when the worker started, and the episode's state travels with each call (it must pickle).

    ## Arguments

    Settings of `textgym.config.EnvConfig`, as keywords (or `config=EnvConfig(...)`, keywords then
    override it), plus `render_mode`: "ansi" (render returns the text) or "human" (prints it).

{arguments}

    ## Vectorized environment

    `gym.make_vec("TextGen-v0", num_envs=N, vectorization_mode="vector_entry_point",
    group_size=G, ...)` builds `textgym.vector.TextGenVectorEnv`: natively batched, step for step
    identical to `SyncVectorEnv` of this env (slot i seeded seed+i), plus group resets (consecutive
    blocks of G slots get the same example on every reset, for group baselines).

    ## Version History

    - v0: initial release; `policy_mask` and multi-turn tasks added without changing single-turn episodes.
    """

    metadata = {"render_modes": ["ansi", "human", "rgb_array"], "render_fps": 4}

    def __init__(self, config: EnvConfig | None = None, *, render_mode: str | None = None, **settings: Any):
        self.config = (config or EnvConfig()).replace(**settings) if settings else (config or EnvConfig())
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']}, got {render_mode!r}")
        self.render_mode = render_mode
        self.core = Transition(self.config, num_slots=1)
        self.task, self.tokenizer = self.core.task, self.core.tokenizer
        self.split = self.config.split
        self.vocab_size = self.core.vocab_size
        self.pad_token_id = self.core.pad_token_id
        self.max_new_tokens = self.core.max_new_tokens
        self.obs_len = self.core.obs_len
        self.action_space = gym.spaces.Discrete(self.vocab_size)
        self.observation_space = self.core.single_observation_space
        self._started = False

    # -- Gymnasium API ---------------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        example, index = pick_example(self.core, check_options(options), self.np_random)
        self.core.start(0, example, index)
        self._started = True
        return self.core.observation(0), self.core.info(0)

    def step(self, action):
        if not self._started:
            raise RuntimeError("step() was called before reset(); call env.reset() first")
        if self.core.done[0]:
            raise RuntimeError("the episode has ended; call env.reset() before stepping again")
        action = check_action(action, self.vocab_size)
        outcome = self.core.step(np.array([action], dtype=np.int64), _ACTIVE)
        info = self.core.info(0)
        info.update(outcome.finals.get(0, {}))
        if self.render_mode == "human" and self.core.done[0]:
            self.render()
        return (self.core.observation(0), float(outcome.rewards[0]), bool(outcome.terminated[0]),
                bool(outcome.truncated[0]), info)  # fmt: skip

    def set_task(self, task: Any) -> None:
        """Serve `task` (a Task or a registered name) from the next `reset` on, in the same observation
        space (its prompts must fit; see `Transition.set_task`)."""
        from textgym.tasks import make_task

        self.core.set_task(make_task(task))
        self.task = self.core.task

    def close(self):
        """End a multi-turn episode still running (the task's `end`) and close the task if the env made
        it from a name: a tool or OpenEnv task's servers and sessions."""
        self.core.close()
        super().close()

    def render(self):
        text = self.core.text(0) if self._started else ""
        if self.render_mode == "human":
            print(text)
            return None
        if self.render_mode == "rgb_array":
            return _text_image(text)
        return text

    def action_masks(self) -> np.ndarray:
        """Tokens the task allows, as a bool array of vocab_size (sb3-contrib MaskablePPO reads it)."""
        return self.core.action_mask.astype(bool)

    @property
    def example(self) -> Example | None:
        """The example of the current episode."""
        return self.core.examples[0]


TextGenEnv.__doc__ = TextGenEnv.__doc__.replace("{arguments}", describe(EnvConfig, indent="    "))
_ACTIVE = np.ones(1, dtype=bool)


def pick_example(core: Transition, options: dict, rng: np.random.Generator) -> tuple[Example, int]:
    """The (example, index) a reset starts: `options["example"]`, `options["index"]`, or a draw."""
    if "example" in options:
        example = options["example"]
        if not isinstance(example, Example):
            raise TypeError(f"options['example'] must be a textgym Example, got {type(example).__name__}")
        return example, -1
    index = options.get("index")
    if index is None:
        index = draw_index(rng, core.num_examples)
    index = check_index(index, core.num_examples, core.config.split)
    return core.task.example(core.config.split, index), index


RESET_OPTIONS = ("index", "example")


def check_options(options: Any, extra: tuple[str, ...] = ()) -> dict:
    """`reset`'s options as a dict: None is {}; anything but a dict, or a key other than the known
    ones (`RESET_OPTIONS` and `extra`), is refused with a message that lists them."""
    if options is None:
        return {}
    known = (*RESET_OPTIONS, *extra)
    if not isinstance(options, Mapping):
        raise TypeError(f"reset options must be a dict such as {{'index': 3}} (keys: {', '.join(known)}), "
                        f"got {type(options).__name__} {options!r:.60}")  # fmt: skip
    unknown = sorted(map(str, set(options) - set(known)))
    if unknown:
        raise ValueError(f"unknown reset option(s) {unknown}; the options are: {', '.join(known)}")
    return dict(options)


def check_index(index: Any, num_examples: int | None, split: str) -> int:
    """An example index from reset options, as an int: an integer (not a bool, float or string) in
    [0, num_examples) of the split (any int >= 0 for an unbounded split)."""
    if isinstance(index, (bool, np.bool_)) or not isinstance(index, numbers.Integral):
        raise TypeError(f"options['index'] must be an integer example index, got {type(index).__name__} {index!r:.40}")
    index = int(index)
    if index < 0 or (num_examples is not None and index >= num_examples):
        where = f"0 to {num_examples - 1}" if num_examples is not None else "any integer >= 0 (the split is unbounded)"
        raise ValueError(f"options['index'] is {index}, outside split {split!r}: its example indices are {where}")
    return index


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
