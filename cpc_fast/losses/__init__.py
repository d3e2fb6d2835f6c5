"""Losses: CPC's InfoNCE (fused Triton kernels or the plain-PyTorch reference), CCC.

``cpc_fast.losses.info_nce`` is the InfoNCE module (``from cpc_fast.losses import info_nce``
gives the module, as ``cpc-fast info`` expects); the general functional is
``cpc_fast.info_nce`` or ``cpc_fast.losses.info_nce.info_nce``.
"""

from cpc_fast.losses.backend import default_backend_name, fused_status
from cpc_fast.losses.ccc import CCCLoss, ccc, ccc_loss  # noqa: F401  (public API)
from cpc_fast.losses.cpc import CPCInfoNCEOutput, cpc_info_nce
from cpc_fast.losses.info_nce import CPCInfoNCELoss, InfoNCELoss
from cpc_fast.losses.negatives import (
    IGNORE_INDEX,
    masked_negatives,
    philox_negatives,
    sample_negatives,
)

__all__ = [
    "IGNORE_INDEX",
    "CPCInfoNCELoss",
    "CPCInfoNCEOutput",
    "InfoNCELoss",
    "cpc_info_nce",
    "default_backend_name",
    "fused_status",
    "masked_negatives",
    "philox_negatives",
    "sample_negatives",
]
