"""Evaluation must work without the training stack: scoring a run never loads torch or transformers."""

from __future__ import annotations

import subprocess
import sys


def test_evaluation_imports_no_torch_or_transformers() -> None:
    code = ("import sys; import tunesmith.evaluation.metrics, tunesmith.evaluation.plots, "
            "tunesmith.evaluation.baselines, tunesmith.evaluation.report; "
            "print(sorted(m for m in ('torch', 'transformers', 'matplotlib.pyplot') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
