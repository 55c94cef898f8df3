"""The static decode step (agents.decode) computes what the HF forward computes: the same actions
and log-probs through env.step with autoresets, idle slots and multi-turn replies, in float32 and
bf16, after weight updates, and as the window of cached columns slides through its buffers;
models it does not know fall back to the HF forward."""

import numpy as np
import pytest
import torch

import textgym
from agents.decode import StaticDecoder
from agents.policy import LMPolicy
from test_policy import KW, small_model

torch.set_num_threads(1)


def pair(architecture="tiny", dtype=torch.float32, **kwargs):
    """Two policies over one model and one seed: the HF forward and the static decode step."""
    tokenizer = textgym.CharTokenizer()
    if architecture == "tiny":
        model = LMPolicy.from_pretrained("tiny", seed=0, dtype=dtype).model
    else:
        model = small_model(architecture, tokenizer, dtype=dtype)
    hf = LMPolicy(model, tokenizer, seed=0, decode="hf", **kwargs)
    static = LMPolicy(model, tokenizer, seed=0, decode="static", **kwargs)
    return hf, static


class StepCount:
    """Counts the static decode steps and the one-token HF forwards of a policy."""

    def __init__(self, policy):
        self.static = self.hf_one_token = 0
        decoder, step = policy._decoder, policy._decoder.step

        def counted(*args):
            self.static += 1
            return step(*args)

        decoder.step = counted
        policy.model.register_forward_pre_hook(self._forward, with_kwargs=True)

    def _forward(self, module, args, kwargs):
        self.hf_one_token += kwargs["input_ids"].shape[1] == 1


def rollout(policy, envs, steps, seed=0, idle_every=0):
    """The env.step loop; every `idle_every`-th step one slot sits out (active=False)."""
    policy.reset_cache()
    obs, _ = envs.reset(seed=seed)
    record = []
    for t in range(steps):
        active = np.ones(envs.num_envs, dtype=bool)
        if idle_every and t % idle_every == idle_every - 1:
            active[t % envs.num_envs] = False
        actions, log_probs = policy.act(obs, active=active)
        record.append((obs, actions, log_probs))
        actions = np.where(active, actions, obs["input_ids"][np.arange(envs.num_envs), 0])  # any token for idle slots
        obs, *_ = envs.step(actions)
    return record


def assert_same_rollouts(first, second, atol):
    for t, ((o1, a1, l1), (o2, a2, l2)) in enumerate(zip(first, second)):
        np.testing.assert_array_equal(o1["input_ids"], o2["input_ids"], err_msg=f"step {t}")
        np.testing.assert_array_equal(a1, a2, err_msg=f"step {t}")
        np.testing.assert_allclose(l1, l2, atol=atol, rtol=0, err_msg=f"step {t}")


@pytest.mark.parametrize("architecture", ["tiny", "qwen2"])
def test_static_decode_matches_the_hf_forward_through_autoresets_and_idle_slots(architecture):
    hf, static = pair(architecture)
    envs = textgym.TextGenVectorEnv(num_envs=5, tokenizer=hf.tokenizer, **KW)
    expected = rollout(hf, envs, steps=90, idle_every=7)
    count = StepCount(static)
    got = rollout(static, envs, steps=90, idle_every=7)
    assert_same_rollouts(expected, got, atol=1e-5)
    resets = sum(int((o["seq_len"] == o["prompt_len"]).sum()) for o, _, _ in got[1:])
    assert resets >= 10, "the run must include autoresets mid-batch"
    assert count.static >= 80 and count.hf_one_token == 0, "every one-token step took the static path"


def staggered_episodes(policy, steps=150, seed=0):
    """Two slots acting without an env: slot 0 restarts at steps 25, 75, 125, slot 1 at 50, 100
    (fresh 12-token prompts); returns each step's actions and log-probs."""
    rng = np.random.default_rng(seed)
    prompt = lambda: [int(t) for t in rng.integers(1, policy.vocab_size, size=12)]  # noqa: E731
    policy.seed(seed)
    policy.reset_cache()
    seqs, record = [prompt(), prompt()], []
    for step in range(steps):
        if step % 50 == 25:
            seqs[0] = prompt()
        if step % 50 == 0 and step:
            seqs[1] = prompt()
        ids = np.full((2, 200), policy.vocab_size, dtype=np.int64)
        for i, seq in enumerate(seqs):
            ids[i, : len(seq)] = seq
        actions, log_probs = policy.act({"input_ids": ids, "seq_len": np.array([[len(seq)] for seq in seqs])})
        record.append((actions, log_probs))
        seqs = [seq + [int(a)] for seq, a in zip(seqs, actions)]
    return record


def test_the_window_of_cached_columns_slides_through_the_buffers():
    """When the older of two staggered episodes restarts, compaction drops the columns only it
    used and the window of live columns moves right; at the end of the buffers it is copied back
    to column 0 of the same buffers."""
    hf, static = pair()
    decoder, adopt, events = static._decoder, static._decoder._adopt, []

    def spy(layers, width):
        before = decoder.keys[0] if decoder.keys else None
        start = adopt(layers, width)
        events.append("move" if decoder.keys[0] is before else "allocate")
        return start

    decoder._adopt = spy
    for (a1, l1), (a2, l2) in zip(staggered_episodes(hf), staggered_episodes(static)):
        np.testing.assert_array_equal(a1, a2)
        np.testing.assert_allclose(l1, l2, atol=1e-5, rtol=0)
    assert "move" in events, events


def test_static_decode_through_a_multi_turn_env():
    """The env's replies arrive as several new tokens (a suffix prefill through the HF forward
    after the static buffers' columns); episodes end and restart."""
    hf, static = pair()
    envs = textgym.TextGenVectorEnv(num_envs=4, task="guess", tokenizer=hf.tokenizer, max_new_tokens=30, max_turn_tokens=3)
    expected = rollout(hf, envs, steps=60, seed=2)
    got = rollout(static, envs, steps=60, seed=2)
    assert_same_rollouts(expected, got, atol=1e-5)
    grew = [int((o2["seq_len"] - o1["seq_len"]).max()) for (o1, _, _), (o2, _, _) in zip(got, got[1:])]
    assert max(grew) > 1, "the env must have replied (several new tokens in one step)"


def test_static_decode_in_bf16_on_cpu():
    hf, static = pair(dtype=torch.bfloat16)
    assert static._decoder is not None and static.dtype == torch.bfloat16
    envs = textgym.TextGenVectorEnv(num_envs=3, tokenizer=hf.tokenizer, **KW)
    expected = rollout(hf, envs, steps=20)
    got = rollout(static, envs, steps=20)
    # Both round to bf16 at the same points; a different product order may still flip the last bit.
    assert_same_rollouts(expected, got, atol=2e-2)
    assert all(lp.dtype == np.float32 for _, _, lp in got)


@pytest.mark.parametrize("optimizer", ["adamw", "fused-adamw", "sgd"])
def test_weight_updates_reach_the_static_step(optimizer):
    """An optimizer step and load_state_dict change the model in place: the decode step's copies
    of the weights follow (stale copies would give the old model's log-probs). Fused AdamW (what
    REINFORCE uses) writes the weights without bumping their version counters."""
    hf, static = pair()
    envs = textgym.TextGenVectorEnv(num_envs=3, tokenizer=hf.tokenizer, **KW)
    rollout(static, envs, steps=6)  # the step copies the weights
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    first = hf.log_probs(ids, torch.ones_like(ids))["log_probs"]
    original = {k: v.clone() for k, v in static.model.state_dict().items()}
    parameters = static.model.parameters()
    optimizer = {
        "adamw": lambda: torch.optim.AdamW(parameters, lr=0.05, foreach=True),
        "fused-adamw": lambda: torch.optim.AdamW(parameters, lr=0.05, fused=True),
        "sgd": lambda: torch.optim.SGD(parameters, lr=0.5),
    }[optimizer]()
    static.model.train()
    (-static.log_probs(ids, torch.ones_like(ids))["log_probs"].sum()).backward()
    optimizer.step()
    static.model.eval()
    assert (hf.log_probs(ids, torch.ones_like(ids))["log_probs"] - first).abs().max() > 1e-2, "the update must matter"
    for weights in ("updated", "loaded"):
        if weights == "loaded":
            static.model.load_state_dict(original)
        hf.seed(0)
        static.seed(0)
        assert_same_rollouts(rollout(hf, envs, steps=6), rollout(static, envs, steps=6), atol=1e-5)


def test_compiled_decode_matches_the_hf_forward_and_reports_its_warmup():
    """decode="compiled": one torch.compile graph for every batch size and cache width."""
    import torch._dynamo.utils

    hf, _ = pair()
    compiled = LMPolicy(hf.model, hf.tokenizer, seed=0, decode="compiled")
    assert compiled.decode == "compiled" and compiled._decoder.warmup_s is None
    torch._dynamo.utils.counters.clear()
    for num_envs in (3, 5):
        envs = textgym.TextGenVectorEnv(num_envs=num_envs, tokenizer=hf.tokenizer, **KW)
        hf.seed(0)
        compiled.seed(0)
        assert_same_rollouts(rollout(hf, envs, steps=20), rollout(compiled, envs, steps=20), atol=1e-5)
    assert compiled._decoder.warmup_s > 0
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1, "no recompilation for new shapes"


def test_unknown_architectures_fall_back_to_the_hf_forward():
    tokenizer = textgym.CharTokenizer()
    gpt2 = small_model("gpt2", tokenizer)
    assert LMPolicy(gpt2, tokenizer, decode="auto")._decoder is None
    with pytest.raises(ValueError, match="GPT2LMHeadModel is not one of the architectures.*use decode='hf'"):
        LMPolicy(gpt2, tokenizer, decode="static")
    with pytest.raises(ValueError, match="decode must be one of 'auto', 'static', 'compiled', 'hf'; got 'fast'"):
        LMPolicy(gpt2, tokenizer, decode="fast")
    tiny = LMPolicy.from_pretrained("tiny", seed=0)
    assert isinstance(tiny._decoder, StaticDecoder), "auto takes the static step on a CPU"
    assert LMPolicy(tiny.model, tiny.tokenizer, decode="hf")._decoder is None


@pytest.mark.default_model
def test_static_decode_matches_the_hf_forward_on_the_default_model():
    hf = LMPolicy.from_pretrained("smollm2-135m-instruct", temperature=0.7, seed=0, decode="hf")
    static = LMPolicy(hf.model, hf.tokenizer, temperature=0.7, seed=0, decode="static")
    envs = textgym.TextGenVectorEnv(num_envs=4, task="addition", tokenizer=hf.tokenizer, max_new_tokens=12)
    expected = rollout(hf, envs, steps=24, idle_every=5)
    got = rollout(static, envs, steps=24, idle_every=5)
    # 30 float32 layers: reordered sums move log-probs by up to a few 1e-5, as much as the HF
    # forward's own cached and uncached paths differ (test_default_model_takes_env_steps).
    assert_same_rollouts(expected, got, atol=1e-4)
