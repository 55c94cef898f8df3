"""Run management as callbacks, and the reliability fixes that came with it.

- the final checkpoint is written once, not again when `save_every` already saved that iteration;
- `latest` never names a missing or partial checkpoint: a save that dies midway leaves the previous
  one in place, and saving an iteration twice writes a new directory before the pointer moves;
- a resumed run evaluates only when it logs the result (no silent extra validation pass), keeps the
  metrics of the iterations up to its checkpoint and replays the rest exactly;
- early stopping by threshold and by patience; a plain function works as a callback;
- TensorBoard gets the scalars of metrics.jsonl and the sample completions; wandb and trackio get the
  same through their `init`/`log`/`Table`/`finish` (checked with stand-ins); a backend asked for but
  not installed fails before any work;
- SIGTERM and SIGINT stop at an iteration boundary with a checkpoint and raise TrainingInterrupted,
  even where SIGINT was ignored (a background job); a second signal aborts without saving; the
  previous handlers are restored.
"""

import importlib.machinery
import json
import os
import shutil
import signal
import sys
import types

import pytest

import textgym
from agents import callbacks as C
from agents import reinforce as R
from agents.callbacks import Callback, EarlyStopping, ReportTo, TrainingInterrupted, read_metrics
from agents.policy import LMPolicy
from agents.reinforce import REINFORCE


TASK = dict(task="copy", task_kwargs={"length": 2, "alphabet": "abc"}, reward="partial_credit", max_new_tokens=3)
TIMING = ("time_generate_s", "time_env_s", "time_update_s", "tokens_per_s", "wall_s", "time_val_s")


def make(seed=0, **settings):
    policy = LMPolicy.from_pretrained("tiny", seed=seed)
    envs = textgym.TextGenVectorEnv(num_envs=8, group_size=4, tokenizer=policy.tokenizer, **TASK)
    policy.restrict_actions(envs.action_masks()[0])
    val = textgym.TextGenVectorEnv(num_envs=4, split="validation", tokenizer=policy.tokenizer, **TASK)
    return REINFORCE(policy, **{"lr": 3e-3, "seed": seed, **settings}), envs, val


def untimed(rows):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


@pytest.fixture
def saves(monkeypatch):
    """The iterations at which REINFORCE.checkpoint was called."""
    seen = []
    original = REINFORCE.checkpoint

    def spy(self, run_dir, keep=1):
        seen.append(self.iteration)
        return original(self, run_dir, keep)

    monkeypatch.setattr(REINFORCE, "checkpoint", spy)
    return seen


@pytest.mark.parametrize("save_every, expected", [(2, [2, 4]), (3, [3, 4]), (None, [4])])
def test_each_iteration_is_checkpointed_once(tmp_path, saves, save_every, expected):
    agent, envs, _ = make()
    agent.learn(envs, iterations=4, log_dir=tmp_path, save_every=save_every, progress_bar=False)
    assert saves == expected
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("checkpoint")) == ["checkpoint-000004"]
    # A resumed run that stops where it started does not save the same iteration again.
    REINFORCE.load(tmp_path).learn(envs, iterations=0, log_dir=tmp_path, progress_bar=False)
    assert saves == expected


def test_latest_always_names_a_complete_checkpoint(tmp_path, monkeypatch):
    agent, envs, _ = make()
    agent.learn(envs, iterations=1, progress_bar=False)
    first = agent.checkpoint(tmp_path)
    assert (tmp_path / "latest").read_text().strip() == first.name == "checkpoint-000001"

    # A save that dies midway (a kill, a full disk) leaves `latest` on the previous checkpoint.
    agent.learn(envs, iterations=1, progress_bar=False)

    def dies(*args, **kwargs):
        raise OSError("killed while writing")

    with monkeypatch.context() as m:
        m.setattr(R.torch, "save", dies)
        with pytest.raises(OSError, match="killed"):
            agent.checkpoint(tmp_path)
    assert (tmp_path / "latest").read_text().strip() == "checkpoint-000001"
    assert REINFORCE.load(tmp_path).iteration == 1

    # Saving an iteration that already has a directory (here the one `latest` names) writes a new
    # one first; the pointer moves to it, then the old one goes. Nothing half-written is left.
    agent.iteration = 1
    second = agent.checkpoint(tmp_path)
    assert second.name == "checkpoint-000001-1" and (tmp_path / "latest").read_text().strip() == second.name
    assert not first.exists() and REINFORCE.load(tmp_path).iteration == 1
    agent.learn(envs, iterations=1, progress_bar=False)
    third = agent.checkpoint(tmp_path)
    assert third.name == "checkpoint-000002" and not second.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # the dead save's leftovers too


def test_save_replaces_an_existing_directory_completely(tmp_path):
    agent, envs, _ = make()
    agent.save(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "stale-file").write_text("from before")
    agent.learn(envs, iterations=1, progress_bar=False)
    agent.save(tmp_path / "ckpt")
    assert not (tmp_path / "ckpt" / "stale-file").exists() and REINFORCE.load(tmp_path / "ckpt").iteration == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_resume_evaluates_only_what_it_logs_and_replays_the_uninterrupted_run(tmp_path, monkeypatch):
    straight, envs, val = make()
    straight.learn(envs, iterations=4, eval_env=val, eval_every=2, eval_episodes=4, log_dir=tmp_path / "straight",
                   save_every=2, progress_bar=False)  # fmt: skip

    run = tmp_path / "run"
    agent, envs, val = make()
    agent.learn(envs, iterations=2, eval_env=val, eval_every=2, eval_episodes=4, log_dir=run, save_every=2, progress_bar=False)
    # A run killed after logging iteration 3 but before its next checkpoint: a row past the checkpoint,
    # and half a line.
    with open(run / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"iteration": 3, "train_reward": -1.0}) + "\n" + '{"iteration": 4, "train_rew')

    calls = []
    original = C.evaluate
    monkeypatch.setattr(C, "evaluate", lambda *a, **k: calls.append(1) or original(*a, **k))
    resumed = REINFORCE.load(run)
    resumed.learn(envs, iterations=2, eval_env=val, eval_every=2, eval_episodes=4, log_dir=run, save_every=2, progress_bar=False)
    rows = read_metrics(run)
    assert [r["iteration"] for r in rows] == [0, 1, 2, 3, 4]
    assert len(calls) == sum("val_reward" in r for r in rows if r["iteration"] > 2) == 1  # only iteration 4's
    assert untimed(rows) == untimed(read_metrics(tmp_path / "straight"))
    walls = [r["wall_s"] for r in rows]  # training time so far, continued across the resume
    assert walls == sorted(walls) and walls[3] >= walls[2] > 0


def test_a_function_or_a_callback_stops_training_and_every_callback_sees_the_last_iteration():
    agent, envs, _ = make()
    seen, also = [], []

    class Record(Callback):
        def on_iteration_end(self, metrics):
            also.append(metrics["iteration"])

    agent.learn(envs, iterations=5, callback=[lambda m: m["iteration"] < 2, Record()], progress_bar=False)
    assert agent.iteration == 2 and also == [1, 2]
    agent.learn(envs, iterations=1, callback=seen.append, progress_bar=False)
    assert [m["iteration"] for m in seen] == [3]


def test_early_stopping_by_threshold_and_by_patience(capsys):
    stop = EarlyStopping(threshold=0.9)
    assert stop.on_iteration_end({"iteration": 1, "train_reward": 1.0}) is True  # no validation: ignored
    assert stop.on_iteration_end({"iteration": 5, "val_reward": 0.5}) is True
    assert stop.on_iteration_end({"iteration": 10, "val_reward": 0.95}) is False
    assert "reached 0.9" in capsys.readouterr().err
    stop = EarlyStopping(patience=2, min_delta=0.01)
    results = [stop.on_iteration_end({"iteration": i, "val_reward": v}) for i, v in enumerate([0.5, 0.6, 0.605, 0.7, 0.69, 0.7])]
    assert results == [True, True, True, True, True, False] and stop.best == 0.7
    with pytest.raises(ValueError, match="threshold, a patience"):
        EarlyStopping()


def test_tensorboard_gets_the_metrics_and_sample_completions(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    agent, envs, val = make()
    (tmp_path / "config.json").write_text(json.dumps({"model": "tiny", "lr": 3e-3}))  # as textgym train writes it
    agent.learn(envs, iterations=2, eval_env=val, eval_every=2, eval_episodes=4, log_dir=tmp_path, progress_bar=False,
                report_to=["tensorboard"])  # fmt: skip
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"tensors": 0, "scalars": 0}).Reload()
    config = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert '"model": "tiny"' in config
    rows = read_metrics(tmp_path)
    train = [(e.step, e.value) for e in events.Scalars("train_reward")]
    assert train == [(r["iteration"], pytest.approx(r["train_reward"])) for r in rows if "train_reward" in r]
    assert [e.step for e in events.Scalars("val_reward")] == [0, 2]
    assert {"grad_norm", "lr", "episode_length", "val_accuracy"} <= set(events.Tags()["scalars"])
    assert "sample_completion/text_summary" in events.Tags()["tensors"]


class FakeTracker(types.ModuleType):
    """Stands in for wandb / trackio: records init, log and finish."""

    def __init__(self, name):
        super().__init__(name)
        self.__spec__ = importlib.machinery.ModuleSpec(name, None)
        self.calls = []

    def init(self, **kwargs):
        self.calls.append(("init", kwargs))

    def log(self, row, step=None):
        self.calls.append(("log", step, row))

    def finish(self):
        self.calls.append(("finish",))

    class Table:
        def __init__(self, columns, data):
            self.columns, self.data = columns, data


@pytest.mark.parametrize("backend", ["wandb", "trackio"])
def test_wandb_and_trackio_get_the_same_rows(tmp_path, monkeypatch, backend):
    fake = FakeTracker(backend)
    monkeypatch.setitem(sys.modules, backend, fake)
    agent, envs, _ = make()
    agent.learn(envs, iterations=2, log_dir=tmp_path, progress_bar=False, callback=ReportTo([backend], tmp_path, config={"lr": 3e-3}))
    assert fake.calls[0][0] == "init" and fake.calls[0][1]["project"] == "textgym" and fake.calls[0][1]["config"] == {"lr": 3e-3}
    logs = [c for c in fake.calls if c[0] == "log"]
    rows = read_metrics(tmp_path)
    assert [c[1] for c in logs] == [1, 2]
    assert logs[0][2]["train_reward"] == pytest.approx(rows[0]["train_reward"])
    assert logs[0][2]["sample_completion"].data == [[1, rows[0]["sample_completion"]]]
    assert fake.calls[-1] == ("finish",)


def test_a_tracker_that_is_not_installed_fails_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setattr(C.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match="needs the wandb package: pip install wandb"):
        ReportTo(["wandb"], tmp_path)
    with pytest.raises(ValueError, match="unknown report_to backend 'mlflow'"):
        ReportTo(["mlflow"], tmp_path)
    agent, envs, _ = make()
    with pytest.raises(ValueError, match="report_to takes tensorboard, wandb, trackio; got mlflow"):
        agent.learn(envs, iterations=1, log_dir=tmp_path, report_to=["mlflow"])
    with pytest.raises(ValueError, match="report_to needs a run directory"):
        agent.learn(envs, iterations=1, report_to=["tensorboard"])
    with pytest.raises(TypeError, match="unknown run-management setting.*'eval_evry'.*eval_every"):
        agent.learn(envs, iterations=1, eval_evry=3)
    assert agent.iteration == 0


def send_at(iteration, *signums):
    def callback(metrics):
        if metrics["iteration"] == iteration:
            for s in signums:
                os.kill(os.getpid(), s)

    return callback


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_at_the_iteration_boundary_with_a_checkpoint(tmp_path, signum):
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as a background job inherits it
    try:
        agent, envs, _ = make()
        with pytest.raises(TrainingInterrupted) as stopped:
            agent.learn(envs, iterations=10, log_dir=tmp_path, save_every=5, progress_bar=False, callback=send_at(2, signum))
        assert stopped.value.signum == signum and isinstance(stopped.value, KeyboardInterrupt)
        assert agent.iteration == 2 and (tmp_path / "latest").read_text().strip() == "checkpoint-000002"
        assert [r["iteration"] for r in read_metrics(tmp_path)] == [1, 2]
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN  # the handlers are restored
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGINT, previous)


def test_a_second_signal_aborts_at_once_without_saving(tmp_path):
    agent, envs, _ = make()
    with pytest.raises(KeyboardInterrupt) as aborted:
        agent.learn(envs, iterations=10, log_dir=tmp_path, save_every=1, progress_bar=False,
                    callback=send_at(2, signal.SIGTERM, signal.SIGTERM))  # fmt: skip
    assert not isinstance(aborted.value, TrainingInterrupted) and "second SIGTERM" in str(aborted.value)
    # Iteration 2's checkpoint (save_every=1) came before the callback; nothing was saved after the abort.
    assert (tmp_path / "latest").read_text().strip() == "checkpoint-000002"
    assert REINFORCE.load(tmp_path).iteration == 2


def test_bad_log_dir_and_bad_callbacks_fail_before_any_work(tmp_path):
    (tmp_path / "a-file").write_text("")
    agent, envs, _ = make()
    with pytest.raises(PermissionError, match="cannot write to the output directory"):
        agent.learn(envs, iterations=1, log_dir=tmp_path / "a-file" / "run", progress_bar=False)
    with pytest.raises(TypeError, match="callback must be a Callback"):
        agent.learn(envs, iterations=1, callback=42, progress_bar=False)
    assert agent.iteration == 0
    shutil.rmtree(tmp_path)
