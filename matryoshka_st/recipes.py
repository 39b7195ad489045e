"""Named Matryoshka training recipes: how ``matryoshka-st train`` trains beyond the loss's own defaults.

A recipe bundles the settings that the recipe study (``benchmarks/quality_vs_dim.py`` + ``recipe_report.py``, see
benchmarks/README.md) compared on the same data, budget and seeds:

- ``init``: ``"pca"`` starts from the model with a PCA rotation fitted on its embeddings of the training texts
  (:func:`matryoshka_st.posthoc.add_pca_rotation`); full-size similarities are unchanged, prefixes start ordered by
  variance;
- ``distill_weight`` / ``distill_temperature``: self-distillation from the full dimension to each prefix
  (:func:`matryoshka_st.losses.distill.similarity_distillation`);
- ``full_dim_share``: the full dimension's share of the total loss weight;
- ``quant_weight`` / ``quant_precision`` / ``quant_dims`` / ``quant_warmup``: quantization-aware training terms, the
  inner loss on straight-through binary/int8 codes of the prefixes (:mod:`matryoshka_st.losses.quant`); off (``0``)
  in every named recipe;
- ``pca_after``: a PCA rotation fitted after training, on the same texts (no training cost);
- ``shell_rotation``: after that, an orthogonal rotation inside each Matryoshka shell (``"itq"`` or ``"hadamard"``,
  :mod:`matryoshka_st.posthoc.shell_rotation`): float scores at every trained dim unchanged, sign bits balanced.

Every recipe also saves int8 scales per shell (:class:`matryoshka_st.quantization.Int8Calibration`), fitted on the
same texts at the end of training.

``reference`` is exactly sentence-transformers' ``MatryoshkaLoss`` (uniform weights, nothing else).

Example:
    >>> from matryoshka_st.recipes import get_recipe
    >>> get_recipe("reference").loss_kwargs()
    {}
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

from matryoshka_st.losses.matryoshka import check_recipe_arguments


@dataclass(frozen=True)
class Recipe:
    """One named set of training settings (see the module docstring)."""

    name: str
    init: Literal["none", "pca"] = "none"
    distill_weight: float = 0.0
    distill_temperature: float = 1.0
    full_dim_share: float | None = None
    quant_weight: float = 0.0
    quant_precision: str | tuple[str, ...] = "binary"
    quant_dims: tuple[int, ...] | None = None
    quant_warmup: int = 0
    pca_after: bool = False
    shell_rotation: Literal["none", "itq", "hadamard"] = "none"
    description: str = ""

    def __post_init__(self) -> None:
        if self.init not in ("none", "pca"):
            raise ValueError(f"init must be 'none' or 'pca', got {self.init!r}.")
        if self.shell_rotation not in ("none", "itq", "hadamard"):
            raise ValueError(f"shell_rotation must be 'none', 'itq' or 'hadamard', got {self.shell_rotation!r}.")
        check_recipe_arguments(
            self.distill_weight,
            self.distill_temperature,
            self.full_dim_share,
            self.quant_weight,
            self.quant_precision,
            self.quant_dims,
            self.quant_warmup,
        )

    def with_overrides(self, **overrides: Any) -> Recipe:
        """This recipe with the given fields replaced (``None`` values are ignored); its name says so."""
        overrides = {key: value for key, value in overrides.items() if value is not None}
        changed = {key: value for key, value in overrides.items() if getattr(self, key) != value}
        if not changed:
            return self
        name = self.name + "+" + ",".join(f"{key}={value}" for key, value in sorted(changed.items()))
        return replace(self, name=name, description="", **changed)

    def loss_kwargs(self) -> dict[str, Any]:
        """The :class:`~matryoshka_st.MatryoshkaLoss` arguments this recipe sets (only those that differ from it)."""
        kwargs: dict[str, Any] = {}
        if self.distill_weight:
            kwargs.update(distill_weight=self.distill_weight, distill_temperature=self.distill_temperature)
        if self.full_dim_share is not None:
            kwargs["full_dim_share"] = self.full_dim_share
        if self.quant_weight:
            kwargs.update(
                quant_weight=self.quant_weight,
                quant_precision=self.quant_precision,
                quant_dims=self.quant_dims,
                quant_warmup=self.quant_warmup,
            )
        return kwargs

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


RECIPES: dict[str, Recipe] = {
    recipe.name: recipe
    for recipe in (
        Recipe(
            "reference", description="exactly sentence-transformers' MatryoshkaLoss: uniform weights, nothing else"
        ),
        Recipe(
            "pca",
            init="pca",
            pca_after=True,
            description="a PCA start and a PCA rotation after training around the reference loss",
        ),
        Recipe(
            "pca-share-kl",
            init="pca",
            distill_weight=1.0,
            distill_temperature=1.0,
            full_dim_share=0.4,
            pca_after=True,
            description="a PCA start, the full dim at 40% of the loss weight, self-distillation from the full dim "
            "to every prefix (lambda 1, tau 1), and a PCA rotation after training",
        ),
    )
}
# picked by the recipe study's fixed rule (benchmarks/README.md, "Recipes"): most targets met over two seeds
DEFAULT_RECIPE = "pca-share-kl"


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name``; ``ValueError`` naming the known ones otherwise."""
    if name not in RECIPES:
        raise ValueError(f"Unknown recipe {name!r}: choose one of {sorted(RECIPES)}.")
    return RECIPES[name]
