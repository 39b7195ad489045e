"""2D Matryoshka (layers x dims): sentence-transformers' ``AdaptiveLayerLoss`` around this project's MatryoshkaLoss."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.losses import AdaptiveLayerLoss
from torch import nn

from matryoshka_st.losses.matryoshka import MatryoshkaLoss


class Matryoshka2dLoss(AdaptiveLayerLoss):
    def __init__(
        self,
        model: SentenceTransformer,
        loss: nn.Module,
        matryoshka_dims: Sequence[int] | None = None,
        *,
        n_layers_per_step: int = 1,
        last_layer_weight: float = 1.0,
        prior_layers_weight: float = 1.0,
        kl_div_weight: float = 1.0,
        kl_temperature: float = 0.3,
        **matryoshka_kwargs: Any,
    ) -> None:
        """2D Matryoshka (layers x dims): sentence-transformers' ``AdaptiveLayerLoss`` around this project's
        :class:`MatryoshkaLoss`. The arguments of ``sentence_transformers.losses.Matryoshka2dLoss``; the ones that
        are :class:`MatryoshkaLoss`'s are passed on to it, so every option of it works here too.

        Args:
            model, loss, matryoshka_dims: as for :class:`MatryoshkaLoss`.
            n_layers_per_step, last_layer_weight, prior_layers_weight, kl_div_weight, kl_temperature: as for
                ``AdaptiveLayerLoss``.
            matryoshka_kwargs: :class:`MatryoshkaLoss`'s other arguments (``matryoshka_weights``,
                ``n_dims_per_step``, here 1 unless given as in sentence-transformers, ``head_mode``,
                ``distill_weight``, ``full_dim_share``, ...); not ``log_per_dim``, since ``AdaptiveLayerLoss``
                needs one loss value.

        References:
            - Li et al., 2D Matryoshka Sentence Embeddings, https://arxiv.org/abs/2402.14776

        Example:
            ::

                loss = Matryoshka2dLoss(model, losses.MultipleNegativesRankingLoss(model), [384, 128, 32])
        """
        if "log_per_dim" in matryoshka_kwargs:
            raise ValueError("Matryoshka2dLoss returns one loss value (AdaptiveLayerLoss sums it): drop log_per_dim.")
        matryoshka_kwargs.setdefault("n_dims_per_step", 1)
        inner = MatryoshkaLoss(model, loss, matryoshka_dims, log_per_dim=False, **matryoshka_kwargs)
        super().__init__(
            model,
            inner,
            n_layers_per_step=n_layers_per_step,
            last_layer_weight=last_layer_weight,
            prior_layers_weight=prior_layers_weight,
            kl_div_weight=kl_div_weight,
            kl_temperature=kl_temperature,
        )

    def get_config_dict(self) -> dict[str, Any]:
        return {**super().get_config_dict(), **self.loss.get_config_dict()}

    @property
    def citation(self) -> str:
        return """
@misc{li20242d,
    title={2D Matryoshka Sentence Embeddings},
    author={Xianming Li and Zongxi Li and Jing Li and Haoran Xie and Qing Li},
    year={2024},
    eprint={2402.14776},
    archivePrefix={arXiv},
    primaryClass={cs.CL}
}
"""


__all__ = ["Matryoshka2dLoss"]
