"""Configs: one frozen dataclass per component, one default and one help text per setting.

A setting is declared once, in its component's config:

    @dataclass(frozen=True)
    class EnvConfig:
        max_new_tokens: int = setting(16, "the token budget of an episode")

and everything else is derived from that declaration: the default; the check of `Literal`
choices (`check_choices`); the `--max-new-tokens` flag of every command that takes the config,
with its type, choices and help (`add_arguments`, read back by `given`); and the "Arguments"
lines of the docstrings that document it (`describe`).

`EnvConfig` (below) is the environment's: `TextGenEnv`, `TextGenVectorEnv` and the transition
they share all take it. The agents' configs (`agents.reinforce.REINFORCEConfig`, ...) use the
same helpers.
"""

from __future__ import annotations

import argparse
import collections.abc
import dataclasses
import json
import numbers
import types
import typing
from dataclasses import MISSING, dataclass, field
from typing import Any, Literal, Mapping

__all__ = ["setting", "settings_of", "check_choices", "add_arguments", "given", "describe", "replace", "EnvConfig"]


def setting(default: Any = MISSING, help: str = "", *, default_factory: Any = MISSING, cli: bool = True) -> Any:
    """A dataclass field with its help text (`cli=False`: not a command-line flag, e.g. objects)."""
    if not help:
        raise ValueError("every setting needs its help text")
    return field(default=default, default_factory=default_factory, metadata={"help": help, "cli": cli})


def settings_of(cls: type) -> list[tuple[dataclasses.Field, Any]]:
    """The fields of a config class with their resolved types."""
    hints = typing.get_type_hints(cls)
    return [(f, hints[f.name]) for f in dataclasses.fields(cls)]


def _optional(tp: Any) -> tuple[Any, bool]:
    """(the type inside `X | None`, whether None is allowed)."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else Any), True
    return tp, False


def _choices(tp: Any) -> tuple | None:
    inner, _ = _optional(tp)
    return typing.get_args(inner) if typing.get_origin(inner) is Literal else None


def check_choices(config: Any) -> None:
    """Raise a ValueError naming the choices for every `Literal` setting with another value."""
    for f, tp in settings_of(type(config)):
        choices, (_, optional) = _choices(tp), _optional(tp)
        value = getattr(config, f.name)
        if choices is not None and value not in choices and not (optional and value is None):
            raise ValueError(f"{f.name} must be one of {', '.join(map(repr, choices))}; got {value!r}")


def _default(f: dataclasses.Field) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


def _show(value: Any, tp: Any = None) -> str:
    if value is None:
        return "auto" if _optional(tp) == (bool, True) else "None"
    if isinstance(value, Mapping):
        return json.dumps(dict(value)) if value else "{}"
    return repr(value) if isinstance(value, str) else str(value)


# -- command-line flags --------------------------------------------------------------------------


def _parser_for(tp: Any) -> dict:
    """argparse keywords for a setting's type ("none" stands for None where a setting allows it)."""
    inner, optional = _optional(tp)
    choices = _choices(tp)
    none = "|none" if optional else ""

    def nullable(parse):
        def convert(text: str):
            if optional and text.lower() in ("none", "null"):
                return None
            return parse(text)

        convert.__name__ = getattr(parse, "__name__", "value")  # argparse names it in errors
        return convert

    if choices is not None:
        kinds = {type(c) for c in choices}
        parse = kinds.pop() if len(kinds) == 1 else str
        return {"type": nullable(parse), "choices": [*choices, *([None] if optional else [])]}
    if inner is bool and optional:
        table = {"auto": None, "on": True, "true": True, "off": False, "false": False}

        def on_off(text: str):
            if text.lower() not in table:
                raise argparse.ArgumentTypeError(f"use auto, on or off, not {text!r}")
            return table[text.lower()]

        return {"type": on_off, "metavar": "{auto,on,off}"}
    if inner is bool:
        return {"action": argparse.BooleanOptionalAction}
    if inner in (int, float, str):
        return {"type": nullable(inner), "metavar": inner.__name__.upper() + none}
    if typing.get_origin(inner) in (dict, collections.abc.Mapping) or inner in (dict, collections.abc.Mapping):

        def json_object(text: str):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as e:
                raise argparse.ArgumentTypeError(f"not valid JSON ({e}): {text!r}") from None
            if not isinstance(value, dict):
                raise argparse.ArgumentTypeError(f"must be a JSON object such as '{{\"digits\": 2}}', got {text!r}")
            return value

        return {"type": json_object, "metavar": "JSON"}
    if typing.get_origin(inner) in (tuple, list):
        return {"type": str, "nargs": "+", "metavar": "TEXT"}
    return {"type": nullable(str), "metavar": "NAME" + none}


def add_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    *,
    exclude: tuple[str, ...] = (),
    notes: Mapping[str, str] | None = None,
) -> None:
    """Add a `--flag` for every command-line setting of config class `cls`.

    Flags default to "not given" (read the given ones back with `given`), so a caller can layer
    them over a preset or a resumed run's settings; the help shows the config's default. A setting
    whose flag the parser already has (the same `--seed` in two configs) is not added again: one
    flag then sets both. `notes` adds text to a flag's help (e.g. another preset's default).
    """
    have = {a.dest for a in parser._actions}  # an argument group shares its parser's list
    for f, tp in settings_of(cls):
        if not f.metadata.get("cli", True) or f.name in exclude or f.name in have:
            continue
        default = _default(f)
        note = f" {notes[f.name]}" if notes and f.name in notes else ""
        shown = "" if default is MISSING else f" (default: {_show(default, tp)})"
        parser.add_argument(
            "--" + f.name.replace("_", "-"), dest=f.name, default=argparse.SUPPRESS,
            help=f"{f.metadata['help']}{shown}{note}".replace("%", "%%"), **_parser_for(tp),
        )  # fmt: skip


def given(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The settings of `cls` that were given on the command line, by name."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in vars(args).items() if k in names}


def describe(cls: type, indent: str = "") -> str:
    """The "Arguments" lines of a docstring: one per setting, with its default and help."""
    lines = []
    for f, tp in settings_of(cls):
        default = _default(f)
        shown = "" if default is MISSING else f" (default {_show(default, tp)})"
        lines.append(f"{indent}- `{f.name}`{shown}: {f.metadata['help']}")
    return "\n".join(lines)


def replace(config: Any, **changes: Any) -> Any:
    """A copy of `config` with some settings changed; given a config class, its defaults changed.
    An unknown name raises a TypeError that lists the settings there are."""
    cls = config if isinstance(config, type) else type(config)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(changes) - set(names))
    if unknown:
        what = getattr(cls, "kind", cls.__name__)
        raise TypeError(f"unknown {what} setting(s) {unknown}; the settings are: {', '.join(names)}")
    return cls(**changes) if isinstance(config, type) else dataclasses.replace(config, **changes)


_SWITCH_WORDS = {"on": True, "true": True, "off": False, "false": False, "auto": None}


def _switch(name: str, value: Any, allow_none: bool) -> bool | None:
    """An on/off setting as a bool (None: auto, where allowed); the command line's words on, off,
    true, false (and auto) are accepted too. Anything else, e.g. a string that Python would count
    as true, is a ValueError."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or type(value).__name__ in ("bool", "bool_"):  # numpy's bools too
        return bool(value)
    if isinstance(value, str) and value.lower() in _SWITCH_WORDS and (allow_none or value.lower() != "auto"):
        return _SWITCH_WORDS[value.lower()]
    allowed = "True, False or None (auto)" if allow_none else "True or False"
    words = ", ".join(w for w in _SWITCH_WORDS if allow_none or w != "auto")
    raise ValueError(f"{name} must be {allowed}, or one of the words {words}; got {value!r}")


def _positive_int(name: str, value: Any, allow_none: bool = False) -> None:
    if allow_none and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer{' or None' if allow_none else ''}, got {value!r}")


# -- the environment's config ----------------------------------------------------------------------


@dataclass(frozen=True)
class EnvConfig:
    """The settings of a TextGen environment (single or vector) and of its transition."""

    task: Any = setting("comparison", "a task name from `textgym tasks`, or a Task object")
    task_kwargs: Mapping[str, Any] = setting(
        default_factory=dict, help='the task\'s own arguments (difficulty, prompt_style, seed), e.g. {"digits": 2}'
    )
    tokenizer: Any = setting(
        "char", "'char', an HF tokenizer, a model name or path, or an object with .tokenizer (an LMPolicy)", cli=False
    )
    max_new_tokens: int = setting(16, "the token budget of an episode: at most this many actions")
    reward: Any = setting(None, "a reward name from `textgym rewards` or a callable, instead of the task's verifier")
    split: Literal["train", "validation", "test"] = setting("train", "which of the task's splits episodes come from")
    chat_template: bool | None = setting(
        None, "wrap the prompt in the tokenizer's chat template (None or 'auto': if it has one; True/'on', False/'off')"
    )
    system_prompt: str | None = setting(None, "the system message when a chat template is used (None: the task's)")
    jinja_template: str | None = setting(
        None,
        "a chat template that replaces the tokenizer's (an HF tokenizer's): 'hermes' (built in: ChatML turns with a "
        "Hermes-style tool section, so tool tasks offer their tools natively) or the path of a Jinja file",
    )
    max_prompt_tokens: int | None = setting(
        None,
        "the prompt part of the observation, in tokens (None: measured from the task, up to 4096: a longer prompt is "
        "refused, naming it, unless prompt_overflow='truncate')",
    )
    prompt_overflow: Literal["error", "truncate"] = setting(
        "error",
        "a prompt longer than max_prompt_tokens: 'error' (refused with a message naming it) or 'truncate' (its middle "
        "is cut: the start, e.g. a system prompt, and the end, e.g. the question and the assistant header, are kept)",
    )
    stop_strings: tuple[str, ...] | None = setting(
        None, "strings that end the episode when the completion contains them (None: the task's, e.g. </answer>)"
    )
    reward_timeout: float | None = setting(
        10.0, "seconds a reward function (or a multi-turn task's reply) may take before it scores 0 (None: no limit)"
    )
    reward_isolation: Literal["thread", "process"] = setting(
        "thread",
        "where the verifier (and a multi-turn task's reply) runs: 'thread' (a timed-out one is abandoned but keeps "
        "running) or 'process' (a forked worker, killed on timeout and replaced if it crashes)",
    )
    budget_is_terminal: bool = setting(
        False, "report the end of the token budget as terminated, not truncated (for learners that bootstrap)"
    )
    action_mask_in_info: bool = setting(False, "add the task's allowed tokens (`action_mask`) to every info")
    max_turns: int | None = setting(None, "multi-turn tasks: the policy's turns per episode (None: the task's)")
    max_turn_tokens: int | None = setting(None, "multi-turn tasks: the policy's tokens per turn (None: only max_new_tokens)")
    check_chat_template: Literal["once", "always", "off"] = setting(
        "once",
        "multi-turn tasks with a chat template: compare the tokens textgym builds with the template's rendering of "
        "the whole conversation, once on a probe conversation when the env is made, at the end of every episode, or off",
    )

    def __post_init__(self) -> None:
        check_choices(self)
        for f, tp in settings_of(type(self)):
            if _optional(tp)[0] is bool:
                object.__setattr__(self, f.name, _switch(f.name, getattr(self, f.name), _optional(tp)[1]))
        _positive_int("max_new_tokens", self.max_new_tokens)
        _positive_int("max_prompt_tokens", self.max_prompt_tokens, allow_none=True)
        _positive_int("max_turns", self.max_turns, allow_none=True)
        _positive_int("max_turn_tokens", self.max_turn_tokens, allow_none=True)
        if not isinstance(self.task_kwargs, Mapping):
            raise TypeError(f"task_kwargs must be a dict of the task's arguments, got {type(self.task_kwargs).__name__}")
        if self.reward_timeout is not None and not (
            isinstance(self.reward_timeout, numbers.Real) and self.reward_timeout > 0
        ):
            raise ValueError(f"reward_timeout must be a positive number of seconds or None, got {self.reward_timeout!r}")
        if self.stop_strings is not None:
            stops = (self.stop_strings,) if isinstance(self.stop_strings, str) else tuple(self.stop_strings)
            if any(not isinstance(s, str) or not s for s in stops):
                raise ValueError(f"stop_strings must be non-empty strings, got {self.stop_strings!r}")
            object.__setattr__(self, "stop_strings", stops)

    kind = "env"  # how errors name these settings (a class attribute, not a setting)

    def replace(self, **changes: Any) -> "EnvConfig":
        """A copy with some settings changed (unknown names raise a TypeError that lists the known)."""
        return replace(self, **changes)
