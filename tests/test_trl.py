"""textgym tasks inside TRL's GRPOTrainer: the dataset, the verifier as its reward (guarded), the
multi-turn rollout function, real GRPOTrainer steps on the tiny model, and the reasoning-gym table
trained by TRL."""

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import textgym
from textgym.example import Example
from textgym.integrations.trl import EXAMPLE_KEY, env_rules, textgym_dataset, textgym_reward_funcs, trl_tokenizer
from textgym.tasks import Task
from textgym.tasks.multiturn import MultiTurnTask, Reply

if os.environ.get("CI"):  # CI installs the `bench` extra: a missing TRL must fail there
    import datasets  # noqa: F401
    import trl
else:
    pytest.importorskip("datasets")
    trl = pytest.importorskip("trl")

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
HAVE_RG = importlib.util.find_spec("reasoning_gym") is not None
# TRL 1.16's own noise, not textgym's: its GRPOConfig sets `gradient_checkpointing`, which transformers 5.25
# deprecates (every GRPOConfig warns), and it calls rollout_func experimental.
pytestmark = [pytest.mark.filterwarnings("ignore:`gradient_checkpointing` is deprecated:FutureWarning"),
              pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"),
              pytest.mark.filterwarnings("ignore:You are using 'rollout_func':UserWarning")]  # fmt: skip


def lowercase_share(completion, example):
    """Varied scores for a random model's text (its share of lowercase letters), plus a bonus that
    differs per example (so each sample must be scored against its own), and a verifier that raises
    on some of it."""
    if any(ch.isdigit() for ch in completion):
        raise ValueError("a digit")
    return round(sum(ch.islower() for ch in completion) / max(len(completion), 1) + WORDS.index(example.answer) / 10, 3)


WORDS = ["ab", "cd", "ef", "gh", "ij", "kl", "mn", "op", "qr", "st"]
SINGLE = Task.from_examples("lower", train=[(f"Copy: {w}", w) for w in WORDS[:4]], reward=lowercase_share)


class Shout(MultiTurnTask):
    """Two turns of at most 3 tokens; each turn pays its share of capital letters (a random model
    scores something), and the env answers the first with "Louder."."""

    name, max_turns, max_turn_tokens = "shout", 2, 3

    def all_problems(self):
        return [Example(f"Shout {w}", w.upper()) for w in WORDS]

    def reply(self, text, example, state):
        state["turns"] = state.get("turns", 0) + 1
        share = round(sum(ch.isupper() for ch in text) / max(len(text), 1), 3)
        return Reply("Louder.", reward=share, done=state["turns"] >= 2, components={"upper": share})


# -- the dataset and the reward, without a trainer ---------------------------------------------------


def trl_prompt_ids(hf, prompt):
    """What GRPOTrainer feeds the model for a dataset prompt (its two paths)."""
    if isinstance(prompt, list):
        return list(hf.apply_chat_template(conversation=[prompt], add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"][0])
    return list(hf(text=[prompt])["input_ids"][0])


@pytest.mark.parametrize("tokenizer, settings", [("char", {}), ("smollm2-135m-instruct", {"system_prompt": "Be brief."})])
def test_the_dataset_gives_trl_the_envs_prompts(tokenizer, settings):
    data = textgym_dataset("addition", "validation", tokenizer=tokenizer, **settings)
    rules = env_rules("addition", tokenizer, {**settings, "split": "validation"})
    assert len(data) == rules.num_examples == 10 and data.column_names == ["prompt", "split", "index", "answer", "solution"]
    hf = trl_tokenizer(tokenizer)
    for row in data:
        example = rules.task.example("validation", row["index"])
        assert row["split"] == "validation" and row["answer"] == row["solution"] == example.answer
        assert trl_prompt_ids(hf, row["prompt"]) == rules.prompt_ids(example)
    first = data[0]["prompt"]
    if tokenizer == "char":  # no chat template: the env's prompt text
        assert first == rules.prompt_text(rules.task.example("validation", 0))
    else:  # messages, which TRL renders with the same template (and hands to TRL's own reward functions)
        assert first[0] == {"role": "system", "content": "Be brief."} and first[1]["role"] == "user"
    with pytest.raises(ValueError, match="is unbounded: pass size="):
        textgym_dataset("addition", tokenizer="char", task_kwargs={"digits": 6})
    assert len(textgym_dataset("addition", tokenizer="char", task_kwargs={"digits": 6}, size=5)) == 5


def hanging(completion, example):
    if completion == "zz":
        time.sleep(30)
    return lowercase_share(completion, example)


def test_the_reward_is_the_guarded_verifier_one_sample_at_a_time():
    """A verifier that raises or hangs costs its sample a 0 and an error in the completions table;
    the others are scored; components and the error share reach TRL's metrics."""
    task = Task.from_examples("lower", train=[("Copy: ab", "ab")], reward=hanging)
    (reward,) = textgym_reward_funcs(task, tokenizer="char", max_new_tokens=4, reward_timeout=0.5)
    tok = textgym.as_tokenizer("char")
    texts = ["ab", "a1", "zz", "aB"]  # example 0 is "ab": no bonus
    ids = [tok.encode(t) + [tok.eos_token_id] for t in texts]
    metrics, extra = {}, {}
    started = time.monotonic()
    got = reward(completions=texts, completion_ids=ids, split=["train"] * 4, index=[0] * 4,
                 log_metric=metrics.__setitem__, log_extra=extra.__setitem__)  # fmt: skip
    assert time.monotonic() - started < 10
    assert got == [1.0, 0.0, 0.0, 0.5]
    errors = extra["textgym_error"]
    assert errors[0] == errors[3] == "" and "raised ValueError: a digit" in errors[1] and "timed out after 0.5 s" in errors[2]
    assert metrics == {"textgym/reward_errors": 0.5}
    # components (r1_zero's format and answer) are logged, not added as reward functions
    r1 = textgym.make_task("addition", prompt_style="r1_zero")
    (reward,) = textgym_reward_funcs(r1, tokenizer="char", max_new_tokens=64)
    example = r1.example("train", 0)
    text = f" x </think> <answer>{example.answer}</answer>"
    metrics.clear()
    assert reward(completions=[text], completion_ids=[tok.encode(text)], split=["train"], index=[0], log_metric=metrics.__setitem__) == [1.0]
    assert metrics["textgym/answer"] == 1.0 and metrics["textgym/format"] == 1.0


def test_the_reward_reads_what_the_env_would_have_read_at_a_stop_string():
    """TRL's generate does not stop at a task's stop strings; the verifier reads up to the first one, like
    an episode, and ids that a verifier takes are the ones sampled (up to there)."""
    seen = []

    def spy(completion, example, completion_ids=None):
        seen.append((completion, completion_ids))
        return float(completion.endswith("</answer>"))

    task = Task.from_examples("stop", train=[("q", "7")], reward=spy, prompt_style="r1_zero")
    rules = env_rules(task, "char", {"max_new_tokens": 40, "reward": spy})
    (reward,) = textgym_reward_funcs(task, tokenizer="char", max_new_tokens=40, reward=spy)
    tok = rules.tokenizer
    text = " hm </think> <answer>7</answer> and more"
    ids = tok.encode(text)
    assert reward(completions=[text], completion_ids=[ids], split=["train"], index=[0]) == [1.0]
    env = textgym.TextGenEnv(task=task, tokenizer="char", max_new_tokens=40, reward=spy)
    env.reset(options={"index": 0})
    for token in ids:
        _, r, terminated, truncated, info = env.step(token)
        if terminated or truncated:
            break
    assert info["ended_by"] == "stop" and seen[0] == seen[1] == (" hm </think> <answer>7</answer>", tok.encode(" hm </think> <answer>7</answer>"))
    assert rules.cut_at_stop(ids + [0]) == ids[: len(ids) - len(" and more")]
    assert rules.cut_at_stop(tok.encode("no stop")) == tok.encode("no stop")


def test_clear_errors_for_what_does_not_fit():
    (reward,) = textgym_reward_funcs(SINGLE, tokenizer="char", max_new_tokens=4)
    with pytest.raises(ValueError, match=r"more than the env's max_new_tokens=4: set GRPOConfig\(max_completion_length=4\)"):
        reward(completions=["abcdef"], completion_ids=[[1, 2, 3, 4, 5, 6]], split=["train"], index=[0])
    with pytest.raises(ValueError, match="needs the `split` and `index` columns of textgym_dataset"):
        reward(completions=["ab"], completion_ids=[[1, 2]])
    (episode_reward,) = textgym_reward_funcs(Shout(), tokenizer="char", max_new_tokens=16)
    with pytest.raises(ValueError, match="is multi-turn: its rewards come from its env's episodes. Pass rollout_func="):
        episode_reward(completions=["x"], completion_ids=[[1]])
    from agents.trl import _example_ref, textgym_rollout_func

    with pytest.raises(ValueError, match="is single-turn: GRPOTrainer samples it itself"):
        textgym_rollout_func(SINGLE, tokenizer="char")
    with pytest.raises(ValueError, match="this prompt does not"):
        _example_ref([{"role": "user", "content": "Shout ab"}])
    assert _example_ref([{"role": "user", "content": "x", EXAMPLE_KEY: "validation/12"}]) == ("validation", 12)


# -- real GRPOTrainer steps ------------------------------------------------------------------------


def grpo_trainer(task, max_new_tokens, steps, out, **kwargs):
    import torch
    from trl import GRPOConfig, GRPOTrainer
    from transformers import TrainerCallback

    from agents.models import load_model

    torch.set_num_threads(1)
    model, tokenizer = load_model("tiny", seed=0)
    env = dict(task=task, tokenizer=tokenizer, max_new_tokens=max_new_tokens)
    args = GRPOConfig(output_dir=str(out), report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=True, use_cpu=True,
                      bf16=False, gradient_checkpointing=False, per_device_train_batch_size=8, num_generations=4,
                      max_completion_length=max_new_tokens, max_steps=steps, learning_rate=1e-3, seed=0)  # fmt: skip
    seen = []

    class EveryStep(TrainerCallback):  # what TRL logged for the step's completions (its completions table)
        def on_step_end(self, args, state, control, **_):
            logs = trainer._logs
            seen.append({"prompts": list(logs["prompt"]), "completions": list(logs["completion"]),
                         "rewards": list(logs["rewards"]["textgym_reward"]),
                         "errors": list(logs["extra"]["textgym_error"])})  # fmt: skip

    trainer = GRPOTrainer(model=model, processing_class=trl_tokenizer(tokenizer), args=args, callbacks=[EveryStep()],
                          train_dataset=textgym_dataset(split="train", **env), reward_funcs=textgym_reward_funcs(**env),
                          **{k: v(**env) for k, v in kwargs.items()})  # fmt: skip
    return trainer, seen


def test_grpo_trainer_steps_on_a_single_turn_task_are_scored_by_its_verifier(tmp_path):
    """Three GRPOTrainer steps; every reward TRL logged is what the env pays for that completion, a
    verifier that raised included (0 and its error), and the model moved."""
    trainer, seen = grpo_trainer(SINGLE, max_new_tokens=4, steps=3, out=tmp_path)
    before = trainer.model.model.embed_tokens.weight.detach().clone()
    trainer.train()
    assert len(seen) == 3 and trainer.state.global_step == 3
    assert not np.allclose(before.numpy(), trainer.model.model.embed_tokens.weight.detach().numpy())
    tok = textgym.as_tokenizer("char")
    rewards, errors = [], []
    for step in seen:
        assert len(step["completions"]) == len(step["rewards"]) == 8
        for prompt, completion, reward, error in zip(step["prompts"], step["completions"], step["rewards"], step["errors"]):
            env = textgym.TextGenEnv(task=SINGLE, tokenizer="char", max_new_tokens=4)
            env.reset(options={"index": next(i for i in range(4) if SINGLE.example("train", i).prompt == prompt)})
            for token in tok.encode(completion) + [tok.eos_token_id]:  # char ids re-encode exactly
                _, paid, terminated, truncated, info = env.step(token)
                if terminated or truncated:
                    break
            # TRL keeps rewards as float32
            assert reward == pytest.approx(paid, abs=1e-6) and bool(error) == ("reward_error" in info), (completion, reward, paid, error)
            rewards.append(reward)
            errors.append(bool(error))
    assert any(errors) and not all(errors) and len(set(rewards)) > 2  # the check could fail: scores vary
    logged = [row for row in trainer.state.log_history if "rewards/textgym_reward/mean" in row]
    assert [row["textgym/reward_errors"] for row in logged] == [np.mean([bool(e) for e in s["errors"]]) for s in seen]


def test_grpo_trainer_steps_on_a_multi_turn_task_through_the_rollout_func(tmp_path):
    """Two GRPOTrainer steps whose episodes textgym's env plays: each completion is the env's episode
    (the policy's tokens, the env's reply between them), TRL's reward is the episode's return, and TRL
    counts (and trains on) the policy's tokens only."""
    from agents.trl import textgym_rollout_func

    outputs = []

    def rollout(**env):
        play = textgym_rollout_func(**env)

        def spy(prompts, trainer):
            outputs.append(play(prompts, trainer))
            return outputs[-1]

        return spy

    task = Shout()
    trainer, seen = grpo_trainer(task, max_new_tokens=16, steps=2, out=tmp_path, rollout_func=rollout)
    trainer.train()
    assert len(outputs) == len(seen) == 2
    tok = textgym.as_tokenizer("char")
    replies = 0
    logged = [row for row in trainer.state.log_history if "completions/mean_length" in row]
    for out, step, log in zip(outputs, seen, logged):
        assert step["rewards"] == pytest.approx(out["textgym_return"])
        for prompt, ids, mask, log_probs, reward in zip(step["prompts"], out["completion_ids"], out["env_mask"], out["logprobs"], out["textgym_return"]):
            split, index = prompt[-1][EXAMPLE_KEY].split("/")
            env = textgym.TextGenEnv(task=task, tokenizer="char", max_new_tokens=16)
            obs, _ = env.reset(options={"index": int(index)})
            paid = 0.0
            for token in [t for t, m in zip(ids, mask) if m]:  # the policy's tokens, replayed
                obs, r, terminated, truncated, _ = env.step(token)
                paid += r
            p, q = int(obs["prompt_len"][0]), int(obs["seq_len"][0])
            assert terminated or truncated
            assert obs["input_ids"][p:q].tolist() == ids and obs["policy_mask"][p:q].tolist() == mask
            assert paid == pytest.approx(reward)
            assert all(lp < 0 for lp, m in zip(log_probs, mask) if m) and all(lp == 0 for lp, m in zip(log_probs, mask) if not m)
            replies += "Louder." in tok.decode(ids)
        assert log["completions/mean_length"] == pytest.approx(np.mean([sum(m) for m in out["env_mask"]]))
    assert replies > 0 and len({r for out in outputs for r in out["textgym_return"]}) > 2


def test_grpo_config_has_the_budget_lr_and_sampling_of_a_textgym_run(tmp_path):
    from agents.train import resolve_settings, split_settings
    from agents.trl import grpo_config_kwargs

    settings = resolve_settings({"model": "smollm2-135m-instruct", "task": "comparison", "iterations": 60, "lr": 3e-5,
                                 "lr_schedule": "linear", "temperature": 0.7, "top_p": 0.9, "max_new_tokens": 32})  # fmt: skip
    run, _, env, agent, sampling = split_settings(settings)
    kwargs = grpo_config_kwargs(run, env, agent, sampling)
    config = trl.GRPOConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, bf16=False, **kwargs)
    # one optimizer step = one textgym update: 2 prompts x 8 samples, generated once
    assert (config.per_device_train_batch_size, config.num_generations, config.gradient_accumulation_steps) == (16, 8, 1)
    assert config.generation_batch_size == 16 and config.steps_per_generation == 1 and config.max_steps == 60
    assert (config.learning_rate, config.lr_scheduler_type.value, config.warmup_steps) == (3e-5, "linear", 0)
    assert (config.temperature, config.top_p, config.top_k, config.max_completion_length) == (0.7, 0.9, 0, 32)
    assert (config.beta, config.max_grad_norm, config.weight_decay, config.seed) == (0.0, 1.0, 0.0, 0)


# -- the reasoning-gym table, trained by TRL ----------------------------------------------------------


@pytest.mark.parametrize("task, settings", [
    ("guess", {"task_kwargs": {"length": 3, "digits": "12"}, "max_turn_tokens": 3}),
    ("retry", {"task_kwargs": {"task": "copy", "task_kwargs": {"length": 3, "alphabet": "ab"}}, "max_turn_tokens": 4}),
    ("calculator", {"task_kwargs": {"digits": 2, "digits2": 1}}),
])  # fmt: skip
def test_the_rollout_plays_the_builtin_multi_turn_tasks(task, settings, tmp_path):
    """Each prompt of the dataset becomes one episode of its own example; the env's replies sit between
    the policy's tokens, masked out; a second call (the next step) plays again from the prompts."""
    import torch
    from types import SimpleNamespace

    from agents.models import load_model
    from agents.trl import textgym_rollout_func

    torch.set_num_threads(1)
    model, tokenizer = load_model("tiny", seed=0)
    model.train()  # as GRPOTrainer holds it
    env = dict(task=task, tokenizer=tokenizer, max_new_tokens=24, **settings)
    data = textgym_dataset(split="train", size=3, **env)
    args = trl.GRPOConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, bf16=False, max_completion_length=24, seed=0)
    trainer = SimpleNamespace(args=args, model=model, accelerator=SimpleNamespace(unwrap_model=lambda m: m))
    play = textgym_rollout_func(**env)
    prompts = [data[i]["prompt"] for i in (0, 0, 1, 2)]  # a group shares its prompt
    for _ in range(2):
        out = play(prompts, trainer)
        assert len(out["completion_ids"]) == 4 and model.training  # the trainer's mode is left as it was
        rules = env_rules(task, tokenizer, {k: v for k, v in env.items() if k not in ("task", "tokenizer")})
        for i, prompt in enumerate(prompts):
            example = rules.task.example("train", int(prompt[-1][EXAMPLE_KEY].split("/")[1]))
            assert out["prompt_ids"][i] == rules.prompt_ids(example, state=rules.task.start(example))
            assert len(out["completion_ids"][i]) == len(out["env_mask"][i]) == len(out["logprobs"][i]) <= 24
    if task != "calculator":  # a random model never writes a well-formed <calc> call, so the calculator never replies
        assert any(0 in mask for mask in out["env_mask"])


@pytest.mark.skipif(not HAVE_RG, reason="needs reasoning-gym (pip install 'textgym[reasoning]')")
def test_the_reasoning_gym_table_trains_with_trl_and_evaluates_like_textgym(tmp_path):
    """--trainer trl: GRPOTrainer gets the textgym run's flags (2 updates of 1 prompt x 2 samples), its
    model is evaluated by the same `textgym eval` command, and a second run trains nothing again."""
    def table(trl_args):
        return [sys.executable, "examples/benchmarks/reasoning_gym_table.py", "table", "--model", "tiny", "--datasets",
                "leg_counting", "--size", "200", "--problems", "2", "--samples", "2", "--iterations", "2",
                "--max-new-tokens", "4", "--threads", "1", "--out", str(tmp_path), "--trainer", "trl", "--trl-args", trl_args,
                "--train-args", "--prompts", "1", "--group-size", "2", "--lr", "5e-4"]  # fmt: skip

    script = table('{"loss_type": "dr_grpo", "epsilon_high": 0.28, "mask_truncated_completions": true}')
    first = subprocess.run(script, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    commands = [line[2:] for line in first.stdout.splitlines() if line.startswith("$ ")]
    base, train, trained = commands
    assert train.startswith("python examples/trl_grpo_textgym.py --model tiny --task reasoning_gym:leg_counting")
    run = tmp_path / "leg_counting" / "trl-2"
    assert trained == base.replace("--model tiny", f"--model {run / 'model'}").replace(
        str(tmp_path / "leg_counting" / "base"), str(tmp_path / "leg_counting" / "trl-trained-2"))
    config = json.loads((run / "settings.json").read_text())["grpo_config"]
    assert (config["per_device_train_batch_size"], config["num_generations"], config["gradient_accumulation_steps"]) == (2, 2, 1)
    assert (config["max_steps"], config["learning_rate"], config["max_completion_length"], config["temperature"]) == (2, 5e-4, 4, 0.7)
    assert (config["loss_type"], config["epsilon_high"], config["mask_truncated_completions"]) == ("dr_grpo", 0.28, True)
    assert [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()] == [1, 2]
    summary = json.loads((tmp_path / "leg_counting" / "trl-trained-2" / "summary.json").read_text())
    assert summary["tasks"][0]["problems"] == 2
    (row,) = [line for line in first.stdout.splitlines() if line.startswith("| leg_counting |")]
    assert row.endswith("| 2 |") and row.count("[") == 5 and "trained by TRL's GRPOTrainer" in first.stdout  # four pass@k cells and the lift
    again = subprocess.run(script, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and row in again.stdout.splitlines()
    assert "is trained already" in (tmp_path / "leg_counting" / "trl-train.log").read_text()


def test_a_finished_trl_run_is_kept_and_never_overwritten_with_other_settings(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("trl_grpo_textgym", REPO / "examples/trl_grpo_textgym.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    flags = ["--model", "tiny", "--task", "copy", "--iterations", "2", "--out", str(tmp_path)]
    settings, trl_args, out = script.parse([*flags, "--trl-args", '{"loss_type": "grpo"}'])
    assert out == tmp_path and trl_args == {"loss_type": "grpo"} and settings["lr"] == 1e-3  # the tiny preset's, as textgym train
    (tmp_path / "model").mkdir()  # a finished run, as main() records it
    (tmp_path / "settings.json").write_text(json.dumps({"settings": json.loads(json.dumps(settings, default=str)), "trl_args": trl_args}))
    assert script.main([*flags, "--trl-args", '{"loss_type": "grpo"}']) == 0 and "is trained already" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="was trained with other settings"):
        script.main([*flags, "--trl-args", '{"loss_type": "dapo"}'])
    with pytest.raises(SystemExit, match="was trained with other settings"):
        script.main([*flags[:-2], "--lr", "1e-4", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        script.main([*flags, "--trl-args", "[1, 2]"])
    assert "--trl-args must be a JSON object" in capsys.readouterr().err
