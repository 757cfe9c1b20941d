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

from torch import nn
from transformers.models.bert.configuration_bert import BertConfig
from transformers.models.bert.modeling_bert import BertForSequenceClassification, BertModel

from lightning_prune.export.per_layer_shared import _BiasOnly, _LayerShapesConfig, _NoOutput, _zip_layer_shapes


class PrunedBertConfig(_LayerShapesConfig, BertConfig):
    model_type = "lightning_prune_bert"
    # Extra keys: layer_shapes (one dict per layer), attention_head_size, pooler_size, add_pooling_layer.


class _EmptySelfAttention(nn.Module):
    """Self-attention with no heads left: an empty context, (batch, seq, 0)."""

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states.new_zeros(*hidden_states.shape[:-1], 0), None


def _resize_layers(backbone, config):
    d, hd = config.hidden_size, config.attention_head_size
    for layer, shape in _zip_layer_shapes(backbone.encoder.layer, config):
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
