"""Losses: CPC's InfoNCE (fused Triton kernels or the plain-PyTorch reference).

``cpc_fast.losses.info_nce`` is the InfoNCE module (``from cpc_fast.losses import info_nce``
gives the module, as ``cpc-fast info`` expects); the general functional is
``cpc_fast.info_nce`` or ``cpc_fast.losses.info_nce.info_nce``.
"""

from cpc_fast.losses.ccc import CCCLoss, ccc, ccc_loss  # noqa: F401  (public API)
from cpc_fast.losses.info_nce import (
    CPCInfoNCELoss,
    CPCInfoNCEOutput,
    InfoNCELoss,
    cpc_info_nce,
    default_backend_name,
    fused_status,
)
from cpc_fast.losses.negatives import philox_negatives, sample_negatives

__all__ = [
    "CPCInfoNCELoss",
    "CPCInfoNCEOutput",
    "InfoNCELoss",
    "cpc_info_nce",
    "default_backend_name",
    "fused_status",
    "philox_negatives",
    "sample_negatives",
]
