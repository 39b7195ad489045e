"""Per-dimension classifier heads for losses that hold a learned head (e.g. ``SoftmaxLoss``).

A head trained on full-size embeddings cannot read a 64-dim prefix: its weight expects ``k * D`` inputs. The MRL
paper gives every nesting level its own head ("MRL"), or one weight matrix whose columns are sliced per level
("MRL-E", weight-tied). sentence-transformers has neither, so both are written here.
"""

from __future__ import annotations

import json
import os
from typing import Literal

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

HeadMode = Literal["separate", "shared"]
HEAD_MODES = ("separate", "shared")
HEADS_WEIGHTS_NAME = "matryoshka_heads.safetensors"
HEADS_CONFIG_NAME = "matryoshka_heads.json"


class SlicedLinear(nn.Module):
    """A view of a ``Linear(k * D, C)`` that reads ``k`` concatenated blocks of ``d <= D`` coordinates each.

    The input ``[u_:d, v_:d, |u-v|_:d]`` meets the columns ``[0:d, D:D+d, 2D:2D+d]`` of the full weight, so the
    small head is literally a sub-matrix of the large one and the two are trained together.
    """

    def __init__(self, full: nn.Linear, n_blocks: int, full_dim: int, dim: int) -> None:
        super().__init__()
        self.full = full
        self.n_blocks = n_blocks
        self.full_dim = full_dim
        self.dim = dim

    @property
    def weight(self) -> Tensor:
        # (C, k * D) -> (C, k, D) -> (C, k, d) -> (C, k * d)
        weight = self.full.weight.view(self.full.out_features, self.n_blocks, self.full_dim)
        return weight[:, :, : self.dim].reshape(self.full.out_features, self.n_blocks * self.dim)

    def forward(self, features: Tensor) -> Tensor:
        return nn.functional.linear(features, self.weight, self.full.bias)


class MatryoshkaHeads(nn.Module):
    """The heads of one loss, one per Matryoshka dimension.

    Args:
        classifier: the loss's own head, a ``Linear(n_blocks * full_dim, num_labels)``. It stays the head of the full
            dimension; the smaller heads start as slices of it.
        full_dim: the model's full embedding dimension.
        dims: the Matryoshka dimensions.
        mode: ``"separate"`` (MRL: an independent head per dim) or ``"shared"`` (MRL-E: one weight, sliced per dim).

    Example:
        >>> heads = MatryoshkaHeads(nn.Linear(3 * 384, 3), full_dim=384, dims=[384, 64], mode="separate")
        >>> heads.head(64)(torch.zeros(2, 3 * 64)).shape
        torch.Size([2, 3])
    """

    def __init__(self, classifier: nn.Linear, full_dim: int, dims: list[int], mode: HeadMode = "separate") -> None:
        super().__init__()
        if mode not in HEAD_MODES:
            raise ValueError(f"head_mode must be one of {HEAD_MODES}, got {mode!r}.")
        if classifier.in_features % full_dim:
            raise ValueError(
                f"The classifier reads {classifier.in_features} features, not a multiple of the embedding dimension "
                f"{full_dim}: it cannot be split per Matryoshka dimension."
            )
        self.mode = mode
        self.full_dim = full_dim
        self.dims = list(dims)
        self.n_blocks = classifier.in_features // full_dim
        self.num_labels = classifier.out_features
        self.full = classifier
        self.separate = nn.ModuleDict()
        if mode == "separate":
            sliced_init = {d: SlicedLinear(classifier, self.n_blocks, full_dim, d) for d in dims if d != full_dim}
            for dim, sliced in sliced_init.items():
                head = nn.Linear(self.n_blocks * dim, self.num_labels, bias=classifier.bias is not None)
                head.to(device=classifier.weight.device, dtype=classifier.weight.dtype)
                with torch.no_grad():
                    head.weight.copy_(sliced.weight)
                    if classifier.bias is not None:
                        head.bias.copy_(classifier.bias)
                self.separate[str(dim)] = head

    def head(self, dim: int) -> nn.Module:
        """The head that reads ``n_blocks`` blocks of ``dim`` coordinates."""
        if dim == self.full_dim:
            return self.full
        if self.mode == "separate":
            return self.separate[str(dim)]
        return SlicedLinear(self.full, self.n_blocks, self.full_dim, dim)

    def get_config_dict(self) -> dict:
        return {
            "mode": self.mode,
            "full_dim": self.full_dim,
            "dims": self.dims,
            "n_blocks": self.n_blocks,
            "num_labels": self.num_labels,
        }

    def save(self, path: str | os.PathLike) -> None:
        """Write ``matryoshka_heads.safetensors`` and ``matryoshka_heads.json`` into the folder ``path``."""
        os.makedirs(path, exist_ok=True)
        tensors = {name: tensor.detach().contiguous().cpu() for name, tensor in self.state_dict().items()}
        save_file(tensors, os.path.join(path, HEADS_WEIGHTS_NAME))
        with open(os.path.join(path, HEADS_CONFIG_NAME), "w", encoding="utf-8") as handle:
            json.dump(self.get_config_dict(), handle, indent=2)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device | None = None) -> MatryoshkaHeads:
        """Load heads written by :meth:`save`."""
        config_path = os.path.join(path, HEADS_CONFIG_NAME)
        if not os.path.isfile(config_path):
            raise FileNotFoundError(f"No Matryoshka heads in {str(path)!r}: {HEADS_CONFIG_NAME} is missing.")
        with open(config_path, encoding="utf-8") as handle:
            config = json.load(handle)
        state = load_file(os.path.join(path, HEADS_WEIGHTS_NAME), device=str(device or "cpu"))
        classifier = nn.Linear(
            config["n_blocks"] * config["full_dim"], config["num_labels"], bias="full.bias" in state
        )
        heads = cls(classifier, config["full_dim"], config["dims"], config["mode"])
        heads.load_state_dict(state)
        return heads.to(device) if device is not None else heads
