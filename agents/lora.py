"""LoRA adapters on a policy's model (Hu et al., 2021), through the optional `peft` package.

A LoRA model keeps the pretrained weights W frozen and learns, for each adapted linear layer, a
low-rank update: y = W x + (alpha / r) B A x, with A (r x d_in), B (d_out x r) and B = 0 at the
start, so the adapted model starts as the base model. Only A and B train, so gradients and AdamW's
two moments exist for them alone; that is where the memory goes (see the README's table).

    policy = LMPolicy.from_pretrained("smollm2-135m-instruct", lora=LoRAConfig(lora_rank=16))
    agent = REINFORCE(policy, lr=2e-4, kl_coef=0.05)   # the KL reference: adapters disabled, no copy

What follows from the base staying frozen:
- the KL reference (`frozen_reference`) is the same model run with its adapters disabled, not a
  second copy of the weights;
- a checkpoint holds the adapters (peft's adapter_model.safetensors + adapter_config.json, whose
  `base_model_name_or_path` names the base) and a fingerprint of the base, never the base weights;
  `load_model` on such a directory loads the base by that name and puts the adapters on it, and
  refuses a base whose weights are not the ones the adapters were trained on;
- an engine that serves plain weights (vLLM) gets them from `merged_state_dict`: the base with
  every adapter's B A folded in, under the base model's own parameter names, computed without
  touching the training model.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from textgym.config import check_choices, replace, setting

__all__ = [
    "LoRAConfig",
    "apply_lora",
    "is_lora",
    "frozen_reference",
    "merged_state_dict",
    "is_adapter_dir",
    "adapter_base",
    "save_adapters",
    "load_adapters",
    "LLAMA_TARGETS",
]

# The attention and MLP projections of Llama-shaped models (SmolLM2, Llama, Qwen, Mistral, the tiny model).
LLAMA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ADAPTER_CONFIG = "adapter_config.json"  # peft's; its presence makes a directory an adapter checkpoint
FINGERPRINT_FILE = "textgym_base_fingerprint.json"
_FINGERPRINT_SAMPLES = 4096  # elements hashed per tensor: any real change of a weight matrix shows in them


@dataclass(frozen=True)
class LoRAConfig:
    """LoRA adapters on the policy's model (`LMPolicy.from_pretrained(..., lora=...)`); off by default."""

    lora_rank: int | None = setting(
        None,
        "rank r of LoRA adapters on the model's linear layers: only the adapters train, the base weights stay "
        "frozen and are the KL reference; checkpoints hold the adapters only (None or 0: full fine-tuning). "
        "LoRA on a pretrained model usually wants a larger lr than full fine-tuning; on the random tiny model r16 went "
        "furthest at lr 1e-3 (validation 0.67-0.73 after 250 updates; 3e-3: 0.33-0.54), where full fine-tuning reaches 0.9 in 55",
    )
    lora_alpha: float | None = setting(None, "LoRA scale alpha: an adapter adds (alpha / r) B A x (None: 2 r)")
    lora_dropout: float = setting(
        0.0, "dropout on the adapters' input while updating (> 0 makes the update's log-probs differ from the sampled ones)"
    )
    lora_target_modules: tuple[str, ...] | None = setting(
        None,
        "names of the linear layers to adapt, e.g. q_proj v_proj, or all-linear (None: the attention and MLP "
        "projections q/k/v/o/gate/up/down_proj of Llama-shaped models, else all-linear)",
    )

    def __post_init__(self) -> None:
        check_choices(self)
        rank = self.lora_rank
        if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 0):
            raise ValueError(f"lora_rank must be an integer >= 0 (None or 0: full fine-tuning), got {rank!r}")
        if self.lora_alpha is not None and not (isinstance(self.lora_alpha, (int, float)) and self.lora_alpha > 0):
            raise ValueError(f"lora_alpha must be > 0 (None: 2 x lora_rank), got {self.lora_alpha!r}")
        if not (isinstance(self.lora_dropout, (int, float)) and 0.0 <= self.lora_dropout < 1.0):
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout!r}")
        if self.lora_target_modules is not None:
            targets = (self.lora_target_modules,) if isinstance(self.lora_target_modules, str) else tuple(self.lora_target_modules)
            if not targets or any(not isinstance(t, str) or not t for t in targets):
                raise ValueError(f"lora_target_modules must be module names such as q_proj v_proj, or all-linear; got {self.lora_target_modules!r}")
            object.__setattr__(self, "lora_target_modules", targets)
        if not self.enabled:
            given = [name for name, default in (("lora_alpha", None), ("lora_dropout", 0.0), ("lora_target_modules", None))
                     if getattr(self, name) != default]  # fmt: skip
            if given:
                raise ValueError(f"{given[0]} is set but lora_rank is {rank!r}: set lora_rank >= 1 to train LoRA adapters")

    kind = "LoRA"  # how errors name these settings (a class attribute, not a setting)

    @property
    def enabled(self) -> bool:
        """Whether adapters are asked for (a rank >= 1)."""
        return bool(self.lora_rank)

    def replace(self, **changes: Any) -> "LoRAConfig":
        """A copy with some settings changed (an unknown name raises a TypeError listing the known)."""
        return replace(self, **changes)


def _peft() -> Any:
    try:
        import peft
    except ImportError:
        raise ImportError("LoRA needs the peft package: pip install 'textgym[lora]' (or pip install peft)") from None
    return peft


def is_lora(model: Any) -> bool:
    """Whether `model` is a peft model (LoRA adapters on a frozen base)."""
    peft = sys.modules.get("peft")  # a model cannot be a peft model if peft was never imported
    return peft is not None and isinstance(model, peft.PeftModel)


def apply_lora(model: torch.nn.Module, config: LoRAConfig, seed: int = 0) -> torch.nn.Module:
    """`model` wrapped in fresh LoRA adapters (B = 0: it still computes the base model's outputs).

    The base weights are frozen (requires_grad False) and shared, not copied; only the adapters'
    parameters require gradients. A's random init comes from `seed` (the global RNG is left as it
    was). The base must be one `load_model` loaded (it records the name a checkpoint needs to
    load it again).
    """
    if not config.enabled:
        raise ValueError(f"apply_lora needs lora_rank >= 1, got {config.lora_rank!r}")
    if is_lora(model):
        raise ValueError("the model already has LoRA adapters; train those, or start from the base model")
    base = getattr(model.config, "_name_or_path", "") or ""
    if not base:
        raise ValueError(
            "apply_lora cannot tell which base model this is, so a checkpoint could not load it again: load the "
            "model with load_model / LMPolicy.from_pretrained, or set model.config._name_or_path to its name or directory"
        )
    peft = _peft()
    targets = _target_modules(model, config.lora_target_modules)
    peft_config = peft.LoraConfig(
        r=config.lora_rank, lora_alpha=config.lora_alpha or 2 * config.lora_rank, lora_dropout=config.lora_dropout,
        target_modules=targets, task_type="CAUSAL_LM",
    )  # fmt: skip
    fingerprint = base_fingerprint(model)
    with torch.random.fork_rng(devices=[]):  # peft draws A's init from the global CPU generator
        torch.default_generator.manual_seed(seed)
        lora_model = peft.get_peft_model(model, peft_config)
    lora_model.peft_config["default"].base_model_name_or_path = base
    lora_model.textgym_base_fingerprint = fingerprint
    return lora_model


def _target_modules(model: torch.nn.Module, names: tuple[str, ...] | None) -> list[str] | str:
    """peft's target_modules for `names`, after checking that each names a linear layer of the model."""
    from transformers.pytorch_utils import Conv1D  # GPT-2's linear layers

    adaptable = (torch.nn.Linear, Conv1D, torch.nn.Embedding)
    linear = sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, (torch.nn.Linear, Conv1D))} - {"lm_head"})
    if names is None:
        present = [t for t in LLAMA_TARGETS if t in linear]
        return present if len(present) == len(LLAMA_TARGETS) else "all-linear"
    if names == ("all-linear",):
        return "all-linear"
    modules = dict(model.named_modules())
    for target in names:
        matches = [m for name, m in modules.items() if name == target or name.endswith("." + target)]
        if not matches:
            raise ValueError(
                f"lora_target_modules: the model has no module named {target!r}; its linear layers are "
                f"{', '.join(linear)} (or use all-linear)"
            )
        if not all(isinstance(m, adaptable) for m in matches):
            raise ValueError(
                f"lora_target_modules: {target!r} is a {type(matches[0]).__name__}, not a linear layer; "
                f"the model's linear layers are {', '.join(linear)} (or use all-linear)"
            )
    return list(names)


# -- what the base model gives the agent -----------------------------------------------------------


class _AdaptersDisabled(torch.nn.Module):
    """A LoRA model run with its adapters disabled: the base model, on the same weights.

    The LoRA model is held outside the module tree, so this has no parameters or state of its own
    (its state_dict is empty: a checkpoint keeps no second copy either).
    """

    def __init__(self, lora_model: torch.nn.Module):
        super().__init__()
        object.__setattr__(self, "lora_model", lora_model)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        # The update runs the model in train mode; the reference is the initial policy, without the
        # base model's own dropout (as a full model's frozen copy, which stays in eval mode).
        training = self.lora_model.training
        self.lora_model.eval()
        try:
            with self.lora_model.disable_adapter():
                return self.lora_model(*args, **kwargs)
        finally:
            self.lora_model.train(training)


def frozen_reference(model: torch.nn.Module) -> torch.nn.Module:
    """The initial policy for a KL penalty: the base (adapters disabled) for a LoRA model, which
    shares its weights; otherwise a frozen copy of `model`."""
    import copy

    if is_lora(model):
        return _AdaptersDisabled(model)
    return copy.deepcopy(model).eval().requires_grad_(False)


@torch.no_grad()
def merged_state_dict(model: Any) -> dict[str, torch.Tensor]:
    """The weights a plain copy of the model (or of a policy's model) would have, under the base
    model's own names.

    For a LoRA model: each adapted layer's W + (alpha / r) B A (active adapters), every other
    tensor as it is; new tensors where merged, shared ones elsewhere. The training model is not
    modified (peft's merge_and_unload would). For any other model, its state dict, detached.
    This is what an engine that serves plain weights loads after each update (e.g. the vLLM
    policy's weight sync).
    """
    if not isinstance(model, torch.nn.Module):  # an LMPolicy (a model has its own `.model`: test the type)
        model = model.model
    if not is_lora(model):
        return {k: v.detach() for k, v in model.state_dict().items()}
    from peft.tuners.lora import LoraLayer

    inner = model.get_base_model()
    merged: dict[str, torch.Tensor] = {}
    for key, value in inner.state_dict().items():
        if ".lora_" in key:  # lora_A / lora_B / lora_embedding_* / lora_magnitude_vector
            continue
        merged[key.replace(".base_layer.", ".")] = value.detach()
    for name, layer in inner.named_modules():
        if isinstance(layer, LoraLayer) and not layer.merged:
            weight = layer.get_base_layer().weight
            delta = sum((layer.get_delta_weight(a) for a in layer.active_adapters if a in layer.lora_A), torch.zeros_like(weight))
            merged[f"{name}.weight"] = (weight + delta.to(weight.dtype)).detach()
    return merged


# -- checkpoints ------------------------------------------------------------------------------------


def base_fingerprint(model: torch.nn.Module) -> dict[str, str]:
    """A hash of a sample of every base weight, with the dtype it was taken in.

    Checked when adapters are loaded: a base model whose weights changed (another revision, a
    regenerated random init) would silently give other outputs under the same adapters.
    """
    inner = model.get_base_model() if is_lora(model) else model
    digest = hashlib.sha256()
    dtype = None
    for key, value in sorted(inner.state_dict().items()):
        if ".lora_" in key:
            continue
        flat = value.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // _FINGERPRINT_SAMPLES)].contiguous().cpu()
        digest.update(key.replace(".base_layer.", ".").encode())
        digest.update(sample.view(torch.uint8).numpy().tobytes())  # raw bytes: bf16 has no numpy dtype
        dtype = dtype or str(value.dtype).removeprefix("torch.")
    return {"sha256": digest.hexdigest(), "dtype": dtype or ""}


def is_adapter_dir(path: str | os.PathLike) -> bool:
    """Whether `path` is a directory of LoRA adapters (`save_adapters`, or any peft adapter)."""
    return (Path(path) / ADAPTER_CONFIG).is_file()


def adapter_base(path: str | os.PathLike) -> str:
    """The base model an adapter directory was trained on (peft's `base_model_name_or_path`)."""
    file = Path(path) / ADAPTER_CONFIG
    try:
        base = json.loads(file.read_text()).get("base_model_name_or_path")
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{file}: cannot read the adapter config ({e})") from None
    if not base:
        raise ValueError(f"{file} does not name its base model (base_model_name_or_path is empty)")
    return str(base)


def save_adapters(model: torch.nn.Module, path: str | os.PathLike) -> None:
    """Write the adapters (safetensors), their config naming the base, and the base's fingerprint."""
    path = Path(path)
    model.save_pretrained(str(path), save_embedding_layers=False)
    (path / "README.md").unlink(missing_ok=True)  # peft's empty model-card template
    fingerprint = getattr(model, "textgym_base_fingerprint", None) or base_fingerprint(model)
    (path / FINGERPRINT_FILE).write_text(json.dumps(fingerprint) + "\n")


def load_adapters(base_model: torch.nn.Module, path: str | os.PathLike) -> torch.nn.Module:
    """The adapters saved in `path` on `base_model` (trainable), after checking the base's fingerprint."""
    peft = _peft()
    path = Path(path)
    fingerprint = base_fingerprint(base_model)
    file = path / FINGERPRINT_FILE
    if file.exists():
        saved = json.loads(file.read_text())
        if saved.get("dtype") == fingerprint["dtype"] and saved.get("sha256") != fingerprint["sha256"]:
            raise ValueError(
                f"the adapters in {path} were trained on other weights than those of base model "
                f"{adapter_base(path)!r} as it loads now (fingerprint {saved.get('sha256', '')[:12]} vs "
                f"{fingerprint['sha256'][:12]}): load the base they were trained on"
            )
    try:
        with torch.random.fork_rng(devices=[]):  # peft initialises the adapters before loading them
            model = peft.PeftModel.from_pretrained(base_model, str(path), is_trainable=True)
    except (ValueError, KeyError, RuntimeError) as e:
        raise ValueError(f"cannot put the LoRA adapters in {path} on base model {adapter_base(path)!r}: {e}") from None
    model.textgym_base_fingerprint = fingerprint
    return model
