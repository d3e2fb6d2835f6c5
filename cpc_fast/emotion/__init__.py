"""Speech emotion recognition experiments: the paper's four setups, predict, visualize.

from cpc_fast.config import experiment
from cpc_fast.emotion import run_experiment, load_model

results = run_experiment(experiment.tiny(setups=("sup", "joint"), out="exp"))
model = load_model("exp/sup/fold1/run1")  # or EmotionModel.from_pretrained(exported folder)
activation, valence, dominance = model.predict(wave)  # (n,) 16 kHz float32
"""

from cpc_fast.config.experiment import SETUP_NAMES, SETUPS, ExperimentConfig
from cpc_fast.emotion.launch import run_experiment
from cpc_fast.emotion.model_io import EmotionModel, load_model
from cpc_fast.emotion.report import aggregate, render_markdown, write_report

__all__ = [
    "SETUPS",
    "SETUP_NAMES",
    "EmotionModel",
    "ExperimentConfig",
    "aggregate",
    "load_model",
    "render_markdown",
    "run_experiment",
    "write_report",
]
