"""How long loading the embedded default model takes: first load (GGUF conversion) vs cached load.

Each load runs in a fresh Python process against a fresh temporary TEXTGYM_CACHE, so the first one
really converts and the second one really only reads the safetensors cache.

    python examples/benchmarks/model_load_time.py [--device cpu] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

CHILD = """
import json, sys, time
start = time.perf_counter()
import torch
torch.set_num_threads({threads})
from agents.models import load_model
from textgym.tokenizers import DEFAULT_MODEL
imported = time.perf_counter()
model, tokenizer = load_model(DEFAULT_MODEL, device={device!r})
loaded = time.perf_counter()
print(json.dumps({{"import_s": imported - start, "load_s": loaded - imported, "device": str(model.device),
                   "dtype": str(model.dtype)}}))
"""


def timed_load(cache: str, device: str, threads: int) -> dict:
    env = dict(os.environ, TEXTGYM_CACHE=cache, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    result = subprocess.run(
        [sys.executable, "-c", CHILD.format(device=device, threads=threads)],
        env=env, cwd=REPO, capture_output=True, text=True,
    )
    if result.returncode != 0:
        sys.exit(f"load failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="textgym-cache-") as cache:
        first = timed_load(cache, args.device, args.threads)
        cached = timed_load(cache, args.device, args.threads)

    print(f"default model load time ({first['device']}, {first['dtype']}, {args.threads} CPU threads)")
    print(f"{'':<24}{'first (converts)':>18}{'cached':>10}")
    print(f"{'load_model call':<24}{first['load_s']:>17.2f}s{cached['load_s']:>9.2f}s")
    print(f"{'imports (torch, HF)':<24}{first['import_s']:>17.2f}s{cached['import_s']:>9.2f}s")


if __name__ == "__main__":
    main()
