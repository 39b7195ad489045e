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
