"""Per-layer pruned Bert encoders, written by lightning-prune (https://github.com/lightning-prune).

This file is standalone: it needs only torch and transformers, so a model exported with per-layer
shapes loads with ``AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=True)``
(or ``AutoModel``) on a machine without lightning-prune.

What differs from the stock Bert classes (``config.layer_shapes`` is authoritative):

* every layer keeps its own number of attention heads (each of ``config.attention_head_size`` dims)
  and FFN channels; ``config.num_attention_heads`` / ``config.intermediate_size`` are nominal;
* ``config.hidden_size`` may be any size (it need not be a multiple of the head count);
* the pooler (or the classification head's dense layer) maps ``hidden_size`` to ``config.pooler_size``;
* a layer with no heads (or no FFN channels) left adds only its output bias, or nothing when the whole
  block was pruned, before its post-norm LayerNorm, which always stays.
"""

import torch
from torch import nn
from transformers.models.bert.configuration_bert import BertConfig
from transformers.models.bert.modeling_bert import BertForSequenceClassification, BertModel


class PrunedBertConfig(BertConfig):
    model_type = "lightning_prune_bert"

    # Extra keys: layer_shapes (one dict per layer), attention_head_size, pooler_size, add_pooling_layer.
    def __init__(self, layer_shapes=None, **kwargs):
        self.layer_shapes = list(layer_shapes or [])
        super().__init__(**kwargs)

    def validate(self):
        super().validate()
        for i, shape in enumerate(getattr(self, "layer_shapes", None) or []):
            if shape["num_attention_heads"] < 0 or shape["intermediate_size"] < 0:
                raise ValueError(f"layer {i}: negative sizes in {shape}")


class _EmptySelfAttention(nn.Module):
    """Self-attention with no heads left: an empty context, (batch, seq, 0)."""

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states.new_zeros(*hidden_states.shape[:-1], 0), None


class _NoOutput(nn.Module):
    """A projection with no output features left: (..., 0)."""

    def forward(self, x):
        return x.new_zeros(*x.shape[:-1], 0)


class _BiasOnly(nn.Module):
    """A projection with no input features left: its output bias (or zeros when the block was pruned)."""

    def __init__(self, out_features, bias):
        super().__init__()
        self.out_features = out_features
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x):
        out = x.new_zeros(*x.shape[:-1], self.out_features)
        return out if self.bias is None else out + self.bias


def _resize_layers(backbone, config):
    layers = backbone.encoder.layer
    if len(config.layer_shapes) != len(layers):
        raise ValueError(f"config.layer_shapes has {len(config.layer_shapes)} entries for {len(layers)} layers")
    d, hd = config.hidden_size, config.attention_head_size
    for layer, shape in zip(layers, config.layer_shapes):
        heads, ffn = shape["num_attention_heads"], shape["intermediate_size"]
        attn_bias, ffn_bias = bool(shape.get("attention_output_bias", True)), bool(shape.get("ffn_output_bias", True))
        attn = layer.attention
        if heads == 0:
            attn.self = _EmptySelfAttention()
            attn.output.dense = _BiasOnly(d, attn_bias)
        else:
            sa = attn.self
            sa.num_attention_heads = heads
            sa.attention_head_size = hd
            sa.all_head_size = heads * hd
            sa.scaling = hd**-0.5
            sa.query = nn.Linear(d, heads * hd)
            sa.key = nn.Linear(d, heads * hd)
            sa.value = nn.Linear(d, heads * hd)
            attn.output.dense = nn.Linear(heads * hd, d, bias=attn_bias)
        if ffn == 0:
            layer.intermediate.dense = _NoOutput()
            layer.output.dense = _BiasOnly(d, ffn_bias)
        else:
            layer.intermediate.dense = nn.Linear(d, ffn)
            layer.output.dense = nn.Linear(ffn, d, bias=ffn_bias)
    if getattr(backbone, "pooler", None) is not None:
        backbone.pooler.dense = nn.Linear(d, config.pooler_size)


class PrunedBertModel(BertModel):
    config_class = PrunedBertConfig

    def __init__(self, config, add_pooling_layer=None):
        if add_pooling_layer is None:
            add_pooling_layer = getattr(config, "add_pooling_layer", True)
        super().__init__(config, add_pooling_layer=add_pooling_layer)
        _resize_layers(self, config)


class PrunedBertForSequenceClassification(BertForSequenceClassification):
    config_class = PrunedBertConfig

    def __init__(self, config):
        super().__init__(config)
        _resize_layers(getattr(self, self.base_model_prefix), config)
        if isinstance(self.classifier, nn.Linear):  # BERT: pooler -> classifier
            self.classifier = nn.Linear(config.pooler_size, config.num_labels)
        else:  # RoBERTa: classifier.dense reads the <s> token's hidden state
            self.classifier.dense = nn.Linear(config.hidden_size, config.pooler_size)
            self.classifier.out_proj = nn.Linear(config.pooler_size, config.num_labels)
