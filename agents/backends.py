"""The acting backends by name (`POLICIES`): `make_policy(learner, "hf" | "vllm")`.

The `--policy` setting of `textgym train` and `textgym eval` picks one; `agents.acting.Policy` is
the interface each implements.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # agents.runs reads POLICIES at a command's start, before torch is imported
    from agents.acting import Policy

__all__ = ["POLICIES", "make_policy"]

POLICIES = ("hf", "vllm")  # the backends `make_policy` builds (the `--policy` setting's choices)


def make_policy(learner: Any, policy: str = "hf", source: str | os.PathLike | None = None, **engine_settings: Any) -> "Policy":
    """The policy that acts for `learner` (an LMPolicy): the learner itself ("hf"), or a `VLLMPolicy`
    around it ("vllm") with `engine_settings`.

    `source` is what the learner was loaded from (a model name, a local directory): the engine loads
    the same weights from its directory (`agents.models.weights_dir`) where there is one, and from a
    temporary copy of the learner otherwise.
    """
    if policy == "hf":
        if engine_settings:
            raise ValueError(f"policy 'hf' takes no engine settings, got {sorted(engine_settings)}")
        return learner
    if policy == "vllm":
        from agents.models import weights_dir
        from agents.vllm_policy import VLLMPolicy

        model_dir = None if source is None else weights_dir(source)
        return VLLMPolicy(learner, model_dir=model_dir, **engine_settings)
    raise ValueError(f"unknown policy {policy!r}; choose one of {', '.join(POLICIES)}")
