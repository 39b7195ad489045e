"""``matryoshka-st info``: the Matryoshka dims, weights and recommended dimension a saved model records. Thin
wrapper around :func:`matryoshka_st.usage.matryoshka_info`."""

from __future__ import annotations

import argparse
import json
import sys

DESCRIPTION = """\
Print what a model folder records about its Matryoshka training (matryoshka_config.json): the
nested dims and their weights, the full dimension and the recommended truncate_dim, with the
scores it was chosen from.

examples:
  matryoshka-st info output/matryoshka-minilm/final
  matryoshka-st info output/matryoshka-minilm/final --json
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "info",
        help="print a model's Matryoshka dims and recommended dimension",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", metavar="MODEL", help="a saved model folder")
    parser.add_argument("--json", action="store_true", help="print the information as JSON")
    parser.set_defaults(func=run)
    return parser


def format_info(info: dict) -> str:
    """The human-readable lines of ``matryoshka-st info``."""
    lines = [f"model:                    {info['path']}"]
    lines.append(f"full dim:                 {info['full_dim'] if info['full_dim'] is not None else 'unknown'}")
    if not info["matryoshka"]:
        lines.append(
            "matryoshka:               no matryoshka_config.json: not trained with matryoshka-st, so truncated "
            "embeddings may lose much quality"
        )
    else:
        lines.append(f"dims:                     {' '.join(map(str, info['dims']))}")
        lines.append(f"weights:                  {' '.join(f'{w:g}' for w in info['weights'])}")
        lines.append(f"recommended truncate_dim: {info['recommended_truncate_dim']}")
        recommendation = info["recommendation"] or {}
        if recommendation.get("scores"):
            metric = (recommendation.get("metric") or "score").replace("_dim_{dim}", "")
            scores = ", ".join(f"{dim}: {score:.4f}" for dim, score in recommendation["scores"].items())
            lines.append(
                f"chosen from:              {metric} (keep >= {recommendation.get('threshold', 0):.0%} of full): {scores}"
            )
        if info["loss"]:
            lines.append(f"loss:                     MatryoshkaLoss({info['loss']})")
        if info.get("recipe"):
            recipe = info["recipe"]
            settings = ", ".join(
                f"{key} {recipe[key]}"
                for key in (
                    "init",
                    "distill_weight",
                    "distill_temperature",
                    "full_dim_share",
                    "pca_after",
                    "shell_rotation",
                )
                if key in recipe
            )
            lines.append(f"recipe:                   {recipe.get('name')} ({settings})")
    if info.get("int8_scales_dims"):
        lines.append(
            f"int8 scales:              one per shell, saved for dims {' '.join(map(str, info['int8_scales_dims']))} "
            "(matryoshka-st eval scores int8 with them)"
        )
    if info.get("binary_rotated_dims") is not None:
        rotated = " ".join(map(str, info["binary_rotated_dims"])) or "none"
        lines.append(f"binary codes rotated at:  {rotated} (binary_rotations.safetensors; floats unchanged)")
    if info["matryoshka"] and info["dims"]:
        from matryoshka_st.evaluation.quality import STORED_PRECISIONS, bytes_per_vector

        for dim in info["dims"]:
            sizes = ", ".join(f"{p} {bytes_per_vector(dim, p):,}" for p in STORED_PRECISIONS)
            label = "bytes per vector:" if dim == info["dims"][0] else ""
            lines.append(f"{label:<26}{dim} dims: {sizes}")
    if info["default_truncate_dim"] is not None:
        lines.append(f"loads with truncate_dim:  {info['default_truncate_dim']}")
    if info["ends_with_normalize"]:
        lines.append(
            "note:                     ends with Normalize, so truncated vectors are not unit length: use "
            "encode(..., truncate_dim=d, normalize_embeddings=True) for dot-product indexes"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from matryoshka_st.usage import matryoshka_info

    try:
        info = matryoshka_info(args.model)
    except (FileNotFoundError, ValueError) as error:
        print(f"matryoshka-st info: error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0
