"""ATP: All-in-One Tuning and Structural Pruning (Lu et al., arXiv 2412.14426).

* :class:`ATPConfig`: the method config (``lightning_prune.attach(model, ATPConfig(...))``).
* :class:`ATPController`: the alternating generator / LoRA updates with the asymmetric forward.
* :func:`register_atp_layout`: teach ATP which LoRA rows/columns belong to a new family's units.
"""

from lightning_prune.methods.atp.config import ATPConfig
from lightning_prune.methods.atp.controller import ATPController
from lightning_prune.methods.atp.layout import Coupling, couplings, register_atp_layout

__all__ = ["ATPConfig", "ATPController", "Coupling", "couplings", "register_atp_layout"]
