"""Adapter for post-norm BERT-style encoders in transformers 5: BERT, MiniLM (a BERT) and RoBERTa.

Supported classes: ``BertModel`` / ``BertForSequenceClassification`` and ``RobertaModel`` /
``RobertaForSequenceClassification``. Structures and where their masks act (forward hooks only, so the
model keeps its classes and peft LoRA wrappers on ``query``/``key``/``value``/``dense`` keep working; a
hook on a LoRA-wrapped projection masks the merged ``(W + BA)`` path, which is what export folds):

* ``heads``: the input of ``attention.output.dense`` (the context), one unit per head.
* ``ffn``: the input of ``output.dense`` (the intermediate activation), one unit per channel.
* ``hidden``: the embedding dims shared by the whole model. Every residual write (``attention.output.dense``
  and ``output.dense`` outputs) is multiplied by the mask, and every LayerNorm (the embedding LayerNorm and
  the two post-norm LayerNorms of each layer) normalises over the **kept dims only** and multiplies its
  output by the mask (CoFi's ``CoFiLayerNorm``, Xia et al. 2022, "Structured Pruning Learns Compact and
  Accurate Models", §3.1). With a binary mask this is exactly the compact model's ``nn.LayerNorm`` on the
  sliced dims (same weights, same eps). The pooler (or RoBERTa's classification head) reads the masked
  final hidden state, so its input shrinks with ``hidden``; its output size stays.
* ``attn_block`` / ``mlp_block``: the outputs of ``attention.output.dense`` / ``output.dense`` (a whole
  block's write). The post-norm LayerNorm after a removed block stays: the layer computes ``LN(x)``.

Exports are standard ``Bert*``/``Roberta*`` models when the standard config can express them (uniform
FFN pruning; ``hidden_size / num_attention_heads`` must stay the original head size and the pooler must
stay square), and per-layer classes (``modeling_bert_template.py.txt``) otherwise.
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
BERT_FAMILIES: dict[str, str] = {"bert": "Bert", "roberta": "Roberta"}


def _per_layer_config(config: dict[str, Any], layer_shapes: list[dict[str, Any]]) -> dict[str, Any]:
    """BertSelfAttention derives head size = hidden_size / num_attention_heads and rejects a remainder: one nominal
    head always divides. The template sets each layer's heads and head size (config.attention_head_size) from
    layer_shapes."""
    cfg = without_export_keys(config)
    for key in ("attention_head_size", "pooler_size"):
        if key not in cfg:
            raise ValueError(f"A per-layer BERT config needs `{key}`; the adapter must pass it.")
    cfg["num_attention_heads"] = 1
    cfg["intermediate_size"] = max(max(s["intermediate_size"] for s in layer_shapes), 1)
    return cfg


register_per_layer_families(
    BERT_FAMILIES,
    "modeling_bert_template.py.txt",
    ("ForSequenceClassification", "Model"),
    _per_layer_config,
)

_REQUIRED_CONFIG = ("hidden_size", "num_attention_heads", "num_hidden_layers", "intermediate_size", "vocab_size")
_SUPPORTED_KINDS = ("ForSequenceClassification", "Model")


def masked_layer_norm(module: nn.LayerNorm, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """LayerNorm of ``x`` over the dims where ``mask != 0``, multiplied by ``mask`` (CoFi, Xia et al. 2022).

    Mean and variance are taken over the kept dims only (whatever ``x`` holds in the pruned ones), so with
    a binary mask the kept dims equal ``nn.LayerNorm`` applied to ``x[..., kept]`` with ``weight[kept]``
    and ``bias[kept]``, and the pruned dims are 0. A soft (training) mask scales the kept outputs, as
    CoFi's ``hidden_z`` multiplication after ``CoFiLayerNorm`` does.

    Args:
        module: the ``nn.LayerNorm`` whose weight, bias and eps are used (normalising the last dim).
        x: its input, ``(..., d)``.
        mask: the hidden mask, ``(d,)``.
    """
    dtype = x.dtype
    xf = x.float()
    m = mask.to(device=x.device, dtype=torch.float32)
    kept = (m != 0).float()
    count = kept.sum().clamp_min(1.0)
    mean = (xf * kept).sum(-1, keepdim=True) / count
    centred = (xf - mean) * kept  # (..., d), 0 in pruned dims
    var = centred.pow(2).sum(-1, keepdim=True) / count
    y = centred * torch.rsqrt(var + module.eps)
    if module.weight is not None:
        y = y * module.weight.float()
    if module.bias is not None:
        y = y + module.bias.float()
    return (y * m).to(dtype)


class BertAdapter(ModelAdapter):
    """Adapter for ``Bert*`` / ``Roberta*`` ``Model`` and ``ForSequenceClassification`` (post-norm encoders).

    Args:
        model: the Hugging Face model (with any peft LoRA layers already injected).

    Raises:
        UnsupportedModelError: the model is a decoder / has cross-attention, is quantized, or is a head
            class the adapter cannot export (e.g. ``BertForMaskedLM``).
    """

    model_types = tuple(BERT_FAMILIES)

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        return getattr(getattr(model, "config", None), "model_type", None) in BERT_FAMILIES

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        config = model.config
        missing = [k for k in _REQUIRED_CONFIG if getattr(config, k, None) is None]
        if missing:
            raise UnsupportedModelError(f"The model's config lacks {missing}; the BERT adapter needs them.")
        cls_name = type(model).__name__
        prefix = BERT_FAMILIES.get(getattr(config, "model_type", None), "")
        names = {cls.__name__ for cls in type(model).__mro__}  # BertModel or a subclass; not BertLMHeadModel
        self.kind = next((k for k in _SUPPORTED_KINDS if f"{prefix}{k}" in names), None)
        if self.kind is None:
            raise UnsupportedModelError(
                f"The BERT adapter supports *Model and *ForSequenceClassification, not {cls_name}. Prune the "
                "backbone (e.g. model.bert) or a sequence-classification model and put your head on the export."
            )
        if getattr(config, "is_decoder", False) or getattr(config, "add_cross_attention", False):
            raise UnsupportedModelError(
                "The BERT adapter supports encoders only (config.is_decoder=False, add_cross_attention=False), got "
                f"is_decoder={config.is_decoder}, add_cross_attention={config.add_cross_attention}."
            )
        self.family = config.model_type
        self.backbone = model.base_model  # BertModel / RobertaModel (the model itself when given one)
        self.prefix = "" if self.backbone is model else f"{model.base_model_prefix}."
        self.layers = self.backbone.encoder.layer
        self.num_layers = len(self.layers)
        self.hidden_size = config.hidden_size
        self.num_heads = config.num_attention_heads
        if self.hidden_size % self.num_heads:
            raise UnsupportedModelError(
                f"hidden_size={self.hidden_size} is not a multiple of num_attention_heads={self.num_heads}."
            )
        self.head_dim = self.hidden_size // self.num_heads
        self.intermediate_size = config.intermediate_size
        self.vocab_size = config.vocab_size
        layer0 = self.layers[0]
        for path in (
            "attention.self.query",
            "attention.self.key",
            "attention.self.value",
            "attention.output.dense",
            "intermediate.dense",
            "output.dense",
        ):
            if not isinstance(base_layer(layer0.get_submodule(path)), nn.Linear):
                raise UnsupportedModelError(
                    f"Expected `{path}` to be an nn.Linear in {type(layer0).__name__} (is the model quantized?). "
                    "Pruning a quantized base is not supported: prune in bf16/fp32, then quantize the export."
                )
        # Linear layers that read the final hidden state (their input shrinks with `hidden`, their output stays).
        self.readouts: dict[str, nn.Module] = {}
        if self.backbone.pooler is not None:
            self.readouts[f"{self.prefix}pooler.dense"] = self.backbone.pooler.dense
        classifier = getattr(model, "classifier", None) if self.kind == "ForSequenceClassification" else None
        if classifier is not None and hasattr(classifier, "dense") and hasattr(classifier, "out_proj"):
            self.readouts["classifier.dense"] = classifier.dense  # RobertaClassificationHead
        elif classifier is not None and not isinstance(base_layer(classifier), nn.Linear):
            raise UnsupportedModelError(f"Unexpected classifier {type(classifier).__name__} in {cls_name}.")
        sizes = {base_layer(m).out_features for m in self.readouts.values()}
        if len(sizes) > 1:
            raise UnsupportedModelError(
                f"The pooler and the classifier read the hidden state into different sizes {sizes}."
            )
        self.pooler_size = sizes.pop() if sizes else self.hidden_size
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

        def bias_of(module: nn.Module) -> bool:
            return base_layer(module).bias is not None

        emb = self.backbone.embeddings
        for name in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
            module = getattr(emb, name, None)
            if module is not None:
                terms.append(CostTerm(f"embeddings.{name}", out=hidden, inp=Dim(base_layer(module).num_embeddings)))
                covered.add(f"{p}embeddings.{name}.weight")
        norms = [("embeddings.LayerNorm", emb.LayerNorm)]
        for l, layer in enumerate(self.layers):
            heads = Dim(nh * hd, "heads", l, hd)
            ffn = Dim(self.intermediate_size, "ffn", l, 1)
            a_gate, m_gate = (("attn_block", 0, l),), (("mlp_block", 0, l),)
            base = f"encoder.layer.{l}."
            linears = (
                ("attention.self.query", heads, hidden, a_gate),
                ("attention.self.key", heads, hidden, a_gate),
                ("attention.self.value", heads, hidden, a_gate),
                ("attention.output.dense", hidden, heads, a_gate),
                ("intermediate.dense", ffn, hidden, m_gate),
                ("output.dense", hidden, ffn, m_gate),
            )
            for path, out, inp, gate in linears:
                module = layer.get_submodule(path)
                terms.append(CostTerm(f"{base}{path}", out, inp, gate, bias_of(module), True, True, 2.0))
                covered.update({f"{p}{base}{path}.weight", f"{p}{base}{path}.bias"})
            # attention scores and weighted values: 4 · T · (query dims) FLOPs per token, no parameters
            scores = CostTerm(f"{base}attention.scores", heads, Dim(flops_seq_len), a_gate, False, True, False, 4.0)
            terms.append(scores)
            norms += [
                (f"{base}attention.output.LayerNorm", layer.attention.output.LayerNorm),
                (f"{base}output.LayerNorm", layer.output.LayerNorm),
            ]
        for name, norm in norms:
            terms.append(CostTerm(name, hidden, bias=norm.bias is not None, params=norm.weight is not None))
            covered.update({f"{p}{name}.weight", f"{p}{name}.bias"})
        for path, module in self.readouts.items():
            lin = base_layer(module)
            terms.append(CostTerm(path, Dim(lin.out_features), hidden, bias=lin.bias is not None, flops_per_param=2.0))
            covered.update({f"{path}.weight", f"{path}.bias"})
        # Everything else (the classifier after the pooler, RoBERTa's out_proj, ...) keeps its size.
        for name, numel in plain_parameter_sizes(self.model).items():
            if name not in covered:
                terms.append(CostTerm(name, Dim(numel)))
        return terms

    # -- hooks -------------------------------------------------------------------------------------
    def root_module(self) -> nn.Module:
        return self.backbone

    def install_hooks(self, source: MaskSource, structures: set[str]) -> list[tuple[str, nn.Module, RemovableHandle]]:
        hooks: list[tuple[str, nn.Module, RemovableHandle]] = []
        p = self.prefix
        nh, hd = self.num_heads, self.head_dim

        def add(path: str, module: nn.Module, handle: RemovableHandle) -> None:
            hooks.append((path, module, handle))

        if "hidden" in structures:

            def norm_hook(module, args, output):
                m = source.mask("hidden")
                return output if m is None else masked_layer_norm(module, args[0], m[0])

            norms = [(f"{p}embeddings.LayerNorm", self.backbone.embeddings.LayerNorm)]
            for l, layer in enumerate(self.layers):
                norms += [
                    (f"{p}encoder.layer.{l}.attention.output.LayerNorm", layer.attention.output.LayerNorm),
                    (f"{p}encoder.layer.{l}.output.LayerNorm", layer.output.LayerNorm),
                ]
            for path, norm in norms:
                add(path, norm, norm.register_forward_hook(norm_hook))

        for l, layer in enumerate(self.layers):
            base = f"{p}encoder.layer.{l}."
            hooks += install_block_hooks(
                source,
                structures,
                l,
                attn_out=(f"{base}attention.output.dense", layer.attention.output.dense),
                mlp_out=(f"{base}output.dense", layer.output.dense),
                head_units=nh,
                head_width=hd,
            )
        return hooks

    # -- export ------------------------------------------------------------------------------------
    def example_inputs(self, batch_size: int, seq_len: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        ids = torch.randint(0, self.vocab_size, (batch_size, seq_len), generator=generator)
        attention_mask = torch.ones_like(ids)
        attention_mask[-1, seq_len - seq_len // 4 :] = 0  # some padding in the last row
        inputs = {"input_ids": ids, "attention_mask": attention_mask}
        type_vocab = getattr(self.model.config, "type_vocab_size", 0) or 0
        if type_vocab > 1:
            inputs["token_type_ids"] = torch.randint(0, type_vocab, (batch_size, seq_len), generator=generator)
        return inputs

    def outputs(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits, or for a bare encoder the last hidden state (kept dims only) and the pooler output.

        The gated model's hidden state is read at the hidden dims kept by the last :meth:`build_compact`
        (the pruned ones are 0 there and absent from the compact model).
        """
        out = model(**inputs)
        if hasattr(out, "logits"):
            return out.logits
        hidden = out.last_hidden_state
        if self.is_gated(model) and self._hidden_keep is not None:
            hidden = hidden[..., self._hidden_keep.to(hidden.device)]
        parts = [hidden.flatten(1)]
        if getattr(out, "pooler_output", None) is not None:
            parts.append(out.pooler_output)
        return torch.cat(parts, dim=-1)

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

        new, take, get, put = surgery.new, surgery.taken, surgery.get, surgery.put

        for name in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
            w = get(f"{p}embeddings.{name}.weight")
            put(f"{p}embeddings.{name}.weight", None if w is None else w[:, h_keep])
        norms = [f"{p}embeddings.LayerNorm"]

        layer_shapes = []
        for l in range(L):
            base = f"{p}encoder.layer.{l}."
            a_scale, m_scale = attn_z[l], mlp_z[l]
            heads = (head_m[l] != 0).nonzero().flatten() if a_scale != 0 else empty
            rows = (heads[:, None] * hd + torch.arange(hd, device=dev)).flatten()
            for name in ("query", "key", "value"):
                w, b = get(f"{base}attention.self.{name}.weight"), get(f"{base}attention.self.{name}.bias")
                put(f"{base}attention.self.{name}.weight", w[rows][:, h_keep])
                put(f"{base}attention.self.{name}.bias", None if b is None else b[rows])
            # fold the head mask into the output projection's columns, block gate and hidden mask into its rows
            w, b = get(f"{base}attention.output.dense.weight"), get(f"{base}attention.output.dense.bias")
            out_scale = (hidden_m * a_scale).to(w.dtype)
            w = w * head_m[l].repeat_interleave(hd).to(w.dtype)[None, :] * out_scale[:, None]
            put(f"{base}attention.output.dense.weight", w[h_keep][:, rows])
            put(f"{base}attention.output.dense.bias", None if b is None or a_scale == 0 else (b * out_scale)[h_keep])

            channels = (ffn_m[l] != 0).nonzero().flatten() if m_scale != 0 else empty
            w, b = get(f"{base}intermediate.dense.weight"), get(f"{base}intermediate.dense.bias")
            put(f"{base}intermediate.dense.weight", w[channels][:, h_keep])
            put(f"{base}intermediate.dense.bias", None if b is None else b[channels])
            w, b = get(f"{base}output.dense.weight"), get(f"{base}output.dense.bias")
            out_scale = (hidden_m * m_scale).to(w.dtype)
            w = w * ffn_m[l].to(w.dtype)[None, :] * out_scale[:, None]
            put(f"{base}output.dense.weight", w[h_keep][:, channels])
            put(f"{base}output.dense.bias", None if b is None or m_scale == 0 else (b * out_scale)[h_keep])
            norms += [f"{base}attention.output.LayerNorm", f"{base}output.LayerNorm"]

            n_heads, n_channels = int(heads.numel()), int(channels.numel())
            shape = {
                "num_attention_heads": n_heads,
                "intermediate_size": n_channels,
                "attention_output_bias": f"{base}attention.output.dense.bias" in new,
                "ffn_output_bias": f"{base}output.dense.bias" in new,
            }
            layer_shapes.append(shape)
            # A block with nothing left keeps only its output bias (the per-layer classes' _BiasOnly).
            if n_heads == 0:
                for key in [k for k in new if k.startswith(f"{base}attention.self.")]:
                    del new[key]
                new.pop(f"{base}attention.output.dense.weight", None)
            if n_channels == 0:
                new.pop(f"{base}intermediate.dense.weight", None)
                new.pop(f"{base}intermediate.dense.bias", None)
                new.pop(f"{base}output.dense.weight", None)
        for norm in norms:
            for suffix in ("weight", "bias"):
                value = get(f"{norm}.{suffix}")
                put(f"{norm}.{suffix}", None if value is None else value[h_keep])
        for path in self.readouts:
            w = get(f"{path}.weight")
            put(f"{path}.weight", w[:, h_keep])
            take.add(f"{path}.bias")  # copied unchanged below
            put(f"{path}.bias", state.get(f"{path}.bias"))
        surgery.finish()  # parameters no structure resizes, unchanged

        with parameters_on_meta():  # no memory and no random init: the sliced tensors become the parameters
            compact, uniform = self._instantiate(d_new, layer_shapes, build_per_layer_model)
        assign_weights(compact, new, state, self.model)
        self._hidden_keep = h_keep.cpu()
        info = {"layer_shapes": layer_shapes, "hidden_size": d_new, "uniform": uniform}
        return compact.to(dev).eval(), info  # eval mode, like from_pretrained (a fresh nn.Module trains)

    def _instantiate(
        self, d_new: int, layer_shapes: list[dict[str, Any]], build_per_layer_model
    ) -> tuple[nn.Module, bool]:
        """The standard class when its config can express the shapes, else the per-layer class."""
        first = layer_shapes[0]
        heads = first["num_attention_heads"]
        standard_ok = (
            all(s == first for s in layer_shapes)
            and heads > 0
            and first["intermediate_size"] > 0
            and first["attention_output_bias"]
            and first["ffn_output_bias"]
            and d_new % heads == 0
            and d_new // heads == self.head_dim  # BERT derives head size = hidden_size / num_attention_heads
            and (not self.readouts or self.pooler_size == d_new)  # the stock pooler / head dense is square
        )
        config = plain_config_dict(self.model.config)  # a dict: strict configs validate on every setattr
        config.update(hidden_size=d_new)
        if standard_ok:
            config.update(num_attention_heads=heads, intermediate_size=first["intermediate_size"])
            standard = type(self.model.config).from_dict(config)
            with torch.device("cpu"):
                if self.kind == "Model":
                    compact = type(self.model)(standard, add_pooling_layer=self.backbone.pooler is not None)
                else:
                    compact = type(self.model)(standard)
            return compact, True
        config.update(
            attention_head_size=self.head_dim,
            pooler_size=self.pooler_size,
            add_pooling_layer=self.backbone.pooler is not None,
        )
        with torch.device("cpu"):
            compact = build_per_layer_model(self.family, type(self.model).__name__, config, layer_shapes)
        return compact, False
