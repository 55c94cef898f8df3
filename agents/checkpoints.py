"""Checkpoints on disk: the `latest` pointer, durable writes, and a load that runs no code.

A run directory holds `checkpoint-NNNNNN/` directories (agent.pt and policy/) and a file `latest`
that names the newest complete one. Three guarantees live here, in one place each:

- `latest` is followed only to a checkpoint directory *of this run*: `resolve_checkpoint` (and
  `latest_checkpoint` under it) is the one reader of the pointer, and it refuses a name that is
  not `checkpoint-NNNNNN[-k]` or that resolves anywhere but directly inside the run directory;
- agent.pt is read with `torch.load(weights_only=True)`: tensors and plain containers, never
  code. A file that needs more is refused with `CheckpointError` (as is a truncated, garbled or
  foreign one), so a crafted checkpoint cannot run anything on `--resume`;
- what a save wrote is on disk (`fsync_tree`, `fsync_dir`) before the previous checkpoint is
  deleted, and a full disk is reported as such (`disk_full_error`).
"""

from __future__ import annotations

import errno
import os
import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

__all__ = [
    "CheckpointError",
    "CHECKPOINT_NAME",
    "FORMAT",
    "resolve_checkpoint",
    "latest_checkpoint",
    "read_agent_state",
    "recovery",
    "fsync_tree",
    "fsync_dir",
    "disk_full",
    "disk_full_error",
]

CHECKPOINT_NAME = re.compile(r"checkpoint-\d+(-\d+)?")  # what REINFORCE.checkpoint names its directories
FORMAT = 2  # agent.pt's layout; 1 (no "format" key) held the same plain data and loads the same way
REQUIRED = ("iteration", "optimizer", "policy_sampling", "generator", "running_mean")  # every textgym agent.pt has these
POINTER_BYTES = 256  # `latest` holds one short name; more than this is not a pointer textgym wrote


class CheckpointError(ValueError):
    """A checkpoint or run directory that cannot be used as one: corrupt, foreign, unsafe to load,
    or a `latest` pointer that leaves its run directory. The message names the path and what to do."""


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The checkpoint `run_dir/latest` names, or None when there is no `latest` file.

    Raises CheckpointError when the pointer is not a name `REINFORCE.checkpoint` writes, when that
    name resolves outside `run_dir` (`../other/checkpoint-…`, a symlink elsewhere), or when the
    checkpoint it names is missing or incomplete.
    """
    run_dir = Path(run_dir)
    pointer = run_dir / "latest"
    if not pointer.exists() and not pointer.is_symlink():
        return None
    if not pointer.is_file():
        raise CheckpointError(f"{pointer} is not a file; a textgym run's `latest` names its newest checkpoint-NNNNNN. "
                              "Remove it and point it at one (echo checkpoint-NNNNNN > latest)")  # fmt: skip
    with open(pointer, "rb") as f:
        raw = f.read(POINTER_BYTES + 1)
    name = raw.decode("utf-8", errors="replace").strip()
    shown = name if len(name) <= 80 else name[:77] + "..."
    if len(raw) > POINTER_BYTES or not CHECKPOINT_NAME.fullmatch(name):
        raise CheckpointError(
            f"{pointer} names {shown!r}, not a checkpoint-NNNNNN directory: {run_dir} is not a textgym train run, or "
            "its pointer was edited. Write the name of one of its checkpoint-NNNNNN directories into it"
        )
    target = run_dir / name
    if target.resolve().parent != run_dir.resolve():
        raise CheckpointError(
            f"{pointer} names {name}, which resolves to {target.resolve()}, outside the run directory {run_dir}: "
            "a run only resumes from its own checkpoints. Replace the link with the checkpoint itself"
        )
    if not (target / "agent.pt").is_file():
        raise CheckpointError(
            f"{pointer} names {name}, which holds no agent.pt: the run directory is damaged. Point `latest` at "
            "another complete checkpoint-NNNNNN of the run, or start a new run"
        )
    return target


def resolve_checkpoint(path: str | os.PathLike) -> Path | None:
    """The checkpoint directory `path` names, or None when it is not a `textgym train` run.

    A checkpoint (a directory with agent.pt) is itself; a run directory gives the checkpoint its
    `latest` names (`latest_checkpoint`, which refuses a pointer that leaves the run). A run that
    has not finished a checkpoint raises FileNotFoundError.
    """
    path = Path(path)
    if not path.is_dir():
        return None
    if (path / "agent.pt").exists():
        return path
    checkpoint = latest_checkpoint(path)
    if checkpoint is not None:
        return checkpoint
    if (path / "metrics.jsonl").exists() or any(path.glob("checkpoint-*")):
        raise FileNotFoundError(
            f"{path} is a textgym train run without a finished checkpoint ({path / 'latest'} is missing); "
            "train it further, or evaluate a checkpoint-NNNNNN directory"
        )
    return None


def read_agent_state(checkpoint: str | os.PathLike) -> dict[str, Any]:
    """The agent state in `checkpoint/agent.pt`, read without running any code (weights_only).

    Raises CheckpointError, naming the file and what to do, when it is missing, truncated, not a
    torch file, needs objects other than tensors and plain containers (a crafted pickle), or is
    not a textgym agent state.
    """
    import torch

    path = Path(checkpoint) / "agent.pt"
    fallback = recovery(checkpoint)
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: {checkpoint} is not a textgym checkpoint (agent.pt and policy/)")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; anything else is never unpickled
        raise CheckpointError(f"{path} is damaged or not a textgym checkpoint (not a torch zip archive: truncated, "
                              f"overwritten or from another tool). {fallback}")  # fmt: skip
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on odd pickles: the error below says what matters
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        refused = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = f"it needs {refused.group(1)}" if refused else "it holds more than tensors and plain containers"
        raise CheckpointError(
            f"{path} was refused: loading it could run code ({what}). A textgym checkpoint holds only tensors and "
            f"plain containers, so this file was crafted, comes from another tool, or predates textgym's safe "
            f"checkpoint format; textgym will not unpickle it. {fallback}"
        ) from None
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile, KeyError, IndexError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{path} is damaged ({reason}). {fallback}") from None
    missing = [k for k in REQUIRED if not isinstance(state, dict) or k not in state]
    if missing or not (state.get("config") or state.get("hparams")):
        raise CheckpointError(f"{path} is not a textgym agent state (no {', '.join(missing) or 'config'}): it comes from "
                              f"another tool. {fallback}")  # fmt: skip
    if int(state.get("format", 1)) > FORMAT:
        raise CheckpointError(f"{path} was written by a newer textgym (format {state['format']}, this one reads up to "
                              f"{FORMAT}); upgrade textgym to resume it")  # fmt: skip
    return state


def recovery(checkpoint: str | os.PathLike, weights: bool = True) -> str:
    """What to do with a checkpoint that cannot be resumed: another of its run, or a new run from
    its policy weights (when they are there and `weights` says they are usable)."""
    checkpoint = Path(checkpoint)
    others = sorted(p.name for p in checkpoint.parent.glob("checkpoint-*") if p != checkpoint and (p / "agent.pt").is_file())
    steps = [f"write {others[-1]} into {checkpoint.parent / 'latest'} to resume from that one"] if others else []
    policy = checkpoint / "policy"
    steps.append(f"start a new run from its weights (--model {policy})" if weights and (policy / "config.json").is_file()
                 else "start a new run")  # fmt: skip
    text = ", or ".join(steps)
    return text[0].upper() + text[1:]


# -- durable writes ---------------------------------------------------------------------------------


def fsync_tree(root: str | os.PathLike) -> None:
    """fsync every file and directory under `root` (and `root`), so a rename of `root` publishes
    data that is on the disk, not only in the page cache."""
    root = Path(root)
    for directory, _, files in os.walk(root, topdown=False):
        for name in files:
            fd = os.open(os.path.join(directory, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(directory)


def fsync_dir(directory: str | os.PathLike) -> None:
    """fsync a directory, so the renames and deletions in it survive a power cut (a no-op where
    directories cannot be opened, as on Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except (PermissionError, IsADirectoryError):
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- a full disk ------------------------------------------------------------------------------------

_FULL = (errno.ENOSPC, errno.EDQUOT)
_FULL_TEXT = ("No space left on device", "os error 28", "Disk quota exceeded", "os error 122")


def disk_full(error: BaseException) -> bool:
    """Whether `error` (or an exception it was raised from) is a full disk or an exceeded quota.
    Writers wrap it: torch raises RuntimeError, safetensors its own error with the OS's text."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in _FULL:
            return True
        if any(text in str(error) for text in _FULL_TEXT):
            return True
        error = error.__cause__ or error.__context__
    return False


def disk_full_error(path: str | os.PathLike, what: str, run_dir: str | os.PathLike | None = None) -> OSError:
    """The error to raise when the disk filled up while writing `what` at `path` (and was cleaned
    up); with `run_dir`, it says how to continue that run."""
    path = Path(path)
    message = f"disk full: no space left on the device of {path.parent} while writing {what} {path.name}; nothing half-written is left"
    if run_dir is not None:
        message += f" and `latest` still names the previous checkpoint. Free space there, then continue with: textgym train --resume {run_dir}"
    else:
        message += f" and anything already at {path} is untouched. Free space there, then save again"
    return OSError(errno.ENOSPC, message)
