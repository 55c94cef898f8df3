"""Tasks: seeded generators of examples, each with the verifier that scores them.

A `Task` answers three questions for the env: which problem comes next (`example(split, index)`,
deterministic), how to show it to the model (`format_prompt`), and how good a completion is
(`reward`); and for evaluations, which answer a completion gives (`answer_of`). Built-in tasks subclass `Task` and fill in `sample` (one random problem) or
`all_problems` (every problem, when there are few), plus `extract`/`check` for their verifier.
Tasks from a fixed list of examples come from `Task.from_examples`.

Splits never share a problem: each problem's split is decided by a SHA-256 hash of its canonical
key (never Python's `hash()`, which changes per process), so the same parameters give the same
splits on every machine, for every seed.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import inspect
import math
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from textgym.example import Example
from textgym.registry import Registry, is_module_path, load_attribute
from textgym.rewards.core import as_result, get_extractor, get_reward, stripped
from textgym.rewards.builtin import r1_zero_reward
from textgym.rewards.extract import answer_tag, first_line

__all__ = [
    "Example", "Task", "register_task", "register_task_family", "list_tasks", "list_task_families",
    "make_task", "split_of", "budget_for", "R1_ZERO_TEMPLATE",
]

# The R1-zero prompt (DeepSeek-AI, 2025: the prompt DeepSeek-R1-Zero was trained with). The prompt ends inside
# "<think>", so completions start with the reasoning and end with the stop string "</answer>".
R1_ZERO_TEMPLATE = (
    "A conversation between User and Assistant. The User asks a question, and the Assistant solves "
    "it. The Assistant first thinks about the reasoning process in the mind and then provides the "
    "User with the answer. The reasoning process is enclosed within <think> </think> and answer is "
    "enclosed within <answer> </answer> tags, respectively, i.e., <think> reasoning process here "
    "</think> <answer> answer here </answer>.\nUser: {question}\nAssistant: <think>"
)

# Problem spaces at most this big are listed in full and split exactly 80/10/10; bigger ones are
# sampled, and a sample is kept only if its hash puts it in the requested split.
ENUMERATE_LIMIT = 10_000
_MAX_SAMPLING_TRIES = 1000  # P(no test-split hit in 1000 tries at 10%) = 0.9**1000 ~ 1e-46


# Worked solutions (GSM8K's) take 1.8-2.1 characters a token in SmolLM2's tokenizer, which writes
# every digit as a token of its own (English prose takes about 4).
CHARS_PER_TOKEN = 2


def budget_for(chars: int, chars_per_token: float = CHARS_PER_TOKEN) -> int:
    """A token budget for a reply of `chars` characters: at `chars_per_token`, rounded up to a
    multiple of 32 (at least 32)."""
    return 32 * max(1, math.ceil(chars / chars_per_token / 32))


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def split_of(key: str) -> str:
    """The split ("train" 80%, "validation" 10%, "test" 10%) a problem key belongs to, stably."""
    bucket = int.from_bytes(_digest(key)[:8], "big") % 10
    return "train" if bucket < 8 else ("validation" if bucket == 8 else "test")


class Task:
    """Base class of tasks. See the module docstring; built-ins are in textgym/tasks/*.py."""

    name: str = "task"
    description: str = ""
    instruction: str = ""  # appended to the question in plain style ("Answer with a number.")
    answer_chars: str | None = None  # characters every reference answer is made of, if restricted
    max_answer_chars: int = 32  # longest reference answer; size max_new_tokens from it
    # The token budget a completion of this task needs, when the task knows better than a model's
    # preset (a data file of long worked solutions); None: no recommendation. The commands use it
    # unless --max-new-tokens (or a run's recorded settings) says otherwise (`agents.runs`).
    recommended_max_new_tokens: int | None = None
    system_prompt: str | None = None
    multi_turn = False  # True for tasks whose environment replies (textgym.tasks.multiturn)
    tool_schemas: list[dict] | None = None  # tools the chat template shows (`tools=`; textgym.tasks.ToolTask)
    # Examples per split the env renders to size its prompts when it cannot render them all (a task whose
    # prompt costs a server round trip, textgym.openenv.OpenEnvTask, asks for fewer).
    prompt_probe: int = 64
    SPLITS = ("train", "validation", "test")
    PROMPT_STYLES = ("plain", "r1_zero")

    def __init__(self, *, seed: int = 0, prompt_style: str = "plain", reward: Any = None):
        if prompt_style not in self.PROMPT_STYLES:
            raise ValueError(f"prompt_style must be one of {self.PROMPT_STYLES}, got {prompt_style!r}")
        self.seed = int(seed)
        self.prompt_style = prompt_style
        self.reward_override = None if reward is None else get_reward(reward)
        self._lists: dict[str, list[Example]] | None = None
        self._orders: dict[tuple[int, str], np.ndarray] = {}

    # -- what the env reads ---------------------------------------------------------------------

    def for_tokenizer(self, tokenizer: Any, chat_template: bool) -> "Task":
        """The task as it runs with `tokenizer` (`chat_template`: whether prompts go through its chat
        template). Most tasks are the same for every model and return themselves; one whose format
        depends on the model's (tool calls: `ToolTask`) returns a copy adapted to it. The env calls
        this once, when it is made, and uses what it returns."""
        return self

    @property
    def stop_strings(self) -> tuple[str, ...]:
        return ("</answer>",) if self.prompt_style == "r1_zero" else ()

    @property
    def allowed_chars(self) -> str | None:
        # Only in plain style is the whole completion the answer; in r1_zero the model must also
        # write its reasoning and tags, so nothing is masked.
        return self.answer_chars if self.prompt_style == "plain" else None

    def example(self, split: str, index: int) -> Example:
        """Example number `index` of `split`; the same for the same (task params, seed, split, index)."""
        self._check_split(split)
        index = int(index)
        if index < 0:
            raise ValueError(f"example index must be >= 0, got {index}")
        lists = self._split_lists()
        if lists is not None:
            examples = lists[split]
            if not examples:
                raise ValueError(self._empty_split_message(split, sum(map(len, lists.values()))))
            key = (self.seed, split)
            if key not in self._orders:
                rng = np.random.default_rng([self.seed, self.SPLITS.index(split)])
                self._orders[key] = rng.permutation(len(examples))
            return examples[int(self._orders[key][index % len(examples)])]
        rng = np.random.default_rng([self.seed, self.SPLITS.index(split), index])
        for _ in range(_MAX_SAMPLING_TRIES):
            candidate = self.sample(rng)
            if split_of(self._hash_key(candidate)) == split:
                return candidate
        raise RuntimeError(f"task {self.name!r}: no {split} example in {_MAX_SAMPLING_TRIES} samples")

    def num_examples(self, split: str) -> int | None:
        """How many distinct examples `split` has; None when it is effectively unbounded."""
        self._check_split(split)
        lists = self._split_lists()
        return None if lists is None else len(lists[split])

    def format_prompt(self, example: Example) -> str:
        """The user-message text: the question (+ instruction) in plain style, else the R1 template."""
        if self.prompt_style == "r1_zero":
            return R1_ZERO_TEMPLATE.format(question=example.prompt)
        return f"{example.prompt} {self.instruction}".strip()

    def messages(self, example: Example, state: Any = None) -> list[dict[str, str]]:
        """The prompt as chat messages (the env adds the system prompt and the chat template)."""
        return [{"role": "user", "content": self.format_prompt(example)}]

    def reward(self, completion: str, example: Example) -> float | tuple[float, dict[str, float]]:
        """The verifier. Plain: score the whole completion. r1_zero: (reward, {format, answer})."""
        if self.reward_override is not None:
            return self.reward_override(completion, example)
        if self.prompt_style == "r1_zero":
            # built per call, not stored: a stored closure would make tasks unpicklable
            return r1_zero_reward(self._score_answer_value)(completion, example)
        return self.score_answer(completion, example)

    def answer_of(self, completion: str, info: Mapping[str, Any] | None = None) -> str | None:
        """The answer `completion` gives, as this task's verifier reads it; None when it gives none.

        In r1_zero style the answer is read inside the <answer> tags (None without them); in a
        multi-turn task, in the policy's last turn (`info["conversation"]`, the episode's final
        info). The reading itself is `answer_reader()`.
        """
        if self.multi_turn:
            turns = [span["text"] for span in (info or {}).get("conversation", []) if span.get("role") == "assistant"]
            completion = turns[-1] if turns else completion
        elif self.reward_override is None and self.prompt_style == "r1_zero":
            completion = answer_tag(completion)
            if completion is None:
                return None
        return self.answer_reader()(completion)

    def answer_reader(self) -> Callable[[str], str | None]:
        """How the verifier reads the answer in (the answer region of) a completion: a `reward=`'s
        registered extraction; the task's own `extract` where it defines one or scores by
        extract/check; else the stripped text (a verifier of the whole text, e.g. reasoning-gym's)."""
        if self.reward_override is not None:
            return get_extractor(self.reward_override)
        if type(self).extract is not Task.extract or (type(self).score_answer is Task.score_answer and not self.multi_turn):
            return self.extract
        return stripped

    def completion_for(self, answer: str) -> str:
        """A completion that gives exactly `answer` in this task's format: the answer in plain style,
        `</think> <answer>{answer}</answer>` in r1_zero style (what scores a constant answer)."""
        return f"</think> <answer>{answer}</answer>" if self.prompt_style == "r1_zero" else answer

    # -- what subclasses fill in ----------------------------------------------------------------

    def sample(self, rng: np.random.Generator) -> Example:
        """One random problem from the whole problem space (any split)."""
        raise NotImplementedError(f"{type(self).__name__} must define sample() or all_problems()")

    def all_problems(self) -> Iterable[Example] | None:
        """Every problem, when there are at most ENUMERATE_LIMIT of them; else None (sample instead)."""
        return None

    def problem_key(self, example: Example) -> str:
        """What makes two examples the same problem (they then always share a split)."""
        return example.prompt

    def extract(self, text: str) -> str | None:
        """The answer inside `text` (a plain completion, or the inside of <answer> tags)."""
        return first_line(text)

    def check(self, answer: str, example: Example) -> float:
        """Score of an extracted answer: 1.0 right, 0.0 wrong (partial values allowed)."""
        return float(answer == example.answer)

    def score_answer(self, text: str, example: Example) -> float | tuple[float, dict[str, float]]:
        answer = self.extract(text)
        return 0.0 if answer is None else float(self.check(answer, example))

    # -- machinery ------------------------------------------------------------------------------

    def _score_answer_value(self, text: str, example: Example) -> float:
        return as_result(self.score_answer(text, example))[0]

    def _hash_key(self, example: Example) -> str:
        return f"{self.name}:{self.problem_key(example)}"

    def _split_lists(self) -> dict[str, list[Example]] | None:
        if self._lists is None:
            problems = self.all_problems()
            if problems is None:
                return None
            unique = {self._hash_key(p): p for p in problems}
            keys = sorted(unique, key=_digest)  # a stable shuffle: order by hash, not by generation
            n = len(keys)
            held_out = round(0.1 * n) or (1 if n >= 3 else 0)
            n_train = n - 2 * held_out
            self._lists = {
                "train": [unique[k] for k in keys[:n_train]],
                "validation": [unique[k] for k in keys[n_train : n_train + held_out]],
                "test": [unique[k] for k in keys[n_train + held_out :]],
            }
        return self._lists

    def _check_split(self, split: str) -> None:
        if split not in self.SPLITS:
            raise ValueError(f"unknown split {split!r}; splits are {', '.join(self.SPLITS)}")

    def _empty_split_message(self, split: str, total: int) -> str:
        return (
            f"split {split!r} of task {self.name!r} is empty: the task has only {total} distinct "
            f"problems. Make the task harder (more digits / longer strings / a larger alphabet) or "
            f"use split='train'."
        )

    def replace(self, **changes: Any) -> "Task":
        """A copy with a different seed, prompt_style or reward (the knobs every task has)."""
        unknown = set(changes) - {"seed", "prompt_style", "reward"}
        if unknown:
            raise TypeError(
                f"cannot change {sorted(unknown)} on an existing task; only seed, prompt_style and "
                f"reward. Build a new one with make_task({self.name!r}, ...)"
            )
        new = copy.copy(self)
        Task.__init__(
            new,
            seed=changes.get("seed", self.seed),
            prompt_style=changes.get("prompt_style", self.prompt_style),
            reward=changes.get("reward", self.reward_override),
        )
        new._lists = self._lists  # splits do not depend on these knobs
        return new

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in getattr(self, "params", {}).items())
        return (f"{type(self).__name__}({params + ', ' if params else ''}seed={self.seed}, "
                f"prompt_style={self.prompt_style!r})")

    @staticmethod
    def from_examples(
        name: str,
        train: Sequence[Example | tuple | Mapping] = (),
        validation: Sequence[Example | tuple | Mapping] = (),
        test: Sequence[Example | tuple | Mapping] = (),
        *,
        reward: Any = "exact_match",
        description: str = "",
        instruction: str = "",
        prompt_style: str = "plain",
        seed: int = 0,
        allowed_chars: str | None = None,
        system_prompt: str | None = None,
    ) -> "Task":
        """A task from fixed lists of examples, one list per split.

            task = Task.from_examples("capitals",
                train=[("Capital of France?", "Paris"), ("Capital of Peru?", "Lima")],
                validation=[Example("Capital of Chile?", "Santiago")],
                reward="exact_match")
            register_task("capitals", lambda **kw: task.replace(**kw))   # make_task("capitals")

        Examples are `Example`s, (prompt, answer) tuples or {"prompt", "answer", ...} dicts (other
        keys become metadata). The splits are used as given. `reward` (a name or a callable)
        scores the answer: in plain style it sees the whole completion; in r1_zero style it sees
        the text inside <answer> tags and the R1 format is checked for you.
        """
        return _ExampleListTask(
            name, {"train": train, "validation": validation, "test": test}, reward=reward,
            description=description, instruction=instruction, prompt_style=prompt_style, seed=seed,
            allowed_chars=allowed_chars, system_prompt=system_prompt,
        )


def _as_example(item: Example | tuple | Mapping) -> Example:
    if isinstance(item, Example):
        return item
    if isinstance(item, Mapping):
        rest = {k: v for k, v in item.items() if k not in ("prompt", "answer")}
        return Example(str(item["prompt"]), str(item["answer"]), dict(item.get("metadata", rest)))
    prompt, answer, *meta = item
    return Example(str(prompt), str(answer), dict(meta[0]) if meta else {})


class _ExampleListTask(Task):
    """A task from fixed example lists (see `Task.from_examples`)."""

    def __init__(self, name, splits, *, reward, description, instruction, prompt_style, seed,
                 allowed_chars, system_prompt):
        super().__init__(seed=seed, prompt_style=prompt_style)
        self.name, self.description, self.instruction = name, description, instruction
        self.answer_chars, self.system_prompt = allowed_chars, system_prompt
        self.answer_reward = get_reward(reward)
        self._lists = {s: [_as_example(e) for e in splits[s]] for s in self.SPLITS}
        answers = [e.answer for examples in self._lists.values() for e in examples]
        self.max_answer_chars = max(map(len, answers), default=0)

    def score_answer(self, text, example):
        return self.answer_reward(text, example)

    def answer_reader(self):
        return get_extractor(self.reward_override or self.answer_reward)  # the reward that scores reads it

    def _empty_split_message(self, split, total):
        return (f"split {split!r} of task {self.name!r} has no examples; pass {split}=[...] to "
                f"Task.from_examples, or use another split")


# -- registry ---------------------------------------------------------------------------------------

def task_factory(obj: Any, what: str) -> Callable[..., Task]:
    """What an entry point or a module path names, as a task factory: a Task subclass or a function
    returning a Task (called with make_task's kwargs), or a Task (kwargs: seed, prompt_style, reward)."""
    if isinstance(obj, Task):
        def same_task(**kwargs: Any) -> Task:
            return obj.replace(**kwargs) if kwargs else obj

        return same_task
    if callable(obj):
        return obj
    raise TypeError(f"{what} is {type(obj).__name__}, not a Task, a Task subclass or a function that returns a Task")


TASKS: Registry[Callable[..., Task]] = Registry("task", group="textgym.tasks", adapt=task_factory)
# "family:member" names: the factory of a family builds any of its members, e.g. every
# reasoning-gym dataset ("reasoning_gym:chain_sum"), without registering each one.
FAMILIES: Registry[Callable[..., Task]] = Registry("task family")


def register_task(name: str, factory: Callable[..., Task] | None = None, *, overwrite: bool = False):
    """Register `factory(**kwargs) -> Task` under `name`; without `factory`, a decorator (for classes).

    make_task(name, **kwargs) calls the factory with the user's kwargs (seed, prompt_style,
    reward and the task's own). A different factory under a taken name needs overwrite=True.
    """
    if isinstance(name, str) and ":" in name:
        raise ValueError(f"task name {name!r} must not contain ':' (that separates a family from a member; "
                         "see register_task_family)")
    return TASKS.register(name, factory, overwrite=overwrite)


def register_task_family(family: str, factory: Callable[..., Task], *, overwrite: bool = False) -> None:
    """Let `make_task("<family>:<member>", **kwargs)` call `factory(member, **kwargs)`.

    For sources with many tasks of one kind (a library of datasets, files on disk), where
    registering each by name is impossible or pointless.
    """
    if not isinstance(family, str) or not family or ":" in family:
        raise ValueError(f"a task family is a non-empty name without ':', got {family!r}")
    FAMILIES.register(family, factory, overwrite=overwrite)


def list_tasks() -> list[str]:
    """The registered task names and those installed packages declare (`textgym.tasks` entry points);
    families such as 'reasoning_gym:<dataset>' list their members elsewhere."""
    return TASKS.names()


def list_task_families() -> list[str]:
    return FAMILIES.names()


def make_task(name_or_task: str | Task, **kwargs: Any) -> Task:
    """Build a task by name (kwargs: seed=0, prompt_style="plain", reward=None, difficulty params).

    A Task instance is returned as is, or copied with a new seed / prompt_style / reward. A name is,
    in this order:
    - a registered task ("addition"), else an installed package's `textgym.tasks` entry point;
    - "<family>:<member>" with a registered family ("reasoning_gym:chain_sum", "file:data.jsonl",
      "hf:openai/gsm8k"; see list_task_families());
    - else "package.module:name", a module path as `gym.make("module:Env-v0")` takes: the module is
      imported and `name` taken from it: a Task subclass or a function returning a Task (called with
      the kwargs), or a Task.
    """
    if isinstance(name_or_task, Task):
        return name_or_task.replace(**kwargs) if kwargs else name_or_task
    if isinstance(name_or_task, str) and ":" in name_or_task:
        family, member = name_or_task.split(":", 1)
        if family in FAMILIES:
            task = FAMILIES.get(family)(member, **kwargs)
        else:
            task = _call(name_or_task, _from_module(name_or_task), kwargs)
    else:
        if isinstance(name_or_task, str) and name_or_task not in TASKS:
            raise ValueError(f"unknown task {name_or_task!r}; known tasks: {', '.join(list_tasks())} "
                             f"(or '<family>:<member>' with a family from {', '.join(list_task_families())}, "
                             "or a module path 'package.module:name')")  # fmt: skip
        task = _call(name_or_task, TASKS.get(name_or_task), kwargs)
    if not isinstance(task, Task):
        raise TypeError(f"the factory of task {name_or_task!r} returned {type(task).__name__}, not a Task")
    return task


def _call(name: str, factory: Callable[..., Task], kwargs: Mapping[str, Any]) -> Any:
    """factory(**kwargs), its arguments checked first; a TypeError from the call (an argument a
    factory taking **kwargs passes on and nothing takes) names the task."""
    _check_arguments(name, factory, kwargs)
    try:
        return factory(**kwargs)
    except TypeError as e:
        if str(e).startswith(f"task {name!r}"):
            raise
        raise TypeError(f"task {name!r}: {e}") from e


def _from_module(name: str) -> Callable[..., Task]:
    """The task factory a module path names; an unknown family that is no module is a ValueError."""
    family = name.split(":", 1)[0]
    families = f"task families: {', '.join(list_task_families())}"
    if not is_module_path(name):
        raise ValueError(f"unknown task family {family!r} in {name!r}; {families} (or a module path 'package.module:name')")
    try:
        obj = load_attribute(name, f"task {name!r}")
    except ModuleNotFoundError as e:
        raise ValueError(f"unknown task family {family!r} in {name!r}; {families}; nor is it a module path: {e}") from None
    return task_factory(obj, f"task {name!r}")


def _check_arguments(name: str, factory: Callable[..., Task], kwargs: Mapping[str, Any]) -> None:
    """Refuse arguments the task's factory does not take, naming the ones it does (a misspelt
    `lenght=6` would otherwise be a bare TypeError from deep inside, or, worse, silently ignored)."""
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # no signature to read: the factory's own error will have to do
        return
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return
    valid = [p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = [k for k in kwargs if k not in valid]
    if unknown:
        hints = [f"{close[0]!r} for {k!r}" for k in unknown if (close := difflib.get_close_matches(k, valid, n=1))]
        raise TypeError(
            f"task {name!r} has no argument(s) {', '.join(map(repr, unknown))}"
            + (f" (did you mean {', '.join(hints)}?)" if hints else "")
            + f"; its arguments are: {', '.join(valid)}"
        )
