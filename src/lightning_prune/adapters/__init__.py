"""Model adapters and their registry.

One folder per model family (``llama/``, ``phi3/``, ``bert/``, ``gpt2/``, ``depgraph/``); each registers its
adapter (and, for a transformers family, its per-layer export classes) when it is imported. A transformers family's
folder has one module per job: ``adapter.py`` (the adapter class: reads the model's config and layout and checks that
it can prune it), ``config.py`` (the model types and head classes it covers, the nominal config of the per-layer
classes), ``cost_terms.py``, ``hooks.py`` (where each structure's mask acts; the LayerNorm families have none, their
``Layout`` says it), ``surgery.py`` (the export's state-dict
surgery) and ``modeling_per_layer.py`` (the per-layer classes of the export, a template for every model type of the
family); its ``__init__.py`` registers them with one :func:`~lightning_prune.adapters.registry.register_family` call.
Register an adapter for a family the library does not know::

    from lightning_prune.adapters import ModelAdapter, register_adapter

    @register_adapter("my_family")
    class MyAdapter(ModelAdapter):
        @classmethod
        def matches(cls, model):
            return getattr(getattr(model, "config", None), "model_type", None) == "my_family"
        ...
"""

from __future__ import annotations

from lightning_prune.adapters.base import MaskSource, ModelAdapter, base_layer, plain_parameter_sizes
from lightning_prune.adapters.registry import available_adapters, register_adapter, resolve_adapter

# The families register themselves in this order (later registrations are tried first).
# isort: off
from lightning_prune.adapters.llama import LlamaAdapter
from lightning_prune.adapters.phi3 import Phi3Adapter
from lightning_prune.adapters.bert import BertAdapter
from lightning_prune.adapters.gpt2 import GPT2Adapter
from lightning_prune.adapters.depgraph import DependencyGraphAdapter

# isort: on

__all__ = [
    "ModelAdapter",
    "MaskSource",
    "base_layer",
    "plain_parameter_sizes",
    "register_adapter",
    "resolve_adapter",
    "available_adapters",
    "LlamaAdapter",
    "Phi3Adapter",
    "BertAdapter",
    "GPT2Adapter",
    "DependencyGraphAdapter",
]
