"""Tasks: seeded, split-safe generators of examples with their verifiers.

    from textgym.tasks import make_task, list_tasks
    task = make_task("addition", digits=2, seed=0, prompt_style="r1_zero")
    ex = task.example("train", 0)            # Example(prompt, answer, metadata)
    text = task.format_prompt(ex)            # what the model sees
    task.reward(completion, ex)              # the verifier

New tasks: subclass `Task` and `register_task("name", Class)`, or `Task.from_examples(...)`; from
outside textgym, name one by module path ("my_pkg.tasks:MyTask") or declare it as an entry point of
the group `textgym.tasks` in your package (see `make_task` for the order names are looked up in).
Multi-turn tasks (the environment replies to each turn) subclass `MultiTurnTask` (multiturn.py);
built-in ones are in interactive.py and kvstore.py; tasks with tools subclass `ToolTask` (tooluse.py).
Families of tasks answer "<family>:<member>" names: "reasoning_gym:<dataset>" (reasoning_gym.py),
"file:<path>" and "hf:<dataset>" (datasets.py: JSONL/CSV/Parquet files, Hugging Face datasets).
"""

from textgym.tasks.base import (
    ENUMERATE_LIMIT,
    R1_ZERO_TEMPLATE,
    Example,
    Task,
    budget_for,
    list_tasks,
    list_task_families,
    make_task,
    register_task,
    register_task_family,
    split_of,
)

# Imported for their @register_task side effect: the built-in tasks.
from textgym.tasks.arithmetic import AdditionTask, ComparisonTask, MultiplicationTask
from textgym.tasks.bandit import BanditTask
from textgym.tasks.countdown import CountdownTask, evaluate_expression
from textgym.tasks.strings import CopyTask, CountingTask, ReverseTask, SortTask
from textgym.tasks.multiturn import MessageEnvTask, MultiTurnTask, Reply
from textgym.tasks.tooluse import ToolTask
from textgym.tasks.interactive import CalculatorTask, GuessTask, RetryTask, calculate
from textgym.tasks.kvstore import KVStoreTask

# Task families ("<family>:<member>" names), registered on import.
from textgym.tasks.datasets import DatasetTask, from_file, from_hub, from_rows
from textgym.tasks.reasoning_gym import (
    ReasoningGymCurriculum, ReasoningGymTask, reasoning_gym_config_fields, reasoning_gym_datasets, reasoning_gym_task,
)

__all__ = [
    "Example", "Task", "make_task", "register_task", "list_tasks", "split_of", "budget_for", "R1_ZERO_TEMPLATE",
    "ENUMERATE_LIMIT", "AdditionTask", "MultiplicationTask", "ComparisonTask", "CountdownTask",
    "CopyTask", "ReverseTask", "SortTask", "CountingTask", "BanditTask", "evaluate_expression",
    "MultiTurnTask", "MessageEnvTask", "Reply", "ToolTask", "CalculatorTask", "KVStoreTask", "GuessTask", "RetryTask",
    "calculate",
    "register_task_family", "list_task_families", "ReasoningGymTask", "ReasoningGymCurriculum", "reasoning_gym_task",
    "reasoning_gym_datasets", "reasoning_gym_config_fields", "DatasetTask", "from_file", "from_hub", "from_rows",
]
