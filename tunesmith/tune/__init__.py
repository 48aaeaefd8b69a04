"""Improving a model after it is trained: hyperparameter search and retraining from feedback.

    study.py     `tunesmith tune`: an Optuna study, each trial a real training run, pruned on validation
    report.py    the study's report: history, importances, parallel coordinates, Pareto front, trials
    retrain.py   `tunesmith retrain`: production version + corrections -> candidate, judged, promoted or not
    trigger.py   `tunesmith retrain --if-needed`: enough new corrections, or drift past its threshold
"""
