"""Publishing: a model card with quality by dimension, and the push to the Hugging Face Hub.

Example:
    >>> from matryoshka_st.hub import push
    >>> push("output/matryoshka-minilm/final", "you/minilm-matryoshka", results=["eval_out"], dry_run=True)  # doctest: +SKIP
"""

from __future__ import annotations

from matryoshka_st.hub.card import build_card
from matryoshka_st.hub.push import PushError, PushResult, build_upload_folder, push
from matryoshka_st.hub.results import CardError, EvalSummary, load_eval_results

__all__ = [
    "CardError",
    "EvalSummary",
    "PushError",
    "PushResult",
    "build_card",
    "build_upload_folder",
    "load_eval_results",
    "push",
]
