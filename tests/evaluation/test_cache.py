from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from datasets import Dataset
from mteb.mocks.mock_tasks import MockRetrievalTask
from mteb.types import PromptType
from sentence_transformers.util import quantize_embeddings
from torch.utils.data import DataLoader

from matryoshka_st.dims import truncate_numpy
from matryoshka_st.evaluation import evaluate
from matryoshka_st.evaluation.cache import EmbeddingCache
from matryoshka_st.evaluation.quality import bytes_per_vector, check_precisions
from matryoshka_st.evaluation.tasks import load_task

from .conftest import DOCS, QUERIES


def count_encoded_texts(model) -> Counter:
    """Wrap ``model.encode`` (which encode_query/encode_document call too) to count every text it receives."""
    seen: Counter = Counter()
    encode = model.encode

    def counting_encode(inputs, *args, **kwargs):
        texts = [inputs] if isinstance(inputs, str) else list(inputs)
        seen.update(texts)
        return encode(inputs, *args, **kwargs)

    model.encode = counting_encode
    return seen


def test_each_text_encoded_once_across_dims_and_precisions(tiny_model, beir_folder, sts_file, tmp_path):
    seen = count_encoded_texts(tiny_model)
    runs = evaluate(
        {"tiny": tiny_model},
        [beir_folder, sts_file],
        dims=[64, 32, 16, 8],
        precisions=["float32", "int8", "binary"],
        output_folder=tmp_path / "out",
        show_progress_bar=False,
    )
    assert len(runs) == 2 * 4 * 3
    sts = load_task(sts_file)
    sts.load_data()
    expected = Counter(set(QUERIES)) + Counter(set(DOCS))
    expected += Counter(set(sts.dataset["test"]["sentence1"]) | set(sts.dataset["test"]["sentence2"]))
    assert seen == expected  # every text exactly once (queries and documents are distinct texts here)


def test_cache_counts_and_reuse(tiny_model):
    cache = EmbeddingCache(tiny_model, name="local/tiny")
    task = MockRetrievalTask()
    loader = DataLoader(Dataset.from_dict({"text": ["a b", "c d", "a b"]}), batch_size=2)
    kwargs = {"task_metadata": task.metadata, "hf_split": "test", "hf_subset": "default"}
    full = cache.encode(loader, **kwargs)
    assert full.shape == (3, 64)
    np.testing.assert_array_equal(full[0], full[2])
    np.testing.assert_allclose(full, tiny_model.encode(["a b", "c d", "a b"]), atol=1e-5)
    for dim, precision in [(32, "float32"), (16, "int8"), (8, "binary")]:
        cache.view(dim, precision).encode(loader, **kwargs)
    assert (cache.num_calls, cache.num_encoded) == (1, 2)


def test_derived_vectors(tiny_model):
    cache = EmbeddingCache(tiny_model, name="local/tiny")
    task = MockRetrievalTask()
    texts = [f"text number {i} about {w}" for i, w in enumerate(["cats", "dogs", "rain", "money", "music"] * 4)]
    loader = DataLoader(Dataset.from_dict({"text": texts}), batch_size=8)
    kwargs = {"task_metadata": task.metadata, "hf_split": "test", "hf_subset": "default"}
    full = cache.encode(loader, **kwargs)

    f32 = cache.view(16, "float32").encode(loader, **kwargs)
    np.testing.assert_allclose(f32, truncate_numpy(full, 16), rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(f32, axis=1), 1.0, rtol=1e-5)

    int8 = cache.view(16, "int8").encode(loader, **kwargs)
    expected = quantize_embeddings(truncate_numpy(full, 16), "int8", calibration_embeddings=truncate_numpy(full, 16))
    np.testing.assert_array_equal(int8, expected.astype(np.float32))
    assert int8.min() >= -128 and int8.max() <= 127

    binary = cache.view(12, "binary").encode(loader, **kwargs)
    assert binary.shape == (len(texts), 12)
    np.testing.assert_array_equal(binary, np.where(full[:, :12] > 0, 1.0, -1.0))


def test_int8_queries_and_documents_encoded_apart_share_the_task_ranges(tiny_model):
    """mteb encodes a retrieval task's queries and documents in separate calls; their int8 codes must come from one
    set of ranges, those of all the task's texts, or the two sides are on different scales.

    Breakage check (in a throwaway copy, it fails this test): calibrating per ``encode`` call, i.e.
    ``calibration_embeddings=truncated`` in ``EmbeddingCache.derive``.
    """
    cache = EmbeddingCache(tiny_model, name="local/tiny")
    kwargs = {"task_metadata": MockRetrievalTask().metadata, "hf_split": "test", "hf_subset": "default"}
    sides = {
        PromptType.query: DataLoader(Dataset.from_dict({"text": QUERIES}), batch_size=4),
        PromptType.document: DataLoader(Dataset.from_dict({"text": DOCS}), batch_size=4),
    }
    full = {side: cache.encode(loader, prompt_type=side, **kwargs) for side, loader in sides.items()}  # as evaluate
    dim = 16
    union = truncate_numpy(np.concatenate([full[PromptType.query], full[PromptType.document]]), dim)  # (14, 16)
    view = cache.view(dim, "int8")
    for order in (list(sides), list(sides)[::-1]):  # whichever side mteb encodes first
        for side in order:
            codes = view.encode(sides[side], prompt_type=side, **kwargs)
            truncated = truncate_numpy(full[side], dim)
            expected = quantize_embeddings(truncated, "int8", calibration_embeddings=union)
            np.testing.assert_array_equal(codes, expected.astype(np.float32), err_msg=str(side))
            # the test can tell: this side's own ranges give other codes
            alone = quantize_embeddings(truncated, "int8", calibration_embeddings=truncated)
            assert not np.array_equal(alone, expected), side


def test_experiment_names_keep_dims_apart(tiny_model):
    cache = EmbeddingCache(tiny_model, name="local/tiny")
    assert cache.view(64).mteb_model_meta.experiment_name == "embed_dim_64"
    assert cache.view(32, "int8").mteb_model_meta.experiment_name == "embed_dim_32__output_dtypes_int8"
    assert cache.view(32, "binary").mteb_model_meta.embed_dim == 32
    assert cache.meta.name == "local/tiny" and len(cache.meta.revision) == 16


def test_revision_is_a_hash_of_the_parameters(tiny_model, _tiny_model):
    assert EmbeddingCache(tiny_model, "a/b").meta.revision == EmbeddingCache(_tiny_model, "a/b").meta.revision
    with __import__("torch").no_grad():
        next(tiny_model.parameters()).add_(1.0)
    assert EmbeddingCache(tiny_model, "a/b").meta.revision != EmbeddingCache(_tiny_model, "a/b").meta.revision


def test_bad_arguments(tiny_model):
    cache = EmbeddingCache(tiny_model, name="local/tiny")
    with pytest.raises(ValueError, match="between 1 and the model's dimension 64"):
        cache.view(65)
    with pytest.raises(ValueError, match="Unknown precision"):
        check_precisions(["float16"])
    with pytest.raises(ValueError, match="organization/model"):
        EmbeddingCache(tiny_model, name="tiny")


def test_bytes_per_vector():
    assert [bytes_per_vector(100, p) for p in ("float32", "int8", "binary")] == [400, 100, 13]


def test_a_view_passes_its_arguments_to_the_cache_as_they_came():
    """The encode arguments are stated once, by the cache: a view needs no change when mteb passes a new one."""
    from types import SimpleNamespace

    from matryoshka_st.evaluation.cache import TruncatedEncoder

    calls = []
    meta = SimpleNamespace(model_copy=lambda update: meta)
    cache = SimpleNamespace(
        full_dim=8,
        meta=meta,
        encode=lambda inputs, **kwargs: calls.append(kwargs) or np.ones((2, 8), np.float32),
        derive=lambda full, dim, precision, task, prompt_type: full[:, :dim] * (prompt_type is PromptType.query),
    )
    view = TruncatedEncoder(cache, 4)
    task = SimpleNamespace(name="task")
    out = view.encode([], task_metadata=task, hf_split="test", hf_subset="default", prompt_type=PromptType.query)
    assert out.shape == (2, 4) and out.sum() == 8
    assert calls[-1] == {
        "task_metadata": task,
        "hf_split": "test",
        "hf_subset": "default",
        "prompt_type": PromptType.query,
    }
    view.encode([], task_metadata=task, hf_revision="abc")  # an argument the view does not name, and none it did
    assert calls[-1] == {"task_metadata": task, "hf_revision": "abc"}
