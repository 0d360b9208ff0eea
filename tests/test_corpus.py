"""The corpus reader: every format, streaming, bad files reported with byte offsets, strict mode, errors."""

from __future__ import annotations

import inspect
import json
import tracemalloc
from pathlib import Path

import pytest

from babeltune.corpus import reader as corpus_module
from babeltune.corpus.reader import (
    CorpusSpec, FileProblem, corpus_files, corpus_sha256, iter_documents, iter_records, iter_text_chunks,
)
from babeltune.advisor.types import SkippedFile
from babeltune.errors import BabeltuneError

from conftest import examples as lane_examples

TEXT = Path(__file__).parent / "data" / "text"


@pytest.fixture(scope="module")
def mr_lines() -> list[str]:
    return [line.strip() for line in (TEXT / "mr.txt").read_text("utf-8").splitlines() if line.strip()]


def documents(path, **options) -> list[str]:
    return list(iter_documents(CorpusSpec(str(path), **options)))


# ------------------------------------------------------------------------------------------ formats


def test_txt_one_document_per_line_stripped_without_blank_lines(tmp_path, mr_lines):
    raw = "\ufeff" + "  " + mr_lines[0] + "\t\r\n\n   \n" + mr_lines[1] + "\r\n" + mr_lines[2]
    (tmp_path / "a.txt").write_text(raw, encoding="utf-8")
    assert documents(tmp_path / "a.txt") == mr_lines[:3]     # BOM, CRLF, blank lines, no final newline


def test_txt_paragraph_and_file_splits(tmp_path, mr_lines):
    text = f"{mr_lines[0]}\n{mr_lines[1]}\n\n \n{mr_lines[2]}\n"
    (tmp_path / "p.txt").write_text(text, encoding="utf-8")
    assert documents(tmp_path / "p.txt", doc_split="paragraph") == [f"{mr_lines[0]}\n{mr_lines[1]}", mr_lines[2]]
    assert documents(tmp_path / "p.txt", doc_split="file") == [text.strip()]


def test_unknown_doc_split_is_an_error():
    with pytest.raises(BabeltuneError, match="doc_split"):
        CorpusSpec("x.txt", doc_split="sentence")


def test_jsonl_text_field_nested_field_and_records(tmp_path, mr_lines):
    rows = [{"text": mr_lines[0], "id": 1}, {"text": None}, {"text": "  "}, {"text": mr_lines[1], "id": 2}]
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n\n", "utf-8")
    assert documents(tmp_path / "c.jsonl") == mr_lines[:2]
    assert list(iter_records(CorpusSpec(str(tmp_path / "c.jsonl"))))[3] == {"text": mr_lines[1], "id": 2}
    (tmp_path / "n.jsonl").write_text(json.dumps({"meta": {"body": mr_lines[3]}}, ensure_ascii=False), "utf-8")
    assert documents(tmp_path / "n.jsonl", text_field="meta.body") == [mr_lines[3]]


def test_jsonl_errors_name_the_file_line_and_fields(tmp_path):
    (tmp_path / "m.jsonl").write_text('{"body": "x", "id": 3}\n', "utf-8")
    with pytest.raises(BabeltuneError, match=r"no field 'text' \(fields: body, id\).*--text-field"):
        documents(tmp_path / "m.jsonl")
    (tmp_path / "b.jsonl").write_text('{"text": "ok"}\n{"text": "cut\n', "utf-8")
    with pytest.raises(BabeltuneError, match=r"b\.jsonl line 2: invalid JSON"):
        documents(tmp_path / "b.jsonl")
    (tmp_path / "t.jsonl").write_text('{"text": ["a", "b"]}\n', "utf-8")
    with pytest.raises(BabeltuneError, match="holds a list, not text"):
        documents(tmp_path / "t.jsonl")


def test_csv_default_text_column_quoted_newlines_and_tsv(tmp_path, mr_lines):
    (tmp_path / "a.csv").write_text(f'label,text\n1,"{mr_lines[0]}, with comma"\n0,"two\nlines"\n', "utf-8")
    assert documents(tmp_path / "a.csv") == [f"{mr_lines[0]}, with comma", "two\nlines"]
    (tmp_path / "b.tsv").write_text(f"tweet\tlabel\n{mr_lines[1]}\t1\n", "utf-8")
    assert documents(tmp_path / "b.tsv", text_column="tweet") == [mr_lines[1]]
    assert list(iter_records(CorpusSpec(str(tmp_path / "b.tsv"), text_column="tweet"))) == [
        {"tweet": mr_lines[1], "label": "1"}]


def test_csv_without_text_column_names_the_columns(tmp_path):
    (tmp_path / "a.csv").write_text("tweet,label\nhello,1\n", "utf-8")
    with pytest.raises(BabeltuneError, match=r"no 'text' column \(columns: tweet, label\); pass --text-column"):
        documents(tmp_path / "a.csv")
    with pytest.raises(BabeltuneError, match=r"no column 'body' \(columns: tweet, label\)"):
        documents(tmp_path / "a.csv", text_column="body")


def test_malformed_csv_and_odd_column_names_give_one_line_errors(tmp_path):
    (tmp_path / "bad.csv").write_bytes(b"\r0\n")
    with pytest.raises(BabeltuneError, match=r"bad\.csv near line 1: malformed CSV \(new-line character seen in unquoted field\);"):
        documents(tmp_path / "bad.csv")
    (tmp_path / "odd.csv").write_bytes(b'"un\nclosed",label\nhello,1\n')
    with pytest.raises(BabeltuneError) as caught:
        documents(tmp_path / "odd.csv")
    assert "\n" not in str(caught.value) and "'un\\nclosed'" in str(caught.value)


def test_parquet_streams_row_groups_and_picks_the_column(tmp_path, mr_lines):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"id": list(range(len(mr_lines))), "tweet": mr_lines})
    pq.write_table(table, tmp_path / "t.parquet", row_group_size=16)
    assert pq.ParquetFile(tmp_path / "t.parquet").num_row_groups > 5
    assert documents(tmp_path / "t.parquet", text_column="tweet") == mr_lines
    with pytest.raises(BabeltuneError, match=r"no 'text' column \(columns: id, tweet\)"):
        documents(tmp_path / "t.parquet")
    first = next(iter_records(CorpusSpec(str(tmp_path / "t.parquet"), text_column="tweet")))
    assert first == {"id": 0, "tweet": mr_lines[0]}


def test_corrupt_parquet_is_skipped_with_reason(tmp_path, mr_lines):
    (tmp_path / "good.txt").write_text(mr_lines[0], "utf-8")
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really parquet PAR1")
    skipped: list[SkippedFile] = []
    assert list(iter_documents(CorpusSpec(str(tmp_path)), skipped)) == [mr_lines[0]]
    assert [Path(s.path).name for s in skipped] == ["bad.parquet"] and "parquet" in skipped[0].reason


def test_parquet_with_corrupt_data_pages_is_a_one_line_error(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = [line.strip() for line in (TEXT / "en.txt").read_text("utf-8").splitlines()] * 5
    pq.write_table(pa.table({"text": texts}), tmp_path / "a.parquet", row_group_size=100,
                   compression="NONE", use_dictionary=False)
    data = bytearray((tmp_path / "a.parquet").read_bytes())
    data[len(data) // 3: len(data) // 2] = b"\xff" * (len(data) // 2 - len(data) // 3)   # footer intact
    (tmp_path / "a.parquet").write_bytes(bytes(data))
    with pytest.raises(BabeltuneError, match=r"a\.parquet: unreadable parquet data") as caught:
        documents(tmp_path / "a.parquet")
    assert "\n" not in str(caught.value)


# ------------------------------------------------------------------------------------------ folders


def test_folder_is_recursive_sorted_and_skips_unsupported_and_hidden(tmp_path, mr_lines):
    (tmp_path / "b").mkdir()
    (tmp_path / ".git").mkdir()
    (tmp_path / "b" / "2.txt").write_text(mr_lines[2], "utf-8")
    (tmp_path / "b" / "1.jsonl").write_text(json.dumps({"text": mr_lines[1]}), "utf-8")
    (tmp_path / "a.txt").write_text(mr_lines[0], "utf-8")
    (tmp_path / "notes.md").write_text("not corpus", "utf-8")
    (tmp_path / ".hidden.txt").write_text("hidden", "utf-8")
    (tmp_path / ".git" / "x.txt").write_text("hidden", "utf-8")
    skipped: list[SkippedFile] = []
    files = corpus_files(CorpusSpec(str(tmp_path)), skipped)
    assert [p.relative_to(tmp_path).as_posix() for p in files] == ["a.txt", "b/1.jsonl", "b/2.txt"]
    assert [(Path(s.path).name, "unsupported extension '.md'" in s.reason) for s in skipped] == [("notes.md", True)]
    assert documents(tmp_path) == mr_lines[:3]


def test_missing_path_and_folder_without_corpus_files_are_errors(tmp_path):
    with pytest.raises(BabeltuneError, match="does not exist"):
        documents(tmp_path / "nope")
    (tmp_path / "notes.md").write_text("x", "utf-8")
    with pytest.raises(BabeltuneError, match="holds no .txt"):
        documents(tmp_path)
    with pytest.raises(BabeltuneError, match="unsupported extension '.md'"):
        documents(tmp_path / "notes.md")


# ------------------------------------------------------------------------------------------ bad files


def test_binary_and_bad_utf8_files_are_skipped_with_byte_offsets(tmp_path, mr_lines):
    good = (mr_lines[0] + "\n").encode("utf-8")
    (tmp_path / "a_good.txt").write_bytes(good)
    (tmp_path / "b_binary.txt").write_bytes(good + b"\x00\x01\x02binary")
    (tmp_path / "c_latin1.txt").write_bytes(good + "café".encode("latin-1"))
    (tmp_path / "d_cut.txt").write_bytes(good + "मराठी".encode("utf-8")[:-1])   # truncated at the end
    skipped: list[SkippedFile] = []
    # A binary file is skipped whole; in a text file only the line holding the bad bytes is (issue 17):
    # the good first lines of c and d are kept, and each skipped line is counted with where it was.
    assert list(iter_documents(CorpusSpec(str(tmp_path)), skipped)) == [mr_lines[0]] * 3
    by_name = {Path(s.path).name: s for s in skipped}
    assert by_name["b_binary.txt"].offset == len(good) and "binary file" in by_name["b_binary.txt"].reason
    assert by_name["b_binary.txt"].kind == "file"
    assert by_name["c_latin1.txt"].offset == len(good) + 3 and "invalid UTF-8" in by_name["c_latin1.txt"].reason
    assert by_name["d_cut.txt"].offset == len(good) + len("मराठ".encode("utf-8"))
    for name in ("c_latin1.txt", "d_cut.txt"):
        assert (by_name[name].kind, by_name[name].count, by_name[name].line) == ("records", 1, 2)


def test_bad_byte_offset_is_exact_far_into_a_file(tmp_path, mr_lines, monkeypatch):
    monkeypatch.setattr(corpus_module, "CHUNK_BYTES", 4096)       # many chunks, lines cut across blocks
    body = ("\n".join(mr_lines) + "\n").encode("utf-8") * 3
    (tmp_path / "big.txt").write_bytes(body + b"ok \xff tail\n" + body)
    with pytest.raises(FileProblem) as caught:
        for _ in iter_text_chunks(tmp_path / "big.txt"):
            pass
    assert caught.value.offset == len(body) + 3


def test_binary_file_without_newlines_fails_without_buffering_it_whole(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus_module, "CHUNK_BYTES", 1024)
    (tmp_path / "blob.txt").write_bytes(b"\x89PNG" + bytes(range(1, 10)) * 100_000)
    chunks = iter_text_chunks(tmp_path / "blob.txt")
    with pytest.raises(FileProblem, match="invalid UTF-8 at byte 0"):
        next(chunks)


def test_strict_mode_raises_naming_file_and_offset(tmp_path, mr_lines):
    (tmp_path / "a.txt").write_text(mr_lines[0], "utf-8")
    (tmp_path / "b.txt").write_bytes(b"abc\xe9def")
    with pytest.raises(BabeltuneError, match=r"b\.txt: invalid UTF-8 at byte 3.*--strict"):
        list(iter_documents(CorpusSpec(str(tmp_path), strict=True)))


def test_empty_corpus_is_an_error_naming_path_and_fix(tmp_path):
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(BabeltuneError, match=r"empty\.txt contains no documents.*fix:"):
        documents(tmp_path / "empty.txt")
    (tmp_path / "blank.txt").write_text("  \n\t\n", "utf-8")
    (tmp_path / "nul.txt").write_bytes(b"\x00\x00")
    with pytest.raises(BabeltuneError, match=r"no documents.*skipped, first: .*nul\.txt: binary file"):
        documents(tmp_path)


# ------------------------------------------------------------------------------------------ streaming


def test_readers_are_lazy_generators(tmp_path, mr_lines):
    (tmp_path / "a.txt").write_text("\n".join(mr_lines), "utf-8")
    spec = CorpusSpec(str(tmp_path / "a.txt"))
    assert inspect.isgenerator(iter_documents(spec)) and inspect.isgenerator(iter_records(spec))
    assert next(iter_documents(spec)) == mr_lines[0]


def test_memory_does_not_grow_with_corpus_size(tmp_path, mr_lines, monkeypatch):
    monkeypatch.setattr(corpus_module, "CHUNK_BYTES", 1 << 20)
    line = (" ".join(mr_lines[:6]) + "\n").encode("utf-8")
    with open(tmp_path / "big.txt", "wb") as handle:
        for _ in range(24 * 2**20 // len(line)):
            handle.write(line)
    tracemalloc.start()
    try:
        count = sum(1 for _ in iter_documents(CorpusSpec(str(tmp_path / "big.txt"))))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert count == 24 * 2**20 // len(line)
    assert peak < 8 * 2**20, f"peak {peak / 2**20:.1f} MiB while streaming a 24 MiB file"


# ------------------------------------------------------------------------------------------ identity


def test_corpus_sha256_follows_bytes_and_names(tmp_path, mr_lines):
    (tmp_path / "a.txt").write_text(mr_lines[0], "utf-8")
    spec = CorpusSpec(str(tmp_path))
    first = corpus_sha256(spec)
    assert first == corpus_sha256(spec) and len(first) == 64
    (tmp_path / "a.txt").write_text(mr_lines[0] + " ", "utf-8")
    second = corpus_sha256(spec)
    (tmp_path / "a.txt").rename(tmp_path / "b.txt")
    assert len({first, second, corpus_sha256(spec)}) == 3


def test_reported_offset_is_the_first_bad_byte_for_any_bytes_and_chunk_size(tmp_path_factory):
    from hypothesis import HealthCheck, given, settings, strategies as st

    text_bytes = st.one_of(st.just(b"\xef\xbb\xbf"), st.text(max_size=30).map(lambda t: t.encode("utf-8", "surrogatepass")))
    content = st.lists(st.one_of(text_bytes, st.binary(max_size=6), st.sampled_from([b"\n", b"\xe0\xa4", b"\xa4"])),
                       max_size=12).map(b"".join)

    @settings(max_examples=lane_examples(300), deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(data=content, chunk=st.integers(1, 64))
    def check(data, chunk):
        path = tmp_path_factory.mktemp("bytes") / "a.txt"
        path.write_bytes(data)
        candidates = [data.find(b"\x00")]
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as exc:
            candidates.append(exc.start)
        bad = [c for c in candidates if c >= 0]
        try:
            pieces = list(iter_text_chunks(path, chunk_size=chunk))
        except FileProblem as problem:
            assert bad and problem.offset == min(bad)
        else:
            assert not bad
            body = data[3:] if data.startswith(b"\xef\xbb\xbf") else data
            assert b"".join(raw for _, raw, _ in pieces) == body
            assert "".join(text for _, _, text in pieces) == body.decode("utf-8")

    check()
