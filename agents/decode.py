"""A fast one-token decode step for Llama-family models: the KV cache in preallocated buffers and
the weights in the layout a CPU multiplies fastest.

`LMPolicy` feeds one token per env slot per step. Through the HF forward that step costs more than
its arithmetic on a CPU: every layer's cache grows by concatenation (a copy of the whole cache per
token), and `F.linear` multiplies by weights stored (out, in), which MKL reads about 2x slower than
(in, out) when a batch has a few rows. `StaticDecoder` computes the same function with neither:

- the weights are copied once into (in, out) layout, q/k/v and gate/up each fused into one matrix,
  and recopied whenever a parameter of the model changes (an optimizer step, `load_state_dict`);
- each layer's keys and values live in one preallocated buffer per layer; a step writes its column
  in place and the policy's `DynamicCache` holds views of the buffers, so the policy's bookkeeping
  (suffix prefill, splicing, compaction) reads and edits them as before;
- the layers are written out once (RMSNorm, fused q/k/v, the model's own rotary embedding,
  grouped-query attention without repeating the keys, SwiGLU MLP), in the HF models' op order.

Prefills (several tokens) still run through the HF forward. `supported(model)` says which models the
step knows: Llama and Qwen2 without sliding-window layers. Costs: a second copy of the projection
and output weights (~the model's size) and up to ~1.5x the cache in buffer slack.

`compile=True` runs the step through `torch.compile` (Inductor; a C++ compiler on CPU). On the
default model it saved ~4% of a step on a 2-core CPU after minutes of compilation, so it is off
unless asked for.
"""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.nn.functional as F
from torch.optim.optimizer import register_optimizer_step_post_hook

__all__ = ["StaticDecoder", "unsupported_reason"]

SUPPORTED = ("LlamaForCausalLM", "Qwen2ForCausalLM")

# Steps of every torch optimizer in this process. Fused kernels (AdamW(fused=True), what REINFORCE
# uses) write the weights without bumping their version counters, so a decoder cannot see such an
# update in the parameters themselves: it repacks after any optimizer step.
_optimizer_steps = 0


def _count_optimizer_step(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    global _optimizer_steps
    _optimizer_steps += 1


register_optimizer_step_post_hook(_count_optimizer_step)


def unsupported_reason(model: torch.nn.Module) -> str | None:
    """Why `StaticDecoder` cannot run `model` exactly, or None if it can."""
    name = type(model).__name__
    if name not in SUPPORTED or not type(model).__module__.startswith("transformers.models."):
        return f"{type(model).__module__}.{name} is not one of the architectures it knows ({', '.join(SUPPORTED)})"
    config = model.config
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"hidden_act is {config.hidden_act!r}, not 'silu'"
    if any(kind != "full_attention" for kind in getattr(config, "layer_types", None) or ()):
        return "the model has sliding-window layers"
    for i, layer in enumerate(model.model.layers):
        linears = [getattr(layer.self_attn, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj")]
        linears += [getattr(layer.mlp, n) for n in ("gate_proj", "up_proj", "down_proj")]
        if any(type(m) is not torch.nn.Linear for m in linears):
            return f"layer {i} has projections that are not plain nn.Linear (adapters or quantized layers)"
    if type(model.lm_head) is not torch.nn.Linear:
        return "the output layer is not a plain nn.Linear"
    return None


class StaticDecoder:
    """One token per row through `model`, over key/value buffers that back a `DynamicCache`.

    Args:
        model: a model `unsupported_reason` accepts.
        compile: run the step through `torch.compile` (minutes of compilation; see the module doc).
    """

    def __init__(self, model: torch.nn.Module, compile: bool = False):
        reason = unsupported_reason(model)
        if reason is not None:
            raise ValueError(f"the static decode step cannot run this model: {reason}; use decode='hf'")
        self.model = model
        config = model.config
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.weights: dict[str, Any] | None = None
        self._parameters = self._sources()
        self._signature: tuple | None = None
        self.keys: list[torch.Tensor] = []  # per layer: (N, kv_heads, capacity, head_dim)
        self.values: list[torch.Tensor] = []
        self._step = torch.compile(_decode, dynamic=True, fullgraph=True) if compile else _decode
        self.compiled = compile
        self.warmup_s: float | None = None  # wall time of the first compiled step (compilation included)
        self._dropout = bool(getattr(config, "attention_dropout", 0.0))

    def applies_to(self, model: torch.nn.Module) -> bool:
        """Whether a step computes what `model`'s forward would: the same model, and no attention
        dropout active (the step has none)."""
        return model is self.model and not (self._dropout and model.training)

    # -- weights ---------------------------------------------------------------------------------

    def _sources(self) -> list[tuple[torch.nn.Module, str]]:
        """(module, attribute) of every parameter the step reads, read afresh at each check (a
        parameter may be replaced, not only edited)."""
        m = self.model
        modules = [m.model.embed_tokens, m.model.norm, m.lm_head]
        for layer in m.model.layers:
            a, mlp = layer.self_attn, layer.mlp
            modules += [layer.input_layernorm, layer.post_attention_layernorm, a.q_proj, a.k_proj, a.v_proj, a.o_proj]
            modules += [mlp.gate_proj, mlp.up_proj, mlp.down_proj]
        return [(module, name) for module in modules for name in ("weight", "bias") if getattr(module, name, None) is not None]

    def refresh_weights(self) -> None:
        """Copy the model's weights into the decode layout if any changed since the last copy.

        The weights count as changed after any torch optimizer step (fused ones leave no other
        trace), and a parameter when it is another tensor, has moved, or was edited in place by
        autograd-visible ops (its version counter: `load_state_dict`, anything under
        `torch.no_grad()`). Edits through `.data` bypass both: call `reset()` after them.
        """
        versions = [(p.data_ptr(), p._version) for p in (getattr(m, name) for m, name in self._parameters)]
        signature = (_optimizer_steps, versions)
        if signature == self._signature:
            return
        m = self.model
        pack = self._packs()

        def fused(*linears: torch.nn.Linear) -> tuple[torch.Tensor, torch.Tensor | None]:
            weight = torch.cat([lin.weight.detach() for lin in linears])  # (out, in)
            # oneDNN's blocked layout, else (in, out): MKL reads either ~1.3-2x faster than (out, in).
            weight = torch.ops.mkldnn._reorder_linear_weight(weight, None) if pack else weight.t().contiguous()
            if all(lin.bias is None for lin in linears):
                return weight, None
            biases = [torch.zeros(lin.out_features, dtype=lin.weight.dtype, device=lin.weight.device)
                      if lin.bias is None else lin.bias.detach() for lin in linears]  # fmt: skip
            return weight, torch.cat(biases)

        layers = []
        for layer in m.model.layers:
            a, mlp = layer.self_attn, layer.mlp
            qkv, qkv_bias = fused(a.q_proj, a.k_proj, a.v_proj)
            gate_up, gate_up_bias = fused(mlp.gate_proj, mlp.up_proj)
            o, o_bias = fused(a.o_proj)
            down, down_bias = fused(mlp.down_proj)
            layers.append({
                "norm1": layer.input_layernorm.weight.detach(), "eps1": layer.input_layernorm.variance_epsilon,
                "norm2": layer.post_attention_layernorm.weight.detach(), "eps2": layer.post_attention_layernorm.variance_epsilon,
                "qkv": qkv, "qkv_bias": qkv_bias, "o": o, "o_bias": o_bias,
                "gate_up": gate_up, "gate_up_bias": gate_up_bias, "down": down, "down_bias": down_bias,
                "scale": a.scaling,
            })  # fmt: skip
        head, head_bias = fused(m.lm_head)
        self.weights = {
            "embed": m.model.embed_tokens.weight.detach(), "layers": layers,
            "norm": m.model.norm.weight.detach(), "eps": m.model.norm.variance_epsilon,
            "head": head, "head_bias": head_bias, "packed": pack,
            "shape": (self.heads, self.kv_heads, self.head_dim, m.config.intermediate_size),
        }  # fmt: skip
        self._signature = signature

    def _packs(self) -> bool:
        """Whether the weights go into oneDNN's packed layout: eager steps on a CPU with oneDNN, in
        float32 or bfloat16 (torch.compile takes plain tensors)."""
        weight = self.model.lm_head.weight
        return (
            not self.compiled
            and weight.device.type == "cpu"
            and weight.dtype in (torch.float32, torch.bfloat16)
            and torch.backends.mkldnn.is_available()
        )

    def reset(self) -> None:
        """Drop the weight copies and the buffers (the next step rebuilds them)."""
        self.weights, self._signature, self.keys, self.values = None, None, [], []

    # -- the cache -------------------------------------------------------------------------------

    def _window_start(self, layers: list, width: int) -> int | None:
        """The buffer column where `layers`' keys and values start, if every one of them is the
        window [start, start + width) of this decoder's buffers; else None."""
        if len(self.keys) != len(layers) or width == 0:
            return None
        start = None
        for layer, keys, values in zip(layers, self.keys, self.values):
            for view, buffer in ((layer.keys, keys), (layer.values, values)):
                if (
                    view.shape != (buffer.shape[0], buffer.shape[1], width, buffer.shape[3])
                    or view.stride() != buffer.stride()
                    or view.untyped_storage().data_ptr() != buffer.untyped_storage().data_ptr()
                ):
                    return None
                offset, rest = divmod(view.storage_offset() - buffer.storage_offset(), buffer.stride(2))
                if rest or (start is not None and offset != start):
                    return None
                start = offset
        if start + width >= self.keys[0].shape[2]:  # no free column after the window
            return None
        return start

    def _adopt(self, layers: list, width: int) -> int:
        """Copy `layers`' keys and values to column 0 of the buffers (grown when too small)."""
        n, kv_heads, _, head_dim = layers[0].keys.shape
        first = layers[0].keys
        # Room for the window and a slack of new columns: the window grows or slides right by one
        # column a step (compaction drops columns on its left) and is copied back to column 0 when
        # it reaches the end, at most once per slack / 2 steps.
        slack = max(32, width // 2)
        if (
            not self.keys
            or self.keys[0].shape[:2] != (n, kv_heads)
            or self.keys[0].dtype != first.dtype
            or self.keys[0].device != first.device
            or self.keys[0].shape[2] < width + 1 + slack // 2
        ):
            capacity = -(-(width + 1 + slack) // 32) * 32
            shape = (n, kv_heads, capacity, head_dim)
            new_keys = [torch.zeros(shape, dtype=first.dtype, device=first.device) for _ in layers]
            new_values = [torch.zeros(shape, dtype=first.dtype, device=first.device) for _ in layers]
        else:
            new_keys, new_values = self.keys, self.values
        for layer, keys, values in zip(layers, new_keys, new_values):
            for view, buffer in ((layer.keys, keys), (layer.values, values)):
                if view.untyped_storage().data_ptr() == buffer.untyped_storage().data_ptr():
                    view = view.clone()  # the window moves left inside its own buffer: ranges overlap
                buffer[:, :, :width] = view
        self.keys, self.values = new_keys, new_values
        return 0

    # -- the step --------------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, cache: Any, tokens: torch.Tensor, positions: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Run one token per row after `cache` and append its keys and values.

        Args:
            cache: a `DynamicCache` of the model (N rows, the same width in every layer). After the
                step its layers are views of this decoder's buffers, one column wider.
            tokens: (N, 1) token ids. positions: (N, 1) their positions.
            valid: (N, width + 1) attention mask over the cache's columns and the new one.

        Returns:
            (N, vocab) logits of the next token.
        """
        self.refresh_weights()
        layers = cache.layers
        width = valid.shape[1] - 1
        start = self._window_start(layers, width)
        if start is None:
            start = self._adopt(layers, width)
        column = start + width
        mask = valid.bool()[:, None, None, :]
        cos, sin = self.model.model.rotary_emb(self.weights["embed"][:1], positions)
        began = time.perf_counter()
        logits = self._step(self.weights, self.keys, self.values, tokens[:, 0], cos[:, 0], sin[:, 0], mask, start, column)
        if self.compiled and self.warmup_s is None:
            self.warmup_s = time.perf_counter() - began
        for layer, keys, values in zip(layers, self.keys, self.values):
            layer.keys, layer.values = keys[:, :, start : column + 1], values[:, :, start : column + 1]
        return logits


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """HF's Llama RMSNorm (normalized in float32, cast back, then scaled) in one fused kernel."""
    return weight * F.rms_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype)


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, packed: bool) -> torch.Tensor:
    if packed:
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return x @ weight if bias is None else torch.addmm(bias, x, weight)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


def _decode(w: dict, keys: list, values: list, tokens, cos, sin, mask, start: int, column: int) -> torch.Tensor:
    """The model's forward for one token per row; writes each layer's new keys/values at `column`
    and attends over columns start..column of the buffers."""
    heads, kv_heads, head_dim, inner = w["shape"]
    packed = w["packed"]
    n = tokens.shape[0]
    cos, sin = cos[:, None, :], sin[:, None, :]
    where = torch.full((1,), column, dtype=torch.long, device=tokens.device)
    h = F.embedding(tokens, w["embed"])
    for layer, layer_keys, layer_values in zip(w["layers"], keys, values):
        x = _rms_norm(h, layer["norm1"], layer["eps1"])
        qkv = _linear(x, layer["qkv"], layer["qkv_bias"], packed)
        qk = _rotate(qkv[:, : (heads + kv_heads) * head_dim].view(n, heads + kv_heads, head_dim), cos, sin)
        q, k = qk[:, :heads], qk[:, heads:]
        v = qkv[:, (heads + kv_heads) * head_dim :].view(n, kv_heads, head_dim)
        # index_copy_ with a tensor index: an int index would be a constant to torch.compile.
        layer_keys.index_copy_(2, where, k[:, :, None])
        layer_values.index_copy_(2, where, v[:, :, None])
        # Grouped-query attention with the query heads of each key/value head as its queries: no
        # copy of the keys per query head.
        attention = F.scaled_dot_product_attention(
            q.view(n, kv_heads, heads // kv_heads, head_dim),
            layer_keys[:, :, start : column + 1],
            layer_values[:, :, start : column + 1],
            attn_mask=mask,
            scale=layer["scale"],
        )
        h = h + _linear(attention.reshape(n, heads * head_dim), layer["o"], layer["o_bias"], packed)
        x = _rms_norm(h, layer["norm2"], layer["eps2"])
        gate_up = _linear(x, layer["gate_up"], layer["gate_up_bias"], packed)
        h = h + _linear(F.silu(gate_up[:, :inner]) * gate_up[:, inner:], layer["down"], layer["down_bias"], packed)
    return _linear(_rms_norm(h, w["norm"], w["eps"]), w["head"], w["head_bias"], packed)
