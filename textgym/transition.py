"""The one transition of TextGen environments, written once, for N slots at a time.

s_{t+1} = s_t ‖ a_t: each active slot's action is appended to its token ids; an episode ends on
the end token or a stop string (`terminated`) or when its token budget is spent (`truncated`),
and every episode that ended on a step is scored by the verifier in one hand-off. `TextGenEnv` is
the one-slot case and `TextGenVectorEnv` the N-slot case of this class; neither repeats any of it.

Multi-turn tasks (`textgym.tasks.multiturn`): those same ends close the policy's *turn*; the task's
`reply` answers it, and unless the episode is over its reply is appended as tokens of the
environment, s_{t+1} = s_t ‖ a_t ‖ o_t. Replies run under the verifier's guard (a failure ends that
slot's episode with `reply_error`). The reply is tokenized in context (the chat template's end
of the assistant turn, the reply's turn, the start of the next assistant turn: the "bridge"); the
tokens the policy sampled are never decoded and re-encoded. `policy_mask` marks which tokens the
policy wrote, so learners train on those alone.

    from textgym.config import EnvConfig
    from textgym.transition import Transition

    core = Transition(EnvConfig(task="addition", tokenizer="char", max_new_tokens=8), num_slots=2)
    core.start(0, core.task.example("train", 0), index=0)
    outcome = core.step(np.array([5, 0]), active=np.array([True, False]))

It also works alone wherever a program needs what an episode is without stepping one (the prompt
an example becomes, the verifier's score of a text): `prompt_ids`, `score`.
"""

from __future__ import annotations

import math
import numbers
import os
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Sequence

import numpy as np
from gymnasium import spaces

from textgym.config import EnvConfig
from textgym.example import Example
from textgym.rewards.core import RewardResult, check_isolatable, get_reward, guarded_calls, score_many
from textgym.tasks import Task, make_task
from textgym.tasks.multiturn import ReplyResult, call_reply
from textgym.tokenizers import Tokenizer, as_tokenizer

__all__ = ["Transition", "Outcome", "observation_space", "batch_infos"]

# How many examples are tokenized to size the observation when max_prompt_tokens is not given.
_PROMPT_PROBE = 4096
# The longest prompt textgym makes room for unless max_prompt_tokens says more: one stray row of a
# data file must not make every observation (and every forward pass) that long.
PROMPT_TOKENS_LIMIT = 4096
_LONGEST_PROBE = 8  # of a split too large to tokenize whole, the prompts longest in characters are measured too
# Bytes per token of one slot: its state (int64 id, int8 policy mask) and one observation of it
# (int64 id, int8 attention and policy masks).
_BYTES_PER_TOKEN = 19
_PROMPT_CACHE = 4096  # prompt ids kept per example index (a finite split is usually smaller)
_TURN = "\x00textgym-turn\x00"  # stands for the policy's turn when the chat template renders a bridge


def observation_space(length: int, vocab_size: int) -> spaces.Dict:
    """The observation space of one slot: a flat Dict of Box spaces (passes SB3's checker)."""
    return spaces.Dict(
        {
            "input_ids": spaces.Box(0, vocab_size, shape=(length,), dtype=np.int64),
            "attention_mask": spaces.Box(0, 1, shape=(length,), dtype=np.int8),
            "policy_mask": spaces.Box(0, 1, shape=(length,), dtype=np.int8),
            "prompt_len": spaces.Box(0, length, shape=(1,), dtype=np.int64),
            "seq_len": spaces.Box(0, length, shape=(1,), dtype=np.int64),
        }
    )


@dataclass
class Outcome:
    """What one step did to the slots: (N,) arrays, and the final info entries of the slots whose
    episode ended on this step (completion, answer, ended_by, episode_length, reward_components,
    and reward_error when the verifier failed, reply_error when a multi-turn reply did)."""

    rewards: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    finals: dict[int, dict[str, Any]]


class Transition:
    """The state of N slots and the one rule that moves them: see the module docstring.

    Args:
        config: the env's settings (`textgym.config.EnvConfig`).
        num_slots: how many episodes run side by side.
    """

    def __init__(self, config: EnvConfig, num_slots: int = 1):
        self.config = config
        self.task: Task = make_task(config.task, **dict(config.task_kwargs))
        self.owns_task = not isinstance(config.task, Task)  # closed with the env; a Task passed in is the caller's
        self.tokenizer: Tokenizer = as_tokenizer(config.tokenizer)
        if config.jinja_template is not None:
            self.tokenizer = _with_template(self.tokenizer, config.jinja_template)
        tok = self.tokenizer
        if config.chat_template and not tok.has_chat_template:
            raise ValueError(f"chat_template=True but tokenizer {tok.name!r} has no chat template; pass chat_template=False")
        self.chat_template = tok.has_chat_template if config.chat_template is None else config.chat_template
        # A task whose format depends on the model (its tool calls) adapts to this tokenizer once, here.
        self.task = self.task.for_tokenizer(tok, self.chat_template)
        self.tools = self.task.tool_schemas if self.chat_template else None  # the chat template's `tools=`
        self.system_prompt = self.task.system_prompt if config.system_prompt is None else config.system_prompt
        self.multi_turn = bool(self.task.multi_turn)
        if self.multi_turn and config.reward is not None:
            raise ValueError(f"task {self.task.name!r} is multi-turn: its rewards come from its reply(); leave reward=None")
        self.reward_fn = get_reward(config.reward) if config.reward is not None else self.task.reward
        self.max_turns = int(config.max_turns or getattr(self.task, "max_turns", 1))
        self.max_turn_tokens = config.max_turn_tokens or getattr(self.task, "max_turn_tokens", None)
        if config.reward_isolation == "process":
            if self.multi_turn:
                check_isolatable(self.task, f"task {self.task.name!r} (its reply)")
            else:
                check_isolatable(self.reward_fn)
        self.stop_strings: tuple[str, ...] = tuple(self.task.stop_strings if config.stop_strings is None else config.stop_strings)
        self.max_new_tokens = int(config.max_new_tokens)
        self.vocab_size = tok.vocab_size
        self.pad_token_id = self.vocab_size  # outside the vocabulary, so padding is never an action
        self.eos_token_id = -1 if tok.eos_token_id is None else tok.eos_token_id
        self.num_examples = self.task.num_examples(config.split)
        if self.num_examples == 0:
            raise ValueError(
                f"task {self.task.name!r} has no examples in split {config.split!r}; "
                "pick another split or give the task more examples"
            )
        self.num_slots = int(num_slots)
        self.obs_len = self._size_prompts() + self.max_new_tokens
        _check_memory(self.num_slots, self.obs_len, self.max_new_tokens)
        self._stop_window = max((len(s) for s in self.stop_strings), default=0) + 4
        self._prompt_cache: dict[int, tuple[list[int], bool]] = {}

        self._positions = np.arange(self.obs_len)
        if self.multi_turn and self.chat_template and config.check_chat_template != "off":
            self._probe_chat_template()
        self._allocate()

    def _allocate(self) -> None:
        """Fresh state for every slot (no episode started)."""
        n, length = self.num_slots, self.obs_len
        self.ids = np.full((n, length), self.pad_token_id, dtype=np.int64)
        self.policy_mask = np.zeros((n, length), dtype=np.int8)  # 1 where the policy sampled the token
        self.prompt_len = np.zeros(n, dtype=np.int64)
        self.seq_len = np.zeros(n, dtype=np.int64)
        self.index = np.full(n, -1, dtype=np.int64)
        self.done = np.ones(n, dtype=bool)  # a slot is done until an episode starts in it
        self.prompt_cut = np.zeros(n, dtype=bool)  # the prompt was cut to fit (prompt_overflow="truncate")
        self.examples: list[Example | None] = [None] * n
        # Multi-turn only: where the policy's current turn began, turns taken, and per episode the
        # task's state, the conversation as messages and its turns' token spans, the turn rewards.
        self.turn_start = np.zeros(n, dtype=np.int64)
        self.turns = np.zeros(n, dtype=np.int64)
        self.states: list[Any] = [None] * n
        self.messages: list[list[dict[str, str]]] = [[] for _ in range(n)]
        self.spans: list[list[dict[str, Any]]] = [[] for _ in range(n)]
        self.turn_rewards: list[list[float]] = [[] for _ in range(n)]

    # -- what an episode is ----------------------------------------------------------------------

    @property
    def single_observation_space(self) -> spaces.Dict:
        return observation_space(self.obs_len, self.vocab_size)

    def prompt_messages(self, example: Example, state: Any = None) -> list[dict[str, str]]:
        """The prompt as chat messages: the task's, after the system prompt (if any and not the task's own)."""
        messages = self.task.messages(example, state)
        if self.system_prompt and not any(m["role"] == "system" for m in messages):
            messages = [{"role": "system", "content": self.system_prompt}, *messages]
        return messages

    def prompt_text(self, example: Example, state: Any = None) -> str:
        """The prompt as the model reads it: the task's formatting, in the chat template if used."""
        messages = self.prompt_messages(example, state)
        if self.chat_template:
            return self.tokenizer.apply_chat_template(messages, self.tools)
        return "\n".join(m["content"] for m in messages if m["role"] != "system")

    def prompt_ids(self, example: Example, index: int = -1, state: Any = None) -> list[int]:
        """The prompt's token ids (cached by example index when it is one of the split's and the
        prompt does not depend on the episode's state). A prompt longer than the observation's
        prompt part raises a ValueError naming it, or with `prompt_overflow="truncate"` loses its
        middle: its start (a system prompt, the template's header) and its end (the question's
        last words, the assistant header) are kept."""
        return self._prompt(example, index, state)[0]

    def _prompt(self, example: Example, index: int, state: Any) -> tuple[list[int], bool]:
        """(the prompt's ids, whether they were cut to fit): see `prompt_ids`."""
        cache = index >= 0 and not self.multi_turn
        found = self._prompt_cache.get(index) if cache else None
        if found is not None:
            return found
        ids = self.tokenizer.encode_prompt(self.prompt_text(example, state))
        limit = self.obs_len - self.max_new_tokens
        cut = len(ids) > limit
        if cut:
            if self.config.prompt_overflow != "truncate":
                which = f"{self.config.split} example {index}" if index >= 0 else "the given example"
                raise ValueError(_too_long(which, len(ids), limit, self.max_new_tokens, example.prompt))
            head = limit // 2
            ids = ids[:head] + ids[len(ids) - (limit - head) :]
        if cache:
            if len(self._prompt_cache) >= _PROMPT_CACHE:
                self._prompt_cache.clear()
            self._prompt_cache[index] = ids, cut
        return ids, cut

    def completion_texts(self, completions: Sequence[Sequence[int]]) -> list[str]:
        """The texts the verifier reads: each completion decoded once, without its end token."""
        eos = self.eos_token_id
        return self.tokenizer.decode_batch([c[:-1] if len(c) and c[-1] == eos else c for c in completions])

    def score(
        self, texts: Sequence[str], examples: Sequence[Example], ids: Sequence[Sequence[int]] | None = None
    ) -> list[RewardResult]:
        """The verifier's results for finished completions (one hand-off; never raises). With `ids`,
        a verifier that takes `completion_ids` gets the tokens sampled, not a re-encoding."""
        cfg = self.config
        items = list(zip(texts, examples)) if ids is None else list(zip(texts, examples, ids))
        return score_many(self.reward_fn, items, cfg.reward_timeout, cfg.reward_isolation)

    def cut_at_stop(self, ids: Sequence[int]) -> list[int]:
        """`ids` up to the token where a step would have ended the episode at a stop string (all of
        them if none does): for completions sampled elsewhere (another trainer's generate) that
        did not stop there, so the verifier reads what it would have read in an episode."""
        ids = [int(i) for i in ids]
        if not self.stop_strings:
            return ids
        for k, token in enumerate(ids):
            if token != self.eos_token_id and 0 <= token < self.vocab_size and self.stop_candidates[token]:
                tail = self.tokenizer.decode(ids[max(0, k + 1 - self._stop_window) : k + 1])
                if any(s in tail for s in self.stop_strings):
                    return ids[: k + 1]
        return ids

    @cached_property
    def stop_candidates(self) -> np.ndarray:
        """Bool per token id: can this token be the one that completes a stop string?

        Only a token whose text holds the string's last character can; the test is exact when
        those characters are ASCII (byte-level tokens may split other characters, so then every
        token is a candidate). It spares decoding the tail on most steps.
        """
        if not self.stop_strings:
            return np.zeros(self.vocab_size, dtype=bool)
        last_chars = {s[-1] for s in self.stop_strings}
        if not all(ch.isascii() for ch in last_chars):
            return np.ones(self.vocab_size, dtype=bool)
        return np.array([any(ch in piece for ch in last_chars) for piece in self.tokenizer.token_strings], dtype=bool)

    @cached_property
    def action_mask(self) -> np.ndarray:
        """int8 per token id: the tokens the task allows (all when it sets no `allowed_chars`);
        the end token always. Read-only: copy it before handing it out."""
        allowed = self.task.allowed_chars
        if allowed is None:
            mask = np.ones(self.vocab_size, dtype=np.int8)
        else:
            chars = set(allowed)
            mask = np.array([bool(s) and set(s) <= chars for s in self.tokenizer.token_strings], dtype=np.int8)
            if self.tokenizer.eos_token_id is not None:
                mask[self.tokenizer.eos_token_id] = 1
        mask.setflags(write=False)
        return mask

    # -- the transition --------------------------------------------------------------------------

    def start(self, slot: int, example: Example, index: int = -1) -> None:
        """Begin an episode in `slot`: its state becomes the prompt of `example` (a multi-turn episode
        still running there is ended first: the task's `end`)."""
        if self.multi_turn and not self.done[slot]:
            self._end_episode(slot)
        state = self.task.start(example) if self.multi_turn else None
        ids, cut = self._prompt(example, index, state)
        row = self.ids[slot]
        row.fill(self.pad_token_id)
        row[: len(ids)] = ids
        self.policy_mask[slot] = 0
        self.prompt_len[slot] = self.seq_len[slot] = len(ids)
        self.prompt_cut[slot] = cut
        self.index[slot] = index
        self.examples[slot] = example
        self.done[slot] = False
        if self.multi_turn:
            self.turn_start[slot], self.turns[slot], self.states[slot] = len(ids), 0, state
            self.messages[slot] = self.prompt_messages(example, state)
            self.spans[slot] = [{"role": "prompt", "text": self.prompt_text(example, state), "start": 0, "end": len(ids)}]
            self.turn_rewards[slot] = []

    def step(self, actions: np.ndarray, active: np.ndarray) -> Outcome:
        """Append each active slot's action, end the turns and episodes that are over, score them.

        Args:
            actions: (N,) int64 token ids, already checked against the action space.
            active: (N,) bool: the slots that take their action; the others keep their state.
                A slot whose episode is done never counts as active.
        """
        n = self.num_slots
        active = active & ~self.done
        rows = np.flatnonzero(active)
        at = self.seq_len[rows]
        self.ids[rows, at] = actions[rows]  # s_{t+1} = s_t ‖ a_t
        self.policy_mask[rows, at] = 1
        self.seq_len[rows] += 1
        eos = active & (actions == self.eos_token_id)
        stop = np.zeros(n, dtype=bool)
        if self.stop_strings:
            for i in np.flatnonzero(active & ~eos & self.stop_candidates[actions]):
                stop[i] = self._hits_stop(i)
        budget = active & ~eos & ~stop & (self.seq_len - self.prompt_len >= self.max_new_tokens)
        turn_full = np.zeros(n, dtype=bool)
        if self.max_turn_tokens is not None:
            turn_full = active & ~eos & ~stop & ~budget & (self.seq_len - self.turn_start >= self.max_turn_tokens)
        rewards = np.zeros(n, dtype=np.float64)
        if self.multi_turn:
            return self._end_turns(eos, stop, budget, turn_full, rewards)
        finished = eos | stop | budget | turn_full  # a single turn's budget is the episode's
        truncated = (budget | turn_full) & (not self.config.budget_is_terminal)
        finals: dict[int, dict[str, Any]] = {}
        if finished.any():
            self.done |= finished
            ended = np.where(eos, "eos", np.where(stop, "stop", "budget"))
            finals = self._finish(np.flatnonzero(finished), ended, rewards)
        return Outcome(rewards, finished & ~truncated, truncated, finals)

    def _hits_stop(self, slot: int) -> bool:
        """Whether the slot's completion now ends in a stop string (only its tail is decoded)."""
        start = max(int(self.turn_start[slot] if self.multi_turn else self.prompt_len[slot]), int(self.seq_len[slot]) - self._stop_window)
        tail = self.tokenizer.decode(self.ids[slot, start : self.seq_len[slot]].tolist())
        return any(s in tail for s in self.stop_strings)

    def _finish(self, rows: np.ndarray, ended: np.ndarray, rewards: np.ndarray) -> dict[int, dict[str, Any]]:
        """Decode and score the episodes that ended in `rows` (one verifier hand-off); fill `rewards`."""
        completions = [self.ids[i, self.prompt_len[i] : self.seq_len[i]].tolist() for i in rows]
        texts = self.completion_texts(completions)
        results = self.score(texts, [self.examples[i] for i in rows], completions)
        finals = {}
        for i, text, completion, result in zip(rows.tolist(), texts, completions, results):
            rewards[i] = result.reward
            info = {
                "completion": text,
                "answer": self.examples[i].answer,
                "ended_by": str(ended[i]),
                "episode_length": len(completion),
                "reward_components": dict(result.components),
            }
            if result.error is not None:
                info["reward_error"] = result.error
            finals[i] = info
        return finals

    # -- multi-turn: the environment's replies --------------------------------------------------

    def _end_turns(self, eos, stop, budget, turn_full, rewards) -> Outcome:
        """Close the policy's turn in every slot where it ended; ask the task for its replies (one
        guarded hand-off, like the verifier's); append each or end the episode (per slot, in
        Python: turns end far less often than tokens are taken)."""
        n = self.num_slots
        terminated, truncated = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
        finals: dict[int, dict[str, Any]] = {}
        rows = np.flatnonzero(eos | stop | budget | turn_full).tolist()
        turns = [self.ids[i, self.turn_start[i] : self.seq_len[i]].tolist() for i in rows]
        texts = self.completion_texts(turns)
        for i, turn, text in zip(rows, turns, texts):
            start, end = int(self.turn_start[i]), int(self.seq_len[i])
            self.spans[i].append({"role": "assistant", "text": text, "start": start, "end": end})
            self.messages[i].append({"role": "assistant", "content": text})
            self.turns[i] += 1
        results = self._replies([(text, self.examples[i], self.states[i]) for i, text in zip(rows, texts)])
        for i, turn, result in zip(rows, turns, results):
            end = int(self.seq_len[i])
            reply, error = result.reply, result.error
            said: list[dict[str, str]] = []
            if reply is not None:
                self.states[i] = result.state
                said = reply.as_messages()
                if said and not (reply.done or budget[i] or self.turns[i] >= self.max_turns):
                    try:
                        bridge = self._bridge(self.messages[i][:-1], turn, said)
                    except ValueError as e:  # the tokenizer cannot encode the reply (a char tokenizer's alphabet)
                        reply, error = None, f"task {self.task.name!r}: its reply cannot be tokenized: {e}"
            rewards[i] = reply.reward if reply is not None else 0.0
            self.turn_rewards[i].append(float(rewards[i]))
            ended_by = None
            if reply is None:
                ended_by = "reply_error"
            elif reply.done or not said:
                ended_by = "done"
            elif budget[i]:
                ended_by = "budget"
            elif self.turns[i] >= self.max_turns:
                ended_by = "turns"
            else:
                room = int(self.prompt_len[i]) + self.max_new_tokens - end
                if len(bridge) >= room:  # the reply would leave no room for the policy's next token
                    ended_by = "budget"
                else:
                    self.ids[i, end : end + len(bridge)] = bridge  # s_{t+1} = s_t ‖ a_t ‖ o_t
                    self.seq_len[i] = self.turn_start[i] = end + len(bridge)
                    for m in said:
                        self.messages[i].append(m)
                    self.spans[i].append({"role": said[-1]["role"], "text": "\n".join(m["content"] for m in said),
                                          "start": end, "end": end + len(bridge)})  # fmt: skip
            if ended_by is not None:
                self.done[i] = True
                end_error = self._end_episode(i)
                # A failed reply ends the episode terminated with reward 0, as a failed verifier scores 0: a
                # learner that bootstraps a value on truncation would otherwise pay a policy for breaking a task.
                (terminated if ended_by in ("done", "reply_error") or self.config.budget_is_terminal else truncated)[i] = True
                finals[i] = self._final_info(i, ended_by, reply, error)
                if end_error is not None:
                    finals[i]["end_error"] = end_error
        return Outcome(rewards, terminated, truncated, finals)

    def _end_episode(self, slot: int) -> str | None:
        """Tell the task the slot's episode is over (`end`, once per episode); its failure, as text."""
        state, self.states[slot] = self.states[slot], None
        self.done[slot] = True
        try:
            self.task.end(self.examples[slot], state)
        except Exception as e:  # end() must not raise; if it does, say so in the episode's info, not by crashing
            return f"task {self.task.name!r}: end() raised {type(e).__name__}: {e}"
        return None

    def close(self) -> None:
        """End the multi-turn episodes still running (the task's `end`), then close the task if this
        transition made it from a name (a Task object passed in is the caller's to close)."""
        if self.multi_turn:
            for slot in np.flatnonzero(~self.done).tolist():
                self._end_episode(slot)
            if self.owns_task:
                self.task.close()

    def _replies(self, items: list[tuple[str, Example, Any]]) -> list[ReplyResult]:
        """The task's replies to the turns in `items` (text, example, state), under the verifier's guard
        (`reward_timeout`, `reward_isolation`): an exception, a bad return value or a timeout comes back
        as an error, never raised."""
        if not items:
            return []
        cfg = self.config
        return guarded_calls(call_reply, self.task, items, cfg.reward_timeout, cfg.reward_isolation,
                             what=f"task {self.task.name!r}: reply()", fail=_reply_failed)  # fmt: skip

    def _bridge(self, history: list[dict[str, str]], turn: list[int], said: list[dict[str, str]]) -> list[int]:
        """The tokens that follow the policy's turn `turn` (after the conversation `history`): its end
        (if the policy did not write it), the reply, the start of the next assistant turn — rendered by
        the chat template in context and tokenized on their own (they start at a special token, so no
        seam with the sampled ones)."""
        if not self.chat_template:
            return self.tokenizer.encode("\n" + "\n".join(m["content"] for m in said) + "\n")
        conversation = [*history, {"role": "assistant", "content": _TURN}, *said]
        rendered = self.tokenizer.apply_chat_template(conversation, self.tools)
        ids = self.tokenizer.encode(rendered[rendered.rindex(_TURN) + len(_TURN) :])
        # The policy may have written the turn's end itself (its end token, a stop string the
        # template also writes): those tokens are in the sequence already.
        for k in range(min(len(ids), len(turn), 8), 0, -1):
            if turn[-k:] == ids[:k]:
                return ids[k:]
        return ids

    def _final_info(self, slot: int, ended_by: str, reply: Any, error: str | None) -> dict[str, Any]:
        """The last step's info of a multi-turn episode (and the template check, if asked for)."""
        if self.chat_template and self.config.check_chat_template == "always" and not self.prompt_cut[slot]:
            self.check_conversation(slot)
        p, q = int(self.prompt_len[slot]), int(self.seq_len[slot])
        info = {
            "completion": self.tokenizer.decode(self.ids[slot, p:q].tolist()),
            "answer": self.examples[slot].answer,
            "ended_by": ended_by,
            "episode_length": int(self.policy_mask[slot, p:q].sum()),
            "reward_components": dict(reply.components) if reply is not None else {},
            "turns": int(self.turns[slot]),
            "turn_rewards": list(self.turn_rewards[slot]),
            "conversation": [dict(span) for span in self.spans[slot]],
        }
        if error is not None:
            info["reply_error"] = error
        return info

    def check_conversation(self, slot: int) -> None:
        """Raise a ValueError if the slot's tokens before the policy's current (or last) turn are not
        what the chat template gives for that conversation.

        textgym appends each reply after the tokens already there; that is right only for a template
        that renders earlier turns the same when a turn is added ("prefix-preserving"). Some are
        not: they drop earlier reasoning, or add a block once per conversation.
        """
        messages = self.messages[slot]
        if self.spans[slot][-1]["role"] == "assistant":  # the policy's own last turn is not compared
            messages = messages[:-1]
        self._check_rendering(messages, self.ids[slot, : self.turn_start[slot]].tolist())

    def _check_rendering(self, messages: list[dict[str, str]], ids: list[int]) -> None:
        """Raise the ValueError of `check_conversation` unless `ids` are the template's rendering of
        `messages` up to the start of the next assistant turn."""
        rendered = self.tokenizer.apply_chat_template([*messages, {"role": "assistant", "content": _TURN}], self.tools)
        expected = rendered[: rendered.rindex(_TURN)]
        if self.tokenizer.decode(ids) == expected:
            return
        k = 0  # the first token whose text departs from the template's
        while k < len(ids) and expected.startswith(self.tokenizer.decode(ids[: k + 1])):
            k += 1
        agreed = len(self.tokenizer.decode(ids[:k]))
        raise ValueError(
            f"the chat template of {self.tokenizer.name!r} is not prefix-preserving for this conversation: from token "
            f"{k} the episode has {ids[k : k + 6]} ({self.tokenizer.decode(ids[k : k + 6])!r}) where rendering the "
            f"whole conversation gives {expected[agreed : agreed + 40]!r}. textgym appends each reply after the tokens "
            "already sampled and never re-encodes them, which needs a template that renders earlier turns unchanged "
            "when a turn is added. Use a tokenizer whose template does (e.g. one that keeps earlier reasoning), or "
            "chat_template=False for plain-text turns."
        )

    def _probe_chat_template(self) -> None:
        """Check the chat template once, on a made-up conversation of the task's first example: a
        policy turn, then a reply in each role the task's replies take, two rounds of them (so a
        template that renders earlier replies differently from the latest is found). It is built
        apart from the slots' buffers, so it works whatever the token budget (a small one may leave
        no room for a reply in an episode, and episodes then end "budget" after the first turn)."""
        split = next(s for s in Task.SPLITS if self.task.num_examples(s) != 0)
        example = self.task.example(split, 0)
        state = self.task.start(example)
        try:
            messages = self.prompt_messages(example, state)
            ids = self.tokenizer.encode_prompt(self.prompt_text(example, state))
        finally:
            self.task.end(example, state)
        turn = self.tokenizer.encode("<think>a</think> probe")
        if self.tokenizer.eos_token_id is not None:
            turn.append(self.tokenizer.eos_token_id)
        for role in self.task.reply_roles * 2:  # twice: a template may render a turn differently once another follows
            history = list(messages)
            messages.append({"role": "assistant", "content": self.completion_texts([turn])[0]})
            said = [{"role": role, "content": "probe reply"}]
            ids += turn + self._bridge(history, turn, said)
            messages.extend(said)
            self._check_rendering(messages, ids)

    # -- what the slots show ---------------------------------------------------------------------

    def observations(self) -> dict[str, np.ndarray]:
        """Every slot's observation, stacked: (N, L) arrays and (N, 1) lengths, all fresh."""
        return {
            "input_ids": self.ids.copy(),
            "attention_mask": (self._positions[None, :] < self.seq_len[:, None]).astype(np.int8),
            "policy_mask": self.policy_mask.copy(),
            "prompt_len": self.prompt_len[:, None].copy(),
            "seq_len": self.seq_len[:, None].copy(),
        }

    def observation(self, slot: int) -> dict[str, np.ndarray]:
        """One slot's observation, fresh arrays."""
        return {
            "input_ids": self.ids[slot].copy(),
            "attention_mask": (self._positions < self.seq_len[slot]).astype(np.int8),
            "policy_mask": self.policy_mask[slot].copy(),
            "prompt_len": self.prompt_len[slot : slot + 1].copy(),
            "seq_len": self.seq_len[slot : slot + 1].copy(),
        }

    def info(self, slot: int) -> dict[str, Any]:
        """The info entries every step of a slot carries."""
        info: dict[str, Any] = {"prompt_len": int(self.prompt_len[slot]), "index": int(self.index[slot])}
        if self.config.action_mask_in_info:
            info["action_mask"] = self.action_mask.copy()
        return info

    def text(self, slot: int) -> str:
        """The slot's whole sequence (prompt and completion so far) as text, for rendering."""
        return self.tokenizer.decode(self.ids[slot, : self.seq_len[slot]].tolist())

    # -- sizing ----------------------------------------------------------------------------------

    def _size_prompts(self) -> int:
        """The prompt part of the observation, in tokens: `max_prompt_tokens`, or measured from the task.

        A small task is measured exactly (every split, so train and eval envs agree); an unbounded or
        large one from its first examples (`task.prompt_probe` per split), with headroom, plus the
        prompts of its finite splits that are longest in characters, so one long row anywhere in a data file is found now, not at the
        reset that draws it. A prompt longer than `max_prompt_tokens` (or than PROMPT_TOKENS_LIMIT
        when that is None) is refused here, naming it, unless `prompt_overflow="truncate"`.
        """
        cfg = self.config
        sizes = {s: self.task.num_examples(s) for s in Task.SPLITS}
        exact = all(v is not None for v in sizes.values()) and sum(sizes.values()) <= _PROMPT_PROBE
        candidates = set()
        if cfg.max_prompt_tokens is None:  # measure; an explicit size needs only the long ones checked
            probe = int(self.task.prompt_probe)
            candidates |= {(s, i) for s, k in sizes.items() for i in range((k or 0) if exact else min(k or probe, probe))}
        if not exact or cfg.max_prompt_tokens is not None:
            candidates |= {(s, i) for s, k in sizes.items() if k for i in self._longest_in_characters(s, k)}

        def length(split: str, index: int) -> int:
            example = self.task.example(split, index)
            if not self.multi_turn:
                return len(self.tokenizer.encode_prompt(self.prompt_text(example)))
            state = self.task.start(example)
            try:
                return len(self.tokenizer.encode_prompt(self.prompt_text(example, state)))
            finally:
                self.task.end(example, state)

        longest, split, index = max(((length(s, i), s, i) for s, i in sorted(candidates)), default=(1, "", -1))
        limit = cfg.max_prompt_tokens or PROMPT_TOKENS_LIMIT
        if longest > limit and cfg.prompt_overflow != "truncate":
            prompt = self.task.example(split, index).prompt
            raise ValueError(_too_long(f"{split} example {index}", longest, cfg.max_prompt_tokens, self.max_new_tokens, prompt))
        if cfg.max_prompt_tokens:
            return int(cfg.max_prompt_tokens)
        return min(longest if exact else int(math.ceil(longest * 1.25)) + 8, limit)

    def set_task(self, task: Task) -> None:
        """Serve another single-turn task from the next reset on (a harder level of a curriculum).

        The observation keeps its length, so every prompt of the new task must fit the prompt part
        it has; otherwise a ValueError names the longest and the max_prompt_tokens that would fit it
        (make the env with that, or let it measure the hardest level). Every slot must be reset after.
        """
        if task.multi_turn or self.multi_turn:
            raise ValueError("set_task serves single-turn tasks; make a new env for a multi-turn one")
        old = self.task, self.num_examples
        self.task, self.num_examples = task, task.num_examples(self.config.split)
        try:
            if self.num_examples == 0:
                raise ValueError(f"task {task.name!r} has no examples in split {self.config.split!r}")
            room = self.obs_len - self.max_new_tokens
            need = self._size_prompts()  # with max_prompt_tokens set, it refuses a longer prompt itself
            if need > room:
                raise ValueError(
                    f"task {task.name!r} has prompts of up to {need} tokens, but this env's observations make room "
                    f"for {room}: make the env with max_prompt_tokens={need} (or more) to serve it"
                )
        except ValueError:
            self.task, self.num_examples = old
            raise
        if self.config.reward is None:
            self.reward_fn = task.reward
        if self.config.stop_strings is None:
            self.stop_strings = tuple(task.stop_strings)
            self._stop_window = max((len(s) for s in self.stop_strings), default=0) + 4
        for cached in ("action_mask", "stop_candidates"):
            self.__dict__.pop(cached, None)
        self._prompt_cache = {}
        self.done[:] = True
        self.examples = [None] * self.num_slots

    def _longest_in_characters(self, split: str, size: int) -> list[int]:
        """The indices of the split's examples whose prompts are longest in characters (a few)."""
        lengths = np.fromiter((len(self.task.example(split, i).prompt) for i in range(size)), dtype=np.int64, count=size)
        k = min(_LONGEST_PROBE, size)
        return np.argpartition(lengths, size - k)[size - k :].tolist()


def _too_long(which: str, tokens: int, limit: int | None, max_new_tokens: int, prompt: str) -> str:
    """The error for a prompt longer than the observation makes room for: which one, and what to do
    (`limit` None: the default limit, PROMPT_TOKENS_LIMIT)."""
    room = f"max_prompt_tokens={limit}" if limit else f"the {PROMPT_TOKENS_LIMIT} that max_prompt_tokens=None allows"
    return (
        f"the prompt of {which} ({prompt[:40]!r}...) is {tokens} tokens, more than {room}; "
        f"pass max_prompt_tokens={tokens} to make room for it (every observation is then {tokens + max_new_tokens} "
        "tokens long), prompt_overflow='truncate' to cut longer prompts to fit, or drop that example"
    )


def _with_template(tokenizer: Tokenizer, spec: str) -> Tokenizer:
    """`tokenizer` with the chat template `jinja_template` names (a built-in name or a file)."""
    from textgym.tools.formats import load_chat_template

    if not isinstance(spec, str) or not spec:
        raise ValueError(f"jinja_template must be 'hermes' or the path of a Jinja chat template file, got {spec!r}")
    try:
        return tokenizer.with_chat_template(load_chat_template(spec))
    except ValueError as e:
        raise ValueError(f"jinja_template={spec!r}: {e}") from None


def _reply_failed(error: str) -> ReplyResult:
    return ReplyResult(None, None, error)


def _available_memory() -> int | None:
    """Bytes of memory this process could still get: MemAvailable on Linux, else the physical
    memory (None where neither can be read)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def _check_memory(num_slots: int, obs_len: int, max_new_tokens: int) -> None:
    """Refuse observations that cannot fit in memory (before numpy tries, and the system's OOM killer acts)."""
    need = num_slots * obs_len * _BYTES_PER_TOKEN
    available = _available_memory()
    if available is not None and need > available:
        raise ValueError(
            f"max_new_tokens={max_new_tokens} makes every observation {obs_len} tokens long: {num_slots} slot(s) need "
            f"{need:,} bytes for their state and one observation, more than the {available:,} bytes of memory "
            f"available; lower max_new_tokens{' or num_envs' if num_slots > 1 else ''}"
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
        raise TypeError(f"action must be an integer token id in [0, {vocab_size}), got {type(action).__name__} {action!r}")
    action = int(action)
    if not 0 <= action < vocab_size:
        raise ValueError(f"action {action} is outside the action space [0, {vocab_size})")
    return action


def check_actions(actions: Any, num_slots: int, vocab_size: int) -> np.ndarray:
    """Validate a vector env's actions (one token id per slot) and return them as int64."""
    arr = np.asarray(actions)
    if arr.shape != (num_slots,):
        raise ValueError(f"actions must have shape ({num_slots},), one token id per slot; got {arr.shape}")
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"actions must be integer token ids, got dtype {arr.dtype}")
    bad = (arr < 0) | (arr >= vocab_size)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"action {int(arr[i])} of slot {i} is outside the action space [0, {vocab_size})")
    return arr.astype(np.int64, copy=False)


def draw_index(rng: np.random.Generator, num_examples: int | None) -> int:
    """The example index a reset draws: uniform over a finite split, else over 2**31."""
    return int(rng.integers(0, num_examples if num_examples else 2**31 - 1))


def batch_infos(per_slot: dict[int, dict[str, Any]], n: int, into: dict[str, Any] | None = None) -> dict[str, Any]:
    """Stack per-slot info dicts the way Gymnasium's vector envs do (`VectorEnv._add_info`).

    Every key becomes an (n,)-array with a bool mask `_key` of the slots that have it; dicts
    recurse; an array's dtype is the type of the first (lowest) slot's value (numbers and bools
    typed, arrays stacked, anything else an object array). Grouped by key rather than by slot, so
    a step where many episodes end costs one pass per key.
    """
    out = {} if into is None else into
    slots = sorted(per_slot)
    keys = list(dict.fromkeys(k for s in slots for k in per_slot[s]))
    for key in keys:
        have = [s for s in slots if key in per_slot[s]]
        values = [per_slot[s][key] for s in have]
        first = values[0]
        if isinstance(first, dict):
            array = batch_infos({s: v for s, v in zip(have, values)}, n, out.get(key, {}))
        else:
            array = out.get(key)
            if array is None:
                if type(first) in (int, float, bool) or isinstance(first, np.number):
                    array = np.zeros(n, dtype=type(first))
                elif isinstance(first, np.ndarray):
                    array = np.zeros((n, *first.shape), dtype=first.dtype)
                else:
                    array = np.full(n, None, dtype=object)
            for s, v in zip(have, values):
                array[s] = v
        mask = out.get(f"_{key}")
        if mask is None:
            mask = np.zeros(n, dtype=np.bool_)
        mask[have] = True
        out[key], out[f"_{key}"] = array, mask
    return out
