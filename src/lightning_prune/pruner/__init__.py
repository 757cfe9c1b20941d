"""The plain-PyTorch API: :func:`attach` gates to a model and get a :class:`Pruner` back.

Example::

    import lightning_prune as lp

    pruner = lp.attach(model, lp.L0Config(target_sparsity=0.5, structures=("heads", "ffn")))
    optimizer = torch.optim.AdamW(pruner.param_groups(lr=2e-5, weight_decay=0.01))
    for batch in loader:
        loss = model(**batch).loss + pruner.penalty()
        loss.backward()
        optimizer.step()
        pruner.step()          # clamps the gates, advances the target schedule
        optimizer.zero_grad()
    compact = pruner.export()  # LoRA merged, gates folded, pruned structure removed, checked
    pruner.save_compact("compact/")
"""

from lightning_prune.pruner.core import Pruner, attach
from lightning_prune.pruner.state import STATE_ATTRIBUTE, PruningState
from lightning_prune.pruner.stats import _binary  # noqa: F401 (imported by tests and benchmarks/scale.py)
from lightning_prune.pruner.training import PHASES

__all__ = ["PHASES", "STATE_ATTRIBUTE", "Pruner", "PruningState", "attach"]
