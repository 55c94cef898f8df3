"""textgym agents: LM policies and the algorithms that train them in TextGen environments.

    from agents import LMPolicy, REINFORCE
    policy = LMPolicy.from_pretrained("smollm2-135m-instruct", temperature=0.7)

Imports torch and transformers; `textgym` itself never imports this package (except its CLI,
lazily).
"""

from agents import losses
from agents.lora import LoRAConfig
from agents.models import load_model, resolve_device, resolve_dtype, save_model
from agents.policy import LMPolicy
from agents.reinforce import REINFORCE, REINFORCEConfig
from agents.rollouts import evaluate

__all__ = ["LMPolicy", "LoRAConfig", "REINFORCE", "REINFORCEConfig", "evaluate", "losses", "load_model", "save_model", "resolve_device", "resolve_dtype"]
