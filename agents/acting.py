"""The acting role's interface: `Policy`, what the agents, the rollouts and the commands call on a policy.

A backend is one class that implements it:

- `agents.policy.LMPolicy` ("hf"): a Hugging Face causal LM stepped token by token through
  `env.step`, with a KV cache per env slot;
- `agents.vllm_policy.VLLMPolicy` ("vllm"): a vLLM engine generates each slot's turn from its token
  ids and the policy hands the tokens out one per `env.step`; it learns through an LMPolicy (the
  learner), whose weights it loads into the engine after every update.

Both follow the ordinary Gymnasium loop and record the behaviour log-prob of every action under the
exact sampling distribution (temperature, then top-k, then top-p, within the allowed tokens):

    actions, log_probs = policy.act(obs)                 # one obs or a vector env's batch
    obs, rewards, terminated, truncated, info = envs.step(actions)

    learner = LMPolicy.from_pretrained("smollm2-135m-instruct", temperature=0.7)
    policy = make_policy(learner, "vllm", source="smollm2-135m-instruct")   # agents.backends; "hf": the learner
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Protocol, runtime_checkable

import numpy as np
import torch

from textgym.tokenizers import Tokenizer

__all__ = ["Policy", "check_sampling"]


@runtime_checkable
class Policy(Protocol):
    """A language-model policy over a TextGen env's token ids.

    Attributes:
        tokenizer: the textgym `Tokenizer` the env must use (`tokenizer=policy.tokenizer`).
        vocab_size: the number of token ids it acts over.
        temperature, top_k, top_p: the sampling distribution, softmax(logits / T) restricted to the
            top-k tokens, then to the top-p nucleus; the same meaning in every backend.
        allowed_tokens: None, or a (vocab_size,) bool tensor of the only tokens it samples.
        generator: the torch.Generator all its sampling derives from (`seed` resets it; its
            state is what a checkpoint keeps and what `agents.rollouts.sample_episodes` restores).
        model: the learner's HF model: what updates change and checkpoints save.
        device, dtype: the learner model's.
    """

    tokenizer: Tokenizer
    vocab_size: int
    temperature: float
    top_k: int | None
    top_p: float | None
    allowed_tokens: torch.Tensor | None
    generator: torch.Generator
    model: torch.nn.Module

    @property
    def device(self) -> torch.device: ...

    @property
    def dtype(self) -> torch.dtype: ...

    def act(self, obs: Mapping[str, np.ndarray], greedy: bool = False, active: np.ndarray | None = None) -> tuple[Any, Any]:
        """(actions, log_probs): the next token of every slot and its behaviour log-prob (int64 and
        float32 arrays of shape (N,), or an int and a float for one observation); slots not `active`
        get action 0 and log-prob 0."""
        ...

    def seed(self, seed: int | None) -> None:
        """Reseed the sampling generator (None: from fresh entropy)."""
        ...

    def restrict_actions(self, mask: Any | None) -> None:
        """Sample only the tokens where `mask` (vocab-sized) is true; None lifts the restriction."""
        ...

    def reset_cache(self) -> None:
        """Forget what is kept per slot (KV caches, buffered tokens); the next `act` starts afresh."""
        ...

    def on_update(self) -> None:
        """Called by the learner after every update: the weights changed (caches are stale; an engine
        loads the new weights)."""
        ...

    def check_env(self, env: Any) -> None:
        """Raise a clear error if the env's tokenizer is not the policy's."""
        ...

    def log_probs(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        with_entropy: bool = False,
        with_hidden: bool = False,
        model: torch.nn.Module | None = None,
        start: int = 0,
    ) -> dict[str, torch.Tensor]:
        """Per-token log-probs of whole sequences under the sampling distribution, with gradients."""
        ...

    def save(self, path: str | os.PathLike) -> None:
        """Save the learner's model and tokenizer so `LMPolicy.from_pretrained(path)` restores them."""
        ...


def check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    """Raise a ValueError for a sampling setting no backend can honour."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 (use act(..., greedy=True) for argmax), got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1 or None, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1] or None, got {top_p}")
