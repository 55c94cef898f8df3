"""`Example`: one problem of a task — the leaf every other textgym module may import.

It lives apart from `textgym.tasks` so that reward functions (which score examples) and tasks
(which make them and hold a reward) never import each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

__all__ = ["Example"]


@dataclass(frozen=True)
class Example:
    """One problem: the question text, the reference answer, and whatever else a verifier needs.

    Attributes:
        prompt: the question, unformatted (the task formats it; the env applies the chat template).
        answer: the reference answer as text.
        metadata: anything else (operands, a target, a dataset row's other fields); reward
            functions read it, the env never does.
    """

    prompt: str
    answer: str
    metadata: Mapping[str, Any] = field(default_factory=dict)
