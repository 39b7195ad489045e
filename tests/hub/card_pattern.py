"""The whole README.md of the tiny trained model pushed as ``you/tiny-matryoshka`` with eval results, base model,
licence, language and a dataset (setfit's tests/model_card_pattern.py style): fixed text literally, numbers and
sentence-transformers' long generated parts as patterns."""

# ruff: noqa: E501
import re

NUM = r"-?\d+(?:\.\d+)?(?:e-?\d+)?"
SCORE_CELL = r"\d\.\d{4} \(\d+\.\d%\)"
ANY = r"(?:.|\n)*?"

CARD_PATTERN = re.compile(
    r"""---
language: en
license: apache-2.0
tags:
- sentence-transformers
- sentence-similarity
- feature-extraction
- dense
- generated_from_trainer
- dataset_size:\d+
- loss:MatryoshkaLoss
- loss:MultipleNegativesRankingLoss
- matryoshka
base_model: sentence-transformers/all-MiniLM-L6-v2
widget:
(?:- source_sentence: .+
  sentences:
(?:  - .+
)+)+pipeline_tag: sentence-similarity
library_name: sentence-transformers
metrics:
(?:- cosine_\S+
)+- ndcg_at_10
datasets:
- sentence-transformers/all-nli
model-index:
- name: tiny-matryoshka
  results:
(?:  - task:
      type: information-retrieval
      name: Information Retrieval
    dataset:
      name: heldout dim (?:64|32)
      type: heldout_dim_(?:64|32)
    metrics:
(?:    - type: cosine_\S+
      value: """
    + NUM
    + r"""
      name: .+
)+){2}  - task:
      type: text-retrieval
      name: Retrieval
    dataset:
      name: tiny_beir
      type: tiny_beir
    metrics:
(?:    - type: ndcg_at_10
      value: """
    + NUM
    + r"""
      name: nDCG@10 at (?:64|32|16) dims(?: \((?:int8|binary)\))?
      args:
        truncate_dim: (?:64|32|16)
(?:        precision: (?:int8|binary)
)?){9}---

# tiny-matryoshka

This is a \[sentence-transformers\]\(https://www.SBERT.net\) model finetuned from \[sentence-transformers/all-MiniLM-L6-v2\]\(https://huggingface.co/sentence-transformers/all-MiniLM-L6-v2\) on the json dataset. It maps inputs to a 64-dimensional dense vector space and can be used for semantic textual similarity, semantic search, paraphrase mining, classification, clustering, and more.

<!-- matryoshka-st:start -->
## Matryoshka embeddings

This model was trained with \[Matryoshka Representation Learning\]\(https://arxiv.org/abs/2205.13147\)
\(`MatryoshkaLoss` around `MultipleNegativesRankingLoss`\) at 2 nested dimensions:
\*\*64\*\*, \*\*32\*\* \(loss weights 0\.8, 1\.2\).
Training recipe `pca-share-kl`: a PCA start, the full dim at 40% of the loss weight, self-distillation from the full dim to every prefix \(lambda 1, tau 1\), and a PCA rotation after training \(PCA start: yes, self-distillation weight 1\.0, temperature 1\.0, full-dim share 0\.4, PCA rotation after training: yes\)\.
The first `d` values of each 64-dimensional embedding are themselves an embedding: cut them to a
smaller size for a faster search and a smaller index, at a small cost in quality.

\*\*Recommended dimension: (?P<recommended>64|32|16)\*\* \((?:the smallest that keeps at least 98% of the full-dimension score in the table below|the full size: no smaller dimension keeps 98% of its score in the table below; 32 keeps \d+\.\d%)\).

### Quality by dimension

mteb main score on `tiny_beir` \(nDCG@10\) at each embedding dimension, with the share of the full 64-dimension float32 score in brackets. int8 and binary: the truncated vectors quantised with sentence-transformers' `quantize_embeddings`.

\| dim \| tiny_beir nDCG@10 \| int8 \| binary \|
\| ---: \| ---: \| ---: \| ---: \|
\| (?:\*\*64\*\*|64) \| \d\.\d{4} \(100\.0%\) \| """
    + SCORE_CELL
    + r""" \| """
    + SCORE_CELL
    + r""" \|
\| (?:\*\*32\*\*|32) \| """
    + SCORE_CELL
    + r""" \| """
    + SCORE_CELL
    + r""" \| """
    + SCORE_CELL
    + r""" \|
\| (?:\*\*16\*\*|16) \| """
    + SCORE_CELL
    + r""" \| """
    + SCORE_CELL
    + r""" \| """
    + SCORE_CELL
    + r""" \|

!\[Quality against embedding dimension\]\(matryoshka_quality_vs_dim.png\)

### Bytes per vector

One million vectors at (?P=recommended) dimensions take \d+ MB as float32, \d+ MB as int8 and \d+ MB as binary \(`quantize_embeddings` in sentence-transformers\), before any index overhead.

\| precision \| 64 \| 32 \| 16 \|
\| --- \| ---: \| ---: \| ---: \|
\| float32 \| 256 \| 128 \| 64 \|
\| int8 \| 64 \| 32 \| 16 \|
\| binary \| 8 \| 4 \| 2 \|

### Using a smaller dimension

```python
from sentence_transformers import SentenceTransformer

# every embedding this model returns has (?P<serve>32|16) dimensions
model = SentenceTransformer\("you/tiny-matryoshka", truncate_dim=(?P=serve)\)
embeddings = model.encode\(\["The weather is lovely today.", "It's so sunny outside!"\]\)
print\(embeddings.shape\)
# \(2, (?P=serve)\)

# or choose the size per call
model = SentenceTransformer\("you/tiny-matryoshka"\)
embeddings = model.encode\(\["The weather is lovely today."\], truncate_dim=(?P<small>\d+)\)
print\(embeddings.shape\)
# \(1, (?P=small)\)
```

For a dot-product \(inner-product\) index, truncated vectors must be unit length again. This model normalises
before truncation, so its truncated vectors are shorter than 1: ask `encode` to normalise after cutting.

```python
embeddings = model.encode\(texts, truncate_dim=(?P=serve), normalize_embeddings=True\)  # unit-length rows
```

`model.similarity` uses cosine similarity, which does not need this. Stored full-size embeddings can be cut later
the same way: keep the first `d` columns and divide each row by its norm.

The trained dimensions and the recommended one are recorded in `matryoshka_config.json`;
`matryoshka-st info you/tiny-matryoshka` \(from `matryoshka_st`\) prints them.

<!-- matryoshka-st:end -->

## Model Details

### Model Description
- \*\*Model Type:\*\* Sentence Transformer
- \*\*Base model:\*\* \[sentence-transformers/all-MiniLM-L6-v2\]\(https://huggingface.co/sentence-transformers/all-MiniLM-L6-v2\)
- \*\*Maximum Sequence Length:\*\* 64 tokens
- \*\*Output Dimensionality:\*\* 64 dimensions
- \*\*Similarity Function:\*\* Cosine Similarity
- \*\*Supported Modality:\*\* Text
- \*\*Training Dataset:\*\*
    - json
- \*\*Language:\*\* en
- \*\*License:\*\* apache-2.0

### Model Sources
"""
    + ANY
    + r"""
### Full Model Architecture

```
SentenceTransformer\(
  \(0\): Transformer\(.+\)
  \(1\): Pooling\(\{'embedding_dimension': 64, 'pooling_mode': 'mean', 'include_prompt': True\}\)
  \(2\): Dense\(\{'in_features': 64, 'out_features': 64, 'bias': False, .+\}\)
  \(3\): Normalize\(.+\)
\)
```

## Usage

### Direct Usage \(Sentence Transformers\)
"""
    + ANY
    + r"""
model = SentenceTransformer\("you/tiny-matryoshka"\)
"""
    + ANY
    + r"""
## Evaluation

### Metrics

#### Information Retrieval

\* Dataset: `heldout_dim_64`
"""
    + ANY
    + r"""
## Training Details

### Training Dataset
"""
    + ANY
    + r"""
\* Loss: <code>matryoshka_st.losses.matryoshka.MatryoshkaLoss</code> with these parameters:
"""
    + ANY
    + r"""
### Framework Versions
"""
    + ANY
    + r"""
## Citation
"""
    + ANY
    + r"""
#### MatryoshkaLoss
```bibtex
"""
    + ANY
    + r"""
-->\n?\Z"""
)
