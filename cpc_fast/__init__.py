"""cpc-fast: fast contrastive predictive coding for speech emotion recognition."""

__version__ = "0.1.0"

# Each name from the module that defines it (no re-export hop between a name and its code).
from cpc_fast.losses.ccc import ccc, ccc_loss  # noqa: E402, F401  (public API)
from cpc_fast.losses.config import LossConfig  # noqa: E402, F401  (public API)
from cpc_fast.losses.cpc import CPCInfoNCEOutput, cpc_info_nce  # noqa: E402, F401  (public API)
from cpc_fast.losses.info_nce import (  # noqa: E402, F401  (public API)
    CPCInfoNCELoss,
    InfoNCELoss,
    info_nce,
)
from cpc_fast.models import CPCConfig, CPCModel, load_cpc  # noqa: E402, F401  (public API)
from cpc_fast.models.recognizer import EmotionRecognizer  # noqa: E402, F401  (public API)

# The public API: the names the documentation's API reference must render (tests/test_docs.py).
__all__ = [
    "CPCConfig",
    "CPCInfoNCELoss",
    "CPCInfoNCEOutput",
    "CPCModel",
    "EmotionRecognizer",
    "InfoNCELoss",
    "LossConfig",
    "ccc",
    "ccc_loss",
    "cpc_info_nce",
    "info_nce",
    "load_cpc",
]
