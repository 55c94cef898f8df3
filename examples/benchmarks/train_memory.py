"""Peak memory of one REINFORCE update at several batch and micro-batch sizes.

Each configuration runs in a fresh process (peak RSS on CPU, `torch.cuda.max_memory_allocated` on
a GPU) on a synthetic batch of rollouts of fixed length, so the figures compare like with like:

    python examples/benchmarks/train_memory.py                    # SmolLM2-135M, batches 4-32
    python examples/benchmarks/train_memory.py --model tiny --batches 4 8 --seq-len 32

Micro-batching accumulates gradients over slices of the batch, so the peak should follow the
micro-batch size, not the batch size.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys


def one_update(model: str, batch: int, micro: int | None, seq_len: int, prompt_len: int) -> dict:
    import torch

    from agents import LMPolicy, REINFORCE
    from agents.rollouts import Batch

    torch.set_num_threads(2)
    policy = LMPolicy.from_pretrained(model, seed=0)
    agent = REINFORCE(policy, baseline="group", micro_batch_size=micro, seed=0)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, policy.vocab_size, (batch, seq_len), generator=gen)
    actions = torch.zeros(batch, seq_len - 1, dtype=torch.bool)
    actions[:, prompt_len - 1 :] = True
    rewards = torch.zeros(batch, seq_len - 1)
    rewards[:, -1] = (torch.arange(batch) % 2).float()
    rollouts = Batch(input_ids=ids, attention_mask=torch.ones_like(ids), action_mask=actions,
                     old_log_probs=torch.zeros(batch, seq_len - 1), rewards=rewards,
                     episode_returns=rewards.sum(1), group_size=2)  # fmt: skip
    if policy.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    agent.update(rollouts)
    if policy.device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"batch": batch, "micro_batch": micro or batch, "peak_mb": round(peak_mb), "device": str(policy.device)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--batches", type=int, nargs="+", default=[4, 8, 16, 32])
    p.add_argument("--micro", type=int, default=4, help="micro-batch size compared with the full batch")
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--prompt-len", type=int, default=40)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        batch, micro = json.loads(args.child)
        print(json.dumps(one_update(args.model, batch, micro, args.seq_len, args.prompt_len)))
        return
    rows = []
    for batch in args.batches:
        for micro in (None, args.micro):
            if micro is not None and micro >= batch:
                continue
            cmd = [sys.executable, __file__, "--model", args.model, "--seq-len", str(args.seq_len),
                   "--prompt-len", str(args.prompt_len), "--child", json.dumps([batch, micro])]  # fmt: skip
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            print(f"batch {batch:3d}  micro-batch {rows[-1]['micro_batch']:3d}: peak {rows[-1]['peak_mb']} MB", flush=True)
    print(f"\n| batch | micro-batch | peak memory (MB, {rows[0]['device']}) |\n|---|---|---|")
    for r in rows:
        print(f"| {r['batch']} | {r['micro_batch']} | {r['peak_mb']} |")


if __name__ == "__main__":
    main()
