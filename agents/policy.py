"""LMPolicy: a Hugging Face causal LM as a policy over TextGenEnv's tokens.

The policy is pi_theta(a_t | s_t) = softmax(f_theta(s_t) / T)_{a_t} (eq. 3 in the docstring of
`agents.losses`), optionally restricted to the top-k / top-p tokens. It follows the ordinary
Gymnasium loop

    obs, info = envs.reset(seed=0)
    actions, log_probs = policy.act(obs)
    obs, rewards, terminated, truncated, info = envs.step(actions)

and costs what `model.generate` costs there because it keeps a KV cache per env slot: when a
slot's observation is the one its cache holds plus new tokens (the token the policy chose, and in
a multi-turn env the reply the env appended after it), only the new tokens go through the model;
on reset, autoreset or any other change the slot's prefix is recomputed.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np
import torch
from transformers import DynamicCache

from agents.acting import Policy, check_sampling
from agents.decode import StaticDecoder, unsupported_reason
from agents.losses import entropy as entropy_from_logits
from agents.losses import token_log_probs
from agents.lora import LoRAConfig, apply_lora
from agents.models import cache_argument, check_compatible, load_model, save_model
from textgym.tokenizers import DEFAULT_MODEL, Tokenizer

__all__ = ["LMPolicy", "filter_logits", "sample"]


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Set the logits outside the top-k tokens, then outside the top-p nucleus, to -inf.

    Both acting and training call this, so the behaviour log-probs recorded while acting and the
    log-probs recomputed for the update are of the same distribution, and importance ratios are exact.
    """
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # Keep a token if the mass before it is below top_p (the first token is always kept).
        drop_sorted = (cumulative - sorted_logits.softmax(dim=-1)) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample(log_probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One token per row of (N, V) log-probs, by inverse-CDF sampling.

    One uniform per row against the cumulative distribution: the distribution torch.multinomial
    draws from, at a fraction of its cost on a 49k vocabulary (it took 8 ms a step at batch 8 on 2
    CPU cores). `right=True` can only land on a token with positive probability.
    """
    cdf = log_probs.exp().cumsum(dim=-1)
    u = torch.rand(cdf.shape[0], 1, generator=generator, device=cdf.device) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp_(max=cdf.shape[-1] - 1)


class LMPolicy(Policy):
    """Any HF causal LM as a policy over the env's token ids (the "hf" backend of `agents.acting.Policy`).

    Args:
        model: an HF causal LM (`policy.model`); its device and dtype are the policy's.
        tokenizer: the textgym `Tokenizer` matching the model (`policy.tokenizer`; hand it to the env).
        temperature: sampling temperature T (> 0); log-probs are of softmax(logits / T).
        top_k, top_p: optional truncation of the sampling distribution.
        seed: seed of the policy's own sampling generator (None: nondeterministic).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Tokenizer,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        decode: str = "auto",
    ):
        check_sampling(temperature, top_k, top_p)
        check_compatible(model, tokenizer)
        self.model = model
        self.tokenizer = tokenizer
        self.temperature = float(temperature)
        self.top_k = top_k
        self.top_p = top_p
        self.vocab_size = tokenizer.vocab_size
        self.allowed_tokens: torch.Tensor | None = None
        self.generator = torch.Generator(device=self.device)
        self.seed(seed)
        self._decoder = _make_decoder(model, decode)
        # The one-token step in use: "static", "compiled" or "hf" ("auto" resolved).
        self.decode = "hf" if self._decoder is None else "compiled" if self._decoder.compiled else "static"
        self.reset_cache()

    # -- construction ----------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike = DEFAULT_MODEL,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype = "auto",
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        lora: LoRAConfig | None = None,
        decode: str = "auto",
        **model_kwargs: Any,
    ) -> "LMPolicy":
        """Load a policy: the embedded default "smollm2-135m-instruct", "tiny", an HF hub id, a
        local directory or a `.gguf` file. Device "auto": CUDA, MPS, then CPU; dtype "auto": bf16 on
        CUDA, fp32 elsewhere. `lora` (with a rank) wraps the model in fresh LoRA adapters
        (`agents.lora`); a LoRA checkpoint's directory loads as its base with its adapters."""
        model, tokenizer = load_model(str(name_or_path), device=device, dtype=dtype, **model_kwargs)
        if lora is not None and lora.enabled:
            model = apply_lora(model, lora, seed=seed or 0)  # the adapters' init follows the run's seed
        return cls(model, tokenizer, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, decode=decode)

    def save(self, path: str | os.PathLike) -> None:
        """Save model and tokenizer so `LMPolicy.from_pretrained(path)` restores them (`save_model`)."""
        save_model(self.model, self.tokenizer, path)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def seed(self, seed: int | None) -> None:
        """Reseed the sampling generator (None: from fresh entropy)."""
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(int(seed))

    def check_env(self, env: Any) -> None:
        """Raise a clear error if the env's tokenizer is not the policy's (vocab size, end token)."""
        env_vocab = getattr(env.unwrapped if hasattr(env, "unwrapped") else env, "vocab_size", None)
        env_tok = getattr(env.unwrapped if hasattr(env, "unwrapped") else env, "tokenizer", None)
        if env_vocab is not None and env_vocab != self.vocab_size:
            raise ValueError(
                f"the env's tokenizer has {env_vocab} tokens but the policy's has {self.vocab_size}; "
                "create the env with tokenizer=policy.tokenizer"
            )
        if env_tok is not None and env_tok.eos_token_id != self.tokenizer.eos_token_id:
            raise ValueError(
                f"the env ends episodes on token {env_tok.eos_token_id} but the policy's end token is "
                f"{self.tokenizer.eos_token_id}; create the env with tokenizer=policy.tokenizer"
            )

    # -- the distribution ------------------------------------------------------------------------

    def restrict_actions(self, mask: Any | None) -> None:
        """Sample only tokens where `mask` (vocab-sized, e.g. `env.action_masks()`) is true.

        The restriction is part of the policy's distribution, so acting and training agree on it
        (None lifts it). It is how a task's allowed characters reach the policy.
        """
        if mask is None:
            self.allowed_tokens = None
            return
        mask = torch.as_tensor(np.asarray(mask, dtype=bool).reshape(-1, self.vocab_size)[0], device=self.device)
        if mask.shape != (self.vocab_size,) or not bool(mask.any()):
            raise ValueError(f"the action mask must be a bool array of {self.vocab_size} entries with one allowed token at least")
        self.allowed_tokens = mask

    def _sampling_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits of the exact sampling distribution: float32, policy vocab only, tempered, filtered."""
        logits = logits[..., : self.vocab_size].float() / self.temperature
        if self.allowed_tokens is not None:
            logits = logits.masked_fill(~self.allowed_tokens, float("-inf"))
        return filter_logits(logits, self.top_k, self.top_p)

    # -- acting ----------------------------------------------------------------------------------

    def reset_cache(self) -> None:
        """Forget every slot's KV cache (the next `act` recomputes all prefixes)."""
        self._cache: DynamicCache | None = None
        self._valid = torch.zeros(0, 0, dtype=torch.long)  # (N, T): 1 where a cache column holds a token
        self._cached_ids = np.zeros((0, 0), dtype=np.int64)  # (N, L): the observation each slot's cache holds
        self._cached_len = np.zeros(0, dtype=np.int64)  # (N,): its length; 0: the slot has no cache

    def on_update(self) -> None:
        """The weights changed (an optimizer step): cached keys and values are stale."""
        self.reset_cache()

    @torch.no_grad()
    def act(
        self, obs: Mapping[str, np.ndarray], greedy: bool = False, active: np.ndarray | None = None
    ) -> tuple[Any, Any]:
        """Choose the next token of every slot.

        Each slot's KV cache holds the observation it last acted on. When the new observation extends
        it (by the token chosen, and in multi-turn envs by the env's reply after it) only the new
        tokens go through the model; a slot whose observation does not extend its cache (reset,
        autoreset, any other change) is recomputed. Slots with one new token, with several, and
        recomputed slots each take one batched forward pass.

        Args:
            obs: one TextGenEnv observation, or a vector env's batch of them.
            greedy: take the argmax token instead of sampling (evaluation).
            active: optional bool mask of slots to act for; the others get action 0 and log-prob 0,
                cost no forward pass of their own and keep their cache for when they act again.

        Returns:
            (actions, log_probs): int64 and float32 arrays of shape (N,), or an int and a float for
            one observation. log_probs are log pi(a|s) under the sampling distribution.
        """
        ids = np.asarray(obs["input_ids"])
        single = ids.ndim == 1
        if single:
            ids = ids[None]
        seq_len = np.asarray(obs["seq_len"]).reshape(-1).astype(np.int64)
        n = ids.shape[0]
        active = np.ones(n, dtype=bool) if active is None else np.asarray(active, dtype=bool).reshape(n)
        if self._cached_ids.shape != ids.shape:
            self.reset_cache()
            self._cached_ids = np.full_like(ids, -1)
            self._cached_len = np.zeros(n, dtype=np.int64)

        # A slot extends its cache when its observation is longer and agrees with the cached one up
        # to the cached length: past it the cached row is padding, which no token equals, so the two
        # first differ exactly there (argmax is 0 for equal rows, which then do not extend).
        cached = self._cached_len
        first_difference = (ids != self._cached_ids).argmax(axis=1)
        extends = active & (cached > 0) & (seq_len > cached) & (first_difference >= cached)
        one_token = extends & (seq_len == cached + 1)
        several = extends & ~one_token
        recompute = active & ~extends
        keep = ~active & (cached > 0)
        self._check_obs(ids, seq_len, one_token, several | recompute)

        # Slots with several new tokens and recomputed slots run apart (their batches are as wide as
        # their longest new span), each from a copy of its cache rows; they are spliced into the
        # main cache after the one-token step, which reuses their rows for fillers.
        apart = []
        if several.any():
            rows = np.flatnonzero(several)
            apart.append((rows, *self._feed(ids, seq_len, rows, start=cached[rows])))
        if recompute.any():
            rows = np.flatnonzero(recompute)
            apart.append((rows, *self._feed(ids, seq_len, rows, start=np.zeros(len(rows), dtype=np.int64))))
        logits = None
        if one_token.any():
            logits = self._decode_step(ids, seq_len, one_token, keep)
        elif not keep.any():  # no row of the main cache is needed any more
            self._cache, self._valid = None, self._valid[:, :0]
        for rows, part, cache, valid in apart:
            self._splice(rows, cache, valid)
            if logits is None:
                logits = part.new_zeros(n, part.shape[-1])
            logits[torch.as_tensor(rows, device=self.device)] = part
        if apart:
            self._compact()
        if logits is None:  # no slot is active
            zeros = np.zeros(n, dtype=np.int64)
            return (0, 0.0) if single else (zeros, zeros.astype(np.float32))

        dist_logits = self._sampling_logits(logits)
        log_probs_all = torch.log_softmax(dist_logits, dim=-1)
        if greedy:
            actions = dist_logits.argmax(dim=-1)
        else:
            actions = sample(log_probs_all, self.generator)
        chosen = log_probs_all.gather(-1, actions[:, None]).squeeze(-1)
        actions_np = actions.cpu().numpy().astype(np.int64)
        log_probs_np = chosen.float().cpu().numpy().astype(np.float32)
        actions_np[~active] = 0
        log_probs_np[~active] = 0.0

        self._cached_ids[active] = ids[active]
        self._cached_len[active] = seq_len[active]
        if single:
            return int(actions_np[0]), float(log_probs_np[0])
        return actions_np, log_probs_np

    def _check_obs(self, ids: np.ndarray, seq_len: np.ndarray, one_token: np.ndarray, whole: np.ndarray) -> None:
        """The new token of `one_token` rows, and every token and the padding of `whole` rows, must
        belong to the policy's vocabulary (an id past the embedding table is a crash on CUDA)."""
        bad = False
        if one_token.any():
            new = ids[one_token, seq_len[one_token] - 1]
            bad = bool(((new < 0) | (new >= self.vocab_size)).any())
        if whole.any():
            if (seq_len[whole] < 1).any():
                raise ValueError("an observation has no tokens; reset the env before acting")
            rows = ids[whole]
            real = np.arange(ids.shape[1])[None, :] < seq_len[whole][:, None]
            bad = bad or bool((rows[real] < 0).any() or (rows[real] >= self.vocab_size).any() or (rows[~real] != self.vocab_size).any())
        if bad:
            raise ValueError(
                f"the observation's token ids do not fit the policy's vocabulary of {self.vocab_size} "
                f"(padding must be {self.vocab_size}); create the env with tokenizer=policy.tokenizer"
            )

    def _forward(self, input_ids, attention_mask, position_ids, cache) -> torch.Tensor:
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=True,
            logits_to_keep=1,
            **{cache_argument(self.model): cache},
        )
        return out.logits[:, -1, :]

    def _decode_step(self, ids: np.ndarray, seq_len: np.ndarray, one_token: np.ndarray, keep: np.ndarray) -> torch.Tensor:
        """One token per slot through the main cache: the new token of `one_token` slots, a filler for
        the others, whose output is dropped."""
        n = ids.shape[0]
        last = np.where(one_token, ids[np.arange(n), np.maximum(seq_len - 1, 0)], 0)
        tokens = torch.as_tensor(last, device=self.device)[:, None]
        positions = torch.as_tensor(np.maximum(seq_len - 1, 0), device=self.device)[:, None]
        stepping = torch.as_tensor(one_token, device=self.device)
        # An idle slot that keeps its cache lets its filler attend to it and masks the filler's
        # column for good. Every other slot (run apart, or without a cache) attends to its filler
        # alone (never to nothing: a fully masked row gives NaNs) and its stale columns go.
        if keep.any():
            keeping = torch.as_tensor(keep, device=self.device)
            self._valid[~(stepping | keeping)] = 0
            new_col = (~keeping).long()[:, None]
        else:
            self._valid[~stepping] = 0
            new_col = torch.ones(n, 1, dtype=torch.long, device=self.device)
        self._valid = torch.cat([self._valid, new_col], dim=1)
        if self._decoder is not None and self._decoder.applies_to(self.model):
            logits = self._decoder.step(self._cache, tokens, positions, self._valid)
        else:
            logits = self._forward(tokens, self._valid, positions, self._cache)
        self._compact()
        return logits

    def _feed(
        self, ids: np.ndarray, seq_len: np.ndarray, rows: np.ndarray, start: np.ndarray
    ) -> tuple[torch.Tensor, DynamicCache, torch.Tensor]:
        """Run tokens start..seq_len of each of `rows`, left-padded into one batch, after that row's
        cached prefix (none where start is 0), leaving the main cache as it was.

        Returns the rows' next-token logits, their cache (a copy of their main-cache rows plus the
        new columns) and its attention mask, for `_splice`.
        """
        lengths = seq_len[rows] - start
        width = int(lengths.max())
        batch = np.zeros((len(rows), width), dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        positions = np.zeros((len(rows), width), dtype=np.int64)
        for j, (r, first, length) in enumerate(zip(rows, start, lengths)):
            batch[j, width - length :] = ids[r, first : first + length]
            mask[j, width - length :] = 1
            positions[j, width - length :] = np.arange(first, first + length)
        cache = DynamicCache()
        mask_t = torch.as_tensor(mask, device=self.device)
        if start.any():
            index = torch.as_tensor(rows, device=self.device)
            past = self._valid[index]
            past[torch.as_tensor(start == 0, device=self.device)] = 0
            used = past.any(dim=0)
            first = int(used.long().argmax()) if bool(used.any()) else past.shape[1]
            for i, layer in enumerate(self._cache.layers):
                cache.update(layer.keys[index, :, first:], layer.values[index, :, first:], i)
            mask_t = torch.cat([past[:, first:], mask_t], dim=1)
        logits = self._forward(
            torch.as_tensor(batch, device=self.device), mask_t, torch.as_tensor(positions, device=self.device), cache
        )
        return logits, cache, mask_t

    def _splice(self, rows: np.ndarray, cache: DynamicCache, valid: torch.Tensor) -> None:
        """Put `cache` (the caches of `rows`, masked by `valid`) into the main cache, right-aligned.

        Left padding inside a batch of new spans leaves masked columns between a row's old and new
        tokens; each row's tokens are first packed to the right (a stable sort of its mask keeps
        their order), so that the main cache does not grow by holes.
        """
        if not bool((valid[:, 1:] >= valid[:, :-1]).all()):
            order = torch.sort(valid, dim=1, stable=True).indices
            valid = valid.gather(1, order)
            for layer in cache.layers:
                gather = order[:, None, :, None].expand(-1, layer.keys.shape[1], -1, layer.keys.shape[3])
                layer.keys = layer.keys.gather(2, gather)
                layer.values = layer.values.gather(2, gather)
        first = int(valid.any(dim=0).long().argmax())
        if first > 0:
            valid = valid[:, first:]
            for layer in cache.layers:
                layer.keys, layer.values = layer.keys[:, :, first:], layer.values[:, :, first:]
        width = valid.shape[1]
        n = len(self._cached_len)
        if self._cache is None:
            if len(rows) == n:  # every slot is in `cache`: it is the whole cache
                self._cache, self._valid = cache, valid
                return
            self._cache = _empty_like_cache(cache, n, width)
            self._valid = torch.zeros(n, width, dtype=torch.long, device=self.device)
        total = self._valid.shape[1]
        if width > total:  # widen every slot on the left with masked columns
            self._cache = _pad_left(self._cache, width - total)
            self._valid = torch.nn.functional.pad(self._valid, (width - total, 0))
            total = width
        index = torch.as_tensor(rows, device=self.device)
        for layer, new in zip(self._cache.layers, cache.layers):
            layer.keys[index, :, total - width :] = new.keys
            layer.values[index, :, total - width :] = new.values
            layer.keys[index, :, : total - width] = 0
            layer.values[index, :, : total - width] = 0
        self._valid[index] = 0
        self._valid[index, total - width :] = valid

    def _compact(self) -> None:
        """Drop leading cache columns no slot uses any more (a view: the next append copies)."""
        used = self._valid.any(dim=0)
        first = int(used.float().argmax()) if bool(used.any()) else 0
        if first > 0:
            self._valid = self._valid[:, first:]
            for layer in self._cache.layers:
                layer.keys = layer.keys[:, :, first:]
                layer.values = layer.values[:, :, first:]

    # -- training --------------------------------------------------------------------------------

    def log_probs(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        with_entropy: bool = False,
        with_hidden: bool = False,
        model: torch.nn.Module | None = None,
        start: int = 0,
    ) -> dict[str, torch.Tensor]:
        """Per-token log-probs of whole right-padded sequences in one batched forward, with gradients.

        Args:
            input_ids: (B, T) prompt + completion ids, right-padded (any pad value; masked out).
            attention_mask: (B, T) 1 on real tokens.
            model: run this module instead of `self.model` (the same model wrapped, e.g. in DDP).
            start: first column wanted. The LM head (a vocabulary-sized matmul, and the
                log-softmax after it) then runs only on positions >= start: the prompt's
                positions need hidden states but no logits.

        Returns:
            {"log_probs": (B, T-1-start) log pi(x_{t+1} | x_{<=t}) for t >= start under the
             sampling distribution, "entropy": the same shape when with_entropy, "hidden":
             (B, T, H) last hidden states when with_hidden}, float32. Column t scores token t+1,
             so with start=0 a completion token at index j is at column j-1.
        """
        width = input_ids.shape[1]
        if not 0 <= start < width - 1:
            raise ValueError(f"start must be in [0, {width - 1}), got {start}")
        input_ids = input_ids.to(self.device)
        attention_mask = attention_mask.to(self.device)
        positions = (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)
        safe_ids = torch.where(attention_mask.bool(), input_ids, torch.zeros_like(input_ids))
        result = (model or self.model)(
            input_ids=safe_ids, attention_mask=attention_mask, position_ids=positions, use_cache=False,
            output_hidden_states=with_hidden, logits_to_keep=width - start,
        )  # fmt: skip
        dist_logits = self._sampling_logits(result.logits[:, :-1])
        out = {"log_probs": token_log_probs(dist_logits, safe_ids[:, start + 1 :])}
        if with_hidden:
            out["hidden"] = result.hidden_states[-1]
        if with_entropy:
            out["entropy"] = entropy_from_logits(dist_logits)
        return out


def _make_decoder(model: torch.nn.Module, decode: str) -> StaticDecoder | None:
    choices = ("auto", "static", "compiled", "hf")
    if decode not in choices:
        raise ValueError(f"decode must be one of {', '.join(map(repr, choices))}; got {decode!r}")
    if decode == "hf":
        return None
    reason = unsupported_reason(model)
    if decode == "auto":
        on_cpu = next(model.parameters()).device.type == "cpu"
        return StaticDecoder(model) if reason is None and on_cpu else None
    if reason is not None:
        raise ValueError(f"decode={decode!r} cannot run this model: {reason}; use decode='hf' (or 'auto')")
    return StaticDecoder(model, compile=decode == "compiled")


def _empty_like_cache(template: DynamicCache, n: int, width: int) -> DynamicCache:
    cache = DynamicCache()
    for layer in template.layers:
        shape = (n, layer.keys.shape[1], width, layer.keys.shape[3])
        cache.update(
            torch.zeros(shape, dtype=layer.keys.dtype, device=layer.keys.device),
            torch.zeros((n, layer.values.shape[1], width, layer.values.shape[3]), dtype=layer.values.dtype, device=layer.values.device),
            len(cache.layers),
        )
    return cache


def _pad_left(cache: DynamicCache, columns: int) -> DynamicCache:
    for layer in cache.layers:
        layer.keys = torch.nn.functional.pad(layer.keys, (0, 0, columns, 0))
        layer.values = torch.nn.functional.pad(layer.values, (0, 0, columns, 0))
    return cache
