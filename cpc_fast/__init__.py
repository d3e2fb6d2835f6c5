"""cpc-fast: fast contrastive predictive coding for speech emotion recognition."""

__version__ = "0.1.0"
