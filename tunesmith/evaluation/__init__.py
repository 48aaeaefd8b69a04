"""Evaluation of predictions: numbers, pictures, baselines and the report people read.

Everything here works on plain lists and numpy arrays (no torch, no transformers), so a run's
predictions can be scored, compared with cheap baselines and reported without loading a model.

    metrics.py    classification / multi-label / regression metrics, confusion text, worst examples
    plots.py      confusion matrix, predicted-vs-true scatter, residual histogram (PNG)
    baselines.py  majority (or mean) and TF-IDF + linear model: the bar a fine-tune must clear
    report.py     report.json|md|html for one evaluation; side-by-side comparison of two

Submodules are imported on demand (sklearn and matplotlib take a moment to load).
"""
