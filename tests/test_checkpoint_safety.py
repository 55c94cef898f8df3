"""A checkpoint is data, never code, and a run's files survive what a disk or a stranger does to them.

- agent.pt is read weights-only: a crafted pickle (one whose loading would create a file) is refused
  with a clear error, and the file is not created; checkpoints of the previous format still load;
- model and tokenizer loading never runs a model's own Python code (`trust_remote_code` stays off);
- a truncated, garbled, foreign or incomplete checkpoint gets one clear error naming the path;
- `latest` is followed only to a checkpoint directly inside its run (one resolver for every reader);
- a full disk during a checkpoint says "disk full" with the path, leaves no temp folder, keeps the
  previous checkpoint and `latest`, and the run resumes; files are fsynced before the previous
  checkpoint is deleted.
"""

import errno
import json
import os
import pickle
import shutil
import sys
from pathlib import Path

import pytest
import torch

import textgym
from agents import reinforce as R
from agents.checkpoints import CheckpointError, latest_checkpoint, resolve_checkpoint
from agents.evaluation import load_policy
from agents.evaluation import resolve_checkpoint as evaluation_resolve_checkpoint
from agents.models import load_model, save_model
from agents.policy import LMPolicy
from agents.reinforce import REINFORCE
from agents.train import main as train


TASK = dict(task="copy", task_kwargs={"length": 2, "alphabet": "ab"}, max_new_tokens=3)
QUICK = ["--model", "tiny", "--task", "copy", "--task-kwargs", '{"length": 2, "alphabet": "ab"}', "--max-new-tokens", "3",
         "--prompts", "1", "--group-size", "2", "--eval-episodes", "2", "--no-progress-bar", "--threads", "1"]  # fmt: skip


def trained(run_dir, iterations=1, **settings):
    policy = LMPolicy.from_pretrained("tiny", seed=0)
    envs = textgym.TextGenVectorEnv(num_envs=4, group_size=2, tokenizer=policy.tokenizer, **TASK)
    policy.restrict_actions(envs.action_masks()[0])
    agent = REINFORCE(policy, lr=1e-3, **settings)
    agent.learn(envs, iterations=iterations, progress_bar=False)
    agent.checkpoint(run_dir)
    return agent, envs


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run directory with one checkpoint, to copy and damage."""
    run_dir = tmp_path_factory.mktemp("run") / "run"
    assert train([*QUICK, "--iterations", "1", "--baseline", "value", "--kl-coef", "0.1", "--out", str(run_dir)]) == 0
    return run_dir


@pytest.fixture
def copy(run, tmp_path):
    target = tmp_path / "run"
    shutil.copytree(run, target)
    return target, latest_checkpoint(target)


class CreatesAFile:
    """Unpickling this runs `open(path, "w")`: what a crafted agent.pt would do with os.system."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


# -- 2. loading runs no code -----------------------------------------------------------------------


@pytest.mark.parametrize("how", ["torch.save", "pickle"])
def test_a_crafted_agent_pt_is_refused_and_runs_nothing(copy, tmp_path, how):
    run_dir, checkpoint = copy
    marker = tmp_path / "PWNED"
    state = torch.load(checkpoint / "agent.pt", weights_only=True)
    state["iteration"] = CreatesAFile(marker)
    if how == "torch.save":  # the zip format textgym writes, with the payload inside
        torch.save(state, checkpoint / "agent.pt")
    else:  # a bare pickle
        (checkpoint / "agent.pt").write_bytes(pickle.dumps(state))
    for load in (lambda: REINFORCE.load(run_dir), lambda: REINFORCE.load(checkpoint), lambda: load_policy(str(run_dir))):
        with pytest.raises(CheckpointError, match=f"{checkpoint / 'agent.pt'}") as error:
            load()
        assert not marker.exists(), "loading the checkpoint ran its code"
        assert "\n" not in str(error.value)
    said = "was refused: loading it could run code \\(it needs io.open\\)" if how == "torch.save" else "not a torch zip archive"
    assert error.match(said)  # a bare pickle is not even opened: textgym writes zip archives
    with pytest.raises(SystemExit, match=said):
        train(["--resume", str(run_dir), "--no-progress-bar"])
    assert not marker.exists()


def test_a_checkpoint_of_the_previous_format_still_loads(copy):
    """Checkpoints written before the "format" key held the same plain data: they load, weights-only."""
    run_dir, checkpoint = copy
    state = torch.load(checkpoint / "agent.pt", weights_only=True)
    assert state.pop("format") == 2
    torch.save(state, checkpoint / "agent.pt")
    agent = REINFORCE.load(run_dir)
    assert agent.iteration == 1 and agent.value_head is not None and agent.reference is not None


def test_numpy_settings_are_saved_as_plain_numbers(tmp_path):
    """A numpy int in the settings would make agent.pt need numpy's unpickler: it is saved as an int."""
    import numpy as np

    agent, _ = trained(tmp_path, epochs=np.int64(2), max_bad_updates=np.int64(4))
    state = torch.load(latest_checkpoint(tmp_path) / "agent.pt", weights_only=True)
    assert type(state["config"]["epochs"]) is int and REINFORCE.load(tmp_path).config.max_bad_updates == 4


def test_a_model_that_ships_its_own_code_is_never_run(tmp_path):
    """`auto_map` in config.json names Python code beside the weights; textgym refuses it, unasked."""
    model, tokenizer = load_model("tiny", seed=0)
    directory = save_model(model, tokenizer, tmp_path / "custom")
    marker = tmp_path / "PWNED"
    (directory / "custom_model.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    config = json.loads((directory / "config.json").read_text())
    config.update(model_type="custom-thing", auto_map={"AutoConfig": "custom_model.Config", "AutoModelForCausalLM": "custom_model.Model"})
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="needs its own Python code to load \\(trust_remote_code\\), which textgym never runs"):
        load_model(directory)
    assert not marker.exists()


# -- 12. a damaged or foreign checkpoint: one clear line -------------------------------------------


def damage_truncated(checkpoint):
    data = (checkpoint / "agent.pt").read_bytes()
    (checkpoint / "agent.pt").write_bytes(data[: len(data) // 2])


def damage_garbage(checkpoint):
    (checkpoint / "agent.pt").write_bytes(os.urandom(4096))


def damage_empty(checkpoint):
    (checkpoint / "agent.pt").write_bytes(b"")


def damage_foreign_state(checkpoint):  # a plain state dict saved by another tool
    torch.save({"model": {"w": torch.zeros(3)}, "step": 7}, checkpoint / "agent.pt")


def damage_no_policy(checkpoint):
    shutil.rmtree(checkpoint / "policy")


def damage_policy_weights(checkpoint):
    (checkpoint / "policy" / "model.safetensors").write_bytes(b"\x00" * 100)


def damage_other_model(checkpoint):  # policy/ of another model: agent.pt's optimizer does not fit it
    model, tokenizer = load_model("tiny", seed=0)
    model.resize_token_embeddings(200)
    shutil.rmtree(checkpoint / "policy")
    save_model(model, tokenizer, checkpoint / "policy")


DAMAGES = {
    "truncated agent.pt": (damage_truncated, "agent.pt is damaged or not a textgym checkpoint"),
    "garbage agent.pt": (damage_garbage, "agent.pt is damaged or not a textgym checkpoint"),
    "empty agent.pt": (damage_empty, "agent.pt is damaged or not a textgym checkpoint"),
    "another tool's agent.pt": (damage_foreign_state, "agent.pt is not a textgym agent state"),
    "no policy/": (damage_no_policy, "policy is missing or incomplete"),
    "garbled weights": (damage_policy_weights, "policy cannot be loaded"),
    "another model's policy/": (damage_other_model, "agent.pt does not fit its policy/"),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_checkpoint_is_one_clear_error_naming_it(copy, damage, capsys):
    run_dir, checkpoint = copy
    do, message = DAMAGES[damage]
    do(checkpoint)
    with pytest.raises(CheckpointError, match=message) as error:
        REINFORCE.load(run_dir)
    assert str(checkpoint) in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(SystemExit, match=f"^error: .*{message}") as exit_:
        train(["--resume", str(run_dir), "--no-progress-bar"])
    assert str(checkpoint) in str(exit_.value)


def test_a_foreign_directory_given_to_resume_is_one_clear_error(tmp_path):
    # another tool's run directory: DeepSpeed also writes a `latest` file, naming global_stepN
    deepspeed = tmp_path / "deepspeed"
    (deepspeed / "global_step100").mkdir(parents=True)
    (deepspeed / "latest").write_text("global_step100")
    with pytest.raises(SystemExit, match=f"error: {deepspeed / 'latest'} names 'global_step100', not a checkpoint-NNNNNN"):
        train(["--resume", str(deepspeed)])
    # a plain HF model directory
    model, tokenizer = load_model("tiny", seed=0)
    hf = save_model(model, tokenizer, tmp_path / "hf-model")
    with pytest.raises(SystemExit, match=f"{hf} is a model directory, not a textgym train run; start a new run from it with --model {hf}"):
        train(["--resume", str(hf)])
    # a checkpoint instead of its run
    run_dir = tmp_path / "run"
    trained(run_dir)
    checkpoint = latest_checkpoint(run_dir)
    with pytest.raises(SystemExit, match=f"{checkpoint} is a checkpoint; resume its run: --resume {run_dir}"):
        train(["--resume", str(checkpoint)])
    # a run whose config.json or resumes.jsonl was damaged
    (run_dir / "config.json").write_text("{not json")
    with pytest.raises(SystemExit, match=f"{run_dir / 'config.json'} is damaged"):
        train(["--resume", str(run_dir)])
    (run_dir / "config.json").write_text(json.dumps({"model": "tiny"}))
    (run_dir / "resumes.jsonl").write_text('{"iteration": 1, "overrides": {}}\n{"iter\n')
    with pytest.raises(SystemExit, match=f"{run_dir / 'resumes.jsonl'} line 2 is damaged"):
        train(["--resume", str(run_dir)])


# -- 10. `latest` stays inside its run -------------------------------------------------------------


def test_latest_that_leaves_the_run_directory_is_refused_everywhere(tmp_path):
    other, mine = tmp_path / "other", tmp_path / "mine"
    trained(other)
    trained(mine, iterations=2)
    own = latest_checkpoint(mine)
    outside = latest_checkpoint(other)
    for pointer in (f"../other/{outside.name}", str(outside), f"{own.name}/../../other/{outside.name}"):
        (mine / "latest").write_text(pointer + "\n")
        for reader in (latest_checkpoint, resolve_checkpoint, evaluation_resolve_checkpoint, REINFORCE.load):
            with pytest.raises(CheckpointError, match="not a checkpoint-NNNNNN directory"):
                reader(mine)
        with pytest.raises(SystemExit, match="not a checkpoint-NNNNNN directory"):
            train(["--resume", str(mine)])
    # A well-formed name that is a symlink to another run's checkpoint resolves outside the run.
    link = mine / "checkpoint-000009"
    link.symlink_to(outside, target_is_directory=True)
    (mine / "latest").write_text(link.name + "\n")
    for reader in (latest_checkpoint, resolve_checkpoint, evaluation_resolve_checkpoint, REINFORCE.load):
        with pytest.raises(CheckpointError, match="outside the run directory"):
            reader(mine)
    with pytest.raises(SystemExit, match="outside the run directory"):
        train(["--resume", str(mine)])
    # Nothing of either run was touched, and a pointer to the run's own checkpoint works again.
    assert own.exists() and outside.exists()
    link.unlink()
    (mine / "latest").write_text(own.name + "\n")
    assert REINFORCE.load(mine).iteration == 2 and resolve_checkpoint(mine) == own


def test_a_pointer_to_a_missing_checkpoint_says_the_run_is_damaged(copy):
    run_dir, checkpoint = copy
    (run_dir / "latest").write_text("checkpoint-000042\n")
    with pytest.raises(CheckpointError, match="names checkpoint-000042, which holds no agent.pt: the run directory is damaged"):
        REINFORCE.load(run_dir)


# -- 9. a full disk --------------------------------------------------------------------------------


def test_a_full_disk_during_a_checkpoint_is_reported_cleaned_up_and_resumable(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    agent, envs = trained(run_dir)
    before = latest_checkpoint(run_dir)
    files_before = sorted(p.relative_to(run_dir) for p in run_dir.rglob("*"))
    agent.learn(envs, iterations=1, progress_bar=False)
    real_save = torch.save

    def fills_the_disk(obj, f, *args, **kwargs):  # writes part of agent.pt, then the disk is full
        f.write(b"PK\x03\x04" + b"\x00" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(R.torch, "save", fills_the_disk)
        with pytest.raises(OSError, match=f"disk full: no space left on the device of {run_dir} while writing the checkpoint "
                                          "checkpoint-000002; nothing half-written is left and `latest` still names the "
                                          "previous checkpoint") as error:  # fmt: skip
            agent.checkpoint(run_dir)
    assert error.value.errno == errno.ENOSPC
    assert sorted(p.relative_to(run_dir) for p in run_dir.rglob("*")) == files_before, "a temp folder or file was left"
    assert latest_checkpoint(run_dir) == before and REINFORCE.load(run_dir).iteration == 1
    assert real_save is torch.save

    # torch's own writer on a full disk (a path, not a file object) says only "unexpected pos": the
    # writer is handed a file object, so the OS's ENOSPC comes through; safetensors says it in words.
    def safetensors_full(*args, **kwargs):
        raise RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")

    with monkeypatch.context() as m:
        m.setattr(LMPolicy, "save", safetensors_full)
        with pytest.raises(OSError, match="disk full"):
            agent.checkpoint(run_dir)
    assert sorted(p.relative_to(run_dir) for p in run_dir.rglob("*")) == files_before


def test_train_stops_on_a_full_disk_with_one_line_and_resumes(tmp_path, monkeypatch):
    out = tmp_path / "run"
    assert train([*QUICK, "--iterations", "2", "--save-every", "1", "--out", str(out)]) == 0
    real_save = torch.save

    def fills_the_disk(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(R.torch, "save", fills_the_disk)
        with pytest.raises(SystemExit, match=f"^error: disk full: .* writing the checkpoint checkpoint-000003; .*"
                                             f"continue with: textgym train --resume {out}$"):  # fmt: skip
            train(["--resume", str(out), "--iterations", "4", "--no-progress-bar"])
    assert latest_checkpoint(out).name == "checkpoint-000002"
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "a temp folder was left"
    assert train(["--resume", str(out), "--iterations", "4", "--no-progress-bar"]) == 0
    assert latest_checkpoint(out).name == "checkpoint-000004"
    assert [json.loads(line)["iteration"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [0, 1, 2, 3, 4]


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="names fsynced files through /proc")
def test_the_new_checkpoint_is_fsynced_before_the_previous_one_is_deleted(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    agent, envs = trained(run_dir)
    previous = latest_checkpoint(run_dir)
    agent.learn(envs, iterations=1, progress_bar=False)
    events = []
    real_fsync, real_rmtree = os.fsync, shutil.rmtree

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def rmtree(path, *args, **kwargs):
        events.append(("rmtree", str(path)))
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(R.shutil, "rmtree", rmtree)
    agent.checkpoint(run_dir)
    deleted = events.index(("rmtree", str(previous)))
    synced = [path for kind, path in events[:deleted] if kind == "fsync"]
    for name in ("agent.pt", "model.safetensors", "config.json"):
        assert any(p.endswith(name) for p in synced), f"{name} was not fsynced before the previous checkpoint went"
    assert any(p.endswith(".latest.tmp") for p in synced), "the pointer was not fsynced"
    assert synced[-1] == str(run_dir.resolve()), "the run directory (the rename of `latest`) was not fsynced last"
