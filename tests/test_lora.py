"""LoRA adapters (agents.lora) and gradient checkpointing, with the tiny model (a LlamaForCausalLM).

- an update changes the adapters only: the base weights stay bit-identical, the optimizer holds
  the adapters alone;
- the KL reference is the same model with its adapters disabled: it has no weights of its own
  and its log-probs are the base model's;
- save -> load -> continue equals an uninterrupted run; checkpoints hold the adapters, not the
  base, and load weights-only; `textgym train --lora-rank` and `textgym eval --model <run>` work,
  `--resume` keeps LoRA and continues bit-identically, adapter dropout included (its masks come
  from the run's seed); every LoRA setting is a `textgym train` flag that reaches the adapters;
  a run directory loads through the run layer as base + adapters;
- `merged_state_dict` gives the base's names with the adapters folded in, leaving the model as it was;
- gradient checkpointing gives the same gradient as without, for full fine-tuning and for LoRA;
- bad settings (rank < 0, an unknown or non-linear target module, LoRA settings without a rank,
  adapters on another base) fail with a clear message.
"""

import copy
import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("peft")

import textgym  # noqa: E402
from agents.lora import LoRAConfig, apply_lora, frozen_reference, is_lora, merged_state_dict  # noqa: E402
from agents.models import load_model, save_model  # noqa: E402
from agents.policy import LMPolicy  # noqa: E402
from agents.reinforce import REINFORCE  # noqa: E402
from agents.rollouts import collect_episodes, to_batch  # noqa: E402
from agents.train import main as train  # noqa: E402

torch.set_num_threads(1)

TASK = dict(task="copy", task_kwargs={"length": 2, "alphabet": "abc"}, reward="partial_credit", max_new_tokens=3)
QUICK = ["--model", "tiny", "--task", "copy", "--task-kwargs", '{"length": 2, "alphabet": "ab"}', "--max-new-tokens", "3",
         "--prompts", "1", "--group-size", "2", "--eval-episodes", "2", "--no-progress-bar", "--threads", "1"]  # fmt: skip


def lora_policy(rank=4, seed=0, **settings):
    return LMPolicy.from_pretrained("tiny", seed=seed, lora=LoRAConfig(lora_rank=rank, **settings))


def vec_env(policy, prompts=2, group_size=4, split="train"):
    envs = textgym.TextGenVectorEnv(num_envs=prompts * group_size, group_size=group_size, split=split, tokenizer=policy.tokenizer, **TASK)
    if policy.allowed_tokens is None:
        policy.restrict_actions(envs.action_masks()[0])
    return envs


def a_batch(policy, seed=0):
    return to_batch(collect_episodes(policy, vec_env(policy), seed=seed)[0], group_size=4)


def split_weights(model):
    """(base weights, adapter weights) of a LoRA model, cloned."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return {k: v for k, v in state.items() if ".lora_" not in k}, {k: v for k, v in state.items() if ".lora_" in k}


def perturb_adapters(model, seed=0):
    """Give B a non-zero value (it starts at 0, where the adapted model is the base)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)


def sequence_log_probs(policy, batch, model=None):
    with torch.no_grad():
        return policy.log_probs(batch.input_ids, batch.attention_mask, model=model)["log_probs"]


# -- what trains ------------------------------------------------------------------------------------


def test_fresh_adapters_compute_the_base_model_and_their_init_is_seeded():
    state = torch.random.get_rng_state()
    a, b = lora_policy(), lora_policy()
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is not drawn from
    _, adapters_a = split_weights(a.model)
    _, adapters_b = split_weights(b.model)
    assert adapters_a and all(torch.equal(adapters_a[k], adapters_b[k]) for k in adapters_a)
    _, adapters_c = split_weights(lora_policy(seed=1).model)  # the run's seed draws A (the tiny base is seed 0's either way)
    assert all(not torch.equal(adapters_a[k], adapters_c[k]) for k in adapters_a if "lora_A" in k)
    base = LMPolicy.from_pretrained("tiny", seed=0)
    base.restrict_actions(vec_env(a).action_masks()[0])
    batch = a_batch(a)
    torch.testing.assert_close(sequence_log_probs(a, batch), sequence_log_probs(base, batch), rtol=0, atol=1e-6)


def test_an_update_changes_only_the_adapters_and_the_optimizer_holds_only_them():
    policy = lora_policy()
    assert is_lora(policy.model)
    batch = a_batch(policy)
    agent = REINFORCE(policy, baseline="group", lr=1e-2, weight_decay=0.1, seed=0)  # decay would touch any weight it held
    adapters = {p for n, p in policy.model.named_parameters() if ".lora_" in n}
    held = {p for group in agent.optimizer.param_groups for p in group["params"]}
    assert held == adapters and all(p.requires_grad for p in adapters)
    assert all(not p.requires_grad for n, p in policy.model.named_parameters() if ".lora_" not in n)
    base_before, adapters_before = split_weights(policy.model)
    stats = agent.update(batch)
    assert stats["skipped_update"] == 0.0
    base_after, adapters_after = split_weights(policy.model)
    assert base_after.keys() == base_before.keys() and all(torch.equal(base_before[k], base_after[k]) for k in base_before)
    assert all(not torch.equal(adapters_before[k], adapters_after[k]) for k in adapters_before if "lora_B" in k)


def test_kl_reference_is_the_base_with_adapters_disabled_not_a_copy():
    policy = lora_policy()
    envs = vec_env(policy)
    agent = REINFORCE(policy, baseline="group", lr=1e-2, kl_coef=0.1, seed=0)
    seen = []
    agent.learn(envs, iterations=2, progress_bar=False, callback=seen.append)
    assert seen[-1]["kl"] > 0  # the adapters moved the policy away from its reference
    # No second copy: the reference owns no tensor (a full model's reference owns a whole model).
    assert list(agent.reference.parameters()) == [] and not agent.reference.state_dict()
    full = LMPolicy.from_pretrained("tiny", seed=0)
    full_reference = frozen_reference(full.model)
    assert sum(p.numel() for p in full_reference.parameters()) == full.model.num_parameters()
    # Its log-probs are the base model's, not the adapted policy's.
    base = LMPolicy.from_pretrained("tiny", seed=0)
    base.restrict_actions(policy.allowed_tokens.cpu().numpy())
    batch = a_batch(policy, seed=1)
    reference = sequence_log_probs(policy, batch, model=agent.reference)
    torch.testing.assert_close(reference, sequence_log_probs(base, batch), rtol=0, atol=1e-6)
    assert not torch.allclose(sequence_log_probs(policy, batch), reference, atol=1e-3)


def test_the_kl_reference_runs_without_dropout_while_the_policy_trains():
    policy = lora_policy(lora_dropout=0.5)
    attention = [m for m in policy.model.modules() if hasattr(m, "attention_dropout")]
    for m in attention:
        m.attention_dropout = 0.5  # the base model's own dropout, as a model trained with it has
    perturb_adapters(policy.model)
    batch = a_batch(policy)
    base = LMPolicy.from_pretrained("tiny", seed=0)
    base.restrict_actions(policy.allowed_tokens.cpu().numpy())
    reference = frozen_reference(policy.model)
    policy.model.train()  # as during an update
    torch.testing.assert_close(sequence_log_probs(policy, batch, model=reference), sequence_log_probs(base, batch), rtol=0, atol=1e-6)
    assert policy.model.training and all(m.training for m in attention)  # the update's mode is back
    assert not torch.allclose(sequence_log_probs(policy, batch), sequence_log_probs(policy, batch))  # dropout is on


# -- checkpoints ------------------------------------------------------------------------------------


def lora_run(iterations, **settings):
    policy = lora_policy()
    agent = REINFORCE(policy, baseline="mean", lr=1e-2, kl_coef=0.05, seed=0, **settings)
    agent.learn(vec_env(policy), iterations=iterations, progress_bar=False)
    return agent


def test_save_load_continue_equals_an_uninterrupted_lora_run(tmp_path):
    straight = lora_run(4)
    first_half = lora_run(2)
    first_half.save(tmp_path / "saved")
    files = {p.name for p in (tmp_path / "saved" / "policy").iterdir()}
    assert "adapter_model.safetensors" in files and "model.safetensors" not in files  # adapters, not the base
    assert json.loads((tmp_path / "saved" / "policy" / "adapter_config.json").read_text())["base_model_name_or_path"] == "tiny"
    resumed = REINFORCE.load(tmp_path / "saved")
    assert is_lora(resumed.policy.model) and resumed.iteration == 2 and resumed.config == first_half.config
    resumed.learn(vec_env(resumed.policy), iterations=2, progress_bar=False)
    a, b = split_weights(straight.policy.model), split_weights(resumed.policy.model)
    for part in (0, 1):
        assert a[part].keys() == b[part].keys() and all(torch.equal(a[part][k], b[part][k]) for k in a[part])


def test_a_run_without_kl_resumes_with_kl_against_its_base(tmp_path):
    policy = lora_policy()
    first = REINFORCE(policy, baseline="mean", lr=1e-2, seed=0)
    first.learn(vec_env(policy), iterations=1, progress_bar=False)
    first.save(tmp_path / "saved")
    resumed = REINFORCE.load(tmp_path / "saved", kl_coef=0.1)  # a full run would refuse: no initial copy saved
    assert resumed.reference is not None and list(resumed.reference.parameters()) == []


def test_train_command_with_lora_then_eval_and_resume(tmp_path, capsys, monkeypatch):
    from agents import evaluation

    run = tmp_path / "run"
    assert train([*QUICK, "--iterations", "2", "--lora-rank", "4", "--lr", "1e-2", "--gradient-checkpointing", "--out", str(run)]) == 0
    assert "LoRA rank 4" in capsys.readouterr().out
    config = json.loads((run / "config.json").read_text())
    assert config["lora_rank"] == 4 and config["gradient_checkpointing"] is True
    latest = run / (run / "latest").read_text().strip()
    assert (latest / "policy" / "adapter_model.safetensors").exists() and not (latest / "policy" / "model.safetensors").exists()
    monkeypatch.chdir(tmp_path)
    assert evaluation.main(["--model", str(run), "--samples", "2", "--problems", "2", "--split", "train", "--no-progress-bar"]) == 0
    assert "| copy" in capsys.readouterr().out
    assert train(["--resume", str(run), "--iterations", "3", "--no-progress-bar"]) == 0
    assert "resuming" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="--lora-rank cannot change on --resume"):
        train(["--resume", str(run), "--lora-rank", "8"])


LORA_FLAGS = ["--reward", "partial_credit", "--lora-rank", "4", "--lora-alpha", "6", "--lora-dropout", "0.3", "--lora-target-modules", "q_proj", "v_proj",
              "--lr", "1e-2", "--kl-coef", "0.05", "--eval-every", "100"]  # fmt: skip


def latest(run: Path) -> Path:
    return run / (run / "latest").read_text().strip()


def metrics(run: Path) -> list[dict]:
    """The training rows (validation also runs where a run stopped; wall-clock figures always differ)."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if not k.startswith(("val_", "time")) and not k.endswith("_s")} for row in rows]


def test_every_lora_flag_reaches_the_adapters_and_the_checkpoint_holds_only_them(tmp_path):
    from safetensors.torch import load_file

    run = tmp_path / "run"
    assert train([*QUICK, "--iterations", "1", *LORA_FLAGS, "--out", str(run)]) == 0
    config = json.loads((run / "config.json").read_text())
    assert (config["lora_rank"], config["lora_alpha"], config["lora_dropout"], config["lora_target_modules"]) == (4, 6, 0.3, ["q_proj", "v_proj"])
    adapter = json.loads((latest(run) / "policy" / "adapter_config.json").read_text())
    assert (adapter["r"], adapter["lora_alpha"], adapter["lora_dropout"]) == (4, 6, 0.3)
    assert sorted(adapter["target_modules"]) == ["q_proj", "v_proj"]
    # policy/ holds the adapters (A and B of q_proj and v_proj in each layer), not one base weight
    saved = load_file(latest(run) / "policy" / "adapter_model.safetensors")
    layers = len(load_model("tiny")[0].model.layers)
    assert len(saved) == 2 * 2 * layers and all(".lora_A." in k or ".lora_B." in k for k in saved)
    assert {k.split(".lora_")[0].rsplit(".", 1)[-1] for k in saved} == {"q_proj", "v_proj"}
    # agent.pt loads weights-only; AdamW's moments are the adapters' (2 per trained number), the KL reference has no state
    state = torch.load(latest(run) / "agent.pt", map_location="cpu", weights_only=True)
    moments = sum(v.numel() for s in state["optimizer"]["state"].values() for k, v in s.items() if k in ("exp_avg", "exp_avg_sq"))
    assert moments == 2 * sum(v.numel() for v in saved.values())
    assert state["reference"] == {}


def test_resume_continues_a_lora_run_with_dropout_bit_identically(tmp_path):
    from safetensors.torch import load_file

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert train([*QUICK, "--iterations", "4", *LORA_FLAGS, "--out", str(straight)]) == 0
    assert train([*QUICK, "--iterations", "2", *LORA_FLAGS, "--out", str(resumed)]) == 0
    torch.manual_seed(1234)  # the process's global RNG is elsewhere now: the run must not depend on it
    assert train(["--resume", str(resumed), "--iterations", "4", "--no-progress-bar"]) == 0
    a = load_file(latest(straight) / "policy" / "adapter_model.safetensors")
    b = load_file(latest(resumed) / "policy" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert metrics(straight) == metrics(resumed)
    assert any(row.get("kl", 0) > 0 for row in metrics(straight))  # the adapters moved: there was something to replay


def test_a_run_directory_loads_as_base_plus_adapters_through_the_run_layer(tmp_path):
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file

    from agents.runs import load_policy

    run = tmp_path / "run"
    assert train([*QUICK, "--iterations", "2", "--lora-rank", "4", "--lr", "1e-2", "--out", str(run)]) == 0
    policy, described = load_policy(str(run), temperature=0.5)
    assert is_lora(policy.model) and described["iteration"] == 2 and described["checkpoint"] == str(latest(run).resolve())
    assert policy.temperature == 0.5 and policy.allowed_tokens is not None  # the run's restriction, the new sampling
    saved = load_file(latest(run) / "policy" / "adapter_model.safetensors")
    loaded = get_peft_model_state_dict(policy.model, save_embedding_layers=False)
    assert loaded.keys() == saved.keys() and all(torch.equal(loaded[k], saved[k]) for k in saved)
    assert any(v.abs().sum() > 0 for k, v in saved.items() if "lora_B" in k)  # trained, not fresh adapters
    base, _ = load_model("tiny")
    state = merged_state_dict(policy.model)  # base weights where nothing was adapted: the base's own
    assert all(torch.equal(state[k], v) for k, v in base.state_dict().items() if not k.endswith(LLAMA_WEIGHTS))


LLAMA_WEIGHTS = tuple(f"{name}.weight" for name in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"))


def test_merged_state_dict_folds_the_adapters_in_without_touching_the_model():
    policy = lora_policy()
    perturb_adapters(policy.model)
    batch = a_batch(policy)
    before = {k: v.clone() for k, v in policy.model.state_dict().items()}
    expected = sequence_log_probs(policy, batch)
    merged = merged_state_dict(policy)  # a policy or its model
    assert merged.keys() == merged_state_dict(policy.model).keys()
    plain, _ = load_model("tiny")
    assert merged.keys() == plain.state_dict().keys()
    plain.load_state_dict(merged)
    plain_policy = LMPolicy(plain, policy.tokenizer)
    plain_policy.restrict_actions(policy.allowed_tokens.cpu().numpy())
    torch.testing.assert_close(sequence_log_probs(plain_policy, batch), expected, rtol=1e-5, atol=1e-5)
    # peft's own merge (on a copy) gives the same weights
    reference = copy.deepcopy(policy.model).merge_and_unload().state_dict()
    for key, value in merged.items():
        torch.testing.assert_close(value, reference[key], rtol=1e-6, atol=1e-7, msg=key)
    # the training model is untouched: same tensors, adapters still active
    after = policy.model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(before[k], after[k]) for k in before)
    torch.testing.assert_close(sequence_log_probs(policy, batch), expected, rtol=0, atol=0)
    # a full model's "merged" weights are its own
    full = LMPolicy.from_pretrained("tiny", seed=0).model
    assert all(torch.equal(v, full.state_dict()[k]) for k, v in merged_state_dict(full).items())


def test_the_vllm_engine_is_given_the_merged_weights_of_a_lora_learner():
    """What VLLMPolicy hands the engine (its weights directory, and each sync after an update): a plain
    model's parameters by their HF names, the adapters merged in. (The engine itself: tests/test_vllm.py.)"""
    from agents.vllm_policy import _plain_model, _plain_parameters

    policy = lora_policy()
    perturb_adapters(policy.model)
    batch = a_batch(policy)
    plain_names = [name for name, _ in load_model("tiny")[0].named_parameters()]
    weights = dict(_plain_parameters(policy.model))
    assert list(weights) == plain_names
    merged = merged_state_dict(policy)
    assert all(torch.equal(weights[name], merged[name]) for name in plain_names)
    plain = _plain_model(policy.model)
    assert not is_lora(plain) and is_lora(policy.model)
    plain_policy = LMPolicy(plain, policy.tokenizer)
    plain_policy.restrict_actions(policy.allowed_tokens.cpu().numpy())
    torch.testing.assert_close(sequence_log_probs(plain_policy, batch), sequence_log_probs(policy, batch), rtol=1e-5, atol=1e-5)
    full = LMPolicy.from_pretrained("tiny", seed=0).model
    assert _plain_model(full) is full and [n for n, _ in _plain_parameters(full)] == plain_names


# -- gradient checkpointing -------------------------------------------------------------------------


@pytest.mark.parametrize("lora", [False, True])
def test_gradient_checkpointing_gives_the_same_gradient(lora):
    policy = lora_policy() if lora else LMPolicy.from_pretrained("tiny", seed=0)
    if lora:
        perturb_adapters(policy.model)  # B != 0: every adapter parameter gets a gradient
    batch = a_batch(policy)
    # A module inside the checkpointed layer; a pre-hook, since the recompute stops once it has what backward needs.
    first_linear = (policy.model.get_base_model() if lora else policy.model).model.layers[0].self_attn.q_proj
    calls = []
    first_linear.register_forward_pre_hook(lambda *_: calls.append(1))
    grads = {}
    for checkpointing in (False, True):
        agent = REINFORCE(policy, baseline="group", entropy_coef=0.01, kl_coef=0.1, seed=0, amp="off",
                          gradient_checkpointing=checkpointing)  # fmt: skip
        calls.clear()
        assert agent.compute_gradients(batch, agent.advantages(batch)[0])
        # Once for the policy and once for the KL reference; checkpointing reruns the policy's in backward.
        assert len(calls) == (3 if checkpointing else 2)
        grads[checkpointing] = {n: p.grad.clone() for n, p in policy.model.named_parameters() if p.grad is not None}
        agent.optimizer.zero_grad(set_to_none=True)
    assert grads[False].keys() == grads[True].keys() and grads[False]
    assert all(".lora_" in n for n in grads[True]) == lora
    assert any(g.abs().sum() > 0 for g in grads[False].values())
    for name in grads[False]:
        torch.testing.assert_close(grads[True][name], grads[False][name], rtol=1e-5, atol=1e-7, msg=name)
    REINFORCE(policy, gradient_checkpointing=False)  # turns it off again
    calls.clear()
    agent = REINFORCE(policy, baseline="group", seed=0)
    agent.compute_gradients(batch, agent.advantages(batch)[0])
    assert len(calls) == 1


# -- bad settings ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings, match",
    [
        (dict(lora_rank=-1), "lora_rank must be an integer >= 0"),
        (dict(lora_rank=2.5), "lora_rank must be an integer >= 0"),
        (dict(lora_rank=4, lora_alpha=0), "lora_alpha must be > 0"),
        (dict(lora_rank=4, lora_dropout=1.0), r"lora_dropout must be in \[0, 1\)"),
        (dict(lora_alpha=16), "lora_alpha is set but lora_rank is None"),
        (dict(lora_rank=0, lora_target_modules=("q_proj",)), "lora_target_modules is set but lora_rank is 0"),
    ],
)
def test_bad_lora_settings_fail_at_construction(settings, match):
    with pytest.raises(ValueError, match=match):
        LoRAConfig(**settings)


def test_unknown_or_non_linear_target_modules_are_named():
    with pytest.raises(ValueError, match="no module named 'qproj'; its linear layers are down_proj, gate_proj, k_proj"):
        lora_policy(lora_target_modules=("qproj",))
    with pytest.raises(ValueError, match="'self_attn' is a LlamaAttention, not a linear layer"):
        lora_policy(lora_target_modules=("self_attn",))
    chosen = lora_policy(lora_target_modules=("q_proj", "v_proj")).model
    adapted = {n.rsplit(".", 3)[0].rsplit(".", 1)[-1] for n, _ in chosen.named_parameters() if "lora_A" in n}
    assert adapted == {"q_proj", "v_proj"}
    default = lora_policy().model
    adapted = {n.rsplit(".", 3)[0].rsplit(".", 1)[-1] for n, _ in default.named_parameters() if "lora_A" in n}
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


@pytest.mark.parametrize(
    "args, match",
    [
        (["--lora-rank", "-1"], "error: lora_rank must be an integer >= 0"),
        (["--lora-alpha", "8"], "error: lora_alpha is set but lora_rank is None"),
        (["--lora-rank", "4", "--lora-target-modules", "attn"], "error: lora_target_modules: the model has no module named 'attn'"),
    ],
)
def test_bad_lora_flags_fail_with_a_clear_message(args, match):

    with pytest.raises(SystemExit, match=match):
        train([*QUICK, "--iterations", "1", *args])


def test_adapters_refuse_a_base_they_were_not_trained_on(tmp_path):
    policy = lora_policy()
    with pytest.raises(ValueError, match="already has LoRA adapters"):
        apply_lora(policy.model, LoRAConfig(lora_rank=4))
    policy.save(tmp_path / "adapters")
    state = torch.random.get_rng_state()
    assert is_lora(LMPolicy.from_pretrained(tmp_path / "adapters").model)  # the directory loads as base + adapters
    assert torch.equal(torch.random.get_rng_state(), state)
    other, tokenizer = load_model("tiny", seed=3)  # same shapes, other weights
    save_model(other, tokenizer, tmp_path / "other-base")
    config_file = tmp_path / "adapters" / "adapter_config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "base_model_name_or_path": str(tmp_path / "other-base")}))
    with pytest.raises(ValueError, match="were trained on other weights than those of base model"):
        LMPolicy.from_pretrained(tmp_path / "adapters")
    config_file.write_text(json.dumps({**config, "base_model_name_or_path": str(tmp_path / "gone")}))
    with pytest.raises(ValueError, match="holds LoRA adapters for base model .*gone.*, which does not load"):
        LMPolicy.from_pretrained(tmp_path / "adapters")
    unnamed, _ = load_model("tiny", seed=3)  # another init seed: no name loads it again
    with pytest.raises(ValueError, match="cannot tell which base model this is"):
        apply_lora(unnamed, LoRAConfig(lora_rank=4))


# -- the item-6 benchmarks (smoke: they run, and say what they measured) ----------------------------


def benchmark(*args):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_train_memory_benchmark_writes_its_rows(tmp_path):
    out = tmp_path / "memory.json"
    stale = {"model": "tiny", "setup": "full", "batch": 2, "micro_batch": 2, "seq_len": 12, "lora_rank": None, "kl_coef": 0.0, "peak_mb": -1}
    other = {**stale, "model": "another", "peak_mb": 7}
    out.write_text(json.dumps({"rows": [stale, other]}))  # a row of the same configuration is replaced, others kept
    benchmark("examples/benchmarks/train_memory.py", "--model", "tiny", "--seq-len", "12", "--prompt-len", "6", "--no-micro",
              "--threads", "1", "--json", str(out), "--setups", "full", "lora+ckpt", "--batches", "2")  # fmt: skip
    rows = json.loads(out.read_text())["rows"]
    assert other in rows and len(rows) == 3
    mine = {r["setup"]: r for r in rows if r["model"] == "tiny"}
    assert set(mine) == {"full", "lora+ckpt"} and all(r["peak_mb"] > 0 for r in mine.values())
    assert mine["full"]["trainable"] == mine["full"]["parameters"] and mine["lora+ckpt"]["trainable"] < mine["full"]["trainable"] / 2
    assert mine["lora+ckpt"]["lora_rank"] == 16 and mine["full"]["lora_rank"] is None


def test_lora_learning_benchmark_reports_and_resumes_its_runs(tmp_path):
    out = tmp_path / "learning.json"
    flags = ["--setups", "lora", "--seeds", "0", "--target", "2", "--eval-every", "1", "--out-dir", str(tmp_path / "runs"),
             "--json", str(out), "--eval-episodes", "4", "--prompts", "2"]  # fmt: skip
    benchmark("examples/benchmarks/lora_learning.py", *flags, "--iterations", "1")
    table = benchmark("examples/benchmarks/lora_learning.py", *flags, "--iterations", "2")
    assert "resuming" in (tmp_path / "runs" / "lora-seed0.log").read_text()
    (run,) = json.loads(out.read_text())["runs"]
    assert (run["setup"], run["lr"], run["lora_rank"], run["updates_run"], run["samples_to_target"]) == ("lora", 3e-3, 16, 2, None)
    assert "| lora r16 | 0.003 | - (best" in table and "| 0/1 |" in table
