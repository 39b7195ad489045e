"""Quality against dimension: mteb evaluation at every Matryoshka dimension and precision, and its report.

Example:
    >>> from matryoshka_st.evaluation import compare, evaluate, render
    >>> runs = evaluate("path/to/model", ["path/to/beir_folder"], dims=[384, 128, 32], output_folder="eval_out")
    >>> report = render(["eval_out/results"], "eval_out/report")
"""

from __future__ import annotations

from matryoshka_st.evaluation.report import Report, render
from matryoshka_st.evaluation.run import RunResult, compare, evaluate
from matryoshka_st.evaluation.tasks import load_task

__all__ = ["Report", "RunResult", "compare", "evaluate", "load_task", "render"]
