"""``ATPConfig``: All-in-One Tuning and Structural Pruning (ATP) with a LoRA-aware decision generator.

Lu et al., "All-in-One Tuning and Structural Pruning for Domain-Specific LLMs", arXiv 2412.14426. A small
generator network (:mod:`lightning_prune.gates.generator`) outputs every layer's pruning decisions and is
trained jointly with LoRA: a generator step on a held-out batch (task loss + budget loss, masks on the merged
``(W + BA)x``), then a LoRA step on the training batch (task loss + group lasso, masks on the frozen ``W x``
only). After the control phase the decisions freeze and LoRA tuning goes on with a strong group lasso and a
proximal step that makes the pruned units' LoRA rows exactly zero. See
:class:`~lightning_prune.methods.atp.ATPController` for the training loop.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from lightning_prune.adapters.base import base_layer
from lightning_prune.errors import PruningConfigError
from lightning_prune.gates.generator import DecisionGenerator, GeneratorGate, generator_backbone_class
from lightning_prune.methods.atp.layout import couplings
from lightning_prune.methods.atp.regularizer import ATPRegularizer, group_norms, pruned_lora_slices
from lightning_prune.methods.base import PruningConfig, positive_float, register_method
from lightning_prune.structures import StructureSpec

if TYPE_CHECKING:  # pragma: no cover
    from lightning_prune.gates import Gate
    from lightning_prune.pruner import Pruner

log = logging.getLogger("lightning_prune")

#: Structures whose LoRA-aware forward ATP implements (the others have no frozen-path form yet). The paper prunes
#: FFN channels and the attention dims (``ffn``, ``qk_dims``, ``v_dims``); the default stays ``("heads", "ffn")``.
ATP_STRUCTURES = ("heads", "ffn", "qk_dims", "v_dims")


@register_method("atp")
@dataclass
class ATPConfig(PruningConfig):
    """ATP: a pruning-decision generator trained jointly with LoRA, budget loss, LoRA-aware group lasso.

    Structures: any of ``"heads"``, ``"ffn"``, ``"qk_dims"`` and ``"v_dims"`` (Llama family). The paper's set is
    ``("ffn", "qk_dims", "v_dims")``: FFN channels, a K/Q mask over head_dim (here over RoPE pairs, shared by every
    head of a layer, see :mod:`lightning_prune.adapters.head_dims`) and a V mask over head_dim. The default stays
    ``("heads", "ffn")`` (``PruningConfig``'s), so existing configs keep their meaning; pass
    ``structures=("ffn", "qk_dims", "v_dims")`` for the paper's. Exports with pruned head dims use the per-layer
    modeling file (a standard config cannot describe them).

    Args (in addition to :class:`~lightning_prune.PruningConfig`; defaults are the paper code's values):
        match_target: off by default: the budget loss, not a post-hoc correction, meets the target; on, eval
            masks are corrected to the exact target (the LoRA update then uses the corrected masks too).
        gate_lr: generator learning rate (AdamW 1e-3 in ATP, gradient clipping 3.0).
        generator_backbone: ``"transformer"`` (2-layer encoder, d = 64) or ``"gru"`` (bidirectional GRU), or
            a name registered with :func:`~lightning_prune.gates.generator.register_generator_backbone`.
        generator_dim: width of the fixed orthogonal per-layer inputs (64).
        temperature: Gumbel-sigmoid temperature (0.4).
        offset: logit offset (3.0): every decision starts at *keep*.
        generator_masks: the masks of the generator update's task forward. ``"soft"`` (default, as in the
            released ATP code's ``hypernet_step``): the Gumbel-sigmoid samples ``σ((z + g + b)/T)`` themselves,
            so the task gradient is that of the relaxation at the sampled point. ``"hard"``: their binary
            straight-through form (the forward sees exactly a deployable mask; the gradient is the linearisation
            at that binary point). On the loud L0 planted task, soft masks at ``temperature=1.0`` recover every
            planted unit where hard ones do not (tests/test_atp_planted.py, docs/methods.md); on the fair planted
            task both do (after 200 steps, FFN P/R 0.90-0.94 soft vs 0.84-0.94 hard over 5 seeds). The budget
            loss and the LoRA update use hard decisions either way.
        budget_weight: weight ``w`` of the budget loss ``w·|log r − log p|`` (5.0).
        budget_on: which hard decisions ``r`` is computed from. ``"decisions"`` (default): the noise-free
            eval decisions ``1[z + b ≥ 0]`` (straight-through), so the budget steers the kept fraction that is
            deployed. ``"samples"``: the Gumbel samples of the same forward pass made binary (straight-through),
            as in the released ATP code;
            noise prunes near-threshold units in samples more than in eval, so the eval model then keeps
            more than the target (measured on the tiny test model: 0.78 kept for a 0.70 target).
        group_lasso: group-lasso weight during the control phase (ATP: λ = 1 times a gradient factor 0.03).
        group_lasso_final: group-lasso weight once decisions are frozen (ATP: 1 × 100 in the last epoch); it is
            also the proximal strength: after each frozen-phase LoRA step, pruned groups are shrunk by
            ``lr · group_lasso_final`` and reach exactly zero.
        proximal: apply that proximal step (turn off only to study the subgradient alone).
        control_steps: generator steps before the decisions freeze (ATP: 4 control epochs).
        plateau_tolerance: the decisions also freeze once the budget loss ``R`` stays ``≤`` this value ...
        plateau_steps: ... for this many consecutive generator steps (ATP: 0.005 for 4000 steps).
        generator_seed: seed of the generator's fixed inputs.

    Example::

        config = lightning_prune.ATPConfig(target_sparsity=0.4, control_steps=2000)
        pruner = lightning_prune.attach(peft_model, config)
        atp = lightning_prune.methods.atp.ATPController(pruner)
    """

    match_target: bool = False
    gate_lr: float = 1e-3
    generator_backbone: str = "transformer"
    generator_dim: int = 64
    temperature: float = 0.4
    offset: float = 3.0
    generator_masks: str = "soft"
    budget_weight: float = 5.0
    budget_on: str = "decisions"
    group_lasso: float = 0.03
    group_lasso_final: float = 100.0
    proximal: bool = True
    control_steps: int = 1000
    plateau_tolerance: float = 0.005
    plateau_steps: int = 4000
    generator_seed: int = 0

    gate_kind = "generator"

    def __post_init__(self) -> None:
        super().__post_init__()
        unsupported = [s for s in self.structures if s not in ATP_STRUCTURES]
        if unsupported:
            raise PruningConfigError(
                f"ATP prunes {list(ATP_STRUCTURES)} (its LoRA-aware forward is defined for them), got {unsupported}. "
                "Use L0Config for 'hidden' and whole blocks."
            )
        if self.keep_units:
            raise PruningConfigError(
                f"`keep_units`={self.keep_units} is not supported by ATP: the generator learns per-layer counts "
                "under the budget loss. Use L0Config(keep_units=...) for a fixed architecture."
            )
        if self.warmup_steps:
            raise PruningConfigError(
                f"`warmup_steps`={self.warmup_steps}: ATP has no target warm-up (the budget loss steers the kept "
                "fraction from the first step); leave it at 0 and set `control_steps`."
            )
        if self.generator_masks not in ("soft", "hard"):
            raise PruningConfigError(f"`generator_masks` must be 'soft' or 'hard', got {self.generator_masks!r}.")
        if self.budget_on not in ("decisions", "samples"):
            raise PruningConfigError(f"`budget_on` must be 'decisions' or 'samples', got {self.budget_on!r}.")
        for name in ("temperature", "budget_weight"):
            positive_float(getattr(self, name), name)
        for name in ("offset", "group_lasso", "group_lasso_final", "plateau_tolerance"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise PruningConfigError(f"`{name}` must be a finite number, got {value!r}.")
        for name in ("group_lasso", "group_lasso_final", "plateau_tolerance"):
            if getattr(self, name) < 0:
                raise PruningConfigError(f"`{name}` must be non-negative, got {getattr(self, name)!r}.")
        for name in ("control_steps", "plateau_steps", "generator_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise PruningConfigError(f"`{name}` must be a positive int, got {value!r}.")
        generator_backbone_class(self.generator_backbone)  # an unknown name fails here, listing the known ones

    # -- gates -----------------------------------------------------------------------------------------------
    def _generator_kwargs(self) -> dict[str, Any]:
        return {
            "dim": self.generator_dim,
            "backbone": self.generator_backbone,
            "temperature": self.temperature,
            "offset": self.offset,
            "seed": self.generator_seed,
        }

    def gate_kwargs(self, spec: StructureSpec) -> dict[str, Any]:
        return {"structure": spec.name, **self._generator_kwargs()}

    def build_gates(self, specs: dict[str, StructureSpec]) -> dict[str, Gate]:
        """One :class:`DecisionGenerator` for all structures (every layer's decisions from one network), seen
        through one :class:`GeneratorGate` per structure."""
        rows = {spec.rows for spec in specs.values()}
        if len(rows) != 1 or not all(spec.per_layer for spec in specs.values()):
            raise PruningConfigError(f"ATP needs per-layer structures with one row per layer, got {list(specs)}.")
        generator = DecisionGenerator(rows.pop(), {n: s.units for n, s in specs.items()}, **self._generator_kwargs())
        return {n: GeneratorGate(s.rows, s.units, generator=generator, structure=n) for n, s in specs.items()}

    def build_regularizer(self, pruner: Pruner) -> nn.Module:
        layout = {s: couplings(pruner.adapter, s) for s in pruner.specs}
        return ATPRegularizer(self, layout, next(iter(pruner.specs.values())).rows)

    # -- the LoRA-update forward ---------------------------------------------------------------------------
    def install_hooks(self, pruner: Pruner) -> list[tuple[str, nn.Module, Any]]:
        """Frozen-path masks: a forward hook on the base layer of every projection whose output rows a unit
        owns (q/k/v for heads, gate/up for FFN channels, q/k for ``qk_dims``, v for ``v_dims``) gives
        ``m ⊙ (W x + b) + B A x`` under peft's wrapper.
        They act only while ``pruner.mask_path == "frozen"`` (ATP's LoRA update); otherwise the adapter's
        usual hooks mask the merged path."""
        hooks = []
        for structure in pruner.specs:
            for c in pruner.state.regularizer.couplings[structure]:
                if c.side != "out":
                    continue
                target = base_layer(c.module)
                path = c.path if target is c.module else f"{c.path}.base_layer"

                def frozen_path_hook(module, args, output, structure=structure, c=c):
                    if pruner.mask_path != "frozen" or (m := pruner.mask(structure)) is None:
                        return output
                    return output * c.expand(m[c.layer]).to(dtype=output.dtype, device=output.device)

                hooks.append((path, target, target.register_forward_hook(frozen_path_hook)))
        return hooks

    # -- export ------------------------------------------------------------------------------------------------
    def build_compact(
        self, pruner: Pruner, state: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]
    ) -> tuple[nn.Module, dict[str, Any]]:
        """The adapter's compact model, after warning when pruned units' LoRA groups are not zero.

        The export folds the merged ``W + BA`` and removes the pruned units, which is what the generator's forward
        computes and what the equivalence check compares. The LoRA update trained ``m ⊙ Wx + BAx`` instead: a
        pruned unit still passed its ``BA`` part there. Only once those LoRA rows/columns are exactly zero (the
        frozen phase's proximal step) do both agree; otherwise the export differs from the model LoRA was trained as.
        """
        pruned_lora_warning(pruner.state.regularizer.couplings, masks)
        return super().build_compact(pruner, state, masks)


@torch.no_grad()
def pruned_lora_warning(couplings: dict, masks: dict[str, torch.Tensor]) -> str | None:
    """Log (and return) a warning when LoRA rows/columns feeding pruned units are not zero; ``None`` when they are."""
    norms = [group_norms(w, d, i, eps=0.0) for w, d, i in pruned_lora_slices(couplings, masks)]
    if not norms:
        return None
    flat = torch.cat([n.float().flatten().cpu() for n in norms])
    nonzero = int((flat > 0).sum())
    if nonzero == 0:
        return None
    message = (
        f"lightning-prune: ATP export with {nonzero} of {flat.numel()} pruned units' LoRA rows/columns not zero "
        f"(largest L2 norm {float(flat.max()):.3e}): the LoRA update trained the model with their B·A part still "
        "passing (masks on the frozen path only), the export removes it, so the compact model differs from the "
        "model LoRA was tuned as (it equals the generator's view, which the export check compares). Train longer "
        "after the decisions freeze (the proximal step zeroes them), or call `ATPController.zero_pruned_lora_()` "
        "before exporting and fine-tune briefly."
    )
    log.warning(message)
    return message
