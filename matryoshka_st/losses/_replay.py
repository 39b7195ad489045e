"""The replay path of :class:`~matryoshka_st.losses.MatryoshkaLoss`, for losses that only expose ``forward``: the
encoder runs once (for the largest dim) and its outputs are replayed, truncated, for the others."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

from torch import Tensor

from matryoshka_st.dims import truncate

_MISSING = object()


@contextmanager
def patched(obj: Any, name: str, value: Any):
    """Set an instance attribute for the duration of a block, then restore exactly what was there before (another
    modifier such as ``AdaptiveLayerLoss`` may have patched the same attribute)."""
    previous = obj.__dict__.get(name, _MISSING)
    setattr(obj, name, value)
    try:
        yield
    finally:
        if previous is _MISSING:
            delattr(obj, name)
        else:
            setattr(obj, name, previous)


class CachedForward:
    """Replaces ``model.forward`` for losses that only expose ``forward``: the first pass (the largest dim)
    runs the encoder and keeps its outputs; later passes replay them, truncated to the current dim.

    Calls are matched by order, which is deterministic within one ``loss.forward``.
    """

    def __init__(self, forward: Callable[[dict[str, Tensor]], dict[str, Tensor]]) -> None:
        self.forward = forward
        self.outputs: list[dict[str, Tensor]] = []
        self.full: list[Tensor] = []
        self.recording = True
        self.index = 0
        self.dim: int | None = None
        self.transform: Callable[[Tensor], Tensor] | None = None
        self.renormalise = True

    def start(self, dim: int, transform: Callable[[Tensor], Tensor] | None = None, renormalise: bool = True) -> None:
        """Begin the pass at ``dim``; ``transform`` is applied to each truncated embedding (e.g. fake quantization).
        ``renormalise=False`` hands out the prefix as it is, for a loss that reads it only through cosines."""
        self.dim = dim
        self.transform = transform
        self.renormalise = renormalise
        self.index = 0
        self.recording = not self.outputs

    def __call__(self, features: dict[str, Tensor], *args: Any, **kwargs: Any) -> dict[str, Tensor]:
        if self.recording:
            output = self.forward(features, *args, **kwargs)
            self.outputs.append(output)
            self.full.append(output["sentence_embedding"])
        else:
            if self.index >= len(self.outputs):
                raise RuntimeError(
                    "The inner loss embedded more inputs for a smaller Matryoshka dimension than for the first one; "
                    "its forward pass is not deterministic in the number of encoder calls."
                )
            output = self.outputs[self.index]
        embedding = self.full[self.index] if not self.recording else output["sentence_embedding"]
        self.index += 1
        # A shallow copy: the inner loss may write into the dict, and every dim must start from the full embedding.
        truncated = truncate(embedding, self.dim) if self.renormalise else embedding[..., : self.dim]
        return {**output, "sentence_embedding": truncated if self.transform is None else self.transform(truncated)}


class RepeatedForward:
    """Replaces the ``forward`` of a helper model the inner loss runs besides the trained one (``GISTEmbedLoss``'s
    guide): it sees the same full inputs at every dim, so the first pass runs it and later passes get the same
    outputs back. Calls are matched by order; a call whose ``input_ids`` differ in shape from the recorded one runs
    the helper."""

    def __init__(self, forward: Callable[..., dict[str, Tensor]]) -> None:
        self.forward = forward
        self.outputs: list[tuple[Any, dict[str, Tensor]]] = []
        self.recording = True
        self.index = 0

    def start(self) -> None:
        self.recording = not self.outputs
        self.index = 0

    def __call__(self, features: dict[str, Tensor], *args: Any, **kwargs: Any) -> dict[str, Tensor]:
        shape = getattr(features.get("input_ids"), "shape", None)
        if not self.recording and self.index < len(self.outputs) and self.outputs[self.index][0] == shape:
            output = self.outputs[self.index][1]
        else:
            output = self.forward(features, *args, **kwargs)
            if self.recording:
                self.outputs.append((shape, output))
        self.index += 1
        return {**output}  # a shallow copy, as CachedForward gives: the inner loss may write into the dict


class NoHelper:
    """What :class:`RepeatedForward` stands in for when the inner loss has no helper model: nothing to restart."""

    def start(self) -> None:
        pass
