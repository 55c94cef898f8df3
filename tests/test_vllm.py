"""VLLMPolicy (agents/vllm_policy.py): a vLLM engine behind the Policy protocol, on the default model.

These tests run where vLLM is installed: `bash .ci/setup-vllm VENV`, then
`VENV/bin/python -m pytest tests/test_vllm.py` (what `.ci/run` does after the main suite, with
TEXTGYM_VLLM_TESTS=1, so that a vLLM that is missing or fails to import is a failure there, not a
skip). Elsewhere the module is skipped, with that command as the reason. One engine on the default
model serves most tests (it starts in ~1 min on a busy 2-core machine); the commands start their
own on the tiny model.

- through env.step on the default task: valid episodes, one engine request per slot's turn, made of
  the slot's token ids (no text), and behaviour log-probs equal to the learner's
  (`LMPolicy.log_probs`) on the same tokens, at the default preset's temperature, at another, and
  with top-k/top-p; greedy decoding takes the learner's tokens;
- a multi-turn task: a request per turn, from the whole prefix with the env's reply; tokens past
  the point where the env ends a turn (a stop string, the turn limit) are dropped;
- allowed-token masks hold; the same seed gives the same actions, another seed others;
- after a real REINFORCE update the engine holds the learner's new weights (`on_update`), and the
  engine's behaviour log-probs are what eq. 27a's importance ratio divides by;
- `textgym train --policy vllm` and `textgym eval --policy vllm` on the tiny model write the files,
  metrics and checkpoints they write with hf; an engine that cannot start is a one-line error.
"""

import copy
import importlib.util
import os
from collections import defaultdict

import numpy as np
import pytest
import torch

if os.environ.get("TEXTGYM_VLLM_TESTS") != "1" and importlib.util.find_spec("vllm") is None:
    pytest.skip(
        "vLLM is not installed in this environment; run these tests in one that has it: "
        "`bash .ci/setup-vllm VENV` then `VENV/bin/python -m pytest tests/test_vllm.py` (.ci/run does both)",
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
    # A KV cache of 128 MiB (~2900 tokens of this model; a test batch holds ~1000) where the default
    # would take 1 GiB: the tests' machine is shared and its free memory runs short.
    policy = VLLMPolicy(learner, model_dir=weights_dir(DEFAULT_MODEL), max_model_len=512, kv_cache_memory_bytes=128 * 2**20)
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


def test_default_task_through_env_step_with_the_learners_log_probs(policy, monkeypatch):
    envs = envs_for(policy)
    requests = policy.engine_requests
    asked = []
    generate = policy.engine.generate

    def recording(prompts, params, **kwargs):
        asked.extend(zip(prompts, params))
        outputs = generate(prompts, params, **kwargs)
        assert all(not o.outputs[0].text for o in outputs), "the engine detokenized its output"
        return outputs

    monkeypatch.setattr(policy.engine, "generate", recording)
    episodes, _ = collect_episodes(policy, envs, seed=0)  # also checks each action is where the env wrote it
    assert policy.engine_requests - requests == 4, "one request per slot: the whole turn at once"
    # Token ids in (each slot's prompt, as the env encoded it), never text; no detokenizing out.
    assert policy.engine.llm_engine.tokenizer is None, "the engine was started with a tokenizer"
    assert sorted(tuple(prompt["prompt_token_ids"]) for prompt, _ in asked) == sorted(
        tuple(e.token_ids[: e.prompt_len]) for e in episodes
    )
    assert all(set(prompt) == {"prompt_token_ids"} and not params.detokenize for prompt, params in asked)
    assert all(1 <= len(e.action_positions) <= 8 for e in episodes)
    assert all(e.info["ended_by"] in ("eos", "budget") for e in episodes)
    assert_learner_agrees(policy, episodes)


@pytest.mark.parametrize("temperature, top_k, top_p", [(1.5, None, None), (0.7, 20, 0.8)])
def test_temperature_top_k_and_top_p_mean_what_they_mean_for_the_learner(policy, temperature, top_k, top_p):
    learner = policy.learner
    learner.temperature, learner.top_k, learner.top_p = temperature, top_k, top_p  # set on the learner: the engine follows
    try:
        episodes, _ = collect_episodes(policy, envs_for(policy), seed=1)
        # Log-probs of softmax(logits / T): another temperature would differ by far more than
        # float rounding; a token outside the learner's top-k/top-p would be -inf there.
        assert_learner_agrees(policy, episodes)
    finally:
        learner.temperature, learner.top_k, learner.top_p = 0.7, None, None


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


TINY_RUN = ["--model", "tiny", "--iterations", "2", "--eval-every", "1", "--save-every", "1", "--eval-episodes", "4",
            "--prompts", "1", "--group-size", "2", "--no-progress-bar", "--threads", "1"]  # fmt: skip


def run_files(directory):
    """The run directory's files by name (checkpoint numbers included), without their contents."""
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())


def textgym_command(*args):
    """`textgym <args>` in a process of its own: a vLLM engine's end in this process would tear down
    the parallel state the module's engine still uses (vLLM keeps it per process)."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "textgym.cli", *args], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done.stdout


def test_an_engine_that_cannot_start_is_a_one_line_error(tmp_path):
    import subprocess
    import sys

    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": str(2**20)}  # GiB: more than any machine has free
    done = subprocess.run([sys.executable, "-m", "textgym.cli", "train", *TINY_RUN, "--policy", "vllm", "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=600, env=env)  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith("error: the vllm engine did not start: Available memory on node"), done.stderr[-3000:]
    assert "Traceback" not in done.stderr


def test_textgym_train_and_eval_with_the_vllm_policy_write_what_hf_writes(tmp_path):
    """The commands start their own engine (on the tiny model, from a temporary copy of the learner:
    it has no directory of its own) and write the run directory, metrics, checkpoints and samples
    that the hf policy writes; the samples say which backend drew them. A run trained with one
    backend resumes with the other."""
    import json

    from agents import evaluation, train

    runs = {backend: tmp_path / f"run-{backend}" for backend in ("hf", "vllm")}
    assert train.main([*TINY_RUN, "--out", str(runs["hf"])]) == 0
    assert "vllm engine started" in textgym_command("train", *TINY_RUN, "--policy", "vllm", "--out", str(runs["vllm"]))
    assert run_files(runs["vllm"]) == run_files(runs["hf"])
    assert json.loads((runs["vllm"] / "config.json").read_text())["policy"] == "vllm"
    rows = {b: [json.loads(line) for line in (r / "metrics.jsonl").read_text().splitlines()] for b, r in runs.items()}
    assert [sorted(r) for r in rows["vllm"]] == [sorted(r) for r in rows["hf"]]
    assert [r["iteration"] for r in rows["vllm"]] == [r["iteration"] for r in rows["hf"]]
    # The checkpoint is the learner's and loads as any other.
    checkpoint = runs["vllm"] / (runs["vllm"] / "latest").read_text().strip()
    assert REINFORCE.load(checkpoint).iteration == 2
    # The hf run goes on with the vllm policy (recorded as this resume's change).
    textgym_command("train", "--resume", str(runs["hf"]), "--iterations", "3", "--policy", "vllm", "--no-progress-bar")
    assert json.loads((runs["hf"] / "resumes.jsonl").read_text().splitlines()[-1])["overrides"]["policy"] == "vllm"
    assert json.loads((runs["hf"] / "metrics.jsonl").read_text().splitlines()[-1])["iteration"] == 3

    outs = {backend: tmp_path / f"eval-{backend}" for backend in ("hf", "vllm")}
    evaluate = ["--model", str(runs["vllm"]), "--task", "copy", "--samples", "2", "--problems", "2", "--no-progress-bar"]
    assert evaluation.main([*evaluate, "--out", str(outs["hf"])]) == 0
    textgym_command("eval", *evaluate, "--policy", "vllm", "--out", str(outs["vllm"]))
    assert run_files(outs["vllm"]) == run_files(outs["hf"])
    headers = {b: json.loads((o / "samples.jsonl").read_text().splitlines()[0]) for b, o in outs.items()}
    assert '"policy": "vllm"' in json.dumps(headers["vllm"]) and '"policy"' not in json.dumps(headers["hf"])
    samples = {b: [json.loads(line) for line in (o / "samples.jsonl").read_text().splitlines()[1:]] for b, o in outs.items()}
    assert len(samples["vllm"]) == len(samples["hf"]) > 0
    assert [(r["problem"], r["sample"], r["mode"]) for r in samples["vllm"]] == [(r["problem"], r["sample"], r["mode"]) for r in samples["hf"]]


def test_the_benchmarks_vllm_parts_run(policy):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "benchmarks"))
    import rollout_throughput
    import vllm_mismatch

    m = vllm_mismatch.measure_mismatch(policy, envs_for(policy, num_envs=2, group_size=1), episodes=2)
    assert m["episodes"] == 2 and m["tokens"] > 0 and m["mean_abs"] < 1e-4 and m["clipped"] == 0
    r = rollout_throughput.measure(policy.learner, batch=2, new_tokens=3, repeats=1, others={}, engine=policy)
    assert r["median"]["e"] > 0 and r["ratio"]["a/e"] > 0
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


def test_a_lora_learner_gives_the_engine_its_merged_weights(policy):
    """LoRA: the engine serves plain weights, so it gets the base with the adapters merged in, when
    it takes the learner and after each update; its log-probs are then the LoRA model's."""
    from agents.lora import LoRAConfig, apply_lora

    ids = policy.tokenizer.encode("Which is larger: 37 or 52? 52 is larger than 37.")
    base = engine_log_probs(policy, ids)
    learner = LMPolicy(apply_lora(copy.deepcopy(policy.learner.model), LoRAConfig(lora_rank=4), seed=0),
                       policy.tokenizer, temperature=0.7, seed=0)  # fmt: skip
    try:
        with torch.no_grad():
            for name, parameter in learner.model.named_parameters():
                if "lora_B" in name:
                    parameter.normal_(0.0, 0.05, generator=torch.Generator().manual_seed(0))
        lora_policy = VLLMPolicy(learner, engine=policy.engine)  # takes the running engine, syncs the weights
        adapted = engine_log_probs(lora_policy, ids)
        np.testing.assert_allclose(adapted, model_log_probs(learner.model, ids), atol=1e-4)
        assert np.abs(adapted - base).max() > 1e-2, "the adapters must have moved the log-probs"
        agent = REINFORCE(lora_policy, baseline="none", entropy_coef=0.1, lr=1e-3, amp="off")
        episodes, _ = collect_episodes(lora_policy, envs_for(lora_policy, num_envs=2), seed=7)
        agent.update(to_batch(episodes, group_size=2))  # the adapters change; on_update syncs the merge
        after = engine_log_probs(lora_policy, ids)
        np.testing.assert_allclose(after, model_log_probs(learner.model, ids), atol=1e-4)
        assert np.abs(after - adapted).max() > 1e-3
    finally:
        policy.sync_weights()
    np.testing.assert_allclose(engine_log_probs(policy, ids), base, atol=1e-5)


def test_the_engines_behaviour_log_probs_are_what_the_importance_ratio_divides_by(policy):
    """Eq. 27a's ratio is pi / b with b the engine's log-prob recorded at sampling: with the learner's
    weights in the engine it is 1 up to rounding (nothing clipped); with other weights in the engine
    (the learner unchanged) the same update clips tokens, so b is the engine's and not the learner's."""
    learner = policy.learner
    agent = REINFORCE(policy, baseline="none", amp="off", epochs=2, cliprange=0.2)
    envs = envs_for(policy, num_envs=4)

    def first_epoch_clip_fraction(seed):
        episodes, _ = collect_episodes(policy, envs, seed=seed)
        batch = to_batch(episodes, group_size=2)
        recorded = np.concatenate([e.log_probs for e in episodes])
        assert np.array_equal(np.sort(batch.old_log_probs[batch.action_mask].numpy()), np.sort(recorded))  # b, as recorded
        stats = defaultdict(list)
        advantages = torch.ones_like(batch.old_log_probs)
        agent.compute_gradients(batch, advantages, clipped=True, stats=stats)
        learner.model.zero_grad(set_to_none=True)
        return float(np.mean(stats["clip_fraction"]))

    assert first_epoch_clip_fraction(seed=9) == 0.0
    other = copy.deepcopy(learner.model)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(0)) * 0.02)
    try:
        policy.sync_weights(other)  # the engine samples from other weights; the learner is unchanged
        assert first_epoch_clip_fraction(seed=9) > 0  # pi / b leaves 1 ± 0.2 where b is the other weights' log-prob
    finally:
        policy.sync_weights()
