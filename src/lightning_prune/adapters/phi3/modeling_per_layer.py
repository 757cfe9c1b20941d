"""Per-layer pruned Phi-3 models, written by lightning-prune (https://github.com/lightning-prune).

This file is standalone: it needs only torch and transformers, so a model exported with per-layer shapes loads
with ``AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)`` on a machine without lightning-prune.
Every layer keeps its own number of attention heads, key/value heads and FFN channels (``config.layer_shapes``); a
layer whose heads or channels were all pruned adds nothing to the residual stream.

Phi3Attention sizes its fused ``qkv_proj`` from its config and reads the query width from it in every forward, and
Phi3MLP splits ``gate_up_proj`` into halves: every layer keeps the transformers classes, built with a view of the
model's config that carries the layer's own counts.
"""

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

from lightning_prune.export.per_layer_shared import (
    _EmptyAttention,
    _EmptyMLP,
    _KeyValueHeadsConfig,
    _per_layer,
    _zip_layer_shapes,
)


class PrunedPhi3Config(_KeyValueHeadsConfig, Phi3Config):
    model_type = "lightning_prune_phi3"
    # config.layer_shapes is authoritative: the head and channel counts of the config are nominal.


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


def _resize_layers(backbone, config):
    d = config.hidden_size
    for idx, (layer, shape) in enumerate(_zip_layer_shapes(backbone.layers, config)):
        heads, kv, ffn = shape["num_attention_heads"], shape["num_key_value_heads"], shape["intermediate_size"]
        if heads == 0:
            layer.self_attn = _EmptyAttention(d, layer.self_attn.head_dim, idx, False)  # Phi-3 has no biases
        else:
            counts = _LayerConfig(config, num_attention_heads=heads, num_key_value_heads=kv)
            layer.self_attn = Phi3Attention(counts, idx)
        layer.mlp = _EmptyMLP(d, False) if ffn == 0 else Phi3MLP(_LayerConfig(config, intermediate_size=ffn))


PrunedPhi3Model = _per_layer(Phi3Model, PrunedPhi3Config, _resize_layers)

# The sequence and token classification classes build their backbone with ``AutoModel.from_config(config)``:
# registered here, it is the class above (local code: transformers neither asks to trust remote code nor looks the
# backbone up in ``auto_map``); they do not resize it again.
AutoModel.register(PrunedPhi3Config, PrunedPhi3Model, exist_ok=True)

PrunedPhi3ForCausalLM = _per_layer(Phi3ForCausalLM, PrunedPhi3Config, _resize_layers)
PrunedPhi3ForSequenceClassification = _per_layer(Phi3ForSequenceClassification, PrunedPhi3Config, _resize_layers)
PrunedPhi3ForTokenClassification = _per_layer(Phi3ForTokenClassification, PrunedPhi3Config, _resize_layers)
