"""textgym: text generation as a token-level Gymnasium reinforcement-learning environment.

    import gymnasium as gym
    import textgym

    env = gym.make("TextGen-v0", task="addition", tokenizer="char", max_new_tokens=8)

Importing textgym registers "TextGen-v0" (single env and vector entry point); without the import,
`gym.make("textgym:TextGen-v0")` imports it first. Tasks and reward functions have registries of
their own: `textgym.list_tasks()`, `textgym.list_rewards()`, `@textgym.register_reward("name")`.
"""

import gymnasium as _gym

from textgym.config import EnvConfig
from textgym.env import TextGenEnv
from textgym.rewards import RewardResult, get_reward, list_rewards, register_reward, score
from textgym.tasks import Example, Task, list_tasks, make_task, register_task
from textgym.tokenizers import CharTokenizer, HFTokenizer, Tokenizer, as_tokenizer
from textgym.vector import TextGenVectorEnv

__version__ = "0.1.0"

ENV_ID = "TextGen-v0"

__all__ = [
    "ENV_ID",
    "EnvConfig",
    "TextGenEnv",
    "TextGenVectorEnv",
    "Example",
    "Task",
    "make_task",
    "register_task",
    "list_tasks",
    "register_reward",
    "list_rewards",
    "get_reward",
    "score",
    "RewardResult",
    "Tokenizer",
    "CharTokenizer",
    "HFTokenizer",
    "as_tokenizer",
]


def _register() -> None:
    # Idempotent: re-importing (or importing under another name) must not warn or re-register.
    # Registered kwargs are plain names so EnvSpec.to_json() works; callables go in at make time.
    if ENV_ID in _gym.registry:
        return
    _gym.register(
        id=ENV_ID,
        entry_point="textgym.env:TextGenEnv",
        vector_entry_point="textgym.vector:TextGenVectorEnv",
        # The defaults, from their one place; only names, so EnvSpec.to_json() works.
        kwargs={name: getattr(EnvConfig(), name) for name in ("task", "tokenizer", "max_new_tokens")},
    )


_register()
