"""The REINFORCE agent with the tiny char model: it learns, every option runs, and it is exact.

- the tiny model learns the `textgym train --model tiny` toy task to >= 0.9 validation reward
  (`test_slow_*`, the slowest test here: `-k slow` selects it, `-k "not slow"` skips it);
- every baseline updates the weights; bad settings fail at construction, and settings that do not
  fit the env fail before any rollout is collected;
- micro-batching accumulates exactly the full-batch gradient, for every loss aggregation;
- epochs > 1 use the clipped loss, kl_coef > 0 reports the KL (0 before the first step);
- same seed, same run; save -> load -> continue equals an uninterrupted run;
- a non-finite loss skips the update (weights untouched) and, repeated, stops training;
- learn() writes metrics, a plot and a checkpoint; evaluate() works on vector and single envs;
- `textgym train --model tiny` runs end to end.
"""

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

import textgym
from textgym.cli import main as cli_main
from agents import callbacks as C
from agents import reinforce as R
from agents.baselines import BASELINES
from agents.policy import LMPolicy
from agents.reinforce import REINFORCE, REINFORCEConfig
from agents.rollouts import collect_episodes, to_batch
from agents.train import PRESETS, resolve_settings, split_settings


TASK = dict(task="copy", task_kwargs={"length": 2, "alphabet": "abc"}, reward="partial_credit", max_new_tokens=3)
TIMING_KEYS = ("time_generate_s", "time_env_s", "time_update_s", "tokens_per_s", "wall_s", "time_val_s")


def tiny_policy(seed=0):
    return LMPolicy.from_pretrained("tiny", seed=seed)


def vec_env(policy, prompts=2, group_size=4, split="train", **task):
    kwargs = {**TASK, **task}
    envs = textgym.TextGenVectorEnv(num_envs=prompts * group_size, group_size=group_size, split=split,
                                    tokenizer=policy.tokenizer, **kwargs)  # fmt: skip
    if policy.allowed_tokens is None:
        policy.restrict_actions(envs.action_masks()[0])
    return envs


def weights(policy):
    return {k: v.detach().clone() for k, v in policy.model.state_dict().items()}


def same_weights(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def strip_timing(rows):
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]


def read_metrics(path):
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines() if line.strip()]


# ------------------------------------------------------------------------------- it learns


def test_slow_tiny_model_learns_the_default_toy_task_to_09_validation_reward():
    """The configuration `textgym train --model tiny` uses, on held-out problems (slowest test)."""
    cfg = resolve_settings({"model": "tiny"})
    policy = LMPolicy.from_pretrained("tiny", temperature=cfg["temperature"], seed=0)
    env_kwargs = dict(task=cfg["task"], task_kwargs=cfg["task_kwargs"], reward=cfg.get("reward"),
                      max_new_tokens=cfg["max_new_tokens"], tokenizer=policy.tokenizer)  # fmt: skip
    envs = textgym.TextGenVectorEnv(num_envs=cfg["prompts"] * cfg["group_size"], group_size=cfg["group_size"], **env_kwargs)
    eval_env = textgym.TextGenVectorEnv(num_envs=32, split="validation", **env_kwargs)
    task = envs.task
    n_val = task.num_examples("validation")
    assert n_val > 0, "the toy task needs held-out problems"
    validation = {task.example("validation", i).prompt for i in range(n_val)}
    assert not validation & {task.example("train", i).prompt for i in range(task.num_examples("train"))}
    policy.restrict_actions(envs.action_masks()[0])
    agent = REINFORCE(policy, split_settings(cfg)[3])  # the preset's REINFORCEConfig, entropy bonus included
    untrained = agent.evaluate(eval_env, episodes=64)
    assert untrained["reward"] < 0.5 and untrained["accuracy"] < 0.1, untrained  # chance level
    curve = [(0, round(untrained["reward"], 3), round(untrained["accuracy"], 3))]

    def stop_when_learned(metrics):
        if "val_reward" in metrics:
            curve.append((metrics["iteration"], round(metrics["val_reward"], 3), round(metrics["val_accuracy"], 3)))
            return metrics["val_reward"] < 0.9

    agent.learn(envs, iterations=3 * cfg["iterations"], eval_env=eval_env, eval_every=5, eval_episodes=64,
                callback=stop_when_learned, progress_bar=False)  # fmt: skip
    assert curve[-1][1] >= 0.9, f"validation reward by iteration: {curve}"
    fresh = agent.evaluate(eval_env, episodes=64, seed=123)  # other samples of the held-out problems
    assert fresh["reward"] >= 0.8, (fresh, curve)


# ------------------------------------------------------------------------------- settings


@pytest.mark.parametrize("baseline", BASELINES)
def test_every_baseline_runs_an_iteration_and_updates_the_weights(baseline):
    policy = tiny_policy()
    envs = vec_env(policy, prompts=2, group_size=4)
    agent = REINFORCE(policy, baseline=baseline, lr=1e-2, seed=0)
    before = weights(policy)
    head_before = None if agent.value_head is None else agent.value_head.weight.detach().clone()
    seen = []
    agent.learn(envs, iterations=1, progress_bar=False, callback=seen.append)
    assert agent.iteration == 1 and len(seen) == 1
    assert seen[0]["skipped_update"] == 0.0 and math.isfinite(seen[0]["grad_norm"])
    assert not same_weights(before, weights(policy))
    if baseline == "value":
        assert "value_loss" in seen[0] and not torch.equal(head_before, agent.value_head.weight)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(baseline="median"), "baseline must be one of 'none', 'mean', 'group', 'leave_one_out', 'value'"),
        (dict(lr=0.0), "lr must be > 0"),
        (dict(lr=-1e-3), "lr must be > 0"),
        (dict(epochs=0), "epochs must be an integer >= 1"),
        (dict(epochs=1.5), "epochs must be an integer >= 1"),
        (dict(micro_batch_size=0), "micro_batch_size must be an integer >= 1, or None"),
        (dict(loss_aggregation="mean"), "loss_aggregation must be one of"),
        (dict(gamma=1.5), "gamma"),
        (dict(lr_schedule="cosine"), "lr_schedule must be one of 'constant', 'linear'"),
        (dict(amp="fp8"), "amp must be one of"),
        (dict(max_grad_norm=0.0), "max_grad_norm must be > 0, or None"),
        (dict(normalize_std=True, baseline="mean"), "use baseline='group' or 'leave_one_out'"),
    ],
)
def test_bad_settings_raise_a_clear_error_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        REINFORCE(tiny_policy(), **kwargs)
    with pytest.raises(ValueError, match=match):  # the config alone checks them too
        REINFORCEConfig(**kwargs)


def test_settings_come_from_one_config_and_keep_the_keyword_form():
    policy = tiny_policy()
    assert REINFORCE(policy).config == REINFORCEConfig()
    config = REINFORCEConfig(lr=1e-3, baseline="mean")
    agent = REINFORCE(policy, config, lr=3e-3)  # keywords change the given config
    assert agent.config == REINFORCEConfig(lr=3e-3, baseline="mean") and config.lr == 1e-3
    assert not hasattr(agent, "hparams")
    with pytest.raises(TypeError, match="unknown REINFORCE setting.*'learning_rate'.*the settings are: baseline, lr"):
        REINFORCE(policy, learning_rate=1e-3)
    # The class docstring lists every setting with the config's own default and help text.
    for f in dataclasses.fields(REINFORCEConfig):
        assert f"`{f.name}` (default " in REINFORCE.__doc__ and f.metadata["help"] in REINFORCE.__doc__
    # The defaults are those of the main job (`textgym train`).
    assert (REINFORCEConfig.lr, REINFORCEConfig.amp, REINFORCEConfig.baseline) == (2e-5, "auto", "group")


def test_linear_lr_schedule_decays_over_the_run_and_resumes_on_the_same_line(tmp_path):
    lr = 1e-3
    policy = tiny_policy()
    agent = REINFORCE(policy, lr=lr, lr_schedule="linear", seed=0)
    seen = []

    def stop_after_two(metrics):  # a 4-iteration run, interrupted after 2 and resumed for the other 2
        seen.append(metrics)
        return metrics["iteration"] < 2

    agent.learn(vec_env(policy), iterations=4, progress_bar=False, callback=stop_after_two, log_dir=tmp_path)
    resumed = REINFORCE.load(tmp_path / (tmp_path / "latest").read_text().strip())
    assert resumed.iteration == 2
    assert resumed.config.lr_schedule == "linear"
    resumed.learn(vec_env(resumed.policy), iterations=2, progress_bar=False, callback=seen.append)
    # Iteration i of a 4-iteration run: lr * (1 - i / 4); the resumed call continues the line.
    assert [m["lr"] for m in seen[:2]] == pytest.approx([lr, 0.75 * lr])
    assert [m["lr"] for m in seen[2:]] == pytest.approx([0.5 * lr, 0.25 * lr])
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(0.25 * lr)
    constant = []
    REINFORCE(policy, lr=lr, seed=0).learn(vec_env(policy), iterations=2, progress_bar=False, callback=constant.append)
    assert [m["lr"] for m in constant] == [lr, lr]


@pytest.fixture
def no_rollouts(monkeypatch):
    """Fail the test if anything collects a rollout (errors must come before any work)."""

    def forbidden(*args, **kwargs):
        raise AssertionError("a rollout was collected before the configuration error")

    monkeypatch.setattr(R, "collect_episodes", forbidden)
    monkeypatch.setattr(C, "evaluate", forbidden)


@pytest.mark.parametrize("baseline", ["group", "leave_one_out"])
def test_group_baseline_without_groups_fails_before_any_work(baseline, no_rollouts):
    policy = tiny_policy()
    envs = vec_env(policy, prompts=4, group_size=1)
    agent = REINFORCE(policy, baseline=baseline, seed=0)
    before = weights(policy)
    with pytest.raises(ValueError, match="group_size >= 2"):
        agent.learn(envs, iterations=3, eval_env=vec_env(policy, split="validation"), progress_bar=False)
    assert agent.iteration == 0 and same_weights(before, weights(policy))


def test_unwritable_log_dir_fails_before_any_work(tmp_path, no_rollouts):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    policy = tiny_policy()
    agent = REINFORCE(policy, baseline="group", seed=0)
    with pytest.raises(PermissionError, match="cannot write to the output directory"):
        agent.learn(vec_env(policy), iterations=3, progress_bar=False, log_dir=blocker / "run")
    assert agent.iteration == 0


def test_learn_needs_a_vector_env_and_nonnegative_iterations(no_rollouts):
    policy = tiny_policy()
    agent = REINFORCE(policy, baseline="none", seed=0)
    single = textgym.TextGenEnv(tokenizer=policy.tokenizer, **TASK)
    with pytest.raises(TypeError, match="vector env"):
        agent.learn(single, iterations=1, progress_bar=False)
    with pytest.raises(ValueError, match="iterations"):
        agent.learn(vec_env(policy), iterations=-1, progress_bar=False)


# ------------------------------------------------------------------------------- the update's math


@pytest.fixture(scope="module")
def batch_and_policy():
    """One batch of 8 episodes of different lengths (the end token is allowed)."""
    policy = tiny_policy(seed=1)
    envs = vec_env(policy, prompts=2, group_size=4, max_new_tokens=4)
    policy.seed(0)
    episodes, _ = collect_episodes(policy, envs, seed=0)
    assert len({len(e.action_positions) for e in episodes}) > 1, "want ragged completions to exercise the padding"
    return to_batch(episodes, group_size=4), policy


def gradient(agent, batch):
    advantages, _, _ = agent.advantages(batch)
    assert agent.compute_gradients(batch, advantages) is True
    grads = {n: p.grad.detach().clone() for n, p in agent.policy.model.named_parameters() if p.grad is not None}
    agent.optimizer.zero_grad(set_to_none=True)
    return grads


@pytest.mark.parametrize("aggregation", ["token_mean", "sequence_mean", "sum"])
@pytest.mark.parametrize("micro_batch_size", [2, 3])
def test_micro_batches_accumulate_exactly_the_full_batch_gradient(batch_and_policy, aggregation, micro_batch_size):
    batch, policy = batch_and_policy
    common = dict(baseline="group", loss_aggregation=aggregation, entropy_coef=0.01, seed=0, amp="off")
    full = gradient(REINFORCE(policy, **common), batch)
    micro = gradient(REINFORCE(policy, micro_batch_size=micro_batch_size, **common), batch)
    assert full.keys() == micro.keys() and full
    assert any(g.abs().sum() > 0 for g in full.values())
    for name in full:
        torch.testing.assert_close(micro[name], full[name], rtol=1e-4, atol=1e-7, msg=name)


def test_compute_gradients_does_not_step_the_optimizer(batch_and_policy):
    batch, policy = batch_and_policy
    before = weights(policy)
    agent = REINFORCE(policy, baseline="group", seed=0)
    agent.compute_gradients(batch, agent.advantages(batch)[0])
    assert same_weights(before, weights(policy))
    assert all(p.grad is not None for p in policy.model.parameters() if p.requires_grad)
    agent.optimizer.zero_grad(set_to_none=True)


def test_epochs_use_the_clipped_loss_and_report_clip_fraction(batch_and_policy):
    batch, policy = batch_and_policy
    policy = LMPolicy(copy_model(policy), policy.tokenizer)
    policy.restrict_actions(batch_and_policy[1].allowed_tokens.cpu().numpy())
    one = REINFORCE(policy, baseline="group", lr=1e-2, epochs=1, seed=0).update(batch)
    assert "clip_fraction" not in one
    stats = REINFORCE(policy, baseline="group", lr=1e-2, epochs=3, seed=0).update(batch)
    assert 0.0 <= stats["clip_fraction"] <= 1.0 and stats["skipped_update"] == 0.0
    # Later epochs are off-policy: with a large step some ratios leave [1 - eps, 1 + eps].
    assert stats["clip_fraction"] > 0.0


def test_kl_penalty_is_reported_and_zero_before_the_first_step(batch_and_policy):
    batch, policy = batch_and_policy
    policy = LMPolicy(copy_model(policy), policy.tokenizer)
    policy.restrict_actions(batch_and_policy[1].allowed_tokens.cpu().numpy())
    agent = REINFORCE(policy, baseline="group", lr=1e-2, kl_coef=0.1, seed=0)
    first_epoch: dict = {}
    agent.compute_gradients(batch, agent.advantages(batch)[0], stats=first_epoch)
    assert first_epoch["kl"] and all(k == 0.0 for k in first_epoch["kl"])
    assert all(torch.isfinite(p.grad).all() for p in policy.model.parameters() if p.grad is not None)
    first = agent.update(batch)
    assert first["kl"] == 0.0 and first["skipped_update"] == 0.0  # first iteration, one epoch: π = π_ref
    second = agent.update(batch)
    assert second["kl"] > 0.0 and second["skipped_update"] == 0.0  # after a step the policy has moved


def copy_model(policy):
    import copy

    return copy.deepcopy(policy.model)


# ------------------------------------------------------------------------------- reproducibility


def run(tmp_path, name, iterations, seed=0, baseline="mean", log=True, **learn):
    policy = tiny_policy()
    envs = vec_env(policy, prompts=2, group_size=4)
    agent = REINFORCE(policy, baseline=baseline, lr=3e-3, seed=seed)
    agent.learn(envs, iterations=iterations, progress_bar=False, log_dir=tmp_path / name if log else None, **learn)
    return agent


def test_same_seed_gives_identical_metrics(tmp_path):
    policy = tiny_policy()
    val = dict(eval_env=vec_env(policy, split="validation"), eval_every=2, eval_episodes=8)
    a = run(tmp_path, "a", 4, **val)
    b = run(tmp_path, "b", 4, **val)
    rows_a, rows_b = read_metrics(tmp_path / "a"), read_metrics(tmp_path / "b")
    assert len(rows_a) == 5 and strip_timing(rows_a) == strip_timing(rows_b)
    assert same_weights(weights(a.policy), weights(b.policy))
    c = run(tmp_path, "c", 4, seed=1)  # another seed, another run
    assert [r["sample_completion"] for r in read_metrics(tmp_path / "c")] != [r.get("sample_completion") for r in rows_a[1:]]
    assert not same_weights(weights(a.policy), weights(c.policy))


@pytest.mark.parametrize("baseline", ["mean", "value"])
def test_save_load_continue_equals_an_uninterrupted_run(tmp_path, baseline):
    straight = run(tmp_path, "straight", 4, baseline=baseline, log=False)
    first_half = run(tmp_path, "halves", 2, baseline=baseline, log=False)
    first_half.save(tmp_path / "saved")
    resumed = REINFORCE.load(tmp_path / "saved")
    assert resumed.iteration == 2 and resumed.config == first_half.config
    assert resumed.running_mean == first_half.running_mean
    resumed.learn(vec_env(resumed.policy, prompts=2, group_size=4), iterations=2, progress_bar=False)
    assert resumed.iteration == 4
    assert same_weights(weights(straight.policy), weights(resumed.policy))
    if baseline == "value":
        assert torch.equal(straight.value_head.weight, resumed.value_head.weight)


# ------------------------------------------------------------------------------- NaN safety


def nan_log_probs(policy, monkeypatch):
    original = policy.log_probs

    def poisoned(*args, **kwargs):
        out = original(*args, **kwargs)
        out["log_probs"] = out["log_probs"] * float("nan")
        return out

    monkeypatch.setattr(policy, "log_probs", poisoned)


def test_a_nan_loss_skips_the_update_without_changing_the_weights(monkeypatch, batch_and_policy):
    batch, _ = batch_and_policy
    policy = tiny_policy(seed=1)
    policy.restrict_actions(batch_and_policy[1].allowed_tokens.cpu().numpy())
    agent = REINFORCE(policy, baseline="group", lr=1e-2, max_bad_updates=3, seed=0)
    nan_log_probs(policy, monkeypatch)
    before = weights(policy)
    for _ in range(2):
        stats = agent.update(batch)
        assert stats["skipped_update"] == 1.0
        assert same_weights(before, weights(policy))
        assert all(p.grad is None for p in policy.model.parameters())
    with pytest.raises(FloatingPointError, match=r"non-finite loss in 3 consecutive updates.*weights were not changed"):
        agent.update(batch)
    assert same_weights(before, weights(policy))


def test_learn_stops_after_max_bad_updates_consecutive_nan_losses(monkeypatch):
    policy = tiny_policy()
    envs = vec_env(policy)
    agent = REINFORCE(policy, baseline="value", lr=1e-2, max_bad_updates=2, seed=0)
    nan_log_probs(policy, monkeypatch)
    before = weights(policy)
    seen = []
    with pytest.raises(FloatingPointError, match="Lower lr"):
        agent.learn(envs, iterations=10, progress_bar=False, callback=seen.append)
    assert len(seen) == 1 and seen[0]["skipped_update"] == 1.0  # the first was skipped, the second raised
    assert same_weights(before, weights(policy))
    assert all(p.grad is None for p in agent.value_head.parameters())


def test_a_good_update_resets_the_bad_update_count(monkeypatch, batch_and_policy):
    batch, _ = batch_and_policy
    policy = tiny_policy(seed=1)
    policy.restrict_actions(batch_and_policy[1].allowed_tokens.cpu().numpy())
    agent = REINFORCE(policy, baseline="group", lr=1e-3, max_bad_updates=2, seed=0)
    with monkeypatch.context() as m:
        nan_log_probs(policy, m)
        assert agent.update(batch)["skipped_update"] == 1.0
    assert agent.update(batch)["skipped_update"] == 0.0
    with monkeypatch.context() as m:
        nan_log_probs(policy, m)
        assert agent.update(batch)["skipped_update"] == 1.0  # 1 in a row again, not 2


# ------------------------------------------------------------------------------- outputs


def test_learn_writes_metrics_plot_and_checkpoint(tmp_path):
    policy = tiny_policy()
    envs = vec_env(policy)
    eval_env = vec_env(policy, prompts=4, group_size=1, split="validation")
    agent = REINFORCE(policy, baseline="group", lr=3e-3, seed=0)
    agent.learn(envs, iterations=3, eval_env=eval_env, eval_every=2, eval_episodes=8, progress_bar=False,
                log_dir=tmp_path / "run")  # fmt: skip
    rows = read_metrics(tmp_path / "run")
    assert [r["iteration"] for r in rows] == [0, 1, 2, 3]
    assert "val_reward" in rows[0] and "train_reward" not in rows[0]
    assert all("train_reward" in r and "train_accuracy" in r for r in rows[1:])
    assert [("val_reward" in r) for r in rows[1:]] == [False, True, True]  # every 2 and after the last
    assert (tmp_path / "run" / "rewards.png").stat().st_size > 1000
    loaded = REINFORCE.load(tmp_path / "run")
    assert loaded.iteration == 3 and same_weights(weights(loaded.policy), weights(policy))


def test_evaluate_on_a_vector_env_and_a_single_env():
    policy = tiny_policy()
    agent = REINFORCE(policy, baseline="none", seed=0)
    vector = vec_env(policy, prompts=4, group_size=1, split="validation")
    single = textgym.TextGenEnv(tokenizer=policy.tokenizer, split="validation", **TASK)
    for env, episodes in ((vector, 10), (single, 5)):
        result = agent.evaluate(env, episodes=episodes)
        assert result["episodes"] == episodes
        assert 0.0 <= result["reward"] <= 1.0 and 0.0 <= result["accuracy"] <= result["reward"] + 1e-9
        assert result["reward_ci95"] >= 0.0 and 1 <= result["episode_length"] <= TASK["max_new_tokens"]
        greedy = agent.evaluate(env, episodes=episodes, greedy=True)
        assert agent.evaluate(env, episodes=episodes, greedy=True) == greedy  # same seed, same prompts
        state = policy.generator.get_state()
        assert agent.evaluate(env, episodes=episodes) == result  # same seed, same samples too
        assert torch.equal(policy.generator.get_state(), state)  # the caller's stream is untouched
    with pytest.raises(ValueError, match="episodes"):
        agent.evaluate(single, episodes=0)


def test_train_command_runs_end_to_end(tmp_path, capsys):
    """In this process (the real process's exit codes and signals: test_crash_safety.py)."""
    out = tmp_path / "run"
    assert cli_main(["train", "--model", "tiny", "--iterations", "2", "--out", str(out), "--no-progress-bar", "--threads", "1"]) == 0
    text = capsys.readouterr().out
    assert "train reward" in text and "validation reward" in text
    assert "one answer for all (" in text and "lift over it" in text  # the prior, beside the validation reward
    assert str(out / "rewards.png") in text and (out / "rewards.png").exists()
    rows = read_metrics(out)
    assert [r["iteration"] for r in rows] == [0, 1, 2] and np.isfinite(rows[-1]["val_reward"])
    config = json.loads((out / "config.json").read_text())
    assert config["model"] == "tiny" and config["task"] == PRESETS["tiny"]["task"] and config["lr"] == PRESETS["tiny"]["lr"]


def test_bf16_autocast_update_follows_the_fp32_gradient():
    policy = tiny_policy()
    envs = vec_env(policy)
    batch = to_batch(collect_episodes(policy, envs, seed=5)[0], group_size=4)
    grads = {}
    for amp in ("off", "bf16"):
        agent = REINFORCE(policy, baseline="group", seed=0, amp=amp)
        assert (agent.autocast_dtype is None) == (amp == "off")
        assert agent.compute_gradients(batch, agent.advantages(batch)[0])
        grads[amp] = torch.cat([p.grad.reshape(-1) for p in policy.model.parameters() if p.grad is not None])
        assert all(p.dtype == torch.float32 for p in policy.model.parameters())
    cosine = torch.nn.functional.cosine_similarity(grads["off"], grads["bf16"], dim=0)
    assert grads["off"].norm() > 0 and cosine > 0.98, float(cosine)


def test_kl_reference_survives_save_and_load(tmp_path):
    policy = tiny_policy()
    envs = vec_env(policy)
    agent = REINFORCE(policy, baseline="group", seed=0, kl_coef=0.1, lr=1e-2)
    agent.learn(envs, iterations=2, progress_bar=False)
    agent.save(tmp_path / "ckpt")
    again = REINFORCE.load(tmp_path / "ckpt")
    initial = tiny_policy().model.state_dict()
    for name, tensor in again.reference.state_dict().items():
        assert torch.equal(tensor, initial[name]), f"the reference must stay the initial policy ({name})"
    assert any(not torch.equal(t, initial[n]) for n, t in again.policy.model.state_dict().items())


def test_a_bf16_policy_trains_with_every_term_on():
    """The GPU's dtype on the CPU: bf16 weights, value baseline (fp32 head), KL reference, micro-batches."""
    policy = LMPolicy.from_pretrained("tiny", dtype="bfloat16", seed=0)
    envs = vec_env(policy)
    agent = REINFORCE(policy, baseline="value", kl_coef=0.05, entropy_coef=0.01, micro_batch_size=3, lr=3e-3, seed=0)
    assert agent.autocast_dtype is None  # a bf16 policy is not autocast again
    before = weights(policy)
    seen = []
    agent.learn(envs, iterations=2, progress_bar=False, callback=seen.append)
    assert [m["skipped_update"] for m in seen] == [0.0, 0.0] and all(math.isfinite(m["kl"]) for m in seen)
    assert not same_weights(before, weights(policy)) and all(p.dtype == torch.bfloat16 for p in policy.model.parameters())
    assert agent.value_head.weight.dtype == torch.float32
