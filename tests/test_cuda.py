"""LMPolicy on a CUDA GPU: the behaviour log-probs `act` records in bf16 are the ones training
recomputes, the KV cache stays exact through autoresets, and the multi-turn suffix prefill equals
a full recompute. Marked `cuda`: skipped where torch.cuda.is_available() is false (the CPU suite
runs the same checks in fp32 and bf16 in test_policy.py)."""

import numpy as np
import pytest
import torch
from test_policy import KW, ForwardLog, full_recompute_logits, multi_turn_rounds, recompute, run_loop, small_model

import textgym
from agents.policy import LMPolicy

pytestmark = pytest.mark.cuda

# Max |log-prob difference| between acting through the cache and recomputing the whole sequence:
# fp32 differs only by summation order; bf16 (8 mantissa bits) by rounding, more for the 30-layer
# default model (on CPU: 0.003 for tiny, 0.19 for SmolLM2 at most, 0.02-0.08 on average).
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 0.02}


def cuda_policy(name="tiny", dtype=torch.bfloat16, **kwargs):
    p = LMPolicy.from_pretrained(name, device="cuda", dtype=dtype, seed=0, **kwargs)
    assert p.device.type == "cuda" and p.dtype == dtype
    return p


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_recorded_log_probs_equal_training_log_probs_on_cuda(dtype):
    p = cuda_policy(dtype=dtype)
    envs = textgym.TextGenVectorEnv(num_envs=8, tokenizer=p.tokenizer, **KW)
    for obs, actions, log_probs in run_loop(p, envs, steps=20, seed=3):
        assert log_probs.dtype == np.float32 and np.isfinite(log_probs).all()
        np.testing.assert_allclose(log_probs, recompute(p, obs, actions), atol=TOLERANCE[dtype])
    ids = torch.tensor([[5, 6, 7, 8]])
    out = p.log_probs(ids, torch.ones_like(ids), with_entropy=True)
    assert out["log_probs"].device.type == "cuda" and out["log_probs"].dtype == torch.float32
    assert out["entropy"].dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_kv_cache_through_autoresets_on_cuda(dtype):
    """Per step, the logits `act` samples from equal one uncached forward of each slot's sequence."""
    p = cuda_policy(dtype=dtype)
    envs = textgym.TextGenVectorEnv(num_envs=6, tokenizer=p.tokenizer, **KW)
    obs, _ = envs.reset(seed=0)
    resets = 0
    for step in range(40):
        log = ForwardLog(p)
        try:
            actions, _ = p.act(obs)
        finally:
            log.close(p)
        for i in range(envs.num_envs):
            reference = full_recompute_logits(p.model, obs["input_ids"][i, : obs["seq_len"][i, 0]])
            torch.testing.assert_close(log.logits[0][i, : p.vocab_size], reference[: p.vocab_size],
                                       atol=10 * TOLERANCE[dtype], rtol=0)
        obs, *_ = envs.step(actions)
        resets += int((obs["seq_len"] == obs["prompt_len"]).sum())
    assert resets >= 5, "the run must include autoresets mid-batch"


@pytest.mark.parametrize("architecture", ["tiny", "qwen2"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_suffix_prefill_on_cuda(architecture, dtype):
    tokenizer = textgym.CharTokenizer()
    if architecture == "tiny":
        p = cuda_policy(dtype=dtype)
    else:
        p = LMPolicy(small_model(architecture, tokenizer, dtype).to("cuda"), tokenizer, seed=0)
    for obs, active, actions, log_probs, log, _, _ in multi_turn_rounds(p):
        rows = np.flatnonzero(active)
        for i in rows:
            reference = full_recompute_logits(p.model, obs["input_ids"][i, : obs["seq_len"][i, 0]])
            torch.testing.assert_close(log.logits[0][i, : p.vocab_size], reference[: p.vocab_size],
                                       atol=10 * TOLERANCE[dtype], rtol=0)
        np.testing.assert_allclose(log_probs[rows], recompute(p, obs, actions)[rows], atol=TOLERANCE[dtype])


@pytest.mark.default_model
def test_default_model_in_bf16_on_cuda():
    p = cuda_policy("smollm2-135m-instruct", temperature=0.7)
    envs = textgym.TextGenVectorEnv(num_envs=8, task="addition", tokenizer=p.tokenizer, max_new_tokens=16)
    diffs = []
    for obs, actions, log_probs in run_loop(p, envs, steps=16):
        diffs.append(np.abs(log_probs - recompute(p, obs, actions)))
    diffs = np.concatenate(diffs)
    assert diffs.max() < 0.5 and diffs.mean() < 0.05, (diffs.max(), diffs.mean())
