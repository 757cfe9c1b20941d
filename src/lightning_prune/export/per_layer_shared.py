"""What the per-layer modeling templates share (``adapters/<family>/modeling_per_layer.py``).

A template imports these names with one plain ``from lightning_prune.export.per_layer_shared import ...`` line, so
it stays a real module that the tests import. Rendering (:mod:`lightning_prune.export.per_layer_inline`) replaces
that line by the definitions of the imported names (and of what they use), so the exported
``modeling_lightning_prune.py`` still needs only torch and transformers. Hence this module imports nothing else,
uses no ``from __future__`` import (its definitions run inside the rendered file) and keeps its names private:
they become module-level names of every rendered file that imports them.
"""

import torch
from torch import nn


class _LayerShapesConfig:
    """Mixin of a per-layer config class (listed before the family's config class): ``layer_shapes``, one dict per
    layer, is authoritative and the config's own head and channel counts are nominal.

    transformers' config ``__init__`` runs the validators of the family's config class only, not an override, so
    the shapes are checked again once they are set (and whenever transformers validates, e.g. on save).
    """

    def __init_subclass__(cls, **kwargs):
        # transformers turns every config subclass into a dataclass, whose generated __init__ would replace the one
        # below unless the subclass defines its own: it defines this one.
        if "__init__" not in cls.__dict__:
            cls.__init__ = _LayerShapesConfig.__init__
        super().__init_subclass__(**kwargs)

    def __init__(self, layer_shapes=None, **kwargs):
        self.layer_shapes = list(layer_shapes or [])
        super().__init__(**kwargs)
        self.validate()

    def validate(self):
        super().validate()
        for i, shape in enumerate(getattr(self, "layer_shapes", None) or []):
            self.check_layer_shape(i, shape)

    def check_layer_shape(self, i: int, shape: dict) -> None:
        """Raise ``ValueError`` for a shape no layer can have (a family with more counts overrides this)."""
        if shape["num_attention_heads"] < 0 or shape["intermediate_size"] < 0:
            raise ValueError(f"layer {i}: negative sizes in {shape}")


class _KeyValueHeadsConfig(_LayerShapesConfig):
    """A per-layer config mixin for attention with key/value heads: each layer's query heads share its key/value
    heads in equal groups, and a layer has both or neither."""

    def check_layer_shape(self, i: int, shape: dict) -> None:
        heads, kv = shape["num_attention_heads"], shape["num_key_value_heads"]
        if (kv == 0) != (heads == 0) or (kv and heads % kv):
            raise ValueError(f"layer {i}: {heads} attention heads cannot share {kv} key/value heads")


def _zip_layer_shapes(layers, config):
    """``(layer, shape)`` pairs; a config with another number of shapes than the model has layers is refused."""
    if len(config.layer_shapes) != len(layers):
        raise ValueError(f"config.layer_shapes has {len(config.layer_shapes)} entries for {len(layers)} layers")
    return zip(layers, config.layer_shapes)


class _NoOutput(nn.Module):
    """A projection with no output features left: (..., 0)."""

    def forward(self, x):
        return x.new_zeros(*x.shape[:-1], 0)


class _BiasOnly(nn.Module):
    """A projection with no input features left: its output bias (or zeros when the block was pruned)."""

    def __init__(self, out_features: int, bias: bool):
        super().__init__()
        self.out_features = out_features
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x):
        out = x.new_zeros(*x.shape[:-1], self.out_features)
        return out if self.bias is None else out + self.bias


class _EmptyMLP(_BiasOnly):
    """An MLP with no channels left: writes nothing (or only its output bias, ``bias``) to the residual."""


def _layer_cache(kwargs: dict):
    """The layer's KV cache: transformers >= 5.2x passes it to attention as ``cache=``, earlier 5.x releases as
    ``past_key_values=`` (both are popped, so neither reaches the attention kernel)."""
    cache = kwargs.pop("cache", None)
    legacy = kwargs.pop("past_key_values", None)
    return cache if cache is not None else legacy


def _cache_placeholder(kwargs: dict, hidden_states, layer_idx: int, heads: int, head_dim: int) -> None:
    """Give the KV cache (if the call has one) placeholder keys and values, (batch, heads, seq, head_dim), for a
    layer with no heads left: the cache keeps per-layer bookkeeping (the sequence length) that generation reads.
    Nothing reads the placeholders back."""
    cache = _layer_cache(kwargs)
    if cache is not None:
        batch, length = hidden_states.shape[:2]
        placeholder = hidden_states.new_zeros(batch, heads, length, head_dim)
        cache.update(placeholder, placeholder, layer_idx)


class _EmptyAttention(_BiasOnly):
    """An attention block with no heads left: writes nothing (or only its output bias, ``bias``) to the residual
    and hands the cache an empty entry, (batch, 0, seq, head_dim).

    ``keep``: modules of the replaced attention that no head count resizes (Qwen3's ``q_norm``/``k_norm``); they
    stay, unused, so the checkpoint and the parameter count keep the original layout.
    """

    def __init__(self, hidden_size: int, head_dim: int, layer_idx: int, bias: bool, keep: dict | None = None):
        super().__init__(hidden_size, bias)
        self.head_dim = head_dim
        self.layer_idx = layer_idx
        for name, child in (keep or {}).items():
            self.add_module(name, child)

    def forward(self, hidden_states, *args, **kwargs):
        _cache_placeholder(kwargs, hidden_states, self.layer_idx, 0, self.head_dim)
        return super().forward(hidden_states), None


def _per_layer(parent: type, config_class: type, resize_layers) -> type:
    """``Pruned<parent>``: ``parent`` (a transformers model class) with ``config_class``, whose layers
    ``resize_layers(backbone, config)`` gives their own shapes once ``parent`` has built them.

    A head class resizes its backbone (``base_model``) unless the backbone is already a per-layer model (one that
    ``AutoModel.from_config`` built from a per-layer config, registered by the template). The class is created
    here rather than written out per head kind (the heads differ only by their parent), under the name the export's
    ``auto_map`` uses, in the module that defines ``config_class``.
    """

    def __init__(self, config, *args, **kwargs):
        parent.__init__(self, config, *args, **kwargs)
        backbone = self.base_model
        if backbone is self or type(backbone).config_class is not config_class:
            resize_layers(backbone, config)

    name = f"Pruned{parent.__name__}"
    __init__.__qualname__ = f"{name}.__init__"
    namespace = {
        "__module__": config_class.__module__,
        "__qualname__": name,
        "__doc__": f"{parent.__name__} with per-layer shapes (``config.layer_shapes``).",
        "config_class": config_class,
        "__init__": __init__,
    }
    return type(name, (parent,), namespace)
