"""Matryoshka-Adaptor (Yoon et al., 2024, arXiv:2407.20243): make frozen embeddings truncatable with a small
residual MLP trained on the embeddings alone.

``f(x) = z + W2 relu(W1 z + b1) + b2`` with ``z = R x``, where ``R`` is a PCA rotation fitted on the same embeddings
(:mod:`matryoshka_st.posthoc.pca`; orthogonal, so it changes no similarity, but it gives the MLP a start where the
prefixes already hold the most variance; ``pca_init=False`` uses ``R = I`` as in the paper). The MLP starts at zero
(``W2 = 0``) and is trained so that, at every nested
dimension ``m``, cosine similarities between the first ``m`` coordinates of adapted embeddings match the full-size
similarities of the original ones:

- top-k loss: ``|cos(x_i, x_j) - cos(f(x_i)[:m], f(x_j)[:m])|`` for each ``x_j`` among the ``k`` nearest neighbours of
  ``x_i`` in the whole fitting set (the pairs that decide a search result);
- pairwise loss: the same over all pairs of a random batch (the global shape of the space);
- reconstruction loss: ``|f(x) - x|``, a small regulariser that keeps the adapted space near the original;
- optionally, supervised: for ``(anchor, positive)`` embedding pairs, an in-batch multiple-negatives ranking loss
  (cross-entropy over scaled cosine similarities, as sentence-transformers' ``MultipleNegativesRankingLoss``) on the
  truncated adapted embeddings at each dimension.

The encoder is never run during fitting, so it works on stored or API embeddings (numpy in, numpy out). For a
sentence-transformers model the fitted adaptor is exported as two plain ``Dense`` modules (see
:meth:`MatryoshkaAdaptor.to_modules`), so the adapted model loads with a bare ``SentenceTransformer(path)`` and works
with ``truncate_dim``. What is written here and not reused: the three similarity-preservation losses, the exact
residual export to ``Dense`` modules, and a small training loop (the sentence-transformers trainer needs an encoder
and a dataset of texts; here the inputs are fixed vectors and one step takes milliseconds).

Example:
    >>> adaptor = MatryoshkaAdaptor.fit(corpus_embeddings, dims=[384, 256, 128, 64, 32])
    >>> small = truncate_numpy(adaptor.transform(query_embeddings), 64)
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sentence_transformers import SentenceTransformer
from sentence_transformers.base.modules import Dense, Normalize
from torch import Tensor, nn
from tqdm.auto import tqdm

from matryoshka_st.dims import default_dims, full_embedding_dim, truncate, validate_dims
from matryoshka_st.posthoc.adaptor_config import AdaptorConfig, resolve_config
from matryoshka_st.posthoc.pca import check_embeddings, encode_full, fit_pca_rotation, rotation_module

logger = logging.getLogger(__name__)

CONFIG_NAME = "adaptor_config.json"
WEIGHTS_NAME = "adaptor.safetensors"


class MatryoshkaAdaptor(nn.Module):
    """A residual MLP ``f(x) = z + W2 relu(W1 z + b1) + b2``, ``z = R x``, on ``dim``-dimensional embeddings, with
    ``R`` a fixed orthogonal rotation (the identity unless ``rotate``) and ``W2 = 0`` at the start. Fit it with
    :meth:`fit`; apply it with :meth:`transform` (numpy) or ``forward`` (torch)."""

    def __init__(
        self, dim: int, hidden_dim: int | None = None, dims: Sequence[int] | None = None, rotate: bool = False
    ) -> None:
        super().__init__()
        if dim < 1:
            raise ValueError(f"dim must be a positive integer, got {dim!r}.")
        self.dim = int(dim)
        self.hidden_dim = int(hidden_dim or dim)
        self.dims = validate_dims(dims, full_dim=self.dim)[0] if dims else default_dims(self.dim)
        self.up = nn.Linear(self.dim, self.hidden_dim)
        self.down = nn.Linear(self.hidden_dim, self.dim)
        nn.init.zeros_(self.down.weight)
        nn.init.zeros_(self.down.bias)
        self.rotate = rotate
        self.register_buffer("rotation", torch.eye(self.dim) if rotate else None)

    def forward(self, embeddings: Tensor) -> Tensor:
        if self.rotation is not None:
            embeddings = embeddings @ self.rotation.T
        return embeddings + self.down(F.relu(self.up(embeddings)))  # (N, D)

    # -------------------------------------------------------------------------------------------------- numpy API

    @classmethod
    def fit(
        cls,
        embeddings: np.ndarray,
        dims: Sequence[int] | None = None,
        pairs: tuple[np.ndarray, np.ndarray] | None = None,
        config: AdaptorConfig | None = None,
        **overrides: Any,
    ) -> MatryoshkaAdaptor:
        """Train an adaptor on ``embeddings`` so their prefixes at each of ``dims`` keep the full similarities.

        Args:
            embeddings: ``(N, D)`` frozen embeddings of the target domain (e.g. the corpus to be searched, plus
                sample queries if there are any). A few thousand suffice; neighbour search costs ``O(N^2 D)``.
            dims: the nested dimensions to preserve, e.g. ``[384, 256, 128, 64, 32]`` (default: ``D`` and the
                powers of two below it down to 32).
            pairs: optional ``(anchor_embeddings, positive_embeddings)``, each ``(P, D)``, for the supervised
                ranking loss.
            config: training settings; ``overrides`` replace single fields, e.g. ``steps=500``.

        Returns:
            The fitted adaptor (on CPU, in eval mode).

        Example:
            >>> adaptor = MatryoshkaAdaptor.fit(np.random.randn(2000, 64), dims=[64, 32, 16], steps=100)
            >>> adaptor.transform(np.random.randn(5, 64)).shape
            (5, 64)
        """
        config = resolve_config(config, overrides)
        x = check_embeddings(embeddings)
        n, dim = x.shape
        dims = validate_dims(dims, full_dim=dim)[0] if dims is not None else default_dims(dim)
        if n < 2:
            raise ValueError(f"Need at least 2 embeddings to fit an adaptor, got {n}.")
        if pairs is not None:
            if len(pairs) != 2:
                raise ValueError("pairs must be (anchor_embeddings, positive_embeddings).")
            anchors = check_embeddings(pairs[0], "pairs[0] (anchors)", dim)
            positives = check_embeddings(pairs[1], "pairs[1] (positives)", dim)
            if len(anchors) != len(positives):
                raise ValueError(f"pairs hold {len(anchors)} anchors but {len(positives)} positives: pass one each.")
        if n < 10 * config.k:
            logger.warning("Fitting an adaptor on only %d embeddings; a few thousand give a far better fit.", n)

        with _torch_threads(config.num_threads):
            return cls._fit(x, dims, None if pairs is None else (anchors, positives), config)

    @classmethod
    def _fit(
        cls, x: np.ndarray, dims: list[int], pairs: tuple[np.ndarray, np.ndarray] | None, config: AdaptorConfig
    ) -> MatryoshkaAdaptor:
        n, dim = x.shape
        torch.manual_seed(config.seed)
        generator = torch.Generator().manual_seed(config.seed)
        adaptor = cls(dim, config.hidden_dim, dims, rotate=config.pca_init)
        if config.pca_init:
            adaptor.rotation.copy_(torch.from_numpy(fit_pca_rotation(x)))
        data = torch.from_numpy(x)  # (N, D)
        unit = F.normalize(data, dim=-1)
        k = min(config.k, n - 1)
        neighbours = _nearest_neighbours(unit, k, show_progress_bar=config.show_progress_bar)  # (N, k)
        batch_size = min(config.batch_size, n)
        pair_data = None if pairs is None else (torch.from_numpy(pairs[0]), torch.from_numpy(pairs[1]))

        optimizer = torch.optim.AdamW(adaptor.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, config.steps) / config.steps))
        )
        adaptor.train()
        start = time.monotonic()
        bar = tqdm(range(config.steps), desc="Fitting Matryoshka-Adaptor", disable=not config.show_progress_bar)
        for step in bar:
            rows = torch.randperm(n, generator=generator)[:batch_size]  # (B,)
            losses = adaptor._losses(data, unit, rows, neighbours[rows], dims, config, pair_data, generator)
            loss = sum(losses.values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            if step % 50 == 0:
                bar.set_postfix({name: f"{value.item():.4f}" for name, value in losses.items()})
            if config.max_seconds is not None and time.monotonic() - start > config.max_seconds:
                logger.info(
                    "Adaptor fit stopped after %d of %d steps (max_seconds=%s).",
                    step + 1,
                    config.steps,
                    config.max_seconds,
                )
                break
        bar.close()
        return adaptor.eval()

    def _losses(
        self,
        data: Tensor,
        unit: Tensor,
        rows: Tensor,
        neighbours: Tensor,
        dims: list[int],
        config: AdaptorConfig,
        pairs: tuple[Tensor, Tensor] | None,
        generator: torch.Generator,
    ) -> dict[str, Tensor]:
        batch, k = neighbours.shape
        anchors = self(data[rows])  # (B, D)
        near = self(data[neighbours.reshape(-1)]).reshape(batch, k, -1)  # (B, k, D)
        target_near = torch.einsum("bd,bkd->bk", unit[rows], unit[neighbours])  # (B, k)
        target_pair = unit[rows] @ unit[rows].T  # (B, B)
        off_diagonal = ~torch.eye(batch, dtype=torch.bool)
        losses = {
            "topk": anchors.new_zeros(()),
            "pairwise": anchors.new_zeros(()),
            "supervised": anchors.new_zeros(()),
        }
        if pairs is not None:
            pick = torch.randperm(len(pairs[0]), generator=generator)[: config.batch_size]
            adapted_anchors, adapted_positives = self(pairs[0][pick]), self(pairs[1][pick])
            labels = torch.arange(len(pick))
        for dim in dims:
            a = truncate(anchors, dim)
            losses["topk"] += (target_near - torch.einsum("bd,bkd->bk", a, truncate(near, dim))).abs().mean()
            losses["pairwise"] += (target_pair - a @ a.T).abs()[off_diagonal].mean()
            if pairs is not None:
                scores = truncate(adapted_anchors, dim) @ truncate(adapted_positives, dim).T * config.scale
                losses["supervised"] += F.cross_entropy(scores, labels)
        losses["topk"] *= config.topk_weight / len(dims)
        losses["pairwise"] *= config.pairwise_weight / len(dims)
        losses["supervised"] *= config.supervised_weight / len(dims)
        if pairs is None:
            del losses["supervised"]
        start = data[rows] if self.rotation is None else data[rows] @ self.rotation.T  # f's value at the start
        losses["reconstruction"] = config.reconstruction_weight * (anchors - start).abs().mean()
        return losses

    @torch.no_grad()
    def transform(self, embeddings: np.ndarray, batch_size: int = 8192) -> np.ndarray:
        """Adapted embeddings, ``(N, D) -> (N, D)`` float32; truncate them with ``matryoshka_st.dims.truncate_numpy``.

        Inputs are taken as they are (the adaptor was fitted on the encoder's raw output, normalised or not); the
        outputs are not renormalised: cosine similarity, or ``truncate_numpy``, does that.
        """
        x = check_embeddings(embeddings, dim=self.dim)
        parameter = next(self.parameters())
        out = [
            self(torch.from_numpy(x[i : i + batch_size]).to(parameter.device, parameter.dtype)).float().cpu().numpy()
            for i in range(0, len(x), batch_size)
        ]
        return np.concatenate(out).astype(np.float32, copy=False)

    # -------------------------------------------------------------------------------------------------- persistence

    def save(self, path: str | Path) -> None:
        """Write ``adaptor_config.json`` and ``adaptor.safetensors`` into the folder ``path``."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        config = {"dim": self.dim, "hidden_dim": self.hidden_dim, "dims": self.dims, "rotate": self.rotate}
        (path / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        save_file(
            {name: tensor.detach().cpu().contiguous() for name, tensor in self.state_dict().items()},
            str(path / WEIGHTS_NAME),
        )

    @classmethod
    def load(cls, path: str | Path) -> MatryoshkaAdaptor:
        """Read an adaptor written by :meth:`save`."""
        from safetensors.torch import load_file

        path = Path(path)
        if not (path / CONFIG_NAME).is_file():
            raise FileNotFoundError(
                f"No {CONFIG_NAME} in {str(path)!r}: not a folder written by MatryoshkaAdaptor.save."
            )
        config = json.loads((path / CONFIG_NAME).read_text(encoding="utf-8"))
        adaptor = cls(**config)
        adaptor.load_state_dict(load_file(str(path / WEIGHTS_NAME)))
        return adaptor.eval()

    def to_modules(self) -> list[Dense]:
        """Sentence-transformers ``Dense`` modules that compute exactly ``forward``: the rotation (when there is one,
        as in :func:`~matryoshka_st.posthoc.pca.rotation_module`), then two for the residual MLP.

        ``Dense`` applies one activation to all its outputs, and its residual option adds the input of the *last*
        layer, so the skip connection is carried through the ReLU layer as ``x = relu(x) - relu(-x)``:
        the first ``Dense`` outputs ``[relu(x), relu(-x), relu(W1 x + b1)]`` (width ``2D + H``), the second sums
        ``relu(x) - relu(-x) + W2 h + b2``. Both are stock classes, so no custom code is needed to load the model.
        """
        d, h = self.dim, self.hidden_dim
        eye = torch.eye(d)
        with torch.no_grad():
            w1 = torch.cat([eye, -eye, self.up.weight.detach().cpu().float()])  # (2D + H, D)
            b1 = torch.cat([torch.zeros(2 * d), self.up.bias.detach().cpu().float()])
            w2 = torch.cat([eye, -eye, self.down.weight.detach().cpu().float()], dim=1)  # (D, 2D + H)
            b2 = self.down.bias.detach().cpu().float().clone()
        first = Dense(d, 2 * d + h, bias=True, activation_function=nn.ReLU(), init_weight=w1, init_bias=b1)
        second = Dense(2 * d + h, d, bias=True, activation_function=nn.Identity(), init_weight=w2, init_bias=b2)
        rotation = [] if self.rotation is None else [rotation_module(self.rotation.cpu().numpy())]
        return [*rotation, first, second]


@contextmanager
def _torch_threads(num_threads: int | None):
    previous = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _nearest_neighbours(unit: Tensor, k: int, chunk: int = 2048, show_progress_bar: bool = True) -> Tensor:
    """Indices ``(N, k)`` of each row's ``k`` most cosine-similar other rows (exact search, in chunks)."""
    n = len(unit)
    out = torch.empty(n, k, dtype=torch.long)
    for start in tqdm(range(0, n, chunk), desc="Nearest neighbours", disable=not show_progress_bar or n <= chunk):
        scores = unit[start : start + chunk] @ unit.T  # (C, N)
        rows = torch.arange(start, min(start + chunk, n))
        scores[rows - start, rows] = -math.inf
        out[start : start + chunk] = scores.topk(k, dim=1).indices
    return out


def add_adaptor(
    model: SentenceTransformer,
    texts: Sequence[str] | None = None,
    embeddings: np.ndarray | None = None,
    dims: Sequence[int] | None = None,
    pairs: Sequence[tuple[str, str]] | None = None,
    adaptor: MatryoshkaAdaptor | None = None,
    batch_size: int = 32,
    show_progress_bar: bool | None = None,
    **fit_kwargs: Any,
) -> SentenceTransformer:
    """Fit a Matryoshka-Adaptor on the model's embeddings of ``texts`` (or on ``embeddings``) and append it to the
    model, in place, as ``Dense`` modules (plus a ``Normalize`` when the model normalised its output).

    The encoder's weights are not changed. Save the result with ``model.save(path)``; it loads with a plain
    ``SentenceTransformer(path, truncate_dim=64)``.

    Args:
        model: a SentenceTransformer; modified in place and returned.
        texts: texts of the target domain to fit on, e.g. a sample of the corpus (and queries) to be searched.
        embeddings: instead of ``texts``, full-size embeddings this model already produced.
        dims: nested dimensions to preserve (default: full dim and powers of two down to 32).
        pairs: optional ``(anchor, positive)`` text pairs for the supervised ranking loss.
        adaptor: an already fitted adaptor to add instead of fitting one (then pass no texts or embeddings).
        batch_size: encoding batch size.
        show_progress_bar: tqdm bars for encoding and fitting.
        **fit_kwargs: :class:`AdaptorConfig` fields, e.g. ``steps=2000``.

    Example:
        >>> model = add_adaptor(SentenceTransformer("all-MiniLM-L6-v2"), texts=corpus, dims=[384, 128, 64, 32])
        >>> model.save("minilm-adaptor")
    """
    dim = full_embedding_dim(model)
    if adaptor is None:
        if (texts is None) == (embeddings is None):
            raise ValueError("Pass exactly one of texts (to encode with the model) or embeddings (already encoded).")
        if texts is not None:
            embeddings = encode_full(model, texts, batch_size=batch_size, show_progress_bar=show_progress_bar)
        embeddings = check_embeddings(embeddings, dim=dim)
        encoded_pairs = None
        if pairs:
            anchors, positives = zip(*pairs)
            encoded_pairs = tuple(
                encode_full(model, side, batch_size=batch_size, show_progress_bar=show_progress_bar)
                for side in (anchors, positives)
            )
        if show_progress_bar is not None:
            fit_kwargs.setdefault("show_progress_bar", show_progress_bar)
        adaptor = MatryoshkaAdaptor.fit(embeddings, dims=dims, pairs=encoded_pairs, **fit_kwargs)
    elif texts is not None or embeddings is not None or pairs is not None:
        raise ValueError("Pass either a fitted adaptor or data to fit one on, not both.")
    elif dim is not None and adaptor.dim != dim:
        raise ValueError(f"The adaptor works on {adaptor.dim}-d embeddings but the model outputs {dim}-d ones.")
    normalized = isinstance(model[-1], Normalize)
    for module in adaptor.to_modules():
        model.append(module.to(model.device))
    if normalized:
        model.append(Normalize())
    logger.info(
        "Appended a Matryoshka-Adaptor (%d -> %d -> %d) to the model.", adaptor.dim, adaptor.hidden_dim, adaptor.dim
    )
    return model
