"""Every reader names the file and line of bytes that are not UTF-8 (Python's own error names neither)."""

from __future__ import annotations

import gzip

import pytest

from matryoshka_st.readers import FormatError, read_jsonl, read_texts, read_unique_texts


@pytest.mark.parametrize("name", ["rows.jsonl", "rows.jsonl.gz"])
def test_jsonl_not_utf8_names_file_and_line(tmp_path, name):
    path = tmp_path / name
    data = b'{"text": "fine"}\n{"text": "caf\xe9"}\n'
    path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    with pytest.raises(
        FormatError, match=rf"{name}:2: not UTF-8 text \(byte 0xe9 at column 14\): save the file as UTF-8"
    ):
        read_jsonl(path)


def test_text_lists_not_utf8(tmp_path):
    path = tmp_path / "texts.txt"
    path.write_bytes(b"one\ntwo\nthr\xffee\n")
    with pytest.raises(FormatError, match=r"texts.txt:3: not UTF-8"):
        read_texts(path)
    with pytest.raises(FormatError, match=r"texts.txt:3: not UTF-8"):
        read_unique_texts(path)


def test_utf8_with_bom_and_crlf_reads_as_before(tmp_path):
    path = tmp_path / "texts.txt"
    path.write_bytes("\ufeffcafé\r\nthé\r\n".encode())
    assert read_texts(path) == (["0", "1"], ["café", "thé"])


def _modules(folder, *modules):
    import json

    folder.mkdir(parents=True, exist_ok=True)
    rows = [
        {"idx": i, "name": str(i), "path": path, "type": f"sentence_transformers.models.{kind}"}
        for i, (path, kind) in enumerate(modules)
    ]
    (folder / "modules.json").write_text(json.dumps(rows))
    (folder / "config.json").write_text("{}")
    for path, _ in modules:
        (folder / path).mkdir(exist_ok=True)
    return folder


def test_model_folder_check_reads_what_each_module_needs(tmp_path):
    from matryoshka_st.readers import check_model_folder

    check_model_folder("sentence-transformers/all-MiniLM-L6-v2")  # a Hub id is the loader's to fetch
    folder = _modules(tmp_path / "m", ("", "Transformer"), ("1_Pooling", "Pooling"), ("2_Dense", "Dense"))
    (folder / "1_Pooling").rmdir()
    (folder / "model.safetensors.index.json").write_text("{}")  # sharded weights count
    with pytest.raises(FormatError, match=r"m/1_Pooling is missing: .* lists the Pooling module in '1_Pooling'"):
        check_model_folder(folder)
    (folder / "1_Pooling").mkdir()
    with pytest.raises(FormatError, match=r"2_Dense/model.safetensors is missing: the Dense module in '2_Dense'"):
        check_model_folder(folder)
    (folder / "2_Dense" / "pytorch_model.bin").write_bytes(b"")
    check_model_folder(folder)
    rows = (folder / "modules.json").read_text()
    (folder / "modules.json").write_text(rows[:-1] + ', {"idx": 3, "path": "3_Normalize", "type": "x.Normalize"}]')
    check_model_folder(folder)  # Normalize saves nothing: sentence-transformers loads it without a folder


def test_model_folder_check_of_a_plain_transformers_folder(tmp_path):
    from matryoshka_st.readers import check_model_folder

    (tmp_path / "bert").mkdir()
    with pytest.raises(FormatError, match="neither modules.json .* nor config.json"):
        check_model_folder(tmp_path / "bert")
    (tmp_path / "bert" / "config.json").write_text("{}")
    with pytest.raises(
        FormatError, match=r"bert/model.safetensors is missing: the Transformer module at the folder's root"
    ):
        check_model_folder(tmp_path / "bert")
    (tmp_path / "bert" / "model.safetensors").write_bytes(b"")
    check_model_folder(tmp_path / "bert")
