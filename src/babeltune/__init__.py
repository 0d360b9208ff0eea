"""babeltune: fine-tune LLMs for a specific language, with every hyperparameter measured and explained."""

__version__ = "0.1.0"
