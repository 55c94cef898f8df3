"""The guards against learning the prior (agents/losses.py eq. 22f, 26b-d, 27b), in the agent.

- dynamic sampling keeps only informative groups, samples more rounds up to its bound, skips an
  update that has none (weights untouched), and leaves a run without it exactly as it was;
- frontier sampling draws problems with the weights of eq. 26d and resumes bit-identically;
- masking truncated completions removes their tokens from the loss but keeps their rewards in the
  group baseline (hand-built batch);
- the entropy bonus weight follows eq. 26b and survives a checkpoint.
"""

import json

import numpy as np
import pytest
import torch

import textgym
from agents.curriculum import FrontierSampler
from agents.policy import LMPolicy
from agents.reinforce import REINFORCE
from agents.rollouts import Episode, collect_episodes, to_batch

torch.set_num_threads(1)

TASK = dict(task="copy", task_kwargs={"length": 2, "alphabet": "abc"}, max_new_tokens=3)


@textgym.register_reward("test_guards_first_char_is_a", overwrite=True)
def first_char_is_a(completion, example):
    """Depends on the sample, not the problem: groups are mixed some of the time."""
    return float(completion[:1] == "a")


@textgym.register_reward("test_guards_problem_only", overwrite=True)
def problem_only(completion, example):
    """Depends on the problem alone: every group's rewards are equal."""
    return float(example.prompt.count("a") > 0)


def setup(reward, prompts=2, group_size=4, seed=0, **task):
    policy = LMPolicy.from_pretrained("tiny", seed=seed)
    envs = textgym.TextGenVectorEnv(num_envs=prompts * group_size, group_size=group_size, tokenizer=policy.tokenizer,
                                    reward=reward, **{**TASK, **task})  # fmt: skip
    policy.restrict_actions(envs.action_masks()[0])
    return policy, envs


def weights(policy):
    return {k: v.detach().clone() for k, v in policy.model.state_dict().items()}


def rows(path):
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines() if line.strip()]


# ----------------------------------------------------------------------------- dynamic sampling (eq. 22f)


def test_dynamic_sampling_trains_on_informative_groups_only():
    policy, envs = setup("test_guards_first_char_is_a", prompts=3)
    agent = REINFORCE(policy, baseline="group", dynamic_sampling=True, max_sampling_rounds=5, seed=0)
    sampled, kept, _, stats = agent.collect(envs, group_size=4)
    assert len(sampled) == stats["sampling_rounds"] * 12 and stats["samples"] == len(sampled)
    assert 1 <= stats["sampling_rounds"] <= 5
    assert len(kept) % 4 == 0 and len(kept) <= 12 and stats["informative_groups"] == len(kept) // 4
    for k in range(0, len(kept), 4):
        group = kept[k : k + 4]
        assert len({e.info["index"] for e in group}) == 1  # one problem per group
        assert len({e.reward for e in group}) > 1  # informative: its rewards differ
    if stats["sampling_rounds"] < 5:
        assert len(kept) == 12  # it stopped because the update was full
    assert 0.0 <= stats["groups_all_equal"] <= 1.0


def test_without_dynamic_sampling_collect_is_the_plain_rollout():
    """Round 0 uses the seeds a run without the guards uses: existing runs replay exactly."""
    policy, envs = setup("test_guards_first_char_is_a")
    agent = REINFORCE(policy, baseline="group", seed=3)
    state = policy.generator.get_state()
    sampled, kept, _, stats = agent.collect(envs, group_size=4)
    assert kept is sampled or kept == sampled
    policy.generator.set_state(state)
    policy.seed(agent._iteration_seed(1))
    plain, _ = collect_episodes(policy, envs, seed=agent._iteration_seed(0))
    assert [e.token_ids.tolist() for e in plain] == [e.token_ids.tolist() for e in sampled]
    assert stats["sampling_rounds"] == 1.0


def test_an_update_without_informative_groups_is_skipped(tmp_path):
    policy, envs = setup("test_guards_problem_only")
    agent = REINFORCE(policy, baseline="group", dynamic_sampling=True, max_sampling_rounds=3, lr=1e-2, seed=0)
    before = weights(policy)
    agent.learn(envs, iterations=2, progress_bar=False, log_dir=tmp_path / "run")
    after = weights(policy)
    assert all(torch.equal(before[k], after[k]) for k in before)
    metrics = [r for r in rows(tmp_path / "run") if "train_reward" in r]
    assert [r["skipped_update"] for r in metrics] == [1.0, 1.0]
    assert all(r["sampling_rounds"] == 3 and r["informative_groups"] == 0 and r["groups_all_equal"] == 1.0 for r in metrics)
    assert metrics[-1]["samples"] == 2 * 3 * 8  # every round counts as samples spent


def test_without_informative_groups_entropy_control_still_acts(tmp_path):
    """A collapsed policy gives no informative group; the update then holds uninformative groups,
    whose only gradient is the entropy bonus's: the bonus adapts and moves the weights."""
    policy, envs = setup("test_guards_problem_only")
    agent = REINFORCE(policy, baseline="group", dynamic_sampling=True, max_sampling_rounds=2, entropy_target=5.0,
                      entropy_lr=0.1, lr=1e-2, seed=0)  # fmt: skip
    before = weights(policy)
    sampled, kept, _, stats = agent.collect(envs, group_size=4)
    assert stats["informative_groups"] == 0 and len(kept) == 8 and len(sampled) == 16
    assert {e.slot for e in kept} == set(range(8)) and kept == sampled[8:]  # the last round's groups
    out = agent.update(to_batch(kept, 4))
    assert out["skipped_update"] == 0.0 and out["entropy_coef"] > 0  # β starts at 0: the first step is empty
    assert all(torch.equal(before[k], v) for k, v in weights(policy).items())
    agent.update(to_batch(kept, 4))  # now β > 0: the entropy bonus moves the weights
    assert not all(torch.equal(before[k], v) for k, v in weights(policy).items())


def test_dynamic_sampling_needs_a_group_baseline():
    with pytest.raises(ValueError, match="dynamic_sampling.*group"):
        REINFORCE(LMPolicy.from_pretrained("tiny"), baseline="mean", dynamic_sampling=True)


# ----------------------------------------------------------------------------- frontier sampling (eq. 26d)


def test_frontier_weights_by_hand():
    sampler = FrontierSampler(num_problems=5, group_size=2, weight=0.1)
    assert sampler.weights().tolist() == [1.0] * 5  # nothing seen: uniform
    sampler.record([0, 0, 1, 1, 2, 2, 3, 3], [True, True, False, False, True, False, True, True])
    # 0: 2/2 mastered, 1: 0/2 unsolved, 2: 1/2 frontier, 3: 2/2 mastered, 4: unseen
    assert sampler.weights().tolist() == [0.1, 0.1, 1.0, 0.1, 1.0]
    sampler.record([3, 3], [False, True])  # the last visit replaces the earlier one
    assert sampler.weights().tolist() == [0.1, 0.1, 1.0, 1.0, 1.0]
    assert sampler.stats() == {"frontier_seen": 0.8, "frontier_unsolved": 0.25, "frontier_mastered": 0.25}
    clone = FrontierSampler(num_problems=5, group_size=2, weight=0.1)
    clone.load_state_dict(sampler.state_dict())
    assert clone.weights().tolist() == sampler.weights().tolist()
    with pytest.raises(ValueError, match="covers 5 problems.*has 6"):
        FrontierSampler(num_problems=6, group_size=2, weight=0.1).load_state_dict(sampler.state_dict())


def test_frontier_draws_in_proportion_to_the_weights():
    sampler = FrontierSampler(num_problems=4, group_size=3, weight=0.25)
    sampler.record([0, 0, 1, 1], [True, True, True, False])  # 0 mastered (0.25), 1 frontier, 2 and 3 unseen
    rng = np.random.default_rng(0)
    draws = np.concatenate([sampler.draw(rng, prompts=1) for _ in range(20000)])
    assert len(draws) == 60000 and np.all(draws.reshape(-1, 3) == draws.reshape(-1, 3)[:, :1])  # whole groups
    frequencies = np.bincount(draws[::3], minlength=4) / 20000
    np.testing.assert_allclose(frequencies, np.array([0.25, 1, 1, 1]) / 3.25, atol=0.01)
    two = sampler.draw(rng, prompts=2)
    assert two[0] != two[3]  # distinct problems in one update


def test_frontier_sampling_needs_a_finite_split_and_a_valid_weight():
    with pytest.raises(ValueError, match="finite training split"):
        FrontierSampler(num_problems=None, group_size=2, weight=0.5)
    with pytest.raises(ValueError, match="frontier_weight"):
        REINFORCE(LMPolicy.from_pretrained("tiny"), frontier_weight=0.0)


def test_frontier_sampling_picks_the_problems_and_resumes_exactly(tmp_path):
    def run(path, iterations, resume=False):
        if resume:
            agent = REINFORCE.load(path)
            _, envs = setup("partial_credit")
        else:
            policy, envs = setup("partial_credit")
            agent = REINFORCE(policy, baseline="group", frontier_weight=0.1, dynamic_sampling=True, lr=3e-3, seed=0)
        agent.learn(envs, iterations=iterations - agent.iteration, progress_bar=False, log_dir=path)
        return agent

    agent = run(tmp_path / "whole", 4)
    assert agent.frontier is not None and agent.frontier.stats()["frontier_seen"] > 0
    run(tmp_path / "split", 2)
    run(tmp_path / "split", 4, resume=True)

    def strip(r):
        return {k: v for k, v in r.items() if not k.startswith("time") and k not in ("tokens_per_s", "wall_s")}

    assert [strip(r) for r in rows(tmp_path / "whole")] == [strip(r) for r in rows(tmp_path / "split")]
    assert "frontier_seen" in rows(tmp_path / "whole")[-1]


# ----------------------------------------------------------------------------- masking truncated (eq. 26c)


def hand_batch():
    """Two groups of two: episode 1 ended by the budget. Token ids are arbitrary; three actions each."""
    episodes = []
    for i, (reward, ended) in enumerate([(1.0, "eos"), (0.0, "budget"), (0.5, "eos"), (0.0, "eos")]):
        ids = np.array([1, 2, 3 + i, 4, 5], dtype=np.int64)
        episodes.append(Episode(token_ids=ids, prompt_len=2, action_positions=np.array([2, 3, 4]),
                                log_probs=np.full(3, -1.0, dtype=np.float32), rewards=np.array([0.0, 0.0, reward]),
                                info={"ended_by": ended}, slot=i))  # fmt: skip
    return to_batch(episodes, group_size=2)


def test_masking_truncated_keeps_their_rewards_in_the_baseline(monkeypatch):
    batch = hand_batch()
    assert batch.truncated.tolist() == [False, True, False, False]
    policy = LMPolicy.from_pretrained("tiny")
    seen = {}

    def capture(b, advantages, clipped=False, stats=None):
        seen["mask"], seen["advantages"] = b.action_mask.clone(), advantages.clone()
        return True

    for masked in (False, True):
        agent = REINFORCE(policy, baseline="group", mask_truncated=masked, seed=0)
        monkeypatch.setattr(agent, "compute_gradients", capture)
        stats = agent.update(batch)
        rows_with_actions = seen["mask"].any(dim=1).tolist()
        assert rows_with_actions == ([True, False, True, True] if masked else [True] * 4)
        # group 0's baseline is the mean of 1.0 and the truncated 0.0 either way: A = +0.5 for episode 0
        assert torch.allclose(seen["advantages"][0][batch.action_mask[0]], torch.tensor(0.5))
        assert ("truncated_masked" in stats) == masked and stats.get("truncated_masked", 0.25) == 0.25


# ----------------------------------------------------------------------------- entropy control (eq. 26b)


def test_entropy_coef_follows_the_target_and_survives_a_checkpoint(tmp_path):
    policy, envs = setup("partial_credit")
    agent = REINFORCE(policy, baseline="group", entropy_target=5.0, entropy_lr=0.1, seed=0)
    agent.learn(envs, iterations=2, progress_bar=False, log_dir=tmp_path / "run")
    metrics = [r for r in rows(tmp_path / "run") if "train_reward" in r]
    coef = 0.0
    for r in metrics:  # each update's coefficient is the previous one moved by η (H* - H)
        coef = max(0.0, coef + 0.1 * (5.0 - r["entropy"]))
        assert r["entropy_coef"] == pytest.approx(coef, rel=1e-6)
    assert coef > 0  # the tiny model's entropy (< ln 4 over 4 tokens) is below 5 nats: the bonus grew
    assert REINFORCE.load(tmp_path / "run").entropy_coef == pytest.approx(coef, rel=1e-6)
    fixed = REINFORCE(LMPolicy.from_pretrained("tiny"), entropy_coef=0.02)
    assert fixed.update(hand_batch())["entropy_coef"] == 0.02  # no target: a fixed bonus


def test_a_batch_of_only_truncated_episodes_takes_no_step():
    """With every episode masked there is no gradient; an optimizer step would still move the
    weights (Adam's momentum, weight decay), so the update is skipped."""
    batch = hand_batch()
    batch.truncated[:] = True
    policy = LMPolicy.from_pretrained("tiny")
    agent = REINFORCE(policy, baseline="group", mask_truncated=True, weight_decay=0.1, seed=0)
    before = weights(policy)
    stats = agent.update(batch)
    assert stats["skipped_update"] == 1.0 and stats["truncated_masked"] == 1.0
    assert all(torch.equal(before[k], v) for k, v in weights(policy).items())


# ----------------------------------------------------------------------------- the curriculum


def test_set_task_serves_a_new_task_in_the_same_observation_space():
    envs = textgym.TextGenVectorEnv(num_envs=2, tokenizer="char", task="copy", task_kwargs={"length": 2},
                                    max_new_tokens=3, max_prompt_tokens=40)  # fmt: skip
    space = envs.single_observation_space
    envs.reset(seed=0)
    envs.set_task(textgym.make_task("copy", length=4))
    obs, info = envs.reset(seed=0)
    assert envs.single_observation_space == space and space.contains({k: v[0] for k, v in obs.items()})
    assert [len(e.answer) for e in envs.examples] == [4, 4]
    envs.set_task(textgym.make_task("copy", length=60))  # unbounded: its prompts are met at reset
    with pytest.raises(ValueError, match="max_prompt_tokens"):
        envs.reset(seed=0)
    envs.set_task(textgym.make_task("copy", length=4))
    measured = textgym.TextGenVectorEnv(num_envs=1, tokenizer="char", task="copy", task_kwargs={"length": 2},
                                        max_new_tokens=3)  # fmt: skip
    with pytest.raises(ValueError, match="max_prompt_tokens=.*to serve it"):
        measured.set_task(textgym.make_task("copy", length=9))
    assert [len(e.answer) for e in envs.reset(seed=0) and envs.examples] == [4, 4]  # a refused task changes nothing
    with pytest.raises(ValueError, match="single-turn"):
        envs.set_task("guess")


def test_level_up_raises_the_level_on_the_update_pass_rate(tmp_path):
    pytest.importorskip("reasoning_gym")
    from agents.curriculum import LevelUp
    from textgym.tasks.reasoning_gym import ReasoningGymCurriculum

    curriculum = ReasoningGymCurriculum("chain_sum", threshold=0.0, patience=2, size=200)  # every update passes
    policy = LMPolicy.from_pretrained("tiny", seed=0)
    envs = textgym.TextGenVectorEnv(num_envs=4, group_size=2, tokenizer=policy.tokenizer, task=curriculum.task,
                                    max_new_tokens=3, max_prompt_tokens=200)  # fmt: skip
    agent = REINFORCE(policy, baseline="group", frontier_weight=0.5, seed=0)
    agent.learn(envs, iterations=4, callback=LevelUp(curriculum, envs), progress_bar=False, log_dir=tmp_path / "run")
    levels = [r["curriculum_level"] for r in rows(tmp_path / "run") if "train_reward" in r]
    assert levels == [0, 1, 1, 2]  # two passing updates per level
    assert envs.task is curriculum.task and curriculum.level == 2


def test_train_command_raises_the_level_and_a_resume_keeps_it(tmp_path):
    pytest.importorskip("reasoning_gym")
    import subprocess
    import sys

    out = tmp_path / "run"
    base = [sys.executable, "-m", "textgym.cli", "train", "--model", "tiny", "--task", "reasoning_gym:chain_sum",
            "--task-kwargs", '{"size": 200}', "--max-new-tokens", "3", "--curriculum-threshold", "0",
            "--curriculum-patience", "1", "--prompts", "2", "--group-size", "2", "--eval-episodes", "4",
            "--no-progress-bar", "--threads", "1"]  # fmt: skip
    first = subprocess.run([*base, "--iterations", "2", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stdout + first.stderr
    again = subprocess.run([sys.executable, "-m", "textgym.cli", "train", "--resume", str(out), "--iterations", "3",
                            "--no-progress-bar", "--threads", "1"], capture_output=True, text=True, timeout=600)  # fmt: skip
    assert again.returncode == 0, again.stdout + again.stderr
    levels = [r["curriculum_level"] for r in rows(out) if "train_reward" in r]
    assert levels == [1, 2, 3]  # a resumed run goes on from the level it had reached
    bad = subprocess.run([*base[:7], "copy", *base[8:], "--iterations", "1", "--out", str(tmp_path / "bad")],
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert bad.returncode != 0 and "reasoning-gym" in bad.stderr + bad.stdout


def test_the_guards_benchmark_runs_each_variant_and_resumes(tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("guards_benchmark", "examples/benchmarks/guards.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "guards.jsonl"
    args = ["--variants", "plain", "clip-higher", "--variant", "ds", '{"dynamic_sampling": true}', "--seeds", "0",
            "--iterations", "2", "--eval-every", "1", "--eval-episodes", "8", "--out", str(out)]  # fmt: skip
    assert bench.main(args) == 0
    first = capsys.readouterr().out
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["variant"] for r in rows] == ["plain", "clip-higher", "ds"]
    assert rows[1]["clip_fraction"] is not None and rows[0]["clip_fraction"] is None  # only the 2-epoch loss clips
    assert rows[2]["samples"] >= rows[0]["samples"]  # dynamic sampling spends at least as many samples
    assert bench.main(args) == 0  # every run is reused: same table, nothing appended
    assert len(out.read_text().splitlines()) == 3
    table = lambda text: text[text.index("| variant"):]  # noqa: E731
    assert table(capsys.readouterr().out) == table(first)
