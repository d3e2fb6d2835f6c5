"""Models: the CPC network (:class:`CPCModel`) and loading pretrained ones (:func:`load_cpc`)."""

from cpc_fast.models.cpc import CPCConfig, CPCModel, CPCOutput
from cpc_fast.models.loading import load_cpc, save_cpc
from cpc_fast.models.recognizer import EmotionRecognizer, RecognizerConfig  # noqa: F401

__all__ = ["CPCConfig", "CPCModel", "CPCOutput", "load_cpc", "save_cpc"]
