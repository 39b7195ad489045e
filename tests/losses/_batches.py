"""Small batches of real-looking text for each loss's input format."""

from __future__ import annotations

import torch

ANCHORS = [
    "a dog runs across the park",
    "the cat sleeps on the warm mat",
    "stock prices fell sharply today",
    "he cooked pasta for dinner",
    "rain is expected tomorrow morning",
    "she plays the violin beautifully",
]
POSITIVES = [
    "an animal is running outside",
    "a pet resting in the house",
    "the market dropped a lot",
    "a meal of noodles was prepared",
    "the weather forecast says showers",
    "a woman performs music on strings",
]
NEGATIVES = [
    "the committee approved the budget",
    "trains leave from the north station",
    "a poem about the sea and sky",
    "the printer is out of paper",
    "children built a castle of sand",
    "the engine needs new oil",
]


def features(model, *columns: list[str]) -> list[dict[str, torch.Tensor]]:
    """Tokenised features, one dict per column, as the trainer's collator would build them."""
    return [model.preprocess(list(column)) for column in columns]
