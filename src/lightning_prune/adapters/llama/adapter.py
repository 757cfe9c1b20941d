"""Adapter for the Llama family in transformers 5: Llama, Mistral, Qwen2 and Qwen3 layouts.

Structures and where their masks act (all through forward hooks, so peft LoRA wrappers keep working;
a hook on a LoRA-wrapped projection masks the merged ``(W + BA)`` path, which is what export folds):

* ``heads``: the input of ``o_proj``, one unit per **KV group** (a key/value head and the
  ``n_rep = num_attention_heads / num_key_value_heads`` query heads that read it). Removing whole
  groups keeps ``n_rep`` unchanged, so every export is a valid GQA config (for plain multi-head
  attention a group is one head).
* ``ffn``: the input of ``down_proj`` (equivalent to masking ``act(gate) · up``).
* ``hidden``: the embedding output and every residual write (``o_proj`` and ``down_proj`` outputs).
  RMSNorms then normalise over the kept dims only (CoFi/Sheared-LLaMA): hooks compute
  ``RMSNorm(c·x) / c`` with ``c = sqrt(d / Σm)``, which equals the compact model's norm (same weights,
  same eps) exactly.
* ``attn_block`` / ``mlp_block``: the outputs of ``o_proj`` / ``down_proj`` (a whole block's write).
* ``qk_dims`` / ``v_dims``: dims inside every head of a layer (ATP's K/Q mask over RoPE pairs and V mask), see
  :mod:`lightning_prune.adapters.head_dims`. Their exports always use the per-layer classes.
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
    output_tensor,
    plain_parameter_sizes,
)
from lightning_prune.adapters.head_dims import install_head_dim_hooks, qk_dim_index
from lightning_prune.adapters.hooks import install_block_hooks
from lightning_prune.adapters.quantization import plain_config_dict
from lightning_prune.cost import CostTerm, Dim
from lightning_prune.errors import UnsupportedModelError
from lightning_prune.export.per_layer import (
    build_per_layer_model,
    register_per_layer_families,
    without_export_keys,
)
from lightning_prune.ops import set_kept_count
from lightning_prune.structures import StructureSpec

#: model_type -> (transformers module name, class-name prefix)
LLAMA_FAMILIES: dict[str, str] = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2", "qwen3": "Qwen3"}


def _per_layer_config(config: dict[str, Any], layer_shapes: list[dict[str, Any]]) -> dict[str, Any]:
    """Nominal sizes of the per-layer config (the per-layer shapes override them): one head passes every family's
    config checks (LlamaConfig wants hidden_size % num_attention_heads == 0); head_dim is explicit in the config."""
    cfg = without_export_keys(config)
    cfg["num_attention_heads"] = 1
    cfg["num_key_value_heads"] = 1
    cfg["intermediate_size"] = max(max(s["intermediate_size"] for s in layer_shapes), 1)
    return cfg


register_per_layer_families(
    LLAMA_FAMILIES,
    "modeling_template.py.txt",
    ("ForCausalLM", "ForSequenceClassification", "ForTokenClassification", "ForQuestionAnswering", "Model"),
    _per_layer_config,
)

_REQUIRED_CONFIG = ("hidden_size", "num_attention_heads", "num_hidden_layers", "intermediate_size", "vocab_size")

#: Head classes (class-name suffixes after the family prefix) the adapter exports, with the linear head that reads
#: the final hidden state (``None``: a bare backbone). Every one has a per-layer class in modeling_template.py.txt.
SUPPORTED_KINDS: dict[str, str | None] = {
    "ForCausalLM": "lm_head",
    "ForSequenceClassification": "score",
    "ForTokenClassification": "score",
    "ForQuestionAnswering": "qa_outputs",
    "Model": None,
}


def model_kind(model: nn.Module, prefix: str) -> str | None:
    """The supported kind of ``model`` (``"ForCausalLM"`` for ``LlamaForCausalLM`` or a subclass), else ``None``."""
    for cls in type(model).__mro__:
        for kind in SUPPORTED_KINDS:
            if cls.__name__ == f"{prefix}{kind}":
                return kind
    return None


_PROJECTIONS = {"self_attn": ("q_proj", "k_proj", "v_proj", "o_proj"), "mlp": ("gate_proj", "up_proj", "down_proj")}


def _is_projection(key: str, block: str) -> bool:
    """Whether ``key`` (relative to a block) belongs to one of the block's projections."""
    return key.split(".")[0] in _PROJECTIONS[block]


class LlamaAdapter(ModelAdapter):
    """Adapter for the Llama family's ``*Model``, ``*ForCausalLM``, ``*ForSequenceClassification``,
    ``*ForTokenClassification`` and ``*ForQuestionAnswering`` (:data:`SUPPORTED_KINDS`).

    Raises:
        UnsupportedModelError: another class with a Llama-family config, a config the adapter cannot read, or
            projections that are not ``nn.Linear`` (a quantized model).
    """

    model_types = tuple(LLAMA_FAMILIES)

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        return getattr(getattr(model, "config", None), "model_type", None) in LLAMA_FAMILIES

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        config = model.config
        missing = [k for k in _REQUIRED_CONFIG if getattr(config, k, None) is None]
        if missing:
            raise UnsupportedModelError(f"The model's config lacks {missing}; the Llama adapter needs them.")
        self.family = config.model_type
        class_prefix = LLAMA_FAMILIES[self.family]
        self.kind = model_kind(model, class_prefix)
        if self.kind is None:
            supported = ", ".join(f"{class_prefix}{kind}" for kind in SUPPORTED_KINDS)
            raise UnsupportedModelError(
                f"The llama adapter supports {supported} (model_type={self.family!r}), not {type(model).__name__}. "
                "Prune one of those (e.g. the backbone, or the causal LM) and put your own head on the export."
            )
        self.backbone = model.base_model  # LlamaModel (the model itself when given a bare LlamaModel)
        self.prefix = "" if self.backbone is model else f"{model.base_model_prefix}."
        self.layers = self.backbone.layers
        self.num_layers = len(self.layers)
        self.hidden_size = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = getattr(config, "num_key_value_heads", None) or self.num_heads
        if self.num_heads % self.num_kv_heads:
            raise UnsupportedModelError(
                f"num_attention_heads={self.num_heads} is not a multiple of num_key_value_heads={self.num_kv_heads}."
            )
        self.n_rep = self.num_heads // self.num_kv_heads
        self.head_dim = getattr(config, "head_dim", None) or self.hidden_size // self.num_heads
        #: Qwen3-style RMSNorms over head_dim on q and k (the qk_dims hooks then act at the norms)
        self.qk_norms = getattr(self.layers[0].self_attn, "q_norm", None) is not None
        self.intermediate_size = config.intermediate_size
        self.vocab_size = config.vocab_size
        attn0, mlp0 = self.layers[0].self_attn, self.layers[0].mlp
        for owner, names in (
            (attn0, ("q_proj", "k_proj", "v_proj", "o_proj")),
            (mlp0, ("gate_proj", "up_proj", "down_proj")),
        ):
            for n in names:
                if not isinstance(base_layer(getattr(owner, n, None) or nn.Identity()), nn.Linear):
                    raise UnsupportedModelError(
                        f"Expected `{n}` to be an nn.Linear in {type(owner).__name__} (is the model quantized?). "
                        "Pruning a quantized base is not supported: prune in bf16/fp32, then quantize the export."
                    )
        if base_layer(attn0.q_proj).out_features != self.num_heads * self.head_dim:
            raise UnsupportedModelError(
                f"q_proj has {base_layer(attn0.q_proj).out_features} outputs, expected "
                f"num_attention_heads*head_dim = {self.num_heads * self.head_dim}; "
                "the config does not match the weights."
            )
        self.head_name = SUPPORTED_KINDS[self.kind]
        self.head = None if self.head_name is None else getattr(model, self.head_name)
        if self.head is not None and not isinstance(base_layer(self.head), nn.Linear):
            raise UnsupportedModelError(
                f"Expected `{self.head_name}` of {type(model).__name__} to be an nn.Linear, got "
                f"{type(base_layer(self.head)).__name__}."
            )
        self._hidden_keep: torch.Tensor | None = None  # kept hidden dims of the last build_compact
        self.tied = (
            bool(getattr(config, "tie_word_embeddings", False))
            and self.head is not None
            and (base_layer(self.head).weight is base_layer(self.backbone.embed_tokens).weight)
        )

    # -- structures and costs ----------------------------------------------------------------------
    def structures(self) -> dict[str, StructureSpec]:
        L = self.num_layers
        return {  # heads are KV groups: a valid GQA config needs whole groups
            **block_structures(L, self.num_kv_heads, self.intermediate_size, self.hidden_size),
            "qk_dims": StructureSpec("qk_dims", L, self.head_dim // 2),  # one unit per RoPE pair
            "v_dims": StructureSpec("v_dims", L, self.head_dim),
        }

    def _has_bias(self, module: nn.Module) -> bool:
        return base_layer(module).bias is not None

    def cost_terms(self, flops_seq_len: int) -> list[CostTerm]:
        d, hd, nh, nkv = self.hidden_size, self.head_dim, self.num_heads, self.num_kv_heads
        hidden = Dim(d, "hidden", 0, 1)
        terms: list[CostTerm] = []
        covered: set[str] = set()
        embed = base_layer(self.backbone.embed_tokens)
        terms.append(CostTerm("embed_tokens", out=hidden, inp=Dim(embed.num_embeddings)))
        covered.add(f"{self.prefix}embed_tokens.weight")
        for l, layer in enumerate(self.layers):
            attn, mlp = layer.self_attn, layer.mlp
            qk, v = (("qk_dims", l, hd // 2),), (("v_dims", l, hd),)  # fractions of every head's dims
            q = Dim(nh * hd, "heads", l, self.n_rep * hd, scaled_by=qk)
            k = Dim(nkv * hd, "heads", l, hd, scaled_by=qk)
            kv = Dim(nkv * hd, "heads", l, hd, scaled_by=v)
            o_in = Dim(nh * hd, "heads", l, self.n_rep * hd, scaled_by=v)
            ffn = Dim(self.intermediate_size, "ffn", l, 1)
            a_gate = (("attn_block", 0, l),)
            m_gate = (("mlp_block", 0, l),)
            base = f"{self.prefix}layers.{l}."
            for name, out, inp in (
                ("q_proj", q, hidden),
                ("k_proj", k, hidden),
                ("v_proj", kv, hidden),
                ("o_proj", hidden, o_in),
            ):
                mod = getattr(attn, name)
                terms.append(
                    CostTerm(f"layers.{l}.self_attn.{name}", out, inp, a_gate, self._has_bias(mod), True, True, 2.0)
                )
                covered.update({f"{base}self_attn.{name}.weight", f"{base}self_attn.{name}.bias"})
            # attention scores (2 · T · query/key dims) and weighted values (2 · T · value dims) per token, no params
            terms.append(
                CostTerm(f"layers.{l}.self_attn.scores", q, Dim(flops_seq_len), a_gate, False, True, False, 2.0)
            )
            terms.append(
                CostTerm(f"layers.{l}.self_attn.values", o_in, Dim(flops_seq_len), a_gate, False, True, False, 2.0)
            )
            if self.qk_norms:  # Qwen3's q/k RMSNorms over head_dim keep the kept q/k dims only
                for norm in ("q_norm", "k_norm"):
                    terms.append(CostTerm(f"layers.{l}.self_attn.{norm}", Dim(hd, "qk_dims", l, 2)))
                    covered.add(f"{base}self_attn.{norm}.weight")
            for name, out, inp in (("gate_proj", ffn, hidden), ("up_proj", ffn, hidden), ("down_proj", hidden, ffn)):
                mod = getattr(mlp, name)
                terms.append(CostTerm(f"layers.{l}.mlp.{name}", out, inp, m_gate, self._has_bias(mod), True, True, 2.0))
                covered.update({f"{base}mlp.{name}.weight", f"{base}mlp.{name}.bias"})
            for norm in ("input_layernorm", "post_attention_layernorm"):
                terms.append(CostTerm(f"layers.{l}.{norm}", hidden))
                covered.add(f"{base}{norm}.weight")
        terms.append(CostTerm("norm", hidden))
        covered.add(f"{self.prefix}norm.weight")
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
        # Anything else (Qwen3's q_norm/k_norm over head_dim, ...) is not resized by any structure.
        for name, numel in plain_parameter_sizes(self.model).items():
            if name not in covered:
                terms.append(CostTerm(name, Dim(numel)))
        return terms

    def uniform_masks(
        self, masks: dict[str, torch.Tensor], scores: dict[str, torch.Tensor], fixed: set[str]
    ) -> dict[str, torch.Tensor]:
        """``LlamaConfig`` insists that ``hidden_size`` is a multiple of ``num_attention_heads``: a uniform export
        with a pruned hidden size keeps the nearest such multiple (the best-scored dims), so that it is a standard
        checkpoint ``from_pretrained`` loads. Moves the hidden count by at most half the kept heads."""
        hidden = masks.get("hidden")
        if hidden is None or "hidden" in fixed:
            return masks
        heads = masks.get("heads")
        q = int(heads[0].count_nonzero()) * self.n_rep if heads is not None else self.num_heads
        kept = int(hidden[0].count_nonzero())
        if q == 0 or kept % q == 0 or self._config_accepts(hidden_size=kept, num_attention_heads=q):
            return masks
        wanted = min(max(q, round(kept / q) * q), self.hidden_size // q * q)
        return {**masks, "hidden": set_kept_count(hidden[0], scores["hidden"][0], wanted)[None]}

    def _config_accepts(self, **values: int) -> bool:
        """Whether the family's config class validates with ``values`` (Mistral/Qwen accept any hidden size)."""
        return _standard_config(type(self.model.config), {**plain_config_dict(self.model.config), **values}) is not None

    # -- hooks -------------------------------------------------------------------------------------
    def root_module(self) -> nn.Module:
        return self.backbone

    def install_hooks(self, source: MaskSource, structures: set[str]) -> list[tuple[str, nn.Module, RemovableHandle]]:
        hooks: list[tuple[str, nn.Module, RemovableHandle]] = []
        p = self.prefix
        nkv, width = self.num_kv_heads, self.n_rep * self.head_dim
        d = self.hidden_size

        def add(path: str, module: nn.Module, handle: RemovableHandle) -> None:
            hooks.append((path, module, handle))

        if "hidden" in structures:
            # The residual stream is masked where it is *read*: every norm's input is m ⊙ r. Since r is a sum
            # (embedding + block writes), this is the same function as masking the embedding and every write, but
            # the masked tensor is the norm's input, which the norm saves anyway (no extra activation memory).

            def norm_scale() -> torch.Tensor | None:
                m = source.mask("hidden")
                return None if m is None else torch.sqrt(d / m[0].sum().clamp_min(1e-6))

            def norm_input_mask() -> torch.Tensor | None:
                scale = source.cached("hidden_norm_scale")
                return None if scale is None else source.mask("hidden")[0] * scale

            source.derive("hidden_norm_scale", norm_scale)
            source.derive("hidden_norm_input_mask", norm_input_mask)

            # RMSNorm(c·m⊙x)/c with c = sqrt(d/Σm) is the RMS norm over the kept dims only (0 elsewhere), which
            # is exactly what the compact model's norm computes with the same weights and eps.
            def norm_pre_hook(module, args):
                factor = source.cached("hidden_norm_input_mask")
                if factor is None:
                    return None
                return (source.multiply(args[0], factor),) + tuple(args[1:])

            def norm_post_hook(module, args, output):
                scale = source.cached("hidden_norm_scale")
                return output if scale is None else source.multiply(output, 1.0 / scale)

            norms = [(f"{p}norm", self.backbone.norm)]
            for l, layer in enumerate(self.layers):
                norms += [
                    (f"{p}layers.{l}.input_layernorm", layer.input_layernorm),
                    (f"{p}layers.{l}.post_attention_layernorm", layer.post_attention_layernorm),
                ]
            for path, norm in norms:
                add(path, norm, norm.register_forward_pre_hook(norm_pre_hook))
                add(path, norm, norm.register_forward_hook(norm_post_hook))

        for l, layer in enumerate(self.layers):
            base = f"{p}layers.{l}."
            hooks += install_head_dim_hooks(source, structures, l, f"{base}self_attn", layer.self_attn, self.head_dim)
            hooks += install_block_hooks(
                source,
                structures,
                l,
                attn_out=(f"{base}self_attn.o_proj", layer.self_attn.o_proj),
                mlp_out=(f"{base}mlp.down_proj", layer.mlp.down_proj),
                head_units=nkv,
                head_width=width,
                hidden_on_writes=False,  # masked at the norms' inputs instead (above)
            )
        return hooks

    # -- export ------------------------------------------------------------------------------------
    def example_inputs(self, batch_size: int, seq_len: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        ids = torch.randint(0, self.vocab_size, (batch_size, seq_len), generator=generator)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    def outputs(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """What the head computes (:func:`output_tensor`); for a bare backbone the last hidden state, read on the gated
        model at the hidden dims kept by the last :meth:`build_compact` (the pruned ones are 0 there and absent from
        the compact model)."""
        out = output_tensor(model(**inputs))
        if self.head is None and self.is_gated(model) and self._hidden_keep is not None:
            out = out[..., self._hidden_keep.to(out.device)]
        return out

    def build_compact(
        self, state: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]
    ) -> tuple[nn.Module, dict[str, Any]]:
        from lightning_prune.export.assemble import assign_weights, parameters_on_meta  # local: avoids a cycle

        p, d, hd, nrep = self.prefix, self.hidden_size, self.head_dim, self.n_rep
        nh, nkv, L = self.num_heads, self.num_kv_heads, self.num_layers
        surgery = CompactState(state, masks)
        mask_of = surgery.mask
        hidden_m, h_keep = surgery.hidden(d)
        d_new = int(h_keep.numel())
        head_m, ffn_m = mask_of("heads", L, nkv), mask_of("ffn", L, self.intermediate_size)
        attn_z, mlp_z = mask_of("attn_block", 1, L)[0], mask_of("mlp_block", 1, L)[0]
        qk_m, v_m = mask_of("qk_dims", L, hd // 2), mask_of("v_dims", L, hd)
        head_dims = "qk_dims" in masks or "v_dims" in masks
        if self.qk_norms and "qk_dims" in masks and not bool(((qk_m == 0) | (qk_m == 1)).all()):
            raise ValueError(
                "The qk_dims mask must be binary at export on models with q/k RMSNorms (Qwen3): the norms run over "
                "the kept dims, which a scaled mask cannot be folded through. Use a binary gate kind (L0Config, "
                "ATPConfig, STEConfig) for qk_dims on this model."
            )

        new, take, get, put = surgery.new, surgery.taken, surgery.get, surgery.put

        embed = get(f"{p}embed_tokens.weight")
        put(f"{p}embed_tokens.weight", (embed * hidden_m.to(embed))[:, h_keep])

        layer_shapes = []
        for l in range(L):
            base = f"{p}layers.{l}."
            a_scale, m_scale = attn_z[l], mlp_z[l]
            groups = (head_m[l] != 0).nonzero().flatten() if a_scale != 0 else head_m.new_zeros(0, dtype=torch.long)
            heads = (groups[:, None] * nrep + torch.arange(nrep, device=groups.device)).flatten()  # kept query heads
            pairs = (qk_m[l] != 0).nonzero().flatten()
            qk_idx, v_idx = qk_dim_index(pairs, hd), (v_m[l] != 0).nonzero().flatten()  # kept dims of a head
            rows = {
                "q_proj": (heads[:, None] * hd + qk_idx).flatten(),
                "k_proj": (groups[:, None] * hd + qk_idx).flatten(),
                "v_proj": (groups[:, None] * hd + v_idx).flatten(),
            }
            # q and k both carry the pair mask (q·k sees its square); with q/k norms it is binary (checked above)
            qk_scale = qk_m[l].repeat(2) if "qk_dims" in masks and not self.qk_norms else None
            for name, n in (("q_proj", nh), ("k_proj", nkv), ("v_proj", nkv)):
                w, b = get(f"{base}self_attn.{name}.weight"), get(f"{base}self_attn.{name}.bias")
                if name != "v_proj" and qk_scale is not None:
                    row_scale = qk_scale.repeat(n).to(w)
                    w, b = w * row_scale[:, None], None if b is None else b * row_scale
                put(f"{base}self_attn.{name}.weight", w[rows[name]][:, h_keep])
                put(f"{base}self_attn.{name}.bias", None if b is None else b[rows[name]])
            if self.qk_norms:
                for norm in ("q_norm", "k_norm"):
                    put(f"{base}self_attn.{norm}.weight", get(f"{base}self_attn.{norm}.weight")[qk_idx])
            w, b = get(f"{base}self_attn.o_proj.weight"), get(f"{base}self_attn.o_proj.bias")
            out_scale = (hidden_m * a_scale).to(w)
            in_scale = head_m[l].repeat_interleave(nrep * hd) * v_m[l].repeat(nh)  # KV groups × value dims
            w = w * in_scale.to(w)[None, :] * out_scale[:, None]
            o_cols = (heads[:, None] * hd + v_idx).flatten()
            put(f"{base}self_attn.o_proj.weight", w[h_keep][:, o_cols])
            put(f"{base}self_attn.o_proj.bias", None if b is None else (b * out_scale)[h_keep])

            channels = (ffn_m[l] != 0).nonzero().flatten() if m_scale != 0 else ffn_m.new_zeros(0, dtype=torch.long)
            for name in ("gate_proj", "up_proj"):
                w, b = get(f"{base}mlp.{name}.weight"), get(f"{base}mlp.{name}.bias")
                put(f"{base}mlp.{name}.weight", w[channels][:, h_keep])
                put(f"{base}mlp.{name}.bias", None if b is None else b[channels])
            w, b = get(f"{base}mlp.down_proj.weight"), get(f"{base}mlp.down_proj.bias")
            out_scale = (hidden_m * m_scale).to(w)
            w = w * ffn_m[l].to(w)[None, :] * out_scale[:, None]
            put(f"{base}mlp.down_proj.weight", w[h_keep][:, channels])
            put(f"{base}mlp.down_proj.bias", None if b is None else (b * out_scale)[h_keep])
            for norm in ("input_layernorm", "post_attention_layernorm"):
                put(f"{base}{norm}.weight", get(f"{base}{norm}.weight")[h_keep])
            n_groups = int(groups.numel())
            shape: dict[str, Any] = {
                "num_attention_heads": n_groups * nrep,
                "num_key_value_heads": n_groups,
                "intermediate_size": int(channels.numel()),
            }
            if head_dims:  # the per-layer attention reads these (export/modeling_template.py.txt)
                shape.update(qk_dim=int(qk_idx.numel()), v_dim=int(v_idx.numel()), rope_pairs=pairs.tolist())
            layer_shapes.append(shape)
            # A block with nothing left becomes an empty module that keeps only its output bias.
            for block, empty in (("self_attn", n_groups == 0), ("mlp", channels.numel() == 0)):
                if empty:
                    prefix = f"{base}{block}."
                    # only the projections go; other parameters (Qwen3's q_norm/k_norm) stay, as the cost model counts
                    gone = [k for k in state if k.startswith(prefix) and _is_projection(k[len(prefix) :], block)]
                    take.update(gone)
                    out_bias = new.get(f"{prefix}{'o_proj' if block == 'self_attn' else 'down_proj'}.bias")
                    for k in [k for k in gone if k in new]:
                        del new[k]
                    put(f"{prefix}bias", out_bias)
        put(f"{p}norm.weight", get(f"{p}norm.weight")[h_keep])
        if self.head is not None:
            w, b = get(f"{self.head_name}.weight"), get(f"{self.head_name}.bias")
            put(f"{self.head_name}.weight", w[:, h_keep])
            put(f"{self.head_name}.bias", b)
        surgery.finish()  # parameters no structure resizes, unchanged

        config = plain_config_dict(self.model.config)  # a dict: strict configs validate on every setattr
        config.update(hidden_size=d_new, head_dim=hd)
        config_class = type(self.model.config)
        # Pruned head dims need the per-layer attention (rotary subset, original scaling, qk_dim ≠ v_dim): no standard
        # config can hold them, whatever `uniform` asked for.
        full_dims = all(s.get("qk_dim", hd) == hd and s.get("v_dim", hd) == hd for s in layer_shapes)
        uniform = (
            full_dims
            and all(s == layer_shapes[0] for s in layer_shapes)
            and all(s["num_attention_heads"] > 0 and s["intermediate_size"] > 0 for s in layer_shapes)
        )
        counts = {k: layer_shapes[0][k] for k in ("num_attention_heads", "num_key_value_heads", "intermediate_size")}
        standard = _standard_config(config_class, {**config, **counts}) if uniform else None
        with parameters_on_meta():  # no memory and no random init: the sliced tensors become the parameters
            if standard is not None:
                compact = type(self.model)(standard)
            else:
                compact = build_per_layer_model(self.family, type(self.model).__name__, config, layer_shapes)
        uniform = standard is not None
        assign_weights(compact, new, state, self.model, tied=f"{self.head_name}.weight" if self.tied else None)
        self._hidden_keep = h_keep.cpu()
        return compact.to(embed.device), {"layer_shapes": layer_shapes, "hidden_size": d_new, "uniform": uniform}


def _standard_config(config_class: type, values: dict[str, Any]) -> Any | None:
    """The family's own config for ``values``, or ``None`` if it rejects them (e.g. LlamaConfig insists that
    hidden_size is a multiple of num_attention_heads); the export then uses the per-layer classes."""
    try:
        return config_class.from_dict(values)
    except Exception:  # noqa: BLE001 - any validation failure means "not expressible as a standard config"
        return None


def layer_shape_summary(layer_shapes: list[dict[str, Any]]) -> str:
    """One line per layer: heads / kv heads / FFN channels (and q/k and v head dims when pruned)."""
    return "\n".join(
        f"layer {i:>3}: heads {s['num_attention_heads']:>4}  kv {s['num_key_value_heads']:>3}  "
        f"ffn {s['intermediate_size']:>6}"
        + (f"  qk_dim {s['qk_dim']:>4}  v_dim {s['v_dim']:>4}" if "qk_dim" in s else "")
        for i, s in enumerate(layer_shapes)
    )
