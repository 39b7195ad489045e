"""Which path ``MatryoshkaLoss`` takes for an inner loss, decided from the loss class's contract.

``tests/losses/test_loss_paths.py`` classifies every loss class sentence-transformers exports, so a new upstream loss
cannot silently take the slow path.
"""

from __future__ import annotations

import dis


def computes_from_embeddings(loss_class: type) -> bool:
    """Whether ``loss_class.forward`` only embeds the columns and returns
    ``compute_loss_from_embeddings(embeddings, labels)``: then MatryoshkaLoss embeds once and hands over truncated
    copies. Decided from the code of ``forward`` (the names it uses and that it passes ``labels`` on), so a new
    upstream loss with that contract takes the fast path and a subclass that overrides ``forward`` does not."""
    forward = getattr(loss_class, "forward", None)
    code = getattr(forward, "__code__", None)
    if code is None or not callable(getattr(loss_class, "compute_loss_from_embeddings", None)):
        return False
    names = set(code.co_names)
    loaded = {i.argval for i in dis.get_instructions(code) if i.opname.startswith("LOAD_FAST")}
    return "compute_loss_from_embeddings" in names and names <= _EMBED_NAMES and "labels" in loaded


_EMBED_NAMES = {"embed_columns", "model", "sentence_embedder", "compute_loss_from_embeddings"}


def loss_path(loss_class: type) -> str:
    """How :class:`MatryoshkaLoss` runs an inner loss of this class: ``"gradient_cache"`` (GradCache losses: their
    ``calculate_loss`` is wrapped), ``"embeddings"`` (one encoder pass, truncated copies) or ``"replay"`` (the
    encoder's outputs recorded once and replayed truncated for the smaller dims)."""
    if getattr(loss_class, "uses_gradient_cache", False) is True:
        return "gradient_cache"
    return "embeddings" if computes_from_embeddings(loss_class) else "replay"


__all__ = ["computes_from_embeddings", "loss_path"]
