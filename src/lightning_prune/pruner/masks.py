"""The masks' life cycle inside a forward pass: sampled in training, deterministic in eval, cached until the gates
change, and handed to the adapter's hooks (the :class:`~lightning_prune.adapters.MaskSource` interface).

Once per forward pass the root module's pre-hook (:meth:`MasksMixin._refresh`) chooses the masks for the phase
and computes every value derived from them, outside any gradient-checkpointed block. A copied pruner (``deepcopy``
of an attached model) re-installs its own hooks before its first forward. :meth:`MasksMixin.ungated` runs the model
as it was before attach for a while (self-distillation's teacher pass), with :func:`hooks_suspended`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from lightning_prune.ops import mask_mul
from lightning_prune.selection import select_masks


@contextmanager
def hooks_suspended(handles: list[RemovableHandle]) -> Iterator[None]:
    """Take the hooks of ``handles`` out of their modules' hook dicts, then put them back in their order.

    A module's forward runs the hooks it finds in its dicts, so a suspended hook is skipped; hooks registered by
    others stay active (and any added meanwhile are kept, after the restored ones).
    """
    snapshots: dict[int, tuple[dict, list]] = {}
    for handle in handles:
        hooks = handle.hooks_dict_ref()
        if hooks is not None and handle.id in hooks:
            snapshots.setdefault(id(hooks), (hooks, list(hooks.items())))
    for hooks, _ in snapshots.values():
        for handle in handles:
            hooks.pop(handle.id, None)
    try:
        yield
    finally:
        for hooks, items in snapshots.values():
            known = {key for key, _ in items}
            added = [(key, hook) for key, hook in hooks.items() if key not in known]
            hooks.clear()
            hooks.update(items)
            hooks.update(added)


class MasksMixin:
    """The mask half of :class:`~lightning_prune.pruner.Pruner` (it reads the pruner's ``config``, ``specs``,
    ``gates``, ``adapter``, ``phase`` and ``cost``)."""

    def _install_mask_hooks(self) -> list[RemovableHandle]:
        """The adapter's and the method's mask hooks (closures over this pruner); records what they hook."""
        self._derived = {}
        hooked = self.adapter.install_hooks(self, self.config.adapter_hook_structures(set(self.specs)))
        hooked += self.config.install_hooks(self)  # a method's own hooks (none by default)
        self._hooked = [(path, module) for path, module, _ in hooked]
        self._mask_handles = [handle for _, _, handle in hooked]
        return self._mask_handles

    def _rehook_copy(self) -> None:
        """A deep copy of the model carries the original's hook *functions* (``copy`` shares functions), which
        would read the original pruner's masks. The copied pruner replaces them with its own before the copy's
        first forward runs a single block."""
        mask_handles = {id(h) for h in self._mask_handles}
        for handle in self._mask_handles:
            handle.remove()
        self._handles = [h for h in self._handles if id(h) not in mask_handles] + self._install_mask_hooks()

    @torch.compiler.disable  # Python bookkeeping and RNG forks: run eagerly, hand the masks to compiled graphs
    def _refresh(self, module: nn.Module, args: Any) -> None:
        if self.__dict__.pop("_is_copy", False):
            self._rehook_copy()
        self._cache.clear()
        if self.phase == "dense":
            importance = self.importance
            probe = importance is not None and not importance.done and torch.is_grad_enabled()
            # all-ones masks that require grad: the dense forward is unchanged, the backward fills the Fisher sums
            self._masks = importance.probe_masks() if probe and module.training else None
        elif self.phase == "prune" and (module.training if self.mask_sampling is None else self.mask_sampling):
            chosen = self.config.training_masks(self)  # a method that picks its training masks itself (gradual)
            self._masks = chosen if chosen is not None else self._sample_masks()
        else:
            self._masks = self.deterministic_masks()
        # Everything derived from the masks is computed here, at the root module's pre-hook: outside any
        # checkpointed block, so gradient checkpointing's recomputation runs exactly the ops of the first pass.
        for key in self._derived:
            self.cached(key)

    def __getstate__(self) -> dict[str, Any]:
        """Copies and pickles leave out this forward pass's masks and derived values (non-leaf tensors that
        ``copy.deepcopy`` cannot copy): a copied model samples its own at its next forward."""
        state = self.__dict__.copy()
        state.update(_cache={}, _masks=None, _deterministic_cache=None, _update_check=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._is_copy = True  # its modules still hold the original's hook closures: see `_rehook_copy`

    @contextmanager
    def ungated(self) -> Iterator[None]:
        """Run the model as it was before attach inside the block: phase ``dense``, no masks, and every hook of the
        pruner and its method suspended (masks, PAT's HSMs, ATP's frozen-path masks, the distillation hooks); hooks of
        others stay. The phase, the masks and their derived values are restored after, so the masks of a forward in
        progress stay current (gradient checkpointing recomputes the student forward in backward)."""
        saved_phase, saved_masks, saved_cache = self.phase, self._masks, dict(self._cache)
        self.phase, self._masks = "dense", None
        try:
            with hooks_suspended(self._handles):
                yield
        finally:
            self.phase, self._masks = saved_phase, saved_masks
            self._cache.clear()
            self._cache.update(saved_cache)

    def _sample_masks(self) -> dict[str, torch.Tensor]:
        if self.sample_seed is None:
            return {name: gate.sample() for name, gate in self.gates.items()}
        device = self.state.step.device
        cuda = [device.index] if device.type == "cuda" else []  # a tensor's CUDA device always has an index
        with torch.random.fork_rng(devices=cuda):  # the global CPU (and this GPU's) RNG state is restored after
            torch.random.default_generator.manual_seed(self.sample_seed)
            if cuda:
                torch.cuda.default_generators[cuda[0]].manual_seed(self.sample_seed)
            return {name: gate.sample() for name, gate in self.gates.items()}

    def mask(self, structure: str) -> torch.Tensor | None:
        """The mask of ``structure`` for the current forward pass (``None`` in the dense phase)."""
        if self._masks is None:
            return None
        return self._masks.get(structure)

    def multiply(self, x: torch.Tensor, mask: torch.Tensor, overwritten: bool = False) -> torch.Tensor:
        """``x * mask`` for the hooks: the memory-lean :func:`~lightning_prune.ops.mask_mul` when every gate
        kind has an exactly-zero gradient at mask 0, the plain product otherwise.

        ``overwritten=True`` says the result is modified in place afterwards (``nn.ReLU(inplace=True)``,
        ``out += identity``): the op then saves ``x`` instead of its result (the plain product always does)."""
        if self._lean or self.phase == "dense":  # dense: all-ones probe masks, where mask_mul is exact
            return mask_mul(x, mask, keep_input=overwritten)
        return x * mask.to(dtype=x.dtype, device=x.device)

    def derive(self, key: str, compute) -> None:
        """Register a value derived from the masks (``compute()``), computed once per forward pass before the
        model runs; hooks read it with :meth:`cached`."""
        self._derived[key] = compute

    def cached(self, key: str, compute=None) -> Any:
        """The value ``key`` for this forward pass: registered with :meth:`derive`, or computed by ``compute`` on
        first use (lazily: inside a checkpointed block prefer :meth:`derive`)."""
        if key not in self._cache:
            self._cache[key] = (compute or self._derived[key])()
        return self._cache[key]

    def keep_counts(self, structure: str) -> torch.Tensor:
        """Units kept per row by the deterministic mask of ``structure``.

        The learned count is the gate's :meth:`~lightning_prune.gates.Gate.learned_counts`: by default the expected
        number of kept units, ``round(Σ P(kept))`` per row (CoFi/FLOP; polarization: units above the valley);
        ``uniform=True`` uses the mean over layers in every layer; ``keep_units`` fixes it.
        """
        spec, gate = self.specs[structure], self.gates[structure]
        if structure in self.config.keep_units:
            return torch.full((spec.rows,), self.config.keep_units[structure], dtype=torch.long)
        expected = gate.learned_counts().detach().float()
        if self.config.uniform and spec.per_layer:
            expected = expected.mean().expand(spec.rows)
        return expected.round().long()

    @torch.no_grad()
    def deterministic_masks(self) -> dict[str, torch.Tensor]:
        """Binary eval-mode masks: the top :meth:`keep_counts` units per row by gate score, rounded to
        ``multiple_of`` and, with ``match_target``, corrected to meet the current target exactly
        (:func:`lightning_prune.selection.select_masks`).

        They depend on the gate parameters only (never on a batch) and are cached until those change.
        """
        key = tuple((name, p._version, p.data_ptr()) for name, p in self.state.named_parameters())
        key += (self.config.uniform, self.config.match_target, self.phase, self.current_target())
        key += tuple(sorted(self.config.keep_units.items())) + tuple(sorted(self.config.multiple_of.items()))
        if self._deterministic_cache is not None and self._deterministic_cache[0] == key:
            return self._deterministic_cache[1]
        start = {name: gate.deterministic(self.keep_counts(name)) for name, gate in self.gates.items()}
        scores = {name: gate.score().detach() for name, gate in self.gates.items()}
        match = self.config.match_target and self.phase != "dense"
        options = dict(
            metric=self.config.target,
            match_target=match,
            uniform=self.config.uniform,
            multiple_of=self.config.multiple_of,
        )
        masks = select_masks(
            start, scores, self.specs, self.cost, self.current_target(), fixed=set(self.config.keep_units), **options
        )
        if self.config.uniform:  # a shape the family's standard config can express
            adjusted = self.adapter.uniform_masks(masks, scores, set(self.config.keep_units))
            changed = {name for name in masks if adjusted[name] is not masks[name]}
            if changed and match:  # the adapter moved some counts: the others meet the target around them
                fixed = set(self.config.keep_units) | changed | ({"heads"} if "hidden" in changed else set())
                adjusted = select_masks(
                    adjusted, scores, self.specs, self.cost, self.current_target(), fixed=fixed, **options
                )
            masks = adjusted
        masks = {name: self.gates[name].eval_values(m) for name, m in masks.items()}  # e.g. γ · binary (polarization)
        self._deterministic_cache = (key, masks)
        return masks
