from __future__ import annotations


def test_tiny_model_tokenizer_knows_the_vocabulary(tiny_model):
    tokenizer = tiny_model.tokenizer
    assert tokenizer.vocab_size == 3000
    ids = tokenizer("a dog runs")["input_ids"]
    assert tokenizer.unk_token_id not in ids


def test_tiny_model_distinguishes_texts(tiny_model):
    embeddings = tiny_model.encode(["a dog runs", "stock prices fell"])
    assert abs(float(embeddings[0] @ embeddings[1])) < 0.999
