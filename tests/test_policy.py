"""LMPolicy: the KV cache per slot is invisible (same log-probs as recomputing), ragged batches,
autoreset, multi-turn replies prefilled as suffixes, greedy determinism, save/load, bf16, and clear
errors for a mismatched tokenizer."""

import numpy as np
import pytest
import torch

import textgym
from agents.policy import LMPolicy, filter_logits


KW = dict(task="copy", max_new_tokens=6, task_kwargs={"length": 6, "min_length": 1})


@pytest.fixture(scope="module")
def policy():
    return LMPolicy.from_pretrained("tiny", seed=0)


def run_loop(policy, envs, steps, seed=0, fresh_each_step=False, greedy=False):
    """The standard env.step loop; returns every (observation, action, log-prob) it saw."""
    obs, _ = envs.reset(seed=seed)
    record = []
    for _ in range(steps):
        if fresh_each_step:
            policy.reset_cache()
        actions, log_probs = policy.act(obs, greedy=greedy)
        record.append((obs, actions, log_probs))
        obs, *_ = envs.step(actions)
    return record


def recompute(policy, obs, actions):
    """log pi(action | obs) by one uncached forward of each slot's prefix."""
    out = []
    for i in range(len(actions)):
        n = int(obs["seq_len"][i, 0])
        ids = torch.as_tensor(np.append(obs["input_ids"][i, :n], actions[i]))[None]
        with torch.no_grad():
            lp = policy.log_probs(ids, torch.ones_like(ids))["log_probs"]
        out.append(float(lp[0, -1]))
    return np.array(out)


def test_cached_stepping_matches_uncached_through_autoresets(policy):
    envs = textgym.TextGenVectorEnv(num_envs=5, tokenizer=policy.tokenizer, **KW)
    policy.seed(1)
    cached = run_loop(policy, envs, steps=40)
    resets = sum(int((o["seq_len"] == o["prompt_len"]).sum()) for o, _, _ in cached[1:])
    assert resets >= 5, "the run must include autoresets mid-batch"
    prompt_lengths = {int(x) for o, _, _ in cached for x in o["prompt_len"][:, 0]}
    assert len(prompt_lengths) > 1, "the batch must be ragged"
    policy.seed(1)
    fresh = run_loop(policy, envs, steps=40, fresh_each_step=True)
    for (o1, a1, l1), (o2, a2, l2) in zip(cached, fresh):
        np.testing.assert_array_equal(o1["input_ids"], o2["input_ids"])
        np.testing.assert_array_equal(a1, a2)
        np.testing.assert_allclose(l1, l2, atol=1e-4)


def test_recorded_log_probs_equal_training_log_probs(policy):
    envs = textgym.TextGenVectorEnv(num_envs=4, tokenizer=policy.tokenizer, **KW)
    for obs, actions, log_probs in run_loop(policy, envs, steps=15, seed=3):
        np.testing.assert_allclose(log_probs, recompute(policy, obs, actions), atol=1e-4)


def test_batched_training_log_probs_with_right_padding(policy):
    ids = torch.tensor([[5, 6, 7, 8, 9], [5, 6, 0, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
    batched = policy.log_probs(ids, mask)["log_probs"]
    alone = policy.log_probs(ids[1:, :2], mask[1:, :2])["log_probs"]
    assert batched.shape == (2, 4) and batched.dtype == torch.float32
    torch.testing.assert_close(batched[1, :1], alone[0], atol=1e-5, rtol=0)


def test_single_observation_and_greedy_determinism(policy):
    env = textgym.TextGenEnv(tokenizer=policy.tokenizer, **KW)
    obs, _ = env.reset(seed=0)
    a1, lp1 = policy.act(obs, greedy=True)
    policy.reset_cache()
    a2, lp2 = policy.act(obs, greedy=True)
    assert isinstance(a1, int) and isinstance(lp1, float) and a1 == a2 and lp1 == lp2
    envs = textgym.TextGenVectorEnv(num_envs=3, tokenizer=policy.tokenizer, **KW)
    r1 = run_loop(policy, envs, steps=10, greedy=True)
    r2 = run_loop(policy, envs, steps=10, greedy=True)
    for (_, x, _), (_, y, _) in zip(r1, r2):
        np.testing.assert_array_equal(x, y)


def test_same_seed_same_samples(policy):
    envs = textgym.TextGenVectorEnv(num_envs=3, tokenizer=policy.tokenizer, **KW)
    policy.seed(11)
    r1 = run_loop(policy, envs, steps=12)
    policy.seed(11)
    r2 = run_loop(policy, envs, steps=12)
    for (_, x, _), (_, y, _) in zip(r1, r2):
        np.testing.assert_array_equal(x, y)


def test_active_mask_idles_slots(policy):
    envs = textgym.TextGenVectorEnv(num_envs=3, tokenizer=policy.tokenizer, **KW)
    obs, _ = envs.reset(seed=0)
    actions, log_probs = policy.act(obs, active=np.array([True, False, True]))
    assert actions[1] == 0 and log_probs[1] == 0.0


def test_top_k_top_p_sampling_stays_inside_and_log_probs_agree():
    p = LMPolicy.from_pretrained("tiny", seed=0, top_k=5, top_p=0.9, temperature=0.8)
    envs = textgym.TextGenVectorEnv(num_envs=4, tokenizer=p.tokenizer, **KW)
    for obs, actions, log_probs in run_loop(p, envs, steps=10):
        np.testing.assert_allclose(log_probs, recompute(p, obs, actions), atol=1e-4)
        assert np.isfinite(log_probs).all()


def test_filter_logits_hand_case():
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0]])
    top2 = filter_logits(logits, top_k=2)
    assert torch.isinf(top2[0, 2:]).all() and torch.isfinite(top2[0, :2]).all()
    # softmax([3,2,1,0]) = [0.644, 0.237, 0.087, 0.032]: top_p=0.8 keeps the first two.
    nucleus = filter_logits(logits, top_p=0.8)
    assert torch.isfinite(nucleus[0, :2]).all() and torch.isinf(nucleus[0, 2:]).all()


def test_bf16_policy_on_cpu_takes_the_dtype_path():
    p = LMPolicy.from_pretrained("tiny", seed=0, dtype="bfloat16")
    assert p.dtype == torch.bfloat16
    envs = textgym.TextGenVectorEnv(num_envs=2, tokenizer=p.tokenizer, **KW)
    for obs, actions, log_probs in run_loop(p, envs, steps=6):
        assert log_probs.dtype == np.float32 and np.isfinite(log_probs).all()
    ids = torch.tensor([[5, 6, 7]])
    out = p.log_probs(ids, torch.ones_like(ids), with_entropy=True)
    assert out["log_probs"].dtype == torch.float32 and out["entropy"].dtype == torch.float32


def test_save_and_load_round_trip(policy, tmp_path):
    policy.save(tmp_path / "p")
    again = LMPolicy.from_pretrained(tmp_path / "p")
    ids = torch.tensor([[5, 6, 7, 8]])
    torch.testing.assert_close(
        policy.log_probs(ids, torch.ones_like(ids))["log_probs"], again.log_probs(ids, torch.ones_like(ids))["log_probs"]
    )
    assert again.tokenizer.vocab_size == policy.tokenizer.vocab_size


BIGGER_ALPHABET = "\n" + "".join(chr(c) for c in range(32, 127)) + "\t"


def test_tokenizer_mismatch_is_a_clear_error(policy):
    env = textgym.TextGenVectorEnv(num_envs=2, task="copy", tokenizer=textgym.CharTokenizer(BIGGER_ALPHABET), max_new_tokens=4)
    with pytest.raises(ValueError, match="tokenizer=policy.tokenizer"):
        policy.check_env(env)
    obs, _ = env.reset(seed=0)
    policy.reset_cache()
    with pytest.raises(ValueError, match="tokenizer=policy.tokenizer"):
        policy.act(obs)


def test_bad_sampling_arguments():
    with pytest.raises(ValueError, match="temperature"):
        LMPolicy.from_pretrained("tiny", temperature=0)
    with pytest.raises(ValueError, match="top_p"):
        LMPolicy.from_pretrained("tiny", top_p=1.5)


@pytest.mark.default_model
def test_default_model_takes_env_steps():
    p = LMPolicy.from_pretrained("smollm2-135m-instruct", temperature=0.7, seed=0)
    envs = textgym.TextGenVectorEnv(num_envs=2, task="addition", tokenizer=p.tokenizer, max_new_tokens=8)
    for obs, actions, log_probs in run_loop(p, envs, steps=8):
        np.testing.assert_allclose(log_probs, recompute(p, obs, actions), atol=2e-4)


def test_log_probs_from_a_start_column_equal_the_full_ones(policy):
    ids = torch.tensor([[5, 6, 7, 8, 9, 10], [5, 6, 7, 8, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    full = policy.log_probs(ids, mask, with_entropy=True)
    part = policy.log_probs(ids, mask, with_entropy=True, start=2)
    torch.testing.assert_close(part["log_probs"], full["log_probs"][:, 2:])
    torch.testing.assert_close(part["entropy"], full["entropy"][:, 2:])
    with pytest.raises(ValueError, match="start"):
        policy.log_probs(ids, mask, start=5)


def test_inverse_cdf_sampler_draws_the_distribution():
    from agents.policy import sample

    probs = torch.tensor([[0.5, 0.0, 0.3, 0.2, 0.0], [0.0, 0.0, 0.0, 0.0, 1.0]])
    log_probs = probs.log().repeat(20000, 1)
    draws = sample(log_probs, torch.Generator().manual_seed(0)).view(20000, 2)
    freq = torch.bincount(draws[:, 0], minlength=5).float() / 20000
    # Binomial standard error at p=0.5 and n=20000 is 0.0035: 5 SE is 0.018.
    torch.testing.assert_close(freq, probs[0], atol=0.018, rtol=0)
    assert freq[1] == 0 and freq[4] == 0 and (draws[:, 1] == 4).all()


# ---------------------------------------------------------------- multi-turn: suffix prefill


def small_model(architecture: str, tokenizer, dtype=torch.float32):
    """A two-layer model of a real HF architecture over the char tokenizer: Qwen2 (rotary
    positions, q/k/v biases, grouped KV heads) or GPT-2 (learned absolute positions)."""
    from transformers import GPT2Config, GPT2LMHeadModel, Qwen2Config, Qwen2ForCausalLM

    ends = dict(vocab_size=tokenizer.vocab_size, eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id)
    if architecture == "qwen2":
        config = Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, max_position_embeddings=256, **ends)
        cls = Qwen2ForCausalLM
    else:
        config = GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=256, **ends)
        cls = GPT2LMHeadModel
    config._attn_implementation = "sdpa"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return cls(config).to(dtype).eval()


class ForwardLog:
    """Records the raw logits `act` samples from and the (rows, width) of every model forward."""

    def __init__(self, policy):
        self.logits, self.shapes = [], []
        original = policy._sampling_logits

        def spy(logits):
            self.logits.append(logits.detach().float().clone())
            return original(logits)

        policy._sampling_logits = spy
        self.hook = policy.model.register_forward_pre_hook(
            lambda module, args, kwargs: self.shapes.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True
        )
        if policy._decoder is not None:  # the static decode step runs one-token steps without the forward
            step = policy._decoder.step

            def logged(cache, tokens, *args):
                self.shapes.append(tuple(tokens.shape))
                return step(cache, tokens, *args)

            policy._decoder.step = logged

    def close(self, policy):
        self.hook.remove()
        del policy._sampling_logits
        if policy._decoder is not None:
            del policy._decoder.step


def multi_turn_rounds(policy, rounds=9, n=6, width=96, seed=0):
    """Drive `act` the way a multi-turn vector env would, without one: after each round a slot's
    observation grows by the action chosen + k env tokens (k = 0..6, per slot and round). Slot 2
    sits idle in rounds 3-4 and resumes its episode in round 5; slot 1 is reset in round 5; slot 4
    idles in round 5 and comes back reset in round 6, when a token of slot 3's prompt also changes.
    Yields per round: the observations, the active mask, act's actions and log-probs, its
    ForwardLog, the active slots that must be recomputed, and each slot's count of new tokens."""
    rng = np.random.default_rng(seed)
    vocab, eos = policy.vocab_size, policy.tokenizer.eos_token_id
    fresh = lambda: [int(t) for t in rng.integers(1, vocab, size=int(rng.integers(10, 18)))]  # noqa: E731
    seqs = [fresh() for _ in range(n)]
    new_tokens = [len(s) for s in seqs]  # tokens each slot gained since it last acted
    recomputed = set(range(n))
    for r in range(rounds):
        if r == 5:
            seqs[1] = fresh()
            recomputed.add(1)
        if r == 6:
            seqs[4] = fresh()
            seqs[3][3] = 1 + seqs[3][3] % (vocab - 1)
            recomputed |= {3, 4}
        active = np.ones(n, dtype=bool)
        active[[2] if r in (3, 4) else [4] if r == 5 else []] = False
        ids = np.full((n, width), vocab, dtype=np.int64)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = s
        obs = {"input_ids": ids, "seq_len": np.array([[len(s)] for s in seqs]), "prompt_len": np.ones((n, 1), dtype=np.int64)}
        log = ForwardLog(policy)
        try:
            actions, log_probs = policy.act(obs, active=active)
        finally:
            log.close(policy)
        yield obs, active, actions, log_probs, log, sorted(recomputed & set(np.flatnonzero(active))), list(new_tokens)
        for i in np.flatnonzero(active):
            reply = [int(t) for t in rng.integers(1, vocab, size=int(rng.integers(0, 7))) if t != eos]
            seqs[i] = seqs[i] + [int(actions[i])] + reply
            new_tokens[i] = 1 + len(reply)
            recomputed.discard(i)
        assert max(len(s) for s in seqs) <= width


def full_recompute_logits(model, seq):
    with torch.no_grad():
        return model(input_ids=torch.as_tensor(seq, device=model.device)[None]).logits[0, -1].float()


@pytest.mark.parametrize("decode", ["hf", "auto"])  # auto: the static decode step, except for gpt2
@pytest.mark.parametrize("architecture", ["tiny", "qwen2", "gpt2"])
def test_suffix_prefill_logits_equal_a_full_recompute(architecture, decode):
    tokenizer = textgym.CharTokenizer()
    model = LMPolicy.from_pretrained("tiny", seed=0).model if architecture == "tiny" else small_model(architecture, tokenizer)
    p = LMPolicy(model, tokenizer, seed=0, decode=decode)
    assert (p._decoder is not None) == (decode == "auto" and architecture != "gpt2")
    several_seen = one_seen = 0
    for obs, active, actions, log_probs, log, recomputed, new in multi_turn_rounds(p):
        (logits,) = log.logits
        rows = np.flatnonzero(active)
        for i in rows:
            reference = full_recompute_logits(p.model, obs["input_ids"][i, : obs["seq_len"][i, 0]])
            torch.testing.assert_close(logits[i, : p.vocab_size], reference[: p.vocab_size], atol=2e-5, rtol=1e-5)
            expected = torch.log_softmax(reference[: p.vocab_size], dim=-1)[actions[i]]
            assert log_probs[i] == pytest.approx(float(expected), abs=1e-5)
        assert (actions[~active] == 0).all() and (log_probs[~active] == 0).all()
        # Only the new tokens went through the model: no forward is wider than the longest new span
        # of an extending slot or the full length of a slot that had to be recomputed.
        extending = [i for i in rows if i not in recomputed]
        widest = max([new[i] for i in extending] + [int(obs["seq_len"][i, 0]) for i in recomputed])
        assert max(w for _, w in log.shapes) == widest, (log.shapes, widest)
        # Each slot's tokens are packed to the right when spliced: padding holes do not pile up
        # (an idle round leaves one masked column in that slot).
        assert p._valid.shape[1] <= int(obs["seq_len"].max()) + 2
        one_seen += sum(new[i] == 1 for i in extending)
        several_seen += sum(new[i] > 1 for i in extending)
        if any(new[i] == 1 for i in extending):
            assert (len(obs["seq_len"]), 1) in log.shapes, "one-token slots share one decode step over every slot"
    assert one_seen >= 5 and several_seen >= 10


def test_suffix_prefill_in_bf16_records_the_training_log_probs():
    p = LMPolicy.from_pretrained("tiny", seed=0, dtype="bfloat16")
    for obs, active, actions, log_probs, _, _, _ in multi_turn_rounds(p, rounds=6, seed=1):
        rows = np.flatnonzero(active)
        assert log_probs.dtype == np.float32 and np.isfinite(log_probs).all()
        # bf16 keeps 8 bits of mantissa: cached and recomputed attention round differently.
        np.testing.assert_allclose(log_probs[rows], recompute(p, obs, actions)[rows], atol=0.01)


def test_a_bad_new_token_is_a_clear_error_on_the_cached_path(policy):
    """Tokens that extend a cached prefix are checked too (on CUDA an id past the embedding table
    is a device-side assert, not an error message)."""
    v = policy.vocab_size
    ids = np.full((2, 12), v, dtype=np.int64)
    ids[:, :4] = [5, 6, 7, 8]
    policy.reset_cache()
    policy.act({"input_ids": ids, "seq_len": np.array([[4], [4]])})
    for new in ([v + 3], [9, -1]):  # one new token, then several
        bad = ids.copy()
        bad[0, 4 : 4 + len(new)] = new
        with pytest.raises(ValueError, match="tokenizer=policy.tokenizer"):
            policy.act({"input_ids": bad, "seq_len": np.array([[4 + len(new)], [4]])})


def test_lm_policy_is_the_hf_backend_of_the_policy_protocol(policy):
    from agents.acting import Policy
    from agents.backends import make_policy

    assert isinstance(policy, Policy)
    assert make_policy(policy, "hf") is policy  # the HF model acts itself
    with pytest.raises(ValueError, match="unknown policy 'nope'; choose one of hf, vllm"):
        make_policy(policy, "nope")
    with pytest.raises(ValueError, match="policy 'hf' takes no engine settings"):
        make_policy(policy, "hf", max_model_len=512)


def test_the_vllm_engines_kv_cache_is_sized_to_the_model():
    from agents.models import TINY_CONFIG
    from agents.vllm_policy import KV_CACHE_MAX_BYTES, KV_CACHE_TOKENS, kv_cache_bytes
    from transformers import LlamaConfig

    tiny = LlamaConfig(**TINY_CONFIG)  # 2 layers x 2 kv heads x 32 dims: 1 KiB per token in float32
    assert kv_cache_bytes(tiny, torch.float32, 512) == 2 * 2 * 2 * 32 * 4 * KV_CACHE_TOKENS == 32 * 2**20
    assert kv_cache_bytes(tiny, torch.bfloat16, 512) == 16 * 2**20
    assert kv_cache_bytes(tiny, torch.float32, 65536) == 64 * 2**20  # room for one sequence of max_model_len
    smollm2 = LlamaConfig(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3)
    assert kv_cache_bytes(smollm2, torch.float32, 2048) == KV_CACHE_MAX_BYTES  # 45 KiB a token: the cap
