"""Fine-tune on your own pairs file from Python, then encode at 64 dims.

python examples/train_from_file.py my_pairs.jsonl      # rows like {"anchor": "...", "positive": "..."}
"""

from __future__ import annotations

import sys

from sentence_transformers import SentenceTransformer

from matryoshka_st.metadata import read_matryoshka_config
from matryoshka_st.training import train

if __name__ == "__main__":
    data = sys.argv[1] if len(sys.argv) > 1 else "matryoshka_st/data/train_pairs.jsonl.gz"
    result = train(
        train_data=data,
        max_train_samples=2000,
        eval_size=200,  # held-out pairs, scored as retrieval at every dim
        output_dir="output/from-file",
        overwrite_output_dir=True,
        max_seq_length=128,
        per_device_train_batch_size=32,
        learning_rate=1e-4,
        num_train_epochs=1,
        save_strategy="no",
        matryoshka_dims=[384, 256, 128, 64, 32],
    )
    print(result.table())

    model = SentenceTransformer(result.model_path)
    embeddings = model.encode(["Matryoshka embeddings stay useful when cut short."], truncate_dim=64)
    print(
        embeddings.shape,
        "recommended truncate_dim:",
        read_matryoshka_config(result.model_path).recommended_truncate_dim,
    )
