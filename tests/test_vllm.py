"""VLLMPolicy (agents/vllm_policy.py): a vLLM engine behind the Policy protocol, on the default model.

These tests run where vLLM is installed: CI's second environment (`bash .ci/setup-vllm VENV`;
`.ci/run` sets TEXTGYM_VLLM_TESTS=1 there, so a vLLM that is missing or fails to import is a
failure, not a skip). Elsewhere the module is skipped. One engine serves the module (it starts in
~1 min on a busy 2-core machine).

- through env.step on the default task: valid episodes, one engine request per slot's turn, and
  behaviour log-probs equal to the learner's (`LMPolicy.log_probs`) on the same tokens, at the
  default preset's temperature and with top-k/top-p; greedy decoding takes the learner's tokens;
- a multi-turn task: a request per turn, from the whole prefix with the env's reply; tokens past
  the point where the env ends a turn (a stop string, the turn limit) are dropped;
- allowed-token masks hold; the same seed gives the same actions, another seed others;
- `textgym train --policy vllm` and `textgym eval --policy vllm` write what they write with hf;
- after a real REINFORCE update the engine holds the learner's new weights (`on_update`).
"""

import importlib.util
import os

import numpy as np
import pytest
import torch

if os.environ.get("TEXTGYM_VLLM_TESTS") != "1" and importlib.util.find_spec("vllm") is None:
    pytest.skip(
        "vLLM is not installed in this environment; these tests run in CI's vLLM environment (bash .ci/setup-vllm VENV)",
        allow_module_level=True,
    )

import textgym
from agents.models import weights_dir
from agents.policy import LMPolicy
from agents.reinforce import REINFORCE
from agents.rollouts import collect_episodes, to_batch
from agents.vllm_policy import VLLMPolicy
from textgym.tokenizers import DEFAULT_MODEL

# Deprecations vLLM raises as it starts its engine (torch names it uses, or torch.utils.mkldnn it
# imports), whatever textgym does: its noise, not textgym's to fix.
pytestmark = [
    pytest.mark.filterwarnings("ignore:`torch.distributed.reduce_op` is deprecated:FutureWarning"),
    pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"),
]

DEFAULT_TASK = dict(task="comparison", max_new_tokens=8)
MULTI_TURN = dict(task="retry", task_kwargs={"task": "comparison", "attempts": 3}, max_new_tokens=24, max_turn_tokens=5,
                  stop_strings=(".",))  # fmt: skip


@pytest.fixture(scope="module")
def policy():
    learner = LMPolicy.from_pretrained(DEFAULT_MODEL, device="cpu", dtype="float32", temperature=0.7, seed=0)
    policy = VLLMPolicy(learner, model_dir=weights_dir(DEFAULT_MODEL), max_model_len=512)
    yield policy
    policy.close()


def envs_for(policy, num_envs=4, group_size=2, **settings):
    settings = settings if "task" in settings else {**DEFAULT_TASK, **settings}
    return textgym.TextGenVectorEnv(num_envs=num_envs, group_size=group_size, tokenizer=policy.tokenizer, **settings)


def learner_log_probs(policy, token_ids, positions):
    """log pi(token at p | tokens before p) under the learner, for every p in `positions`."""
    ids = torch.as_tensor(np.asarray(token_ids))[None]
    with torch.no_grad():
        columns = policy.learner.log_probs(ids, torch.ones_like(ids))["log_probs"][0]
    return columns[np.asarray(positions) - 1].numpy()


def assert_learner_agrees(policy, episodes):
    """The behaviour log-probs the engine recorded are the learner's on the same tokens (float32)."""
    diff = np.concatenate([np.abs(learner_log_probs(policy, e.token_ids, e.action_positions) - e.log_probs) for e in episodes])
    assert len(diff) > 0
    assert diff.mean() < 1e-4 and diff.max() < 1e-3, f"mean |Δ log p| {diff.mean():.2e}, max {diff.max():.2e}"


def test_default_task_through_env_step_with_the_learners_log_probs(policy):
    envs = envs_for(policy)
    requests = policy.engine_requests
    episodes, _ = collect_episodes(policy, envs, seed=0)  # also checks each action is where the env wrote it
    assert policy.engine_requests - requests == 4, "one request per slot: the whole turn at once"
    assert all(1 <= len(e.action_positions) <= 8 for e in episodes)
    assert all(e.info["ended_by"] in ("eos", "budget") for e in episodes)
    assert_learner_agrees(policy, episodes)


def test_top_k_and_top_p_mean_what_they_mean_for_the_learner(policy):
    learner = policy.learner
    learner.top_k, learner.top_p = 20, 0.8
    try:
        episodes, _ = collect_episodes(policy, envs_for(policy), seed=1)
        assert_learner_agrees(policy, episodes)  # a token outside the learner's top-k/top-p would be -inf there
    finally:
        learner.top_k = learner.top_p = None


def test_greedy_takes_the_learners_argmax_tokens(policy):
    envs = envs_for(policy)
    engine, _ = collect_episodes(policy, envs, seed=2, greedy=True)
    hf, _ = collect_episodes(policy.learner, envs, seed=2, greedy=True)
    for a, b in zip(engine, hf):
        np.testing.assert_array_equal(a.token_ids, b.token_ids)


def test_multi_turn_requests_a_turn_at_a_time_from_the_whole_prefix(policy):
    envs = envs_for(policy, **MULTI_TURN)
    requests = policy.engine_requests
    episodes, _ = collect_episodes(policy, envs, seed=0)
    turns = [e.info["turns"] for e in episodes]
    assert max(turns) >= 2, "the test needs a reply from the env"
    # After a reply the observation no longer extends what was buffered: a new request per turn.
    assert policy.engine_requests - requests == sum(turns)
    assert_learner_agrees(policy, episodes)  # the learner scores the whole sequence, replies included


def test_tokens_past_the_end_of_a_turn_are_dropped(policy):
    # A budget from another env (no turn limit, a larger episode budget): each request asks for more
    # than the turn takes, and the env's turn limit and stop string decide where the turn ends.
    policy.check_env(envs_for(policy, num_envs=1, group_size=1, task="comparison", max_new_tokens=24))
    envs = envs_for(policy, **MULTI_TURN, autoreset_mode="disabled")
    obs, _ = envs.reset(seed=3)
    done = np.zeros(envs.num_envs, dtype=bool)
    records, finals = [], {}
    tokens, handed = policy.engine_tokens, 0
    while not done.all():
        actions, log_probs = policy.act(obs, active=~done)
        records += [(i, int(obs["seq_len"][i, 0]), log_probs[i]) for i in np.flatnonzero(~done)]
        handed += int((~done).sum())
        obs, _, terminated, truncated, info = envs.step(actions)
        for i in np.flatnonzero((terminated | truncated) & ~done):
            finals[i] = obs["input_ids"][i, : obs["seq_len"][i, 0]].copy()
        done |= terminated | truncated
    assert policy.engine_tokens - tokens > handed, "the engine generated past the turns' ends"
    for i, sequence in finals.items():
        mine = [(p, lp) for slot, p, lp in records if slot == i]
        expected = learner_log_probs(policy, sequence, [p for p, _ in mine])
        np.testing.assert_allclose([lp for _, lp in mine], expected, atol=1e-3)


def test_allowed_token_masks_hold(policy):
    envs = envs_for(policy)
    mask = envs.action_masks()[0].astype(bool)
    assert 0 < mask.sum() < 1000, "the comparison task allows digits and the end token"
    policy.restrict_actions(mask)
    try:
        episodes, _ = collect_episodes(policy, envs, seed=4)
        assert all(mask[e.actions].all() for e in episodes)
        assert_learner_agrees(policy, episodes)  # the learner's distribution is restricted the same way
    finally:
        policy.restrict_actions(None)


def test_same_seed_same_actions(policy):
    envs = envs_for(policy)
    runs = []
    for seed in (5, 5, 6):
        policy.seed(seed)
        episodes, _ = collect_episodes(policy, envs, seed=0)
        runs.append([e.token_ids for e in episodes])
    assert all(np.array_equal(a, b) for a, b in zip(runs[0], runs[1]))
    assert not all(np.array_equal(a, b) for a, b in zip(runs[0], runs[2]))


def test_textgym_train_and_eval_with_the_vllm_policy(policy, tmp_path, monkeypatch, capsys):
    import json

    from agents import backends, evaluation, reinforce, train

    # The commands' own engine would start in ~1 min: this module's serves them (their learners'
    # weights are loaded into it), and gets its learner's weights back afterwards.
    def share_engine(learner, kind="hf", source=None, **settings):
        return VLLMPolicy(learner, engine=policy.engine) if kind == "vllm" else learner

    monkeypatch.setattr(backends, "make_policy", share_engine)
    monkeypatch.setattr(reinforce, "make_policy", share_engine)
    run = tmp_path / "run"
    try:
        assert train.main(["--policy", "vllm", "--iterations", "1", "--max-new-tokens", "4", "--prompts", "1", "--group-size", "2",
                           "--eval-episodes", "2", "--no-progress-bar", "--threads", "2", "--out", str(run)]) == 0  # fmt: skip
        assert "vllm engine started" in capsys.readouterr().out
        assert json.loads((run / "config.json").read_text())["policy"] == "vllm"
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert any("train_reward" in r for r in rows) and any("val_reward" in r for r in rows)
        checkpoint = run / (run / "latest").read_text().strip()
        assert (checkpoint / "policy" / "model.safetensors").exists()  # the learner's weights, as with hf
        out = tmp_path / "eval"
        assert evaluation.main(["--model", str(run), "--policy", "vllm", "--samples", "2", "--problems", "2",
                                "--no-progress-bar", "--out", str(out)]) == 0  # fmt: skip
        header = json.loads((out / "samples.jsonl").read_text().splitlines()[0])
        assert '"policy": "vllm"' in json.dumps(header)  # the samples say which backend drew them
    finally:
        policy.sync_weights()


def test_the_benchmarks_vllm_parts_run(policy):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "benchmarks"))
    import rollout_throughput
    import vllm_mismatch

    m = vllm_mismatch.measure_mismatch(policy, envs_for(policy, num_envs=2, group_size=1), episodes=2)
    assert m["episodes"] == 2 and m["tokens"] > 0 and m["mean_abs"] < 1e-4 and m["clipped"] == 0
    r = rollout_throughput.measure(policy.learner, batch=2, new_tokens=3, repeats=1, engine=policy)
    assert r["e"] > 0 and r["a/e"] > 0
    assert policy.allowed_tokens is None  # the benchmark lifts its restriction


def engine_log_probs(policy, ids):
    """The engine's log-probs of a fixed sequence (its prompt log-probs: temperature 1, nothing masked)."""
    from vllm import SamplingParams

    out = policy.engine.generate([{"prompt_token_ids": list(ids)}], SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False),
                                 use_tqdm=False)[0]  # fmt: skip
    return np.array([position[token].logprob for token, position in zip(ids[1:], out.prompt_logprobs[1:])])


def model_log_probs(model, ids):
    with torch.no_grad():
        logits = model(torch.as_tensor([list(ids)])).logits[0, :-1].float()
    return torch.log_softmax(logits, dim=-1).gather(-1, torch.as_tensor(ids[1:])[:, None])[:, 0].numpy()


def test_weights_are_synced_into_the_engine_after_an_update(policy):
    learner = policy.learner
    ids = policy.tokenizer.encode("Which is larger: 37 or 52? 52 is larger than 37.")
    saved = {k: v.detach().clone() for k, v in learner.model.state_dict().items()}
    before = engine_log_probs(policy, ids)
    np.testing.assert_allclose(before, model_log_probs(learner.model, ids), atol=1e-4)
    try:
        # The entropy bonus gives every parameter a gradient whatever the rewards are.
        agent = REINFORCE(policy, baseline="none", entropy_coef=0.1, lr=1e-4, amp="off")
        envs = envs_for(policy, num_envs=2)
        episodes, _ = collect_episodes(policy, envs, seed=7)
        agent.update(to_batch(episodes, group_size=2))  # calls policy.on_update: the weights go into the engine
        after = engine_log_probs(policy, ids)
        np.testing.assert_allclose(after, model_log_probs(learner.model, ids), atol=1e-4)
        assert np.abs(after - before).max() > 1e-2, "the update must have moved the log-probs"
        episodes, _ = collect_episodes(policy, envs, seed=8)
        assert_learner_agrees(policy, episodes)  # sampling, after the sync, is the updated learner's
    finally:
        learner.model.load_state_dict(saved)
        policy.sync_weights()
    np.testing.assert_allclose(engine_log_probs(policy, ids), before, atol=1e-5)
