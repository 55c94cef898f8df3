"""textgym agents: LM policies and the algorithms that train them in TextGen environments.

    from agents import LMPolicy, REINFORCE
    policy = LMPolicy.from_pretrained("smollm2-135m-instruct", temperature=0.7)

Imports torch and transformers; `textgym` itself never imports this package (except its CLI,
lazily).
"""

__textgym__ = True  # marks this package as textgym's (textgym.cli.agents_problem looks for this line)

from textgym.cli import agents_problem as _agents_problem

_problem = _agents_problem(__file__)
if _problem is not None:  # another `agents` (the OpenAI Agents SDK) installed over this one
    raise ImportError(_problem)

from agents import losses  # noqa: E402
from agents.models import load_model, resolve_device, resolve_dtype, save_model  # noqa: E402
from agents.policy import LMPolicy  # noqa: E402
from agents.reinforce import REINFORCE, REINFORCEConfig  # noqa: E402
from agents.rollouts import evaluate  # noqa: E402

__all__ = ["LMPolicy", "REINFORCE", "REINFORCEConfig", "evaluate", "losses", "load_model", "save_model", "resolve_device", "resolve_dtype"]
