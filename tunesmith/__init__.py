"""tunesmith: a self-hosted fine-tuning workbench for open language models."""

__version__ = "0.1.0"
