"""Peak memory of one REINFORCE update: batch and micro-batch sizes, full fine-tuning vs LoRA, and
gradient checkpointing.

Each configuration runs in a fresh process (peak RSS on CPU, `torch.cuda.max_memory_allocated` of
the last update on a GPU) on a synthetic batch of rollouts of fixed length, so the figures compare
like with like. It runs two updates (`--updates`): in the first, AdamW's state does not exist yet
while the activations peak (it is allocated at the first step, after they are freed), which hides
the 8 bytes per trained parameter that every later update carries.

    python examples/benchmarks/train_memory.py                    # SmolLM2-135M, batches 4-32
    python examples/benchmarks/train_memory.py --model tiny --batches 4 8 --seq-len 32
    python examples/benchmarks/train_memory.py --setups full lora lora+ckpt --batches 16 32 --no-micro
    python examples/benchmarks/train_memory.py --model random-1b --setups lora lora+ckpt --batches 16 --no-micro
    ... --json examples/results/train_memory.json     # also keep the rows (merged with the file's others)

Setups: `full` (every weight trains: weights, gradients and AdamW's two moments, 16 bytes per
parameter in float32), `lora` (rank --lora-rank adapters on the attention and MLP projections: the
base's weights only, 4 bytes per parameter), `+ckpt` (gradient checkpointing: each layer's
activations are recomputed in the backward pass instead of kept). `--kl-coef` > 0 adds the KL
reference: a second copy of the model for full fine-tuning, none for LoRA (its adapters disabled).

Micro-batching accumulates gradients over slices of the batch, so the peak should follow the
micro-batch size, not the batch size. `random-1b` is a Llama-shaped model of 1.07B parameters with
random weights (hidden 2048, 16 layers, MLP 8192, 32 heads, 8 key/value heads: Llama-3.2-1B's
shape with SmolLM2's 49,152-token vocabulary, tied embeddings), for memory only: nothing is
downloaded.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
from pathlib import Path

SETUPS = ("full", "full+ckpt", "lora", "lora+ckpt")
RANDOM_1B = dict(hidden_size=2048, num_hidden_layers=16, intermediate_size=8192, num_attention_heads=32,
                 num_key_value_heads=8, max_position_embeddings=2048, tie_word_embeddings=True)  # fmt: skip


def load_policy(model: str, lora_rank: int | None):
    from agents import LMPolicy
    from agents.lora import LoRAConfig, apply_lora

    lora = LoRAConfig(lora_rank=lora_rank)
    if model != "random-1b":
        return LMPolicy.from_pretrained(model, seed=0, lora=lora)
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from textgym.tokenizers import DEFAULT_MODEL, as_tokenizer

    tokenizer = as_tokenizer(DEFAULT_MODEL)
    config = LlamaConfig(vocab_size=tokenizer.vocab_size, eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
                         pad_token_id=tokenizer.eos_token_id, attn_implementation="sdpa", **RANDOM_1B)  # fmt: skip
    torch.manual_seed(0)
    net = LlamaForCausalLM(config).eval()
    net.config._name_or_path = "random-1b"  # apply_lora wants a name for checkpoints; none are written here
    return LMPolicy(apply_lora(net, lora) if lora.enabled else net, tokenizer, seed=0)


def one_update(model: str, batch: int, micro: int | None, seq_len: int, prompt_len: int, setup: str,
               lora_rank: int, kl_coef: float, updates: int, threads: int) -> dict:  # fmt: skip
    import torch

    from agents import REINFORCE
    from agents.rollouts import Batch

    torch.set_num_threads(threads)
    lora = setup.startswith("lora")
    policy = load_policy(model, lora_rank if lora else None)
    agent = REINFORCE(policy, baseline="group", micro_batch_size=micro, seed=0, kl_coef=kl_coef,
                      gradient_checkpointing=setup.endswith("+ckpt"))  # fmt: skip
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, policy.vocab_size, (batch, seq_len), generator=gen)
    actions = torch.zeros(batch, seq_len - 1, dtype=torch.bool)
    actions[:, prompt_len - 1 :] = True
    rewards = torch.zeros(batch, seq_len - 1)
    rewards[:, -1] = (torch.arange(batch) % 2).float()
    rollouts = Batch(input_ids=ids, attention_mask=torch.ones_like(ids), action_mask=actions,
                     old_log_probs=torch.zeros(batch, seq_len - 1), rewards=rewards,
                     episode_returns=rewards.sum(1), group_size=2)  # fmt: skip
    for i in range(updates):
        if policy.device.type == "cuda" and i == updates - 1:
            torch.cuda.reset_peak_memory_stats()
        agent.update(rollouts)
    if policy.device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"model": model, "seq_len": seq_len, "lora_rank": lora_rank if lora else None, "setup": setup, "batch": batch, "micro_batch": micro or batch, "peak_mb": round(peak_mb), "device": str(policy.device),
            "parameters": policy.model.num_parameters(), "trainable": sum(p.numel() for p in policy.model.parameters() if p.requires_grad),
            "kl_coef": kl_coef}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct", help="a model name, or random-1b (random weights, memory only)")
    p.add_argument("--batches", type=int, nargs="+", default=[4, 8, 16, 32])
    p.add_argument("--micro", type=int, default=4, help="micro-batch size compared with the full batch")
    p.add_argument("--no-micro", action="store_true", help="only the whole batch at once")
    p.add_argument("--setups", nargs="+", choices=SETUPS, default=["full"])
    p.add_argument("--lora-rank", type=int, default=16)
    p.add_argument("--kl-coef", type=float, default=0.0, help="> 0 keeps a KL reference (a model copy unless LoRA)")
    p.add_argument("--updates", type=int, default=2, help="updates run; the peak is the last one's (from the second on, AdamW's state exists)")
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--prompt-len", type=int, default=40)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads of each measurement")
    p.add_argument("--json", default=None, help="also write the rows to this file, replacing earlier rows of the same configuration")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        setup, batch, micro = json.loads(args.child)
        print(json.dumps(one_update(args.model, batch, micro, args.seq_len, args.prompt_len, setup, args.lora_rank, args.kl_coef,
                                    args.updates, args.threads)))  # fmt: skip
        return
    rows = []
    for setup in args.setups:
        for batch in args.batches:
            for micro in (None,) if args.no_micro else (None, args.micro):
                if micro is not None and micro >= batch:
                    continue
                cmd = [sys.executable, __file__, "--model", args.model, "--seq-len", str(args.seq_len), "--prompt-len",
                       str(args.prompt_len), "--lora-rank", str(args.lora_rank), "--kl-coef", str(args.kl_coef), "--updates", str(args.updates),
                       "--threads", str(args.threads), "--child", json.dumps([setup, batch, micro])]  # fmt: skip
                out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
                rows.append(json.loads(out.strip().splitlines()[-1]))
                r = rows[-1]
                print(f"{setup:10s} batch {batch:3d}  micro-batch {r['micro_batch']:3d}: peak {r['peak_mb']} MB "
                      f"({r['trainable'] / 1e6:.2f}M of {r['parameters'] / 1e6:.1f}M parameters train)", flush=True)  # fmt: skip
    kl = f", KL reference (kl_coef {args.kl_coef})" if args.kl_coef > 0 else ""
    print(f"\n{args.model}, {args.seq_len}-token sequences{kl}\n"
          f"| setup | batch | micro-batch | peak memory (MB, {rows[0]['device']}) |\n|---|---|---|---|")  # fmt: skip
    for r in rows:
        print(f"| {r['setup']} | {r['batch']} | {r['micro_batch']} | {r['peak_mb']} |")
    if args.json:
        save_rows(Path(args.json), rows)


def save_rows(path: Path, rows: list[dict]) -> None:
    """Merge `rows` into the JSON file at `path`: a row replaces an earlier one of the same configuration."""
    key = lambda r: [r.get(k) for k in ("model", "setup", "batch", "micro_batch", "seq_len", "lora_rank", "kl_coef")]  # noqa: E731
    old = json.loads(path.read_text()) if path.exists() else {}
    new_keys = [key(r) for r in rows]
    merged = [r for r in old.get("rows", []) if key(r) not in new_keys] + rows
    command = "python examples/benchmarks/train_memory.py " + " ".join(sys.argv[1:])
    meta = {"peak": "peak RSS of the process over the updates (CPU), or max_memory_allocated of the last update (CUDA)",
            "machine": f"{platform.machine()} {platform.processor()}".strip(),
            "commands": [c for c in old.get("commands", []) if c != command] + [command]}  # fmt: skip
    path.write_text(json.dumps({**meta, "rows": merged}, indent=1) + "\n")


if __name__ == "__main__":
    main()
