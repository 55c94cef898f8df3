"""Data-parallel REINFORCE with torchrun (2 CPU processes, gloo): the ranks' weights stay
bit-identical and equal a single process's on the same global batch; the metrics average over the
ranks even when one rank's rows lack keys (its verifier calls all failed)."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from agents import LMPolicy

# One script for both data-parallel checks, so that they share one torchrun (each process pays ~5 s of
# CPU to import torch and transformers): the weights after 3 updates, for each loss aggregation, and
# the metrics reduction when one rank's verifier fails (only where there are 2 ranks).
WORKER = textwrap.dedent(
    """
    import json
    import sys
    import torch
    torch.set_num_threads(1)
    import textgym
    from textgym.rewards.core import combine
    from agents import LMPolicy, REINFORCE, distributed
    from agents.reinforce import _iteration_metrics
    from agents.rollouts import collect_episodes, to_batch

    out = sys.argv[1]
    ctx = distributed.setup()

    for aggregation in ("token_mean", "sum"):
        policy = LMPolicy.from_pretrained("tiny", seed=0)
        agent = REINFORCE(policy, baseline="group", lr=1e-2, seed=0, micro_batch_size=2, loss_aggregation=aggregation, amp="off")
        envs = textgym.TextGenVectorEnv(num_envs=8, group_size=4, task="copy", tokenizer=policy.tokenizer,
                                        max_new_tokens=4, task_kwargs={"length": 2, "alphabet": "abc"},
                                        reward="partial_credit")
        policy.restrict_actions(envs.action_masks()[0])  # a, b, c and the end token: rewards vary
        policy.seed(123)
        batch = to_batch(collect_episodes(policy, envs, seed=123)[0], group_size=4)  # the same global batch on every rank
        if ctx.enabled:  # each rank trains on its half (whole groups of 4)
            batch = batch.select(slice(4 * ctx.rank, 4 * ctx.rank + 4))
        for _ in range(3):
            agent.update(batch)
        weights = {k: v.detach().clone() for k, v in policy.model.state_dict().items()}
        torch.save(weights, f"{out}/{aggregation}-rank{ctx.rank}-{ctx.world_size}.pt")

    if ctx.enabled:
        def exact(completion, example):
            if ctx.rank == 1:
                raise ConnectionError("the verifier service is down on this rank")
            return 1.0

        def brevity(completion, example):
            return 0.5

        policy = LMPolicy.from_pretrained("tiny", seed=0)
        envs = textgym.TextGenVectorEnv(num_envs=4, group_size=2, task="copy", task_kwargs={"length": 2, "alphabet": "ab"},
                                        max_new_tokens=3, reward=combine({"exact": exact, "brevity": brevity}),
                                        tokenizer=policy.tokenizer)
        episodes, timing = collect_episodes(policy, envs, seed=ctx.rank)
        local = _iteration_metrics(1, episodes, {"loss": float(ctx.rank)}, 1e-3, timing, 1.0, 1.0)
        merged = ctx.mean_dict(local)
        with open(f"{out}/metrics-rank{ctx.rank}.json", "w") as f:  # not stdout: the ranks' lines interleave
            json.dump({"rank": ctx.rank, "local": local, "merged": merged}, f)
    """
)


INITIAL = LMPolicy.from_pretrained("tiny", seed=0).model.state_dict()
REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}  # this checkout's packages


def torchrun(*args, nproc=2):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=ENV)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def worker_outputs(tmp_path_factory):
    """The worker's files from 2 ranks under torchrun and from one plain process."""
    out = tmp_path_factory.mktemp("distributed")
    worker = out / "worker.py"
    worker.write_text(WORKER)
    torchrun(str(worker), str(out))
    subprocess.run([sys.executable, str(worker), str(out)], check=True, timeout=600, env=ENV)
    return out


def test_ranks_stay_identical_and_match_one_process(worker_outputs):
    for aggregation in ("token_mean", "sum"):
        rank0, rank1 = (torch.load(worker_outputs / f"{aggregation}-rank{r}-2.pt") for r in (0, 1))
        single = torch.load(worker_outputs / f"{aggregation}-rank0-1.pt")
        for name in rank0:
            assert torch.equal(rank0[name], rank1[name]), f"{aggregation}: ranks differ at {name}"
            torch.testing.assert_close(rank0[name], single[name], atol=2e-5, rtol=1e-4)
        moved = max(float((rank0[n] - INITIAL[n]).abs().max()) for n in rank0)
        assert moved > 1e-3, "the updates must change the weights for the comparison to mean anything"


def test_train_command_under_torchrun_logs_once(tmp_path):
    out = tmp_path / "run"
    result = torchrun("-m", "textgym.cli", "train", "--model", "tiny", "--iterations", "2", "--prompts", "1",
                      "--group-size", "4", "--eval-episodes", "4", "--threads", "1", "--no-progress-bar", "--out", str(out))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [0, 1, 2]
    assert "data-parallel on 2 ranks" in result.stdout
    assert result.stdout.count("validation reward:") == 1


def test_metrics_average_over_ranks_whose_keys_differ(worker_outputs):
    """Rank 1's verifier fails on every episode, so its row has no reward/<component> keys: the
    ranks still reduce the same keys, each averaged over the ranks that have it."""
    rows = {rank: json.loads((worker_outputs / f"metrics-rank{rank}.json").read_text()) for rank in (0, 1)}
    local0, local1 = rows[0]["local"], rows[1]["local"]
    assert local0["reward/exact"] == 1.0 and local0["reward/brevity"] == 0.5 and local0["reward_errors"] == 0
    assert "reward/exact" not in local1 and local1["reward_errors"] == 4  # the case that broke the reduction
    merged = rows[0]["merged"]
    assert {k: v for k, v in rows[1]["merged"].items() if k != "sample_completion"} == {
        k: v for k, v in merged.items() if k != "sample_completion"
    }, "every rank must hold the same averaged metrics"
    assert merged["reward/exact"] == 1.0 and merged["reward/brevity"] == 0.5  # over the rank that has them
    assert merged["reward_errors"] == 2.0 and merged["loss"] == 0.5 and merged["train_reward"] == (local0["train_reward"] + 0.0) / 2
