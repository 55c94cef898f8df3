"""REINFORCE on a CUDA GPU (skipped without one): a short bf16 run, and DDP over nccl.

Device and dtype come from the policy everywhere (no `.cuda()`, no hard-coded dtype): the run
below never names the device after loading the policy.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import textgym
from agents import LMPolicy, REINFORCE

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

TASK = dict(task="copy", task_kwargs={"length": 2, "alphabet": "abc"}, reward="partial_credit", max_new_tokens=3)
REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


@pytest.mark.parametrize("dtype, amp", [("bfloat16", "auto"), ("float32", "auto"), ("float32", "off")])
def test_short_reinforce_run_on_cuda(tmp_path, dtype, amp):
    policy = LMPolicy.from_pretrained("tiny", device="cuda", dtype=dtype, seed=0)
    assert policy.device.type == "cuda" and policy.dtype == getattr(torch, dtype)
    envs = textgym.TextGenVectorEnv(num_envs=8, group_size=4, tokenizer=policy.tokenizer, **TASK)
    val = textgym.TextGenVectorEnv(num_envs=4, split="validation", tokenizer=policy.tokenizer, **TASK)
    policy.restrict_actions(envs.action_masks()[0])
    agent = REINFORCE(policy, lr=3e-3, amp=amp, baseline="value", kl_coef=0.05, micro_batch_size=3)
    assert (agent.autocast_dtype == torch.bfloat16) == (dtype == "float32" and amp == "auto")
    before = {k: v.detach().clone() for k, v in policy.model.state_dict().items()}
    agent.learn(envs, iterations=3, eval_env=val, eval_every=3, eval_episodes=4, log_dir=tmp_path, progress_bar=False)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [0, 1, 2, 3] and all(r["skipped_update"] == 0.0 for r in rows[1:])
    assert any(not torch.equal(before[k], v) for k, v in policy.model.state_dict().items())
    assert all(p.device.type == "cuda" and p.dtype == getattr(torch, dtype) for p in policy.model.parameters())
    loaded = REINFORCE.load(tmp_path, device="cuda", dtype=dtype)
    assert loaded.iteration == 3 and loaded.value_head.weight.device.type == "cuda"


WORKER = textwrap.dedent(
    """
    import sys
    import torch
    import textgym
    from agents import LMPolicy, REINFORCE, distributed
    from agents.rollouts import collect_episodes, to_batch

    out = sys.argv[1]
    ctx = distributed.setup()
    policy = LMPolicy.from_pretrained("tiny", device="cuda", dtype="float32", seed=0)
    agent = REINFORCE(policy, baseline="group", lr=1e-2, seed=0, micro_batch_size=2, amp="off")
    envs = textgym.TextGenVectorEnv(num_envs=8, group_size=4, task="copy", tokenizer=policy.tokenizer, max_new_tokens=4,
                                    task_kwargs={"length": 2, "alphabet": "abc"}, reward="partial_credit")
    policy.restrict_actions(envs.action_masks()[0])
    policy.seed(123)
    batch = to_batch(collect_episodes(policy, envs, seed=123)[0], group_size=4)
    if ctx.enabled:
        batch = batch.select(slice(4 * ctx.rank, 4 * ctx.rank + 4))
    for _ in range(3):
        agent.update(batch)
    torch.save({k: v.detach().cpu() for k, v in policy.model.state_dict().items()}, f"{out}/rank{ctx.rank}-{ctx.world_size}.pt")
    """
)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="DDP over nccl needs 2 GPUs")
def test_ddp_over_nccl_matches_one_process(tmp_path):
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(worker), str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=ENV)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    subprocess.run([sys.executable, str(worker), str(tmp_path)], check=True, timeout=600, env=ENV)
    rank0, rank1, single = (torch.load(tmp_path / f) for f in ("rank0-2.pt", "rank1-2.pt", "rank0-1.pt"))
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name
        torch.testing.assert_close(rank0[name], single[name], atol=2e-5, rtol=1e-4)
