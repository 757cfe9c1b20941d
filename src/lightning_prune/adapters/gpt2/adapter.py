"""Adapter for GPT-2 in transformers 5 (pre-norm decoder with fused ``c_attn`` and ``Conv1D`` projections).

Supported classes: ``GPT2LMHeadModel``, ``GPT2Model`` and ``GPT2ForSequenceClassification``. Every projection
is a ``Conv1D`` whose weight is stored transposed, ``(in, out)``; ``c_attn`` produces the queries, keys and
values concatenated, ``(..., 3 · n_embd)``. Structures and where their masks act (forward hooks only, so the
model keeps its classes and peft LoRA wrappers on ``c_attn``/``c_proj``/``c_fc`` keep working; peft wraps
``Conv1D`` with ``fan_in_fan_out=True`` and its merged delta has the ``(in, out)`` layout):

* ``heads``: the input of ``attn.c_proj`` (the concatenated heads), one unit per head. A head's unit removes
  its query, key and value columns of ``c_attn`` and its rows of ``attn.c_proj``.
* ``ffn``: the input of ``mlp.c_proj`` (the activation), one unit per channel.
* ``hidden``: the residual-stream dims shared by the whole model. The ``wte``/``wpe`` outputs and every
  residual write (``attn.c_proj`` and ``mlp.c_proj`` outputs) are multiplied by the mask, and every
  LayerNorm (``ln_1``, ``ln_2``, ``ln_f``) normalises over the **kept dims only** and multiplies its output
  by the mask (CoFi's masked LayerNorm, Xia et al. 2022, §3.1; see :func:`masked_layer_norm`). The LM head
  (tied to ``wte`` by default) or the classification ``score`` reads the masked final state, so its input
  shrinks with ``hidden``.
* ``attn_block`` / ``mlp_block``: the outputs of ``attn.c_proj`` / ``mlp.c_proj`` (a whole block's write).

Exports are standard ``GPT2*`` models when ``GPT2Config`` can express them (the same heads and FFN channels
in every layer, ``n_embd / n_head`` equal to the original head size), and per-layer classes
(``modeling_gpt2_template.py.txt``) otherwise.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from lightning_prune.adapters.base import (
    CompactState,
    MaskSource,
    ModelAdapter,
    base_layer,
    block_structures,
    plain_parameter_sizes,
)
from lightning_prune.adapters.bert.adapter import masked_layer_norm
from lightning_prune.adapters.hooks import install_block_hooks
from lightning_prune.adapters.quantization import plain_config_dict
from lightning_prune.cost import CostTerm, Dim
from lightning_prune.errors import UnsupportedModelError
from lightning_prune.export.per_layer import (
    build_per_layer_model,
    register_per_layer_families,
    without_export_keys,
)
from lightning_prune.structures import StructureSpec

#: model_type -> class-name prefix in transformers
GPT2_FAMILIES: dict[str, str] = {"gpt2": "GPT2"}


def _per_layer_config(config: dict[str, Any], layer_shapes: list[dict[str, Any]]) -> dict[str, Any]:
    """GPT2Attention rejects n_embd % n_head != 0: one nominal head always divides. The template sets each layer's
    heads, head_dim and split_size (config.attention_head_size) from layer_shapes."""
    cfg = without_export_keys(config)
    if "attention_head_size" not in cfg:
        raise ValueError("A per-layer GPT-2 config needs `attention_head_size`; the adapter must pass it.")
    cfg["n_head"] = 1
    cfg["n_inner"] = max(max(s["intermediate_size"] for s in layer_shapes), 1)
    return cfg


register_per_layer_families(
    GPT2_FAMILIES,
    "modeling_gpt2_template.py.txt",
    ("LMHeadModel", "ForSequenceClassification", "Model"),
    _per_layer_config,
)

_SUPPORTED_CLASSES = ("GPT2LMHeadModel", "GPT2ForSequenceClassification", "GPT2Model")
_PROJECTIONS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")


class GPT2Adapter(ModelAdapter):
    """Adapter for ``GPT2LMHeadModel``, ``GPT2Model`` and ``GPT2ForSequenceClassification``.

    Args:
        model: the Hugging Face model (with any peft LoRA layers already injected).

    Raises:
        UnsupportedModelError: another GPT-2 head class (``GPT2DoubleHeadsModel``, ...), cross-attention,
            or projections that are not ``Conv1D`` (a quantized model).
    """

    model_types = tuple(GPT2_FAMILIES)

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        return getattr(getattr(model, "config", None), "model_type", None) in GPT2_FAMILIES

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        from transformers.pytorch_utils import Conv1D

        config = model.config
        cls_name = type(model).__name__
        if cls_name not in _SUPPORTED_CLASSES:
            raise UnsupportedModelError(
                f"The GPT-2 adapter supports {', '.join(_SUPPORTED_CLASSES)}, not {cls_name}. Prune the backbone "
                "(model.transformer) or a GPT2LMHeadModel and put your head on the export."
            )
        if getattr(config, "add_cross_attention", False):
            raise UnsupportedModelError(
                "The GPT-2 adapter does not support cross-attention (add_cross_attention=True)."
            )
        self.family = config.model_type
        self.backbone = model.base_model  # GPT2Model (the model itself when given one)
        self.prefix = "" if self.backbone is model else f"{model.base_model_prefix}."
        self.layers = self.backbone.h
        self.num_layers = len(self.layers)
        self.hidden_size = config.n_embd
        self.num_heads = config.n_head
        if self.hidden_size % self.num_heads:
            raise UnsupportedModelError(f"n_embd={self.hidden_size} is not a multiple of n_head={self.num_heads}.")
        self.head_dim = self.hidden_size // self.num_heads
        self.intermediate_size = base_layer(self.layers[0].mlp.c_fc).weight.shape[1]
        self.vocab_size = config.vocab_size
        for path in _PROJECTIONS:
            if not isinstance(base_layer(self.layers[0].get_submodule(path)), Conv1D):
                raise UnsupportedModelError(
                    f"Expected `{path}` to be a transformers Conv1D in GPT2Block (is the model quantized?). "
                    "Pruning a quantized base is not supported: prune in bf16/fp32, then quantize the export."
                )
        self.head_name = next((n for n in ("lm_head", "score") if hasattr(model, n)), None)
        self.head = getattr(model, self.head_name) if self.head_name else None
        self.tied = self.head is not None and base_layer(self.head).weight is base_layer(self.backbone.wte).weight
        self._hidden_keep: torch.Tensor | None = None  # kept hidden dims of the last build_compact

    # -- structures and costs ----------------------------------------------------------------------
    def structures(self) -> dict[str, StructureSpec]:
        return block_structures(self.num_layers, self.num_heads, self.intermediate_size, self.hidden_size)

    def cost_terms(self, flops_seq_len: int) -> list[CostTerm]:
        d, hd, nh = self.hidden_size, self.head_dim, self.num_heads
        hidden = Dim(d, "hidden", 0, 1)
        p = self.prefix
        terms: list[CostTerm] = []
        covered: set[str] = set()
        for name in ("wte", "wpe"):
            table = base_layer(getattr(self.backbone, name))
            terms.append(CostTerm(name, out=hidden, inp=Dim(table.num_embeddings)))
            covered.add(f"{p}{name}.weight")
        norms = ["ln_f"]
        for l, layer in enumerate(self.layers):
            qkv = Dim(3 * nh * hd, "heads", l, 3 * hd)  # a head's query, key and value columns of c_attn
            heads = Dim(nh * hd, "heads", l, hd)
            ffn = Dim(self.intermediate_size, "ffn", l, 1)
            a_gate, m_gate = (("attn_block", 0, l),), (("mlp_block", 0, l),)
            base = f"h.{l}."
            for path, out, inp, gate in (
                ("attn.c_attn", qkv, hidden, a_gate),
                ("attn.c_proj", hidden, heads, a_gate),
                ("mlp.c_fc", ffn, hidden, m_gate),
                ("mlp.c_proj", hidden, ffn, m_gate),
            ):
                has_bias = base_layer(layer.get_submodule(path)).bias is not None
                terms.append(CostTerm(f"{base}{path}", out, inp, gate, has_bias, True, True, 2.0))
                covered.update({f"{p}{base}{path}.weight", f"{p}{base}{path}.bias"})
            # attention scores and weighted values: 4 · T · (query dims) FLOPs per token, no parameters
            terms.append(CostTerm(f"{base}attn.scores", heads, Dim(flops_seq_len), a_gate, False, True, False, 4.0))
            norms += [f"{base}ln_1", f"{base}ln_2"]
        for name in norms:
            norm = self.backbone.get_submodule(name)
            terms.append(CostTerm(name, hidden, bias=norm.bias is not None, params=norm.weight is not None))
            covered.update({f"{p}{name}.weight", f"{p}{name}.bias"})
        if self.head is not None:
            head = base_layer(self.head)
            terms.append(
                CostTerm(
                    self.head_name,
                    Dim(head.out_features),
                    hidden,
                    bias=head.bias is not None,
                    params=not self.tied,
                    flops_per_param=2.0,
                )
            )
            covered.update({f"{self.head_name}.weight", f"{self.head_name}.bias"})
        for name, numel in plain_parameter_sizes(self.model).items():  # nothing else is resized
            if name not in covered:
                terms.append(CostTerm(name, Dim(numel)))
        return terms

    # -- hooks -------------------------------------------------------------------------------------
    def root_module(self) -> nn.Module:
        return self.backbone

    def install_hooks(self, source: MaskSource, structures: set[str]) -> list[tuple[str, nn.Module, RemovableHandle]]:
        hooks: list[tuple[str, nn.Module, RemovableHandle]] = []
        p = self.prefix
        if "hidden" in structures:

            def embed_hook(module, args, output):
                m = source.mask("hidden")
                return output if m is None else source.multiply(output, m[0])

            def norm_hook(module, args, output):
                m = source.mask("hidden")
                return output if m is None else masked_layer_norm(module, args[0], m[0])

            for name in ("wte", "wpe"):
                table = getattr(self.backbone, name)
                hooks.append((f"{p}{name}", table, table.register_forward_hook(embed_hook)))
            norms = [f"h.{l}.{n}" for l in range(self.num_layers) for n in ("ln_1", "ln_2")] + ["ln_f"]
            for name in norms:
                norm = self.backbone.get_submodule(name)
                hooks.append((f"{p}{name}", norm, norm.register_forward_hook(norm_hook)))
        for l, layer in enumerate(self.layers):
            base = f"{p}h.{l}."
            hooks += install_block_hooks(
                source,
                structures,
                l,
                attn_out=(f"{base}attn.c_proj", layer.attn.c_proj),
                mlp_out=(f"{base}mlp.c_proj", layer.mlp.c_proj),
                head_units=self.num_heads,
                head_width=self.head_dim,
            )
        return hooks

    # -- export ------------------------------------------------------------------------------------
    def example_inputs(self, batch_size: int, seq_len: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        ids = torch.randint(0, self.vocab_size, (batch_size, seq_len), generator=generator)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    def outputs(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits, or for a bare ``GPT2Model`` the last hidden state at the kept dims.

        The gated model's hidden state is read at the hidden dims kept by the last :meth:`build_compact`
        (the pruned ones are 0 there and absent from the compact model).
        """
        out = model(**inputs)
        if hasattr(out, "logits"):
            return out.logits
        hidden = out.last_hidden_state
        if self.is_gated(model) and self._hidden_keep is not None:
            hidden = hidden[..., self._hidden_keep.to(hidden.device)]
        return hidden

    def build_compact(
        self, state: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]
    ) -> tuple[nn.Module, dict[str, Any]]:
        from lightning_prune.export.assemble import assign_weights, parameters_on_meta  # local: avoids a cycle

        p, d, hd, L = self.prefix, self.hidden_size, self.head_dim, self.num_layers
        surgery = CompactState(state, masks)
        dev, mask_of = surgery.device, surgery.mask
        hidden_m, h_keep = surgery.hidden(d)
        d_new = int(h_keep.numel())
        head_m, ffn_m = mask_of("heads", L, self.num_heads), mask_of("ffn", L, self.intermediate_size)
        attn_z, mlp_z = mask_of("attn_block", 1, L)[0], mask_of("mlp_block", 1, L)[0]
        empty = torch.zeros(0, dtype=torch.long, device=dev)

        new, get, put = surgery.new, surgery.get, surgery.put

        for name in ("wte", "wpe"):
            w = get(f"{p}{name}.weight")
            put(f"{p}{name}.weight", w[:, h_keep])
        norms = [f"{p}ln_f"]
        layer_shapes = []
        for l in range(L):
            base = f"{p}h.{l}."
            a_scale, m_scale = attn_z[l], mlp_z[l]
            heads = (head_m[l] != 0).nonzero().flatten() if a_scale != 0 else empty
            rows = (heads[:, None] * hd + torch.arange(hd, device=dev)).flatten()  # within q, k or v
            qkv = torch.cat([rows, rows + d, rows + 2 * d])
            # Conv1D weights are (in, out): columns are outputs
            w, b = get(f"{base}attn.c_attn.weight"), get(f"{base}attn.c_attn.bias")
            put(f"{base}attn.c_attn.weight", w[h_keep][:, qkv])
            put(f"{base}attn.c_attn.bias", None if b is None else b[qkv])
            w, b = get(f"{base}attn.c_proj.weight"), get(f"{base}attn.c_proj.bias")
            out_scale = (hidden_m * a_scale).to(w.dtype)
            w = w * head_m[l].repeat_interleave(hd).to(w.dtype)[:, None] * out_scale[None, :]
            put(f"{base}attn.c_proj.weight", w[rows][:, h_keep])
            put(f"{base}attn.c_proj.bias", None if b is None or a_scale == 0 else (b * out_scale)[h_keep])

            channels = (ffn_m[l] != 0).nonzero().flatten() if m_scale != 0 else empty
            w, b = get(f"{base}mlp.c_fc.weight"), get(f"{base}mlp.c_fc.bias")
            put(f"{base}mlp.c_fc.weight", w[h_keep][:, channels])
            put(f"{base}mlp.c_fc.bias", None if b is None else b[channels])
            w, b = get(f"{base}mlp.c_proj.weight"), get(f"{base}mlp.c_proj.bias")
            out_scale = (hidden_m * m_scale).to(w.dtype)
            w = w * ffn_m[l].to(w.dtype)[:, None] * out_scale[None, :]
            put(f"{base}mlp.c_proj.weight", w[channels][:, h_keep])
            put(f"{base}mlp.c_proj.bias", None if b is None or m_scale == 0 else (b * out_scale)[h_keep])
            norms += [f"{base}ln_1", f"{base}ln_2"]

            n_heads, n_channels = int(heads.numel()), int(channels.numel())
            layer_shapes.append(
                {
                    "num_attention_heads": n_heads,
                    "intermediate_size": n_channels,
                    "attention_output_bias": f"{base}attn.c_proj.bias" in new,
                    "ffn_output_bias": f"{base}mlp.c_proj.bias" in new,
                }
            )
            # A block with nothing left keeps only its output bias (the per-layer classes' _BiasOnly).
            if n_heads == 0:
                for key in (f"{base}attn.c_attn.weight", f"{base}attn.c_attn.bias", f"{base}attn.c_proj.weight"):
                    new.pop(key, None)
            if n_channels == 0:
                for key in (f"{base}mlp.c_fc.weight", f"{base}mlp.c_fc.bias", f"{base}mlp.c_proj.weight"):
                    new.pop(key, None)
        for norm in norms:
            for suffix in ("weight", "bias"):
                value = get(f"{norm}.{suffix}")
                put(f"{norm}.{suffix}", None if value is None else value[h_keep])
        if self.head is not None:
            w, b = get(f"{self.head_name}.weight"), get(f"{self.head_name}.bias")
            put(f"{self.head_name}.weight", w[:, h_keep])
            put(f"{self.head_name}.bias", b)
        surgery.finish()  # parameters no structure resizes, unchanged

        with parameters_on_meta():  # no memory and no random init: the sliced tensors become the parameters
            compact, uniform = self._instantiate(d_new, layer_shapes, build_per_layer_model)
        assign_weights(compact, new, state, self.model, tied=f"{self.head_name}.weight" if self.tied else None)
        self._hidden_keep = h_keep.cpu()
        info = {"layer_shapes": layer_shapes, "hidden_size": d_new, "uniform": uniform}
        return compact.to(dev).eval(), info  # eval mode, like from_pretrained (a fresh nn.Module trains)

    def _instantiate(
        self, d_new: int, layer_shapes: list[dict[str, Any]], build_per_layer_model
    ) -> tuple[nn.Module, bool]:
        """The standard class when ``GPT2Config`` can express the shapes, else the per-layer class."""
        first = layer_shapes[0]
        heads = first["num_attention_heads"]
        standard_ok = (
            all(s == first for s in layer_shapes)
            and heads > 0
            and first["intermediate_size"] > 0
            and first["attention_output_bias"]
            and first["ffn_output_bias"]
            and d_new % heads == 0
            and d_new // heads == self.head_dim  # GPT2Attention derives head_dim = n_embd / n_head
        )
        config = plain_config_dict(self.model.config)  # a dict: strict configs validate on every setattr
        config.update(n_embd=d_new)
        if standard_ok:
            config.update(n_head=heads, n_inner=first["intermediate_size"])
            with torch.device("cpu"):
                compact = type(self.model)(type(self.model.config).from_dict(config))
            return compact, True
        config.update(attention_head_size=self.head_dim)
        with torch.device("cpu"):
            compact = build_per_layer_model(self.family, type(self.model).__name__, config, layer_shapes)
        return compact, False
