"""A textgym task inside TRL's `GRPOTrainer`: its prompts as a dataset, its verifier as the reward.

    from trl import GRPOConfig, GRPOTrainer
    from textgym.integrations.trl import textgym_dataset, textgym_reward_funcs, trl_tokenizer

    model, tokenizer = ...  # a causal LM and its textgym tokenizer, e.g. agents.models.load_model("smollm2-135m-instruct")
    env = dict(task="addition", tokenizer=tokenizer, max_new_tokens=24)
    config = GRPOConfig(max_completion_length=24, temperature=0.7, learning_rate=2e-5, max_steps=20, bf16=False)
    trainer = GRPOTrainer(model=model, args=config, processing_class=trl_tokenizer(tokenizer),
                          train_dataset=textgym_dataset(split="train", **env), reward_funcs=textgym_reward_funcs(**env))
    trainer.train()

Single-turn tasks need nothing more: TRL samples, textgym's verifier scores. Multi-turn tasks (the
environment replies: calculator, guess, retry, message-level envs) also pass
`rollout_func=agents.trl.textgym_rollout_func(**env)`, which plays the episodes in textgym's env
(its module docstring says why TRL's `environment_factory` cannot run them).

What the trainer is given, and why it scores as the env does:

- `textgym_dataset` rows: `prompt`, the task's chat messages (system prompt included) when the
  chat template is used, which TRL renders with that template into the env's own prompt ids (checked
  on the first row), else the env's prompt text; `split` and `index`, the example
  (`task.example(split, index)`); `answer` and `solution`, the reference, for reading and for
  TRL's own reward functions (its math rewards read `solution`).
- `textgym_reward_funcs` gives `[textgym_reward]`, TRL's signature `(completions, completion_ids,
  **columns) -> list[float]`. It decodes the sampled ids once as the env does (the end token
  dropped; cut after the first stop string, where an episode would have ended: TRL's generate does
  not stop there, and trains on what follows), and scores them with the env's guarded scoring, so
  a verifier that raises, returns garbage or runs past `reward_timeout` costs that sample a 0, not
  the run (`reward_isolation="process"` kills a hung one). The reward's components (r1_zero's
  format/answer, `combine`'s parts) and the share of failed verifier calls are logged through
  TRL's `log_metric` as `textgym/<name>`, and each failure's message in the completions table
  (`textgym_error`). They are not reward functions of their own because TRL adds every reward
  function into the reward: a component is already in the task's.

Both take the env's settings (`textgym.config.EnvConfig`: task, task_kwargs, tokenizer,
max_new_tokens, system_prompt, chat_template, stop_strings, reward, reward_timeout, ...): give both
the same. Set `GRPOConfig.max_completion_length` to `max_new_tokens`; sampling is TRL's (its
temperature, top_k, top_p). This module imports neither TRL nor torch (the dataset needs the `datasets` package).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from textgym.config import EnvConfig
from textgym.rewards.core import RewardResult
from textgym.tokenizers import CharTokenizer, HFTokenizer, Tokenizer, as_tokenizer
from textgym.transition import Transition

__all__ = ["textgym_dataset", "textgym_reward_funcs", "trl_tokenizer", "env_rules", "EXAMPLE_KEY"]

EXAMPLE_KEY = "textgym_example"  # tags a multi-turn prompt's last message with its example: "split/index"


def env_rules(task: Any, tokenizer: Any, settings: dict[str, Any]) -> Transition:
    """The env's rules (prompt formatting, end of an episode, guarded scoring) for these settings."""
    return Transition(EnvConfig(task=task, tokenizer=tokenizer).replace(**settings))


def textgym_dataset(task: Any = "comparison", split: str = "train", *, tokenizer: Any, size: int | None = None,
                    **settings: Any):  # fmt: skip
    """The examples of `split` as a `datasets.Dataset` for GRPOTrainer: prompt, split, index, answer, solution.

    Args:
        task: a task name or a `Task`, as for the env.
        split: "train", "validation" or "test".
        tokenizer: the policy's tokenizer (a textgym `Tokenizer`, an HF tokenizer, or a name).
        size: how many examples (indices 0..size-1 of the split, in the split's seeded order;
            a finite split wraps around). None: the whole split; needed for an unbounded one.
        **settings: the env's other settings (`EnvConfig`), the same as `textgym_reward_funcs`'.
    """
    from datasets import Dataset

    rules = env_rules(task, tokenizer, {**settings, "split": split})
    if size is None:
        size = rules.num_examples
        if size is None:
            raise ValueError(f"split {split!r} of task {rules.task.name!r} is unbounded: pass size= (how many examples the dataset holds)")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    rows: dict[str, list] = {"prompt": [], "split": [], "index": [], "answer": [], "solution": []}
    for index in range(size):
        example = rules.task.example(split, index)
        if rules.multi_turn:  # played by the rollout function, which finds the example from this tag
            messages = rules.prompt_messages(example, rules.task.start(example))
            prompt: Any = [*messages[:-1], {**messages[-1], EXAMPLE_KEY: f"{split}/{index}"}]
        elif rules.chat_template:
            prompt = rules.prompt_messages(example)
        else:
            prompt = rules.prompt_text(example)
        rows["prompt"].append(prompt)
        rows["split"].append(split)
        rows["index"].append(index)
        rows["answer"].append(example.answer)
        rows["solution"].append(example.answer)
    if not rules.multi_turn:
        _check_prompt_ids(rules, rows["prompt"][0], rules.task.example(split, 0))
    return Dataset.from_dict(rows)


def _check_prompt_ids(rules: Transition, prompt: Any, example: Any) -> None:
    """Raise if TRL would turn the prompt into other ids than the env's (a template that is not
    what textgym renders, a tokenizer that adds a start token to one and not the other)."""
    hf = trl_tokenizer(rules.tokenizer)
    if isinstance(prompt, list):  # what GRPOTrainer does with conversational prompts
        rendered = hf.apply_chat_template(conversation=[prompt], add_generation_prompt=True, tokenize=True, return_dict=True)
        ids = rendered["input_ids"][0]
    else:
        ids = hf(text=[prompt])["input_ids"][0]
    ids, expected = list(ids), rules.prompt_ids(example)
    if ids != expected:
        at = next((i for i, (a, b) in enumerate(zip(ids, expected)) if a != b), min(len(ids), len(expected)))
        raise ValueError(
            f"GRPOTrainer would tokenize the prompt of {rules.task.name!r} into {len(ids)} ids, the env into "
            f"{len(expected)} (first difference at id {at}): the tokenizer's chat template or start token differs "
            "between the two; pass chat_template=False to give TRL the env's prompt text"
        )


def _examples_of(rules: Transition, split: Sequence[str] | None, index: Sequence[int] | None) -> list:
    """The examples that a batch's `split` and `index` columns name."""
    if split is None or index is None:
        raise ValueError(
            "the textgym reward needs the `split` and `index` columns of textgym_dataset(...): build the "
            "trainer's dataset with textgym_dataset (and keep GRPOConfig.remove_unused_columns=False, its default)"
        )
    return [rules.task.example(str(s), int(i)) for s, i in zip(split, index)]


def textgym_reward_funcs(task: Any = "comparison", *, tokenizer: Any, **settings: Any) -> list[Callable[..., list[float]]]:
    """`[textgym_reward]`: the task's verifier as a GRPOTrainer reward function (see the module docstring).

    For a multi-turn task the reward is what its env paid over the episode (the sum of its turns'
    rewards), which `agents.trl.textgym_rollout_func` hands over with each completion (`textgym_return`).
    """
    rules = env_rules(task, tokenizer, settings)
    if rules.multi_turn:
        return [_episode_reward(rules)]

    def textgym_reward(completions: list, completion_ids: list[list[int]], split: list[str] | None = None,
                       index: list[int] | None = None, log_metric: Callable | None = None,
                       log_extra: Callable | None = None, **_: Any) -> list[float]:  # fmt: skip
        examples = _examples_of(rules, split, index)
        longest = max(map(len, completion_ids), default=0)
        if longest > rules.max_new_tokens:
            raise ValueError(
                f"GRPOTrainer sampled a completion of {longest} tokens, more than the env's max_new_tokens="
                f"{rules.max_new_tokens}: set GRPOConfig(max_completion_length={rules.max_new_tokens}), or give the "
                "reward functions the max_new_tokens the trainer samples"
            )
        ids = [rules.cut_at_stop(c) for c in completion_ids]
        results = rules.score(rules.completion_texts(ids), examples, ids)
        _log_results(results, log_metric, log_extra)
        return [r.reward for r in results]

    return [textgym_reward]


def _episode_reward(rules: Transition) -> Callable[..., list[float]]:
    def textgym_reward(completions: list, textgym_return: list[float] | None = None,
                       textgym_components: list[dict] | None = None, textgym_error: list[str | None] | None = None,
                       log_metric: Callable | None = None, log_extra: Callable | None = None, **_: Any) -> list[float]:  # fmt: skip
        if textgym_return is None:
            raise ValueError(
                f"task {rules.task.name!r} is multi-turn: its rewards come from its env's episodes. Pass "
                "rollout_func=agents.trl.textgym_rollout_func(...) (the same settings) to GRPOTrainer"
            )
        n = len(textgym_return)
        components, errors = textgym_components or [{}] * n, textgym_error or [None] * n
        results = [RewardResult(float(r), dict(c or {}), e) for r, c, e in zip(textgym_return, components, errors)]
        _log_results(results, log_metric, log_extra)
        return [r.reward for r in results]

    return textgym_reward


def _log_results(results: Sequence[RewardResult], log_metric: Callable | None, log_extra: Callable | None) -> None:
    """The batch's reward components and verifier failures, through TRL's logging hooks."""
    n = max(len(results), 1)
    if log_metric is not None:
        for name in sorted({k for r in results for k in r.components}):
            log_metric(f"textgym/{name}", sum(r.components.get(name, 0.0) for r in results) / n)
        log_metric("textgym/reward_errors", sum(r.error is not None for r in results) / n)
    if log_extra is not None:  # every batch, so the column stays aligned with the completions
        log_extra("textgym_error", [r.error or "" for r in results])


def trl_tokenizer(tokenizer: Any):
    """The HF tokenizer GRPOTrainer takes as `processing_class`: an HF tokenizer's own, or for the
    char tokenizer an HF fast tokenizer with the same ids (one token per character, "<eos>" = 0)."""
    tok: Tokenizer = as_tokenizer(tokenizer)
    if isinstance(tok, HFTokenizer):
        return tok.hf
    if not isinstance(tok, CharTokenizer):
        raise TypeError(f"trl_tokenizer knows HF and char tokenizers, not {type(tok).__name__}")
    from tokenizers import Regex, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as RawTokenizer
    from transformers import PreTrainedTokenizerFast

    vocab = {CharTokenizer.EOS: tok.eos_token_id, **{ch: i for i, ch in enumerate(tok.token_strings) if ch}}
    raw = RawTokenizer(models.WordLevel(vocab=vocab, unk_token=CharTokenizer.EOS))
    raw.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    raw.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=raw, eos_token=CharTokenizer.EOS, pad_token=CharTokenizer.EOS)
