"""FSDP2 (``torch.distributed.fsdp.fully_shard``) for a gated model: :func:`shard_` and :class:`ShardedPruner`.

FSDP2 shards the model's weights across ranks and all-gathers each block's weights for its forward and backward.
The masks act on module *inputs and outputs* (forward hooks on ``o_proj``, ``down_proj``, the norms), never on a
weight tensor, so they act on the live, unsharded computation whatever FSDP does to the parameters, LoRA-wrapped
modules included. What needs care is the pruning state (``model.pruning_gates``: gates and Lagrange multipliers):

- **It is kept out of the shards** (``fully_shard(..., ignored_params=...)``) and replicated: it is tiny, and the
  pruner reads it outside any forward (the penalty, the deterministic masks, the statistics, the export), where
  a sharded parameter would be a ``DTensor`` shard.
- **Its gradients are averaged across ranks** at the end of every backward, since FSDP leaves ignored parameters
  alone (DDP would have all-reduced them). The average is linear, so gradient accumulation stays exact.
- **Every rank samples the same masks**: each training forward draws them from a seed derived from ``seed``, the
  pruning step and the forward's index within that step (as :class:`~lightning_prune.PruningCallback` does per
  batch), unless something else (the callback) sets ``pruner.sample_seed``.
- **Export** gathers a full state dict (collective) and rank 0 exports from a replica of the model made at
  :func:`shard_` time on the meta device (no weight memory until the export), checked as usual.

Works on CPU with gloo and on CUDA with NCCL. FSDP1 (``FullyShardedDataParallel``, Lightning's ``FSDPStrategy``)
needs an accelerator: see :class:`~lightning_prune.PruningCallback` for Lightning's FSDP2 route
(``ModelParallelStrategy``).

Example::

    import torch.distributed as dist
    import lightning_prune as lp
    from lightning_prune.integrations.fsdp import shard_

    dist.init_process_group("nccl")  # or "gloo" on CPU
    model = get_peft_model(LlamaForCausalLM.from_pretrained(path), lora_config)  # LoRA first
    pruner = lp.attach(model, lp.L0Config(target_sparsity=0.3, structures=("heads", "ffn")))
    sharded = shard_(model, pruner)  # fully_shard on every decoder layer and on the root
    optimizer = torch.optim.AdamW(pruner.param_groups(lr=2e-4))  # after shard_: the DTensor parameters
    for batch in loader:  # each rank its own part of the global batch
        loss = model(**batch).loss + pruner.penalty()
        loss.backward()  # FSDP reduce-scatters the weights' gradients, shard_ averages the gates'
        optimizer.step()
        pruner.step()
        optimizer.zero_grad()
    sharded.save_compact("compact/")  # on every rank: gathers the weights, rank 0 exports and writes
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from lightning_prune.errors import AttachStateError, PruningConfigError
from lightning_prune.integrations.schedule import sampling_seed
from lightning_prune.pruner import STATE_ATTRIBUTE, Pruner, PruningState

_SHARDED: weakref.WeakKeyDictionary[Pruner, ShardedPruner] = weakref.WeakKeyDictionary()


def find_pruner(model: nn.Module) -> Pruner:
    """The :class:`Pruner` whose gates are attached to ``model`` (``model.pruning_gates``).

    Raises:
        AttachStateError: no gates are attached to ``model``.
    """
    state = getattr(model, STATE_ATTRIBUTE, None)
    if isinstance(state, PruningState):
        for module in model.modules():
            for hook in module._forward_pre_hooks.values():
                owner = getattr(hook, "__self__", None)
                if isinstance(owner, Pruner) and owner.state is state:
                    return owner
    raise AttachStateError(
        f"No gates are attached to this {type(model).__name__} (no `model.{STATE_ATTRIBUTE}` with its pruner's "
        "hooks). Call `lightning_prune.attach(model, config)` (or let PruningCallback attach) before `shard_`."
    )


def sharding_of(pruner: Pruner) -> ShardedPruner | None:
    """The :class:`ShardedPruner` that :func:`shard_` made for ``pruner``, or ``None`` if it was not sharded."""
    return _SHARDED.get(pruner)


def shard_(
    model: nn.Module,
    pruner: Pruner | None = None,
    *,
    mesh: Any = None,
    layers: Iterable[nn.Module] | None = None,
    seed: int | None = 0,
    **fully_shard_kwargs: Any,
) -> ShardedPruner:
    """Apply FSDP2's ``fully_shard`` to every decoder layer and to ``model``, keeping the pruning state replicated.

    Call it after :func:`~lightning_prune.attach` (and after peft), before building the optimizer, on every rank
    (under Lightning's ``ModelParallelStrategy``: in ``configure_model``, with ``mesh=self.device_mesh``).

    Args:
        model: the model the gates are attached to (the one passed to ``attach``, e.g. a peft ``PeftModel``).
        pruner: its pruner; found from ``model`` when ``None``.
        mesh: the FSDP ``DeviceMesh`` (1-D, or 2-D for HSDP); ``None`` shards over the default process group.
        layers: the modules to shard one by one; by default the adapter's decoder layers (``adapter.layers``).
        seed: base seed of the mask samples (identical on every rank); ``None`` leaves ``pruner.sample_seed`` to
            you. A seed you (or ``PruningCallback``) set is never overwritten.
        **fully_shard_kwargs: passed to every ``fully_shard`` call (``reshard_after_forward``, ``mp_policy``,
            ``offload_policy``...).

    Returns:
        The :class:`ShardedPruner`, which exports from the sharded model.

    Raises:
        PruningConfigError: ``torch.distributed`` is not initialised, ``ignored_params`` was passed, or the adapter
            has no decoder layers to shard and ``layers`` was not given.
        AttachStateError: no gates are attached to ``model``, or the model is already sharded.
    """
    from torch.distributed.fsdp import FSDPModule, fully_shard

    pruner = pruner if pruner is not None else find_pruner(model)
    if pruner.model is not model:
        raise AttachStateError(
            f"`model` ({type(model).__name__}) is not the model the pruner is attached to "
            f"({type(pruner.model).__name__}). Pass the model given to `attach` (with peft: the PeftModel)."
        )
    if not dist.is_available() or not dist.is_initialized():
        raise PruningConfigError(
            "`shard_` needs torch.distributed: call `torch.distributed.init_process_group('nccl')` (or 'gloo' on "
            "CPU) on every rank first, e.g. under `torchrun`."
        )
    if "ignored_params" in fully_shard_kwargs:
        raise PruningConfigError(
            "`shard_` sets `ignored_params` itself (the pruning state); got `ignored_params` in its arguments. "
            "Shard your other modules with your own `fully_shard` calls before `shard_`."
        )
    if any(isinstance(m, FSDPModule) for m in model.modules() if m is model) or isinstance(model, FSDPModule):
        raise AttachStateError("`model` is already sharded (fully_shard was applied to it); call `shard_` instead.")
    if layers is None:
        layers = getattr(pruner.adapter, "layers", None)
        if layers is None:
            raise PruningConfigError(
                f"The {pruner.adapter.name} adapter does not name decoder layers; pass `layers=` (the blocks to shard "
                "one by one, e.g. `model.model.layers`)."
            )
    replica = _meta_replica(model, pruner)
    ignored = set(pruner.state.parameters())
    for layer in layers:
        fully_shard(layer, mesh=mesh, ignored_params=ignored, **fully_shard_kwargs)
    fully_shard(model, mesh=mesh, ignored_params=ignored, **fully_shard_kwargs)
    sharded = ShardedPruner(pruner, mesh, replica, seed)
    _SHARDED[pruner] = sharded
    return sharded


class ShardedPruner:
    """A pruner whose model FSDP2 shards: averages the gate gradients, seeds the samples, exports on rank 0.

    Made by :func:`shard_`; :func:`sharding_of` finds it from the pruner.
    """

    def __init__(self, pruner: Pruner, mesh: Any, replica: tuple[nn.Module, Pruner], seed: int | None) -> None:
        self.pruner = pruner
        self.mesh = mesh
        self._replica = replica
        self._seed = seed
        self._pending = False
        self._written: int | None = None  # the last sample seed this object set
        self._counter = (-1, 0)  # (pruning step, training forwards in that step)
        self._handles = [p.register_post_accumulate_grad_hook(self._on_gradient) for p in pruner.state.parameters()]
        if seed is not None:
            root = pruner.adapter.root_module()
            self._handles.append(root.register_forward_pre_hook(self._set_seed, prepend=True))

    @property
    def model(self) -> nn.Module:
        return self.pruner.model

    # -- gradients -------------------------------------------------------------------------------
    def _on_gradient(self, param: torch.Tensor) -> None:
        # once per backward, after every gradient (FSDP's reduce-scatters included) is done: one flat all-reduce
        if not self._pending:
            self._pending = True
            torch.autograd.Variable._execution_engine.queue_callback(self.sync_gradients_)

    @torch.no_grad()
    def sync_gradients_(self) -> None:
        """Average the gradients of the pruning state across ranks, in place (every rank must call it).

        Runs by itself at the end of every backward; call it yourself only after changing gradients by hand.
        """
        self._pending = False
        grads = [p.grad for p in self.pruner.state.parameters() if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        for group, size in self._groups():
            dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)  # gloo has no AVG
            flat /= size
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    def _groups(self) -> list[tuple[Any, int]]:
        if self.mesh is None:
            return [(None, dist.get_world_size())]
        return [(self.mesh.get_group(d), self.mesh.size(d)) for d in range(self.mesh.ndim)]  # HSDP: mean of means

    # -- samples ---------------------------------------------------------------------------------
    def _set_seed(self, module: nn.Module, args: Any) -> None:
        pruner = self.pruner
        sampling = module.training if pruner.mask_sampling is None else pruner.mask_sampling
        if pruner.phase != "prune" or not sampling:
            return
        if pruner.sample_seed is not None and pruner.sample_seed != self._written:
            return  # set by someone else (PruningCallback, the user): theirs
        step = pruner.pruning_step
        index = self._counter[1] if self._counter[0] == step else 0
        self._counter = (step, index + 1)
        pruner.sample_seed = self._written = sampling_seed(self._seed, step, index)

    # -- export ----------------------------------------------------------------------------------
    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The model's full state dict on the CPU of rank 0 (empty on the other ranks); every rank must call it."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_model_state_dict(self.model, options=options)

    def export(self, check: bool = True) -> nn.Module | None:
        """:meth:`Pruner.export` of the sharded model: the compact model on rank 0, ``None`` on the others.

        Every rank must call it (the weights are gathered to rank 0's CPU); rank 0 loads them into the replica made
        at :func:`shard_` and exports it with the same checks. ``pruner.last_report`` is set on rank 0. An export
        error is raised on rank 0 only (the others have returned): see :meth:`save_compact` for a collective one.
        """
        state = self.full_state_dict()
        return self._export_from(state, check) if dist.get_rank() == 0 else None

    def save_compact(self, path: str | Path, overwrite: bool = False, **kwargs: Any) -> Path | None:
        """Export and write the compact model to ``path`` on rank 0; every rank must call it, and a failure on rank 0
        (a non-empty directory, a failed check) raises on every rank. Returns the path on rank 0, ``None``
        elsewhere. ``kwargs`` go to :meth:`Pruner.save_compact` (``max_shard_size``)."""
        from lightning_prune.export.io import check_export_dir

        path, rank0 = Path(path), dist.get_rank() == 0
        out, error = None, None
        if rank0:
            try:
                check_export_dir(path, overwrite)  # before gathering the weights
            except Exception as e:
                error = e
        _raise_on_every_rank(error)
        state = self.full_state_dict()
        if rank0:
            try:
                compact = self._export_from(state)
                out = self.pruner.save_compact(path, overwrite=overwrite, compact=compact, **kwargs)
            except Exception as e:
                error = e
        del state
        _raise_on_every_rank(error)
        return out

    def _export_from(self, state: dict[str, torch.Tensor], check: bool = True) -> nn.Module:
        replica, replica_pruner = self._materialise(state)
        try:
            compact = replica_pruner.export(check=check)
        finally:
            replica.to("meta")  # no second copy of the weights kept between exports
        self.pruner.last_report = replica_pruner.last_report
        return compact

    def _materialise(self, state: dict[str, torch.Tensor]) -> tuple[nn.Module, Pruner]:
        replica, replica_pruner = self._replica
        replica.load_state_dict(state, strict=True, assign=True)
        live_buffers = dict(self.model.named_buffers())
        for name, buffer in list(replica.named_buffers()):  # non-persistent buffers (rotary inv_freq): not in state
            if buffer.is_meta:
                owner, _, leaf = name.rpartition(".")
                replica.get_submodule(owner)._buffers[leaf] = live_buffers[name].detach().to("cpu", copy=True)
        live = self.pruner
        replica_pruner.phase = live.phase
        for field in type(live.config).live_fields:
            setattr(replica_pruner.config, field, getattr(live.config, field))
        return replica, replica_pruner

    def remove(self) -> None:
        """Stop averaging gradients and seeding samples (the model stays sharded)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        _SHARDED.pop(self.pruner, None)


def _meta_replica(model: nn.Module, pruner: Pruner) -> tuple[nn.Module, Pruner]:
    """A deep copy of ``(model, pruner)`` with every weight and buffer on the meta device (no memory): the model
    the export loads the gathered weights into. The pruning state is copied for real (small)."""
    own = {id(t) for t in list(pruner.state.parameters()) + list(pruner.state.buffers())}
    memo: dict[int, Any] = {}
    for p in model.parameters():
        if id(p) not in own:
            memo[id(p)] = nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
    for b in model.buffers():
        if id(b) not in own:
            memo[id(b)] = torch.empty_like(b, device="meta")
    return copy.deepcopy((model, pruner), memo)


def _raise_on_every_rank(error: Exception | None) -> None:
    """Rank 0's ``error`` (or ``None``) decides for every rank: all raise or none does, so none waits forever."""
    failed = [error is not None]
    dist.broadcast_object_list(failed, src=0)
    if failed[0]:
        if error is not None:
            raise error
        raise RuntimeError("lightning-prune: the export failed on rank 0 (see its error); nothing was exported.")
