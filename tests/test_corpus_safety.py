"""Issue 17, reading corpora: nothing lost in silence, nothing unbounded, no tracebacks.

A bad byte costs its line (counted and reported), not its file; FIFOs, dangling links, link loops and
unreadable files are reported skips; malformed CSV rows are counted; a document of any length is cut
into counted pieces in bounded memory and linear time; --strict turns every skip into one error line."""

from __future__ import annotations

import builtins
import json
import os
import threading
import time
import tracemalloc
from pathlib import Path

import pytest

from babeltune.corpus import reader as corpus_module
from babeltune.advisor import measure, textscan
from babeltune.corpus.reader import CorpusSpec, iter_documents, iter_records
from babeltune.errors import BabeltuneError

TEXT = Path(__file__).parent / "data" / "text"


@pytest.fixture(scope="module")
def mr_lines() -> list[str]:
    return [line.strip() for line in (TEXT / "mr.txt").read_text("utf-8").splitlines() if line.strip()]


def documents(path, skipped=None, **options) -> list[str]:
    return list(iter_documents(CorpusSpec(str(path), **options), skipped))


def by_name(skipped) -> dict:
    return {Path(s.path).name: s for s in skipped}


def finishes(function, seconds: float = 30.0):
    """Run ``function`` in a thread; (finished, result or exception). A FIFO would block it forever."""
    outcome: dict = {}

    def target():
        try:
            outcome["value"] = function()
        except BaseException as exc:   # noqa: BLE001 - handed back to the test
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    return not thread.is_alive(), outcome


def unblock(fifo: Path) -> None:
    """Open a FIFO for writing once, so a reader stuck on it (the unfixed code) gets EOF and ends."""
    try:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        pass


# ------------------------------------------------------------------------------------------ item 2


def bad_byte_corpus(folder: Path, mr_lines: list[str]) -> tuple[int, int]:
    """big.txt: 30 copies of the sample, one bad byte, 30 more; small.txt: the sample. Returns the line and
    byte offset of the bad byte."""
    block = ("\n".join(mr_lines) + "\n").encode("utf-8")
    (folder / "big.txt").write_bytes(block * 30 + b"bad \xff byte\n" + block * 30)
    (folder / "small.txt").write_bytes(block)
    return 30 * len(mr_lines) + 1, 30 * len(block) + 4


def test_a_bad_byte_costs_its_line_not_the_file_and_is_counted(tmp_path, mr_lines):
    line, offset = bad_byte_corpus(tmp_path, mr_lines)
    skipped: list = []
    assert len(documents(tmp_path, skipped)) == 61 * len(mr_lines)
    (entry,) = skipped
    assert (Path(entry.path).name, entry.kind, entry.count, entry.line, entry.offset) == ("big.txt", "records", 1, line, offset)
    assert entry.describe().endswith(f"big.txt: skipped 1 line (invalid UTF-8; 10 bytes; first at line {line}, byte {offset})")
    with pytest.raises(BabeltuneError, match=rf"big\.txt: invalid UTF-8 at byte {offset};.*--strict"):
        documents(tmp_path, strict=True)
    counts, _, files = measure.count_corpus(CorpusSpec(str(tmp_path)), 0, skipped := [])
    assert counts.documents == 61 * len(mr_lines) and len(files) == 2
    assert [(s.kind, s.count, s.line, s.offset) for s in skipped] == [("records", 1, line, offset)]


def test_bad_lines_in_ranges_read_apart_get_their_place_in_the_whole_file(tmp_path, mr_lines, monkeypatch):
    """The counting pass cuts big files into byte ranges: line numbers of skips are placed in the file."""
    line, offset = bad_byte_corpus(tmp_path, mr_lines)
    (tmp_path / "small.txt").unlink()
    (tmp_path / "big.txt").write_bytes((tmp_path / "big.txt").read_bytes() + b"\xfe\n")
    monkeypatch.setattr(textscan, "SEGMENT_BYTES", 4096)
    assert len(textscan.line_segments(tmp_path / "big.txt", 4096)) > 10
    skipped: list = []
    counts, _, _ = measure.count_corpus(CorpusSpec(str(tmp_path)), 0, skipped)
    (entry,) = skipped
    assert (entry.count, entry.line, entry.offset) == (2, line, offset) and counts.documents == 60 * len(mr_lines)


def test_train_reports_skipped_lines_counts_them_in_the_manifest_data_and_strict_fails(tmp_path, mr_lines, tiny_model_dir):
    from transformers import AutoTokenizer

    from babeltune.config import TrainConfig
    from babeltune.trainer.data import prepare_data

    line, _ = bad_byte_corpus(tmp_path, mr_lines)
    raw = {"language": "mr", "model": {"name": "tiny", "max_seq_length": 32}, "data": {"train": str(tmp_path)},
           "training": {"per_device_train_batch_size": 2, "learning_rate": 1e-3, "max_steps": 2},
           "eval": {"evaluation_strategy": "no"}}
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    prepared = prepare_data(TrainConfig.model_validate(raw), tokenizer)
    stats = prepared.stats
    assert stats["train_documents"] + stats["eval_documents"] == 61 * len(mr_lines)
    assert (stats["skipped_files"], stats["skipped_records"], stats["cut_documents"]) == (0, 1, 0)
    assert stats["skipped"][0]["path"].endswith("big.txt") and stats["skipped"][0]["line"] == line
    assert any("big.txt: skipped 1 line (invalid UTF-8" in note for note in prepared.notes)
    raw["data"]["strict"] = True
    with pytest.raises(BabeltuneError, match=r"big\.txt: invalid UTF-8 at byte"):
        prepare_data(TrainConfig.model_validate(raw), tokenizer)


def test_train_strict_flag_is_recorded_in_the_resolved_config(tmp_path):
    import yaml
    from click.testing import CliRunner

    from babeltune.trainer.cli import train, worker_args

    config = {"language": "mr", "model": {"name": "tiny", "max_seq_length": 32}, "data": {"train": str(TEXT / "mr.txt")},
              "training": {"per_device_train_batch_size": 2, "learning_rate": 1e-3, "max_steps": 2},
              "eval": {"evaluation_strategy": "no"}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config), "utf-8")
    result = CliRunner().invoke(train, ["--config", str(tmp_path / "c.yaml"), "--strict", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(result.output.split("# backend")[0])["data"]["strict"] is True
    assert "--strict" in worker_args({"config_path": "c.yaml", "backend": None, "output_dir": None, "max_steps": None,
                                      "resume": None, "sets": (), "merge": False, "no_eval": False, "strict": True})


@pytest.mark.slow   # ~15 s in the fast lane (over ~10 s: slow)
def test_advise_names_the_file_and_counts_the_skipped_line(tmp_path, mr_lines, tiny_model_dir):
    from click.testing import CliRunner

    from babeltune.advisor.cli import advise

    line, offset = bad_byte_corpus(tmp_path, mr_lines)
    result = CliRunner().invoke(advise, ["--lang", "mr", "--corpus", str(tmp_path), "--model", str(tiny_model_dir),
                                         "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert f"big.txt: skipped 1 line (invalid UTF-8; 10 bytes; first at line {line}, byte {offset})" in result.stderr
    measured = json.loads(result.stdout)["measurements"]
    assert measured["documents"] == 61 * len(mr_lines) and measured["skipped"][0]["count"] == 1


# ------------------------------------------------------------------------------------------ item 8


def test_a_fifo_in_the_corpus_is_reported_and_never_opened(tmp_path, mr_lines):
    (tmp_path / "a.txt").write_text("\n".join(mr_lines), "utf-8")
    os.mkfifo(tmp_path / "pipe.txt")
    skipped: list = []
    try:
        done, outcome = finishes(lambda: documents(tmp_path, skipped))
        assert done, "reading a corpus folder holding a FIFO hung"
        assert outcome.get("value") == mr_lines and "FIFO" in by_name(skipped)["pipe.txt"].reason
        done, outcome = finishes(lambda: measure.count_corpus(CorpusSpec(str(tmp_path)), 0, []))
        assert done and outcome["value"][0].documents == len(mr_lines)
        done, outcome = finishes(lambda: documents(tmp_path / "pipe.txt"))
        assert done and isinstance(outcome.get("error"), BabeltuneError) and "FIFO" in str(outcome["error"])
        done, outcome = finishes(lambda: documents(tmp_path, strict=True))
        assert done and isinstance(outcome.get("error"), BabeltuneError) and "pipe.txt" in str(outcome["error"])
        done, outcome = finishes(lambda: measure.count_corpus(CorpusSpec(str(tmp_path), strict=True), 0, []))
        assert done and isinstance(outcome.get("error"), BabeltuneError) and "pipe.txt" in str(outcome["error"])
    finally:
        for _ in range(4):
            unblock(tmp_path / "pipe.txt")


def test_a_file_swapped_for_a_fifo_after_listing_does_not_block(tmp_path):
    from babeltune.corpus.textread import open_regular

    os.mkfifo(tmp_path / "late.txt")
    try:
        done, outcome = finishes(lambda: open_regular(str(tmp_path / "late.txt")))
        assert done and "FIFO" in str(outcome.get("error"))
    finally:
        unblock(tmp_path / "late.txt")


# ------------------------------------------------------------------------------------------ item 13


def test_dangling_links_link_loops_and_folder_loops_are_reported_skips(tmp_path, mr_lines):
    (tmp_path / "a.txt").write_text(mr_lines[0], "utf-8")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text(mr_lines[1], "utf-8")
    os.symlink("nowhere.txt", tmp_path / "dangling.txt")
    os.symlink("loop.txt", tmp_path / "loop.txt")
    os.symlink("..", tmp_path / "sub" / "up")             # a folder loop
    os.symlink(tmp_path / "sub", tmp_path / "linked")     # a second way into sub/
    skipped: list = []
    assert documents(tmp_path, skipped) == mr_lines[:2]
    reasons = by_name(skipped)
    assert "dangling symbolic link" in reasons["dangling.txt"].reason
    assert reasons["loop.txt"].reason == "symbolic link loop"
    assert "already read" in reasons["up"].reason and "already read" in reasons["sub"].reason
    counts, _, files = measure.count_corpus(CorpusSpec(str(tmp_path)), 0, [])   # the counting pass too
    assert counts.documents == 2 and len(files) == 2
    only_broken = tmp_path / "broken"
    only_broken.mkdir()
    os.symlink("nowhere.txt", only_broken / "x.txt")
    with pytest.raises(BabeltuneError, match="holds no") as caught:
        documents(only_broken)
    assert "\n" not in str(caught.value)
    with pytest.raises(BabeltuneError, match="dangling symbolic link"):
        documents(tmp_path / "dangling.txt")


@pytest.mark.slow   # ~14 s in the fast lane (over ~10 s: slow)
def test_an_unreadable_file_is_a_reported_skip_not_a_traceback(tmp_path, mr_lines, monkeypatch, tiny_model_dir):
    # Tests run as root, where chmod 000 still reads: make every way of opening the file fail instead.
    secret = str(tmp_path / "secret.txt")
    real_open, real_os_open = builtins.open, os.open

    def deny(path):
        if os.fspath(path) == secret:
            raise PermissionError(13, "Permission denied", secret)

    monkeypatch.setattr(builtins, "open", lambda path, *a, **k: deny(path) or real_open(path, *a, **k))
    monkeypatch.setattr(os, "open", lambda path, *a, **k: deny(path) or real_os_open(path, *a, **k))
    (tmp_path / "a.txt").write_text("\n".join(mr_lines), "utf-8")
    Path(secret).write_text("hidden", "utf-8")
    skipped: list = []
    assert documents(tmp_path, skipped) == mr_lines
    assert by_name(skipped)["secret.txt"].reason == "unreadable: Permission denied"
    counts, _, _ = measure.count_corpus(CorpusSpec(str(tmp_path)), 0, skipped := [])
    assert counts.documents == len(mr_lines) and "unreadable" in by_name(skipped)["secret.txt"].reason
    with pytest.raises(BabeltuneError, match=r"no documents.*secret\.txt: unreadable: Permission denied"):
        documents(secret)
    from click.testing import CliRunner

    from babeltune.advisor.cli import advise

    result = CliRunner().invoke(advise, ["--lang", "mr", "--corpus", str(tmp_path), "--model", str(tiny_model_dir),
                                         "--json"], catch_exceptions=False)
    assert result.exit_code == 0 and "secret.txt: skipped the whole file (unreadable: Permission denied)" in result.stderr


def test_deeply_nested_jsonl_is_one_error_line_not_a_recursion_error(tmp_path):
    (tmp_path / "deep.jsonl").write_text('{"text": "ok"}\n' + "[" * 100_000 + "]" * 100_000 + "\n", "utf-8")
    for reader in (iter_documents, iter_records):
        with pytest.raises(BabeltuneError, match=r"deep\.jsonl line 2: invalid JSON \(nested too deeply") as caught:
            list(reader(CorpusSpec(str(tmp_path))))
        assert "\n" not in str(caught.value)


# ------------------------------------------------------------------------------------------ item 16


def table(rows: list[str]) -> str:
    return "\n".join(["id,text,label"] + rows) + "\n"


def test_ragged_csv_rows_are_skipped_counted_and_fail_under_strict(tmp_path):
    rows = [f"{i},text {i},0" for i in range(1, 3001)]
    for i in range(9, 3000, 7):
        rows[i] += ",extra"                                # 428 rows with a field too many (rows 10, 17, ..., 2999)
    rows[3] = "4,text 4"                                   # one with a field too few
    (tmp_path / "r.csv").write_text(table(rows), "utf-8")
    skipped: list = []
    docs = documents(tmp_path / "r.csv", skipped)
    (entry,) = skipped
    assert len(docs) + entry.count == 3000 and entry.count == 429 and entry.unit == "row" and entry.line == 5
    assert "skipped 429 rows (row whose field count differs from the header's 3; first at line 5)" in entry.describe()
    with pytest.raises(BabeltuneError, match=r"r\.csv: row whose field count differs .*line 5.*fix: give every row 3 fields"):
        documents(tmp_path / "r.csv", strict=True)


def test_an_unclosed_quote_costs_its_line_instead_of_merging_the_lines_after_it(tmp_path):
    rows = [f"{i},text {i},0" for i in range(1, 101)]
    rows[40] = '41,"text 41,0'                             # the quote never closes
    (tmp_path / "q.csv").write_text(table(rows), "utf-8")
    skipped: list = []
    docs = documents(tmp_path / "q.csv", skipped)
    assert len(docs) == 99 and docs[40] == "text 42" and docs[-1] == "text 100"
    (entry,) = skipped
    assert (entry.count, entry.line, entry.unit) == (1, 42, "row") and "unexpected end of data" in entry.reason
    quoted = [f'{i},"text {i}",0' for i in range(1, 101)]
    quoted[40] = '41,"text 41,0'                           # closed by the next row's opening quote
    (tmp_path / "q.csv").write_text(table(quoted), "utf-8")
    assert len(documents(tmp_path / "q.csv", skipped := [])) == 99 and skipped[0].count == 1
    with pytest.raises(BabeltuneError, match=r"q\.csv: malformed CSV row.*line 42.*fix the quoting"):
        documents(tmp_path / "q.csv", strict=True)


# ------------------------------------------------------------------------------------------ item 3


def no_newline_file(path: Path, size: int) -> str:
    words = "शब्द word मराठी "
    text = (words * (size // len(words.encode("utf-8")) + 1)).encode("utf-8")[:size].decode("utf-8", "ignore")
    path.write_text(text, "utf-8")
    return text


def test_a_document_without_newlines_is_cut_into_pieces_in_bounded_memory(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus_module, "CHUNK_BYTES", 1 << 20)
    text = no_newline_file(tmp_path / "one.txt", 16 << 20)
    skipped: list = []
    tracemalloc.start()
    try:
        pieces = documents(tmp_path / "one.txt", skipped)
        peak = tracemalloc.get_traced_memory()[1] - sum(len(p) * 4 for p in pieces)   # minus the result
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, f"peak {peak / 2**20:.1f} MiB reading one 16 MiB line"
    from babeltune.corpus import readlog

    assert len(pieces) > 60 and max(len(p.encode("utf-8")) for p in pieces) <= readlog.MAX_DOCUMENT_BYTES
    assert " ".join(pieces) == text.strip()               # cut at spaces: nothing lost
    (entry,) = skipped
    assert entry.kind == "cut" and entry.count == 1 and f"places" in entry.reason
    for split in ("paragraph", "file"):
        assert " ".join(documents(tmp_path / "one.txt", doc_split=split)) == text.strip()


def test_segmenting_and_counting_a_line_of_any_length_is_linear(tmp_path, monkeypatch):
    """Line splitting was quadratic (269 s for a 200 MB line): the time for 4x the bytes must stay near 4x."""
    no_newline_file(tmp_path / "8.txt", 8 << 20)
    no_newline_file(tmp_path / "32.txt", 32 << 20)

    def seconds(path: Path) -> float:
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            assert textscan.line_segments(path, 1 << 20) == [(0, None)]
            best = min(best, time.perf_counter() - start)
        return best

    small, large = seconds(tmp_path / "8.txt"), seconds(tmp_path / "32.txt")
    assert large < 8 * small + 0.5, f"8 MiB: {small:.3f} s, 32 MiB: {large:.3f} s"
    monkeypatch.setattr(corpus_module, "CHUNK_BYTES", 1 << 20)
    monkeypatch.setattr(textscan, "POOL_CHARS", 2 << 20)     # the sample may hold 64M chars by design
    tracemalloc.start()
    try:
        assert textscan.line_segments(tmp_path / "32.txt", 1 << 20) == [(0, None)]
        segment_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        counts, _, _ = measure.count_corpus(CorpusSpec(str(tmp_path / "32.txt")), 0, skipped := [])
        count_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert segment_peak < 4 << 20 and count_peak < 24 << 20, (segment_peak / 2**20, count_peak / 2**20)
    assert counts.documents == len(documents(tmp_path / "32.txt")) and skipped[0].kind == "cut"


def test_huge_jsonl_csv_and_parquet_records_are_cut_or_skipped(tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    long_text = "मराठी शब्द " * 300_000                       # 3.3M characters, 9.6 MB
    pq.write_table(pa.table({"text": [long_text]}), tmp_path / "bomb.parquet", compression="zstd")
    assert (tmp_path / "bomb.parquet").stat().st_size < 100_000
    (tmp_path / "wide.csv").write_text(f'id,text\n1,"{long_text}"\n2,short\n', "utf-8")
    (tmp_path / "long.jsonl").write_text(json.dumps({"text": long_text}, ensure_ascii=False) + "\n", "utf-8")
    for name in ("bomb.parquet", "wide.csv", "long.jsonl"):
        skipped: list = []
        pieces = documents(tmp_path / name, skipped)
        assert len(pieces) > 30 and " ".join(pieces[:-1] if name == "wide.csv" else pieces) == long_text.strip(), name
        from babeltune.corpus import readlog

        assert max(len(p.encode("utf-8")) for p in pieces) <= readlog.MAX_DOCUMENT_BYTES
        assert [(s.kind, s.count) for s in skipped] == [("cut", 1)], name
    monkeypatch.setattr(readlog, "MAX_RECORD_BYTES", 1 << 20)       # a JSONL/CSV line longer than this is skipped
    (tmp_path / "long.jsonl").write_text(json.dumps({"text": long_text}) + '\n{"text": "short"}\n', "utf-8")
    skipped = []
    assert documents(tmp_path / "long.jsonl", skipped) == ["short"]
    assert skipped[0].describe().startswith(f"{tmp_path / 'long.jsonl'}: skipped 1 line (line longer than 1,048,576 bytes")


@pytest.mark.slow   # ~16 s in the fast lane (over ~10 s: slow)
def test_advise_on_a_file_without_newlines_says_it_cut_it(tmp_path, monkeypatch, tiny_model_dir):
    from click.testing import CliRunner

    from babeltune.corpus import readlog
    from babeltune.advisor.cli import advise

    monkeypatch.setattr(readlog, "MAX_DOCUMENT_BYTES", 16 << 10)
    no_newline_file(tmp_path / "one.txt", 200_000)
    result = CliRunner().invoke(advise, ["--lang", "mr", "--corpus", str(tmp_path), "--model", str(tiny_model_dir),
                                         "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "one.txt: cut 1 document(s) longer than 16,384 bytes into pieces at 12 places" in result.stderr
    assert json.loads(result.stdout)["measurements"]["documents"] == 13


def test_tokenizer_batches_are_bounded_by_characters():
    from babeltune.corpus import readlog

    texts = ["x" * 600_000, "y" * 600_000, "z", "w" * 2_000_000, "v"]
    assert [list(map(len, b)) for b in readlog.batches(texts, 1000, max_chars=1 << 20)] == [
        [600_000], [600_000, 1], [2_000_000], [1]]
    assert [len(b) for b in readlog.batches(["a"] * 5, 2)] == [2, 2, 1]


def test_sampling_long_documents_stops_once_enough_text_is_tokenized():
    """Before, a sample of long pieces was tokenized whole (up to 64M characters) because the interval was
    only checked after 2,000 documents; now 30 documents holding 2M characters are enough to check it."""
    class CharTokenizer:          # one token per two characters: the interval is exact at once
        def encode_batch(self, texts):
            return [[0] * (len(text) // 2) for text in texts]

    docs = ["ab" * 50_000] * 200                        # 200 pieces of 100k characters
    counts = textscan.Counts(documents=len(docs), characters=sum(map(len, docs)))
    sample = measure.tokenize_sample(docs, CharTokenizer(), counts)
    assert 30 <= len(sample.tokens) <= 40 and sample.tokens[0] == 50_000
