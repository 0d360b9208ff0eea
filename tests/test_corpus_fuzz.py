"""Fuzz the corpus reader (babeltune.advisor.corpus) with hypothesis: random bytes, mis-encoded text,
truncated multi-byte sequences, NUL bytes, empty files, JSONL with wrong types or missing fields, CSV/TSV
without the text column, corrupt and odd parquet, random extensions, folders mixing all of these.

Every input must either yield documents (non-empty, stripped strings) or end in a BabeltuneError with a
one-line message — files that are skipped are reported as SkippedFile with a reason. Any other exception
is a bug: it would reach the user as a traceback."""

from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from babeltune.errors import BabeltuneError

corpus = pytest.importorskip("babeltune.advisor.corpus")
from babeltune.advisor.types import SkippedFile  # noqa: E402

FUZZ = settings(max_examples=1000, deadline=None, database=None,
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
        choice = draw(st.sampled_from(["good", "record", "value", "broken", "blank", "nested"]))
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
        else:
            lines.append(draw(st.sampled_from(["", "  "])))
    return "\n".join(lines).encode("utf-8")


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
    for skip in skipped:
        assert isinstance(skip, SkippedFile) and skip.reason.strip(), skip
    return items


def check_spec(spec) -> None:
    for document in read_all(spec, corpus.iter_documents):
        assert isinstance(document, str) and document and document == document.strip()
    for record in read_all(spec, corpus.iter_records):
        assert isinstance(record, dict)


@FUZZ
@given(file=corpus_file(), options=specs, as_folder=st.booleans(), extra=st.lists(corpus_file(), max_size=3))
def test_corpus_reader_never_raises_anything_but_babeltune_error(file, options, as_folder, extra):
    with tempfile.TemporaryDirectory(prefix="babeltune-fuzz-") as tmp:
        root = Path(tmp) / "corpus"
        root.mkdir()
        files = [file] + (extra if as_folder else [])
        for number, (suffix, content) in enumerate(files):
            (root / f"part{number}{suffix}").write_bytes(content)
        target = root if as_folder else root / f"part0{file[0]}"
        check_spec(corpus.CorpusSpec(path=str(target), **options))


@settings(max_examples=100, deadline=None, database=None)
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


@settings(max_examples=200, deadline=None, database=None)
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
