"""Quality against dimension: mteb evaluation at every Matryoshka dimension and precision, and its report.

Example:
    >>> from matryoshka_st.evaluation import compare, evaluate, render
    >>> runs = evaluate("path/to/model", ["path/to/beir_folder"], dims=[384, 128, 32], output_folder="eval_out")
    >>> report = render(["eval_out/results"], "eval_out/report")
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from matryoshka_st.evaluation.quality import QualityByDim

if TYPE_CHECKING:
    from matryoshka_st.evaluation.report import Report, render
    from matryoshka_st.evaluation.run import RunResult, compare, evaluate
    from matryoshka_st.evaluation.tasks import load_task

# mteb loads slowly: the names that need it are imported on first use, so `quality` is cheap to import
_LAZY = {
    "Report": "report",
    "render": "report",
    "RunResult": "run",
    "compare": "run",
    "evaluate": "run",
    "load_task": "tasks",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"matryoshka_st.evaluation.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["QualityByDim", "Report", "RunResult", "compare", "evaluate", "load_task", "render"]
