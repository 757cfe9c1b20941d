"""Per-layer pruned Phi-3 models, written by lightning-prune (https://github.com/lightning-prune).

This file is standalone: it needs only torch and transformers, so a model exported with per-layer shapes loads
with ``AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)`` on a machine without lightning-prune.
Every layer keeps its own number of attention heads, key/value heads and FFN channels (``config.layer_shapes``); a
layer whose heads or channels were all pruned adds nothing to the residual stream.

Phi3Attention sizes its fused ``qkv_proj`` from its config and reads the query width from it in every forward, and
Phi3MLP splits ``gate_up_proj`` into halves: every layer keeps the transformers classes, built with a view of the
model's config that carries the layer's own counts.
"""

import torch
from torch import nn
from transformers import AutoModel
from transformers.models.phi3.configuration_phi3 import Phi3Config
from transformers.models.phi3.modeling_phi3 import (
    Phi3Attention,
    Phi3ForCausalLM,
    Phi3ForSequenceClassification,
    Phi3ForTokenClassification,
    Phi3MLP,
    Phi3Model,
)


class PrunedPhi3Config(Phi3Config):
    model_type = "lightning_prune_phi3"

    # config.layer_shapes is authoritative: the head and channel counts of the config are nominal.
    def __init__(self, layer_shapes=None, **kwargs):
        self.layer_shapes = list(layer_shapes or [])
        super().__init__(**kwargs)
        self.validate()  # Phi3Config's __init__ runs Phi3Config's validators only, not the override below

    def validate(self):
        super().validate()
        shapes = getattr(self, "layer_shapes", None) or []
        groups = [(s["num_attention_heads"], s["num_key_value_heads"]) for s in shapes]
        bad = [i for i, (q, kv) in enumerate(groups) if (q == 0) != (kv == 0) or (kv and q % kv)]
        if bad:
            raise ValueError(f"layers {bad}: the attention heads cannot share the key/value heads ({groups})")


class _LayerConfig:
    """The model's config as one layer sees it: the layer's ``counts`` over the shared config, which stays live
    (an attention implementation set on the model reaches every layer)."""

    def __init__(self, config, **counts):
        self._config = config
        self._counts = counts

    def __getattr__(self, name):  # only for names that are not the view's own
        if name.startswith("__") or "_config" not in self.__dict__:  # copy/pickle protocol: the view itself
            raise AttributeError(name)
        return self._counts[name] if name in self._counts else getattr(self._config, name)


class _EmptyAttention(nn.Module):
    """An attention block with no heads left: adds nothing to the residual stream (Phi-3's projections have no
    bias). It still hands the KV cache an empty entry, so the cache counts the tokens this layer has seen."""

    def __init__(self, head_dim, layer_idx):
        super().__init__()
        self.head_dim = head_dim
        self.layer_idx = layer_idx

    def forward(self, hidden_states, *args, **kwargs):
        # the cache arrives as ``cache=`` (transformers >= 5.2x) or ``past_key_values=`` (earlier 5.x releases)
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if cache is not None:
            batch, length = hidden_states.shape[:2]
            nothing = hidden_states.new_zeros(batch, 0, length, self.head_dim)
            cache.update(nothing, nothing, self.layer_idx)
        return torch.zeros_like(hidden_states), None


class _EmptyMLP(nn.Module):
    """An MLP with no channels left: adds nothing to the residual stream."""

    def forward(self, x):
        return torch.zeros_like(x)


def _resize_layers(backbone, config):
    if len(config.layer_shapes) != len(backbone.layers):
        raise ValueError(
            f"config.layer_shapes has {len(config.layer_shapes)} entries for {len(backbone.layers)} layers"
        )
    for idx, (layer, shape) in enumerate(zip(backbone.layers, config.layer_shapes)):
        heads, kv, ffn = shape["num_attention_heads"], shape["num_key_value_heads"], shape["intermediate_size"]
        if heads == 0:
            layer.self_attn = _EmptyAttention(layer.self_attn.head_dim, idx)
        else:
            counts = _LayerConfig(config, num_attention_heads=heads, num_key_value_heads=kv)
            layer.self_attn = Phi3Attention(counts, idx)
        layer.mlp = _EmptyMLP() if ffn == 0 else Phi3MLP(_LayerConfig(config, intermediate_size=ffn))


class PrunedPhi3Model(Phi3Model):
    config_class = PrunedPhi3Config

    def __init__(self, config):
        super().__init__(config)
        _resize_layers(self, config)


# The sequence and token classification classes build their backbone with ``AutoModel.from_config(config)``:
# registered here, it is the class above (local code: transformers neither asks to trust remote code nor looks the
# backbone up in ``auto_map``).
AutoModel.register(PrunedPhi3Config, PrunedPhi3Model, exist_ok=True)


def _resize_backbone(model, config):
    backbone = getattr(model, model.base_model_prefix)
    if not isinstance(backbone, PrunedPhi3Model):  # a backbone built by the parent class: resize its layers
        _resize_layers(backbone, config)


class PrunedPhi3ForCausalLM(Phi3ForCausalLM):
    config_class = PrunedPhi3Config

    def __init__(self, config):
        super().__init__(config)
        _resize_backbone(self, config)


class PrunedPhi3ForSequenceClassification(Phi3ForSequenceClassification):
    config_class = PrunedPhi3Config

    def __init__(self, config):
        super().__init__(config)
        _resize_backbone(self, config)


class PrunedPhi3ForTokenClassification(Phi3ForTokenClassification):
    config_class = PrunedPhi3Config

    def __init__(self, config):
        super().__init__(config)
        _resize_backbone(self, config)
