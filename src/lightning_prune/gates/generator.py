"""Pruning-decision generators: one small network that outputs every layer's structural decisions.

ATP (Lu et al., "All-in-One Tuning and Structural Pruning for Domain-Specific LLMs", arXiv 2412.14426)
replaces one free parameter per unit by a *generator* trained jointly with LoRA: fixed, orthogonal
per-layer inputs go through a small sequence model, a LayerNorm, and one linear head per layer and
structure, giving a logit per unit. Decisions are Gumbel-sigmoid samples made binary with a
straight-through estimator:

``m = 1[s ≥ 0.5]`` in the forward pass, ``∂m/∂z = ∂s/∂z`` in the backward pass, with
``s = σ((z + g + b) / T)``, ``g = log u − log(1 − u)`` (the difference of two Gumbel variables), the
temperature ``T = 0.4`` and the offset ``b = 3`` so that every unit starts as *kept*. In eval the decision is
the noise-free ``1[z + b ≥ 0]``: hard, and a function of the generator's weights only (no batch enters).
While :attr:`DecisionGenerator.relaxed` is set (ATP's generator update, as in the released code's
``hypernet_step``), samples are the soft ``s`` itself: the task loss is differentiated through the relaxation
at the sampled point instead of through a straight-through estimate at a binary one.

Because decisions of all layers come from one shared network, layers are pruned *jointly* (the encoder
sees every layer's input), which is the point of the design over independent per-unit gates.

The sequence model is pluggable: ``"transformer"`` (the authors' encoder: 2 layers, d = 64, 4 heads,
FF 256) and ``"gru"`` (their earlier bidirectional GRU, hidden 128), or any backbone registered with
:func:`register_generator_backbone`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import TypeVar

import torch
from torch import nn

from lightning_prune.errors import PruningConfigError
from lightning_prune.gates.base import Gate
from lightning_prune.registry import Registry

#: ATP generator backbones by name. Re-registering a name with another class raises.
BACKBONES: Registry[type[GeneratorBackbone]] = Registry(
    "generator backbone",
    "Register another with lightning_prune.gates.generator.register_generator_backbone.",
)

B = TypeVar("B", bound=type["GeneratorBackbone"])


class GeneratorBackbone(nn.Module):
    """A sequence model over the ``L`` layer embeddings: ``(1, L, dim) -> (1, L, out_features)``.

    Args:
        dim: width of the fixed per-layer input embeddings.
    """

    out_features: int

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def activation(self, h: torch.Tensor) -> torch.Tensor:
        """Applied after the generator's LayerNorm (identity unless a backbone needs one)."""
        return h


def register_generator_backbone(name: str) -> Callable[[B], B]:
    """Class decorator that makes a :class:`GeneratorBackbone` available as ``backbone=name``."""

    def wrap(cls: B) -> B:
        if not (isinstance(cls, type) and issubclass(cls, GeneratorBackbone)):
            raise TypeError(f"register_generator_backbone expects a GeneratorBackbone subclass, got {cls!r}.")
        return BACKBONES.register(name, cls)

    return wrap


def available_generator_backbones() -> list[str]:
    return sorted(BACKBONES)


def generator_backbone_class(name: str) -> type[GeneratorBackbone]:
    return BACKBONES.get(name)


@register_generator_backbone("transformer")
class TransformerBackbone(GeneratorBackbone):
    """The ATP generator's encoder: ``num_layers`` Transformer encoder layers over the layer sequence.

    No dropout: the eval decisions must be a deterministic function of the weights.
    """

    def __init__(self, dim: int, num_layers: int = 2, num_heads: int = 4, ff_dim: int = 256) -> None:
        super().__init__(dim)
        if dim % num_heads:
            raise PruningConfigError(f"`generator_dim`={dim} must be a multiple of the encoder's {num_heads} heads.")
        layer = nn.TransformerEncoderLayer(dim, num_heads, ff_dim, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.out_features = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)


@register_generator_backbone("gru")
class BiGRUBackbone(GeneratorBackbone):
    """ATP's earlier generator (as in DISP-LLM's hypernetwork): a bidirectional GRU, then LayerNorm + ReLU."""

    def __init__(self, dim: int, hidden: int = 128) -> None:
        super().__init__(dim)
        self.gru = nn.GRU(dim, hidden, batch_first=True, bidirectional=True)
        self.out_features = 2 * hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gru(x)[0]

    def activation(self, h: torch.Tensor) -> torch.Tensor:
        return torch.relu(h)


class DecisionGenerator(nn.Module):
    """Fixed orthogonal layer inputs → backbone → LayerNorm → one linear head per layer and structure.

    Args:
        rows: number of layers (every structure it serves has one row per layer).
        units: units per row of each structure it serves, e.g. ``{"heads": 8, "ffn": 11008}``.
        dim: width of the per-layer inputs (64 in ATP).
        backbone: a registered backbone name (``"transformer"`` or ``"gru"``).
        temperature: Gumbel-sigmoid temperature ``T`` (0.4 in ATP).
        offset: logit offset ``b`` (3.0 in ATP): with ``b/T = 7.5`` every eval decision starts at *keep* and a
            training sample prunes a unit with probability ``σ(−b) ≈ 0.05``, enough to explore.
        seed: seed of the fixed orthogonal inputs (a buffer, saved with the model).
    """

    def __init__(
        self,
        rows: int,
        units: Mapping[str, int],
        dim: int = 64,
        backbone: str = "transformer",
        temperature: float = 0.4,
        offset: float = 3.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if rows < 1 or not units or any(u < 1 for u in units.values()):
            raise ValueError(f"A decision generator needs rows >= 1 and units >= 1, got rows={rows}, units={units}.")
        if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
            raise PruningConfigError(f"`temperature` must be positive, got {temperature!r}.")
        self.rows = rows
        self.units = dict(units)
        #: When set, :meth:`GeneratorGate.sample` returns the soft Gumbel-sigmoid sample ``σ((z + g + b)/T)``
        #: instead of its binary straight-through form (ATP's generator update; not saved with the model).
        self.relaxed = False
        self.temperature = float(temperature)
        self.offset = float(offset)
        self.backbone_name = backbone
        gen = torch.Generator().manual_seed(seed)
        inputs = torch.empty(rows, dim)
        _orthogonal_(inputs, gen)
        self.register_buffer("inputs", inputs[None])  # (1, L, dim), fixed: the generator learns the mapping
        self.backbone = generator_backbone_class(backbone)(dim)
        features = self.backbone.out_features
        self.norm = nn.LayerNorm(features)
        bound = 1.0 / math.sqrt(features)  # nn.Linear's default initialisation
        self.heads = nn.ParameterDict(
            {name: nn.Parameter(torch.empty(rows, n, features).uniform_(-bound, bound)) for name, n in units.items()}
        )

    def features(self) -> torch.Tensor:
        """Per-layer features ``(L, F)`` shared by every structure's heads."""
        h = self.backbone(self.inputs)[0]
        return self.backbone.activation(self.norm(h))

    def logits(self, structure: str, features: torch.Tensor | None = None) -> torch.Tensor:
        """Raw logits ``z`` of ``structure``, shape ``(L, units)`` (layer ``l``'s head applied to feature ``l``)."""
        if structure not in self.heads:
            raise KeyError(f"This generator serves {list(self.heads)}, not {structure!r}.")
        f = self.features() if features is None else features
        return torch.einsum("lf,luf->lu", f, self.heads[structure].to(f.dtype))

    def extra_repr(self) -> str:
        return (
            f"rows={self.rows}, units={self.units}, backbone={self.backbone_name!r}, T={self.temperature}, "
            f"offset={self.offset}"
        )


def _orthogonal_(t: torch.Tensor, gen: torch.Generator) -> None:
    """Orthonormal rows (or columns when ``rows > dim``), drawn from a seeded generator."""
    a = torch.randn(max(t.shape), min(t.shape), generator=gen)
    q, r = torch.linalg.qr(a)
    q = q * torch.sign(torch.diagonal(r))[None, :]
    t.copy_(q if t.shape[0] >= t.shape[1] else q.T)


class GeneratorGate(Gate):
    """The :class:`Gate` view of one structure of a (possibly shared) :class:`DecisionGenerator`.

    Several gates may share one generator (ATP's single network for all structures); its parameters then
    appear once in ``Pruner.gate_parameters()``. Built alone (``generator=None``) it owns a generator for
    its structure only, which makes ``"generator"`` an ordinary registered gate kind.

    Args:
        rows: layers.
        units: units per layer.
        generator: the shared generator, or ``None`` to build one from ``generator_kwargs``.
        structure: the structure this gate reads from the generator.
        **generator_kwargs: :class:`DecisionGenerator` options when ``generator`` is ``None``.
    """

    exact_zero_gradient = False  # straight-through: a decision at 0 still passes the sigmoid's gradient

    def __init__(
        self,
        rows: int,
        units: int,
        generator: DecisionGenerator | None = None,
        structure: str = "units",
        **generator_kwargs,
    ) -> None:
        super().__init__(rows, units)
        if generator is None:
            generator = DecisionGenerator(rows, {structure: units}, **generator_kwargs)
        elif generator_kwargs:
            raise TypeError(
                f"Pass generator options to the DecisionGenerator, not the gate: {sorted(generator_kwargs)}."
            )
        if generator.rows != rows or generator.units.get(structure) != units:
            raise ValueError(
                f"The generator gives {generator.units.get(structure)} units x {generator.rows} rows for "
                f"{structure!r}, but the gate needs {units} x {rows}."
            )
        self.generator = generator
        self.structure = structure

    def shifted_logits(self) -> torch.Tensor:
        """``z + b``: positive means *keep* (the eval decision)."""
        return self.generator.logits(self.structure).float() + self.generator.offset

    def sample(self) -> torch.Tensor:
        """Binary Gumbel-sigmoid decisions with a straight-through gradient, ``(rows, units)``; the soft
        sample ``σ((z + g + b)/T)`` itself while the generator is :attr:`~DecisionGenerator.relaxed`."""
        z = self.shifted_logits()
        u = torch.rand_like(z).clamp(1e-6, 1.0 - 1e-6)
        soft = torch.sigmoid((z + torch.log(u) - torch.log1p(-u)) / self.generator.temperature)
        if self.generator.relaxed:
            return soft
        hard = (soft >= 0.5).to(soft.dtype)
        return hard + (soft - soft.detach())  # exactly 0/1 forward (the bracket is exactly 0), ∂soft backward

    def decision(self) -> torch.Tensor:
        """The noise-free decision ``1[z + b ≥ 0]`` (the eval mask) with a straight-through gradient of
        ``σ((z + b)/T)``: what the budget loss measures, so the kept fraction it steers is the deployed one."""
        soft = self.keep_probability()
        return (soft >= 0.5).to(soft.dtype) + (soft - soft.detach())

    def keep_probability(self) -> torch.Tensor:
        """``σ((z + b)/T)``: the noise-free soft decision (used for the differentiable expected size)."""
        return torch.sigmoid(self.shifted_logits() / self.generator.temperature)

    def score(self) -> torch.Tensor:
        return self.shifted_logits().detach()

    def expected_kept(self) -> torch.Tensor:
        """The number of units the eval decision ``1[z + b ≥ 0]`` keeps per row.

        The engine's deterministic mask keeps this many top-scored units per row, which is exactly the
        thresholded decision (ATP's hard eval mask), while ``uniform`` and ``match_target`` keep working.
        """
        return (self.score() >= 0).sum(dim=-1).float()

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, structure={self.structure!r}"
