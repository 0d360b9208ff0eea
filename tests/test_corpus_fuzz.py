"""Fuzz the corpus reader (babeltune.corpus.reader) with hypothesis: random bytes, mis-encoded text,
truncated multi-byte sequences, NUL bytes, empty files, JSONL with wrong types or missing fields, CSV/TSV
without the text column, corrupt and odd parquet, random extensions, folders mixing all of these.

Every input must either yield documents (non-empty, stripped strings) or end in a BabeltuneError with a
one-line message — files that are skipped are reported as SkippedFile with a reason. Any other exception
is a bug: it would reach the user as a traceback. Folders also get dangling links, link loops and folder
loops. Then what was read plus what was skipped must add up to what the file holds (issue 17), checked
against plain oracles for .txt lines, JSONL objects and CSV rows, with long lines cut at tiny bounds."""

from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from babeltune.errors import BabeltuneError

from babeltune.corpus import reader as corpus
from babeltune.corpus.skipped import SkippedFile

from conftest import examples as lane_examples

FUZZ = settings(max_examples=lane_examples(1000), deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# ------------------------------------------------------------------------------------------ contents

words = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)
devanagari = st.text(st.characters(min_codepoint=0x0900, max_codepoint=0x097F), min_size=1, max_size=30)
sentences = st.lists(st.one_of(words, devanagari), max_size=8).map(lambda parts: "\n".join(parts))

random_bytes = st.binary(max_size=600)
empty_or_blank = st.sampled_from([b"", b"\n", b"   \n\t\n", b"\xef\xbb\xbf", b"\xef\xbb\xbf\n\n", b"\r\n\r\n"])


@st.composite
def misencoded(draw) -> bytes:
    """Real text in an encoding that is not UTF-8 (or UTF-8 cut inside a character)."""
    text = draw(st.one_of(devanagari, sentences, st.just("café naïve — “quoted” ☃")))
    kind = draw(st.sampled_from(["latin-1", "cp1252", "utf-16", "utf-16-le", "utf-32", "truncated", "surrogate"]))
    if kind in ("latin-1", "cp1252"):
        return text.encode(kind, errors="replace") + "ÿé".encode(kind)
    if kind == "truncated":
        raw = (text + "मराठी").encode("utf-8")
        return raw[: draw(st.integers(0, len(raw) - 1))]
    if kind == "surrogate":
        return text.encode("utf-8") + b"\xed\xa0\x80"    # an encoded surrogate: invalid in UTF-8
    return text.encode(kind)


@st.composite
def with_nul(draw) -> bytes:
    raw = draw(sentences).encode("utf-8")
    at = draw(st.integers(0, len(raw)))
    return raw[:at] + b"\x00" * draw(st.integers(1, 3)) + raw[at:]


json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), words)
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3),
    st.dictionaries(st.sampled_from(["text", "body", "meta", "content", ""]), inner, max_size=3)), max_leaves=8)
json_records = st.dictionaries(st.sampled_from(["text", "body", "meta", "id", "TEXT", "two\nlines", "tab\there"]),
                               json_values, max_size=4)


@st.composite
def jsonl(draw) -> bytes:
    """JSONL with good records, records of the wrong type, missing fields, non-objects and broken lines."""
    lines = []
    for _ in range(draw(st.integers(0, 6))):
        choice = draw(st.sampled_from(["good", "record", "value", "broken", "blank", "nested", "odd"]))
        if choice == "good":
            lines.append(json.dumps({"text": draw(sentences)}, ensure_ascii=draw(st.booleans())))
        elif choice == "record":
            lines.append(json.dumps(draw(json_records)))
        elif choice == "value":
            lines.append(json.dumps(draw(json_values)))
        elif choice == "nested":
            lines.append(json.dumps({"meta": {"text": draw(words)}}))
        elif choice == "broken":
            good = json.dumps({"text": draw(words)})
            lines.append(good[: draw(st.integers(0, len(good) - 1))])
        elif choice == "odd":
            lines.append(draw(st.sampled_from(['{"text": "\\ud800 lone surrogate"}', "[" * 3000 + "]" * 3000,
                                               '{"text": "bad \udcff byte"}'])))
        else:
            lines.append(draw(st.sampled_from(["", "  "])))
    return "\n".join(lines).encode("utf-8", "surrogateescape")


@st.composite
def delimited(draw) -> bytes:
    """CSV/TSV, sometimes without a 'text' column, with quotes, short/long rows and embedded newlines."""
    columns = draw(st.lists(st.sampled_from(["text", "label", "body", "id", "", "Text", "a,b", 'q"']),
                            max_size=4, unique=True))
    sep = draw(st.sampled_from([",", "\t", ";"]))
    out = io.StringIO()
    if draw(st.booleans()):
        out.write(sep.join(columns) + "\n")
    for _ in range(draw(st.integers(0, 5))):
        cells = draw(st.lists(st.one_of(words, devanagari, st.just('"unclosed'), st.just("two\nlines")),
                              max_size=len(columns) + 2))
        out.write(sep.join(cells) + "\n")
    return out.getvalue().encode("utf-8")


@st.composite
def parquet(draw) -> bytes:
    """A real parquet file with random columns and types, or a corrupt one (cut short, random bytes)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    kind = draw(st.sampled_from(["table", "cut", "junk"]))
    if kind == "junk":
        return b"PAR1" + draw(random_bytes) + b"PAR1"
    names = draw(st.lists(st.sampled_from(["text", "body", "label", "id"]), min_size=1, max_size=3, unique=True))
    rows = draw(st.integers(0, 4))
    columns = {}
    for name in names:
        values = draw(st.sampled_from(["str", "int", "null", "list"]))
        if values == "str":
            columns[name] = pa.array(draw(st.lists(st.one_of(st.none(), sentences), min_size=rows, max_size=rows)), pa.string())
        elif values == "int":
            columns[name] = pa.array(draw(st.lists(st.integers(-5, 5), min_size=rows, max_size=rows)), pa.int64())
        elif values == "null":
            columns[name] = pa.array([None] * rows, pa.null())
        else:
            columns[name] = pa.array([[draw(words)] for _ in range(rows)], pa.list_(pa.string()))
    buffer = io.BytesIO()
    pq.write_table(pa.table(columns), buffer)
    data = buffer.getvalue()
    return data if kind == "table" else data[: draw(st.integers(0, len(data) - 1))]


KNOWN_SUFFIXES = [".txt", ".jsonl", ".csv", ".tsv", ".parquet", ".TXT", ".JsonL", ".CSV"]
suffixes = st.one_of(st.sampled_from(KNOWN_SUFFIXES + ["", ".bin", ".md", ".gz", ".txt.bak", ".json"]),
                     st.text("abcdefghijklmnopqrstuvwxyz0123456789_-", min_size=1, max_size=6).map(lambda s: "." + s))

# (suffix, bytes): contents generated for the kind of file, then sometimes given a random extension.
CONTENT_FOR = {
    ".txt": st.one_of(sentences.map(lambda s: s.encode("utf-8")), random_bytes, misencoded(), with_nul(), empty_or_blank),
    ".jsonl": st.one_of(jsonl(), misencoded(), with_nul(), empty_or_blank, random_bytes),
    ".csv": st.one_of(delimited(), misencoded(), with_nul(), empty_or_blank),
    ".tsv": st.one_of(delimited(), empty_or_blank, random_bytes),
    ".parquet": st.one_of(parquet(), random_bytes, empty_or_blank),
}


@st.composite
def corpus_file(draw) -> tuple[str, bytes]:
    kind = draw(st.sampled_from(sorted(CONTENT_FOR)))
    content = draw(CONTENT_FOR[kind])
    suffix = draw(st.one_of(st.just(kind), st.just(kind.upper()), suffixes))
    return suffix, content


specs = st.fixed_dictionaries({
    "doc_split": st.sampled_from(["line", "paragraph", "file"]),
    "text_field": st.sampled_from(["text", "body", "meta.text", "", "missing"]),
    "text_column": st.sampled_from([None, "text", "body", "label", "nope"]),
    "strict": st.booleans(),
})

# ------------------------------------------------------------------------------------------ checks


def read_all(spec, reader) -> list:
    """Drain one reader; returns its items, or [] after a clean BabeltuneError. Anything else propagates."""
    skipped: list = []
    try:
        items = list(reader(spec, skipped))
    except BabeltuneError as error:   # any other exception fails the test: it would be a traceback
        assert str(error).strip(), "a BabeltuneError without a message"
        assert "\n" not in str(error).strip(), f"error message spans several lines: {error}"
        items = []
    check_skips(skipped)
    return items


def check_skips(skipped: list) -> None:
    for skip in skipped:
        assert isinstance(skip, SkippedFile) and skip.reason.strip(), skip
        assert skip.kind in ("file", "records", "cut") and (skip.kind == "file" or skip.count >= 1), skip
        assert "\n" not in skip.describe(), skip


def check_spec(spec) -> None:
    from babeltune.advisor.measure import count_corpus

    for document in read_all(spec, corpus.iter_documents):
        assert isinstance(document, str) and document and document == document.strip()
    for record in read_all(spec, corpus.iter_records):
        assert isinstance(record, dict)
    skipped: list = []
    try:
        count_corpus(spec, 0, skipped)     # the counting pass of `advise`: the same promise
    except BabeltuneError as error:
        assert "\n" not in str(error).strip(), error
    check_skips(skipped)


def add_links(root: Path, links: list[str]) -> None:
    """Entries that are no corpus files: a dangling link, a link to itself, a folder link back up."""
    import os

    for number, kind in enumerate(links):
        name = root / f"link{number}.txt"
        if kind == "dangling":
            os.symlink("nowhere.txt", name)
        elif kind == "self":
            os.symlink(name.name, name)
        else:
            (root / f"sub{number}").mkdir()
            os.symlink("..", root / f"sub{number}" / "up")


@FUZZ
@given(file=corpus_file(), options=specs, as_folder=st.booleans(), extra=st.lists(corpus_file(), max_size=3),
       links=st.lists(st.sampled_from(["dangling", "self", "folder loop"]), max_size=2))
def test_corpus_reader_never_raises_anything_but_babeltune_error(file, options, as_folder, extra, links):
    with tempfile.TemporaryDirectory(prefix="babeltune-fuzz-") as tmp:
        root = Path(tmp) / "corpus"
        root.mkdir()
        files = [file] + (extra if as_folder else [])
        for number, (suffix, content) in enumerate(files):
            (root / f"part{number}{suffix}").write_bytes(content)
        if as_folder:
            add_links(root, links)
        target = root if as_folder else root / f"part0{file[0]}"
        check_spec(corpus.CorpusSpec(path=str(target), **options))


@settings(max_examples=lane_examples(100), deadline=None, database=None)
@given(doc_split=st.text(max_size=12).filter(lambda s: s not in ("line", "paragraph", "file")))
def test_unknown_doc_split_and_missing_paths_are_babeltune_errors(doc_split):
    with pytest.raises(BabeltuneError):
        corpus.CorpusSpec(path="anything.txt", doc_split=doc_split)
    with tempfile.TemporaryDirectory() as tmp:
        assert read_all(corpus.CorpusSpec(path=str(Path(tmp) / "does-not-exist.txt")), corpus.iter_documents) == []


# ------------------------------------------------------------------------------------------ found by fuzzing


def drain_documents(path: Path, **options) -> list[str]:
    return list(corpus.iter_documents(corpus.CorpusSpec(path=str(path), **options)))


# Regressions: both were found by the fuzz test above and fixed in the reader.

def test_csv_with_bare_carriage_return_is_a_babeltune_error(tmp_path):
    (tmp_path / "bad.csv").write_bytes(b"\r0\n")
    with pytest.raises(BabeltuneError):
        drain_documents(tmp_path / "bad.csv")


def test_missing_column_error_is_one_line_even_with_odd_column_names(tmp_path):
    (tmp_path / "bad.csv").write_bytes(b'"un\nclosed",label\nhello,1\n')
    with pytest.raises(BabeltuneError) as caught:
        drain_documents(tmp_path / "bad.csv")
    assert "\n" not in str(caught.value).strip(), str(caught.value)


@settings(max_examples=lane_examples(200), deadline=None, database=None)
@given(text=sentences.filter(lambda s: "\x00" not in s), bom=st.booleans())
def test_valid_text_yields_exactly_its_non_empty_lines(text, bom):
    """The other half of the contract: clean UTF-8 is read back completely, one document per line."""
    content = ("\ufeff" if bom else "") + text
    body = content[1:] if content.startswith("\ufeff") else content   # one leading BOM is dropped
    expected = [line.strip() for line in body.split("\n") if line.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "corpus.txt"
        path.write_bytes(content.encode("utf-8"))
        assert read_all(corpus.CorpusSpec(path=str(path)), corpus.iter_documents) == expected


# ------------------------------------------------------------------------------------------ counts add up


def squeezed(texts: list[str]) -> str:
    """The text without any whitespace: what cutting at spaces and stripping pieces must keep."""
    return "".join("".join(text.split()) for text in texts)


def line_oracle(data: bytes, limit: int):
    """(documents, lines or pieces skipped) of a .txt file read one document per line, computed plainly: a
    line longer than ``limit`` bytes is cut where readlog.cut_point says, and each piece kept or skipped on
    its own. None for a binary file (a NUL byte in its first 8000 bytes: skipped whole)."""
    from babeltune.corpus.readlog import cut_point

    if b"\x00" in data[:8000]:
        return None
    body = data[3:] if data.startswith(b"\xef\xbb\xbf") else data
    documents, bad = [], 0
    for line in body.split(b"\n"):
        parts, start = [], 0
        while len(line) - start > limit:
            at = cut_point(line, limit, start)
            parts.append(line[start:at])
            start = at
        for part in parts + [line[start:]]:
            try:
                text = part.decode("utf-8")
            except UnicodeDecodeError:
                bad += 1
                continue
            if "\x00" in text:
                bad += 1
            elif text.strip():
                documents.append(text.strip())
    return documents, bad


text_lines = st.one_of(sentences.map(lambda s: s.encode("utf-8")), misencoded(), st.binary(max_size=12),
                       st.sampled_from([b"", b"  ", b"a\x00b", b"\xff", "पाणी  पाऊस ".encode() * 5, b"x" * 40]))


@settings(max_examples=lane_examples(300), deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=st.lists(text_lines, max_size=25), bom=st.booleans(), chunk=st.integers(1, 64),
       limit=st.sampled_from([None, 4, 9, 32]), doc_split=st.sampled_from(["line", "line", "paragraph", "file"]))
def test_txt_lines_read_plus_lines_skipped_add_up(lines, bom, chunk, limit, doc_split):
    from babeltune.corpus import readlog
    from babeltune.advisor.measure import count_corpus

    data = (b"\xef\xbb\xbf" if bom else b"") + b"\n".join(lines)
    saved = corpus.CHUNK_BYTES, readlog.MAX_DOCUMENT_BYTES
    expected = line_oracle(data, limit or saved[1])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "a.txt"
        path.write_bytes(data)
        spec = corpus.CorpusSpec(path=str(path), doc_split=doc_split)
        try:
            corpus.CHUNK_BYTES, readlog.MAX_DOCUMENT_BYTES = chunk, limit or saved[1]
            skipped: list = []
            documents = read_all(spec, lambda spec, _: corpus.iter_documents(spec, skipped))
            counted: list = []
            if documents and doc_split == "line":
                counts, _, _ = count_corpus(spec, 0, counted)
                assert (counts.documents, counts.characters) == (len(documents), sum(map(len, documents)))
                assert [(s.kind, s.count, s.line, s.offset) for s in counted] == [(s.kind, s.count, s.line, s.offset) for s in skipped]
        finally:
            corpus.CHUNK_BYTES, readlog.MAX_DOCUMENT_BYTES = saved
    check_skips(skipped)
    if expected is None:
        assert documents == [] and [s.kind for s in skipped] == ["file"] and "binary" in skipped[0].reason
        return
    wanted, bad = expected
    if not wanted:
        return                      # no documents: one error line (checked by read_all)
    assert sum(s.count for s in skipped if s.kind == "records") == bad, skipped
    if doc_split == "line":
        assert documents == wanted
    else:          # paragraphs/files cut again at spaces and stripped: nothing but whitespace may go
        assert squeezed(documents) == squeezed(wanted)
    assert all(len(d.encode("utf-8")) <= (limit or saved[1]) for d in documents)


@settings(max_examples=lane_examples(200), deadline=None, database=None)
@given(kinds=st.lists(st.sampled_from(["good", "empty", "bad bytes", "surrogate", "blank"]), max_size=20),
       text=sentences)
def test_jsonl_objects_read_plus_lines_skipped_add_up(kinds, text):
    lines = []
    for kind in kinds:
        lines.append({"good": json.dumps({"text": text + " x"}).encode(), "empty": b'{"text": "  "}',
                      "bad bytes": b'{"text": "\xff"}', "surrogate": b'{"text": "\\udc80 y"}', "blank": b" "}[kind])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "a.jsonl"
        path.write_bytes(b"\n".join(lines))
        skipped: list = []
        documents = read_all(corpus.CorpusSpec(path=str(path)), lambda spec, _: corpus.iter_documents(spec, skipped))
        assert documents == [(text + " x").strip()] * kinds.count("good")
        if documents:
            assert sum(s.count for s in skipped) == kinds.count("bad bytes") + kinds.count("surrogate")
        records: list = []
        rows = read_all(corpus.CorpusSpec(path=str(path)), lambda spec, _: corpus.iter_records(spec, records))
        if rows:
            assert len(rows) == kinds.count("good") + kinds.count("empty") + kinds.count("surrogate")
            assert sum(s.count for s in records) == kinds.count("bad bytes")


cells = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",), exclude_characters="\r\n\x00"), max_size=12)


@settings(max_examples=lane_examples(200), deadline=None, database=None)
@given(rows=st.lists(st.tuples(st.sampled_from(["good", "good", "short", "long", "bad bytes"]),
                               st.lists(cells, min_size=4, max_size=4)), max_size=25),
       tsv=st.booleans())
def test_csv_rows_read_plus_rows_skipped_add_up(rows, tsv):
    import csv

    delimiter = "\t" if tsv else ","
    lines = []
    for kind, fields in rows:
        width = {"short": 2, "long": 4}.get(kind, 3)
        out = io.StringIO()
        csv.writer(out, delimiter=delimiter, lineterminator="\n").writerow(fields[:width])
        line = out.getvalue().encode("utf-8")
        lines.append(line[:-1] + b"\xff\n" if kind == "bad bytes" else line)
    header = delimiter.join(["id", "text", "label"]).encode() + b"\n"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ("a.tsv" if tsv else "a.csv")
        path.write_bytes(header + b"".join(lines))
        skipped: list = []
        records = read_all(corpus.CorpusSpec(path=str(path)), lambda spec, _: corpus.iter_records(spec, skipped))
    good = [fields for kind, fields in rows if kind == "good"]
    if good:
        assert [r["text"] for r in records] == [fields[1] for fields in good]
        assert len(records) + sum(s.count for s in skipped) == len(rows)
        assert sum(s.count for s in skipped if s.unit == "row") == len(rows) - len(good) - [k for k, _ in rows].count("bad bytes")
