"""Use reward functions written for TRL unchanged.

    from trl.rewards import accuracy_reward, get_soft_overlong_punishment
    env = TextGenEnv(task=..., tokenizer=tok, reward=from_trl(accuracy_reward))
    env = TextGenEnv(task=..., tokenizer=tok,
                     reward=from_trl(get_soft_overlong_punishment(64, 16), tokenizer=tok))

TRL calls `fn(prompts=[...], completions=[...], completion_ids=[...], **columns) -> list[float |
None]`, a batch at a time, with one list per dataset column. A textgym reward is one call per
completion with the text and the example; `from_trl` turns one into the other (a batch of one).
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Sequence

from textgym.example import Example
from textgym.tokenizers import as_tokenizer

__all__ = ["from_trl"]

CONVERSATIONAL = (True, False, "auto")
_OURS = ("prompts", "completions", "completion_ids")  # never taken from metadata


def _defined_in_trl(fn: Any) -> bool:
    module = getattr(fn, "__module__", None) or getattr(type(fn), "__module__", "")
    return module == "trl.rewards" or module.startswith("trl.rewards.")


def _needs(fn: Any, parameter: str) -> bool:
    """Whether `fn` has a parameter `parameter` without a default (so it cannot run without it)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    p = params.get(parameter)
    return p is not None and p.default is inspect.Parameter.empty and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)


def from_trl(
    fn: Callable[..., list],
    *,
    conversational: bool | str = "auto",
    tokenizer: Any = None,
    answer_columns: str | Sequence[str] = ("solution", "answer"),
) -> Callable[[str, Example], tuple[float, dict[str, float]]]:
    """Turn a TRL reward function into a textgym reward: `(reward, {"none": 0.0 or 1.0})`.

    What the function is given, for one completion of `example`:

    - `completions`: `[[{"role": "assistant", "content": text}]]` when conversational, else
      `[text]`; `prompts`: `[[{"role": "user", "content": example.prompt}]]`, else
      `[example.prompt]` (the task's question, not the formatted prompt: a reward sees the example,
      not the env). `conversational`: True or False as the env is used with or without a chat
      template; "auto" (default): with a `tokenizer`, whether it has a chat template (as the env
      decides by default); without one, True for TRL's own reward functions (`trl.rewards`, which
      accept nothing else) and False for any other function.
    - the reference answer under each name in `answer_columns` (TRL's math rewards read
      `solution`; default: both `solution` and `answer`), and every `example.metadata` field as a
      column of its own name (the answer wins a clash).
    - `completion_ids`: in an env episode, the token ids the policy sampled (the env hands them
      to every reward that takes a `completion_ids` keyword, as this adapter does). Called
      outside an env (`score(...)` on a text), only with a `tokenizer` (a textgym `Tokenizer`, an
      HF tokenizer or a name `as_tokenizer` takes): the tokenizer's encoding of the text, which
      can differ from what was sampled at BPE seams (measured with SmolLM2-135M-Instruct at
      T = 0.7, 48 tokens: 21 of 24 sampled completions re-encoded identically, 3 one token
      longer). A function that requires `completion_ids` is refused here without a tokenizer.

    TRL's None ("this reward does not apply to this example", e.g. an unparseable solution)
    becomes 0.0 with the component `none` = 1.0, so it is counted rather than silently averaged
    in. TRL's math rewards call math-verify, which runs without its timeouts off the main thread;
    run them with `reward_isolation="process"` so a runaway parse is killed.
    """
    if conversational not in CONVERSATIONAL:
        raise ValueError(f"conversational must be True, False or 'auto', got {conversational!r}")
    tok = None if tokenizer is None else as_tokenizer(tokenizer)
    if conversational == "auto":
        conversational = tok.has_chat_template if tok is not None else _defined_in_trl(fn)
    columns_for_answer = (answer_columns,) if isinstance(answer_columns, str) else tuple(answer_columns)
    name = getattr(fn, "__name__", None) or type(fn).__name__
    if tok is None and _needs(fn, "completion_ids"):
        raise ValueError(
            f"TRL reward {name!r} needs completion_ids; pass tokenizer= (the env's tokenizer) to from_trl: in an env "
            "episode it gets the sampled ids, and the tokenizer re-encodes text scored outside one"
        )

    def trl_reward(completion: str, example: Example, completion_ids: list[int] | None = None) -> tuple[float, dict[str, float]]:
        columns: dict[str, list] = {k: [v] for k, v in example.metadata.items() if k not in _OURS}
        columns.update({column: [example.answer] for column in columns_for_answer})
        if conversational:
            prompts: list = [[{"role": "user", "content": example.prompt}]]
            completions: list = [[{"role": "assistant", "content": completion}]]
        else:
            prompts, completions = [example.prompt], [completion]
        if completion_ids is not None:  # from the env: the tokens sampled
            columns["completion_ids"] = [list(completion_ids)]
        elif tok is not None:
            columns["completion_ids"] = [tok.encode(completion)]
        out = fn(prompts=prompts, completions=completions, **columns)
        if len(out) != 1:
            raise ValueError(f"TRL reward returned {len(out)} values for 1 completion")
        if out[0] is None:
            return 0.0, {"none": 1.0}
        return out[0], {"none": 0.0}

    trl_reward.__name__ = trl_reward.__qualname__ = f"from_trl({name})"
    trl_reward.conversational = conversational  # what was decided, for the curious and for tests
    return trl_reward
