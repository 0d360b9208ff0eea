"""Does extending the vocabulary pay? Extended vs plain LoRA runs at equal GPU time, per language (issue 13).

For each language corpus and model: tokens/char of held-out text under the base and the extended tokenizer (and
whether English ids stay identical), then two babeltune `train` runs with the same data, settings and training-time
budget, one with vocab.extend: N and one without. Each run reports training characters per GPU-second, held-out
bits/char of the target language and of English after training (bits/char is tokenizer-independent, so the two
runs compare directly), and generation characters per second (greedy, merged model).

    python3 bench/vocab_extension.py --models-dir /root/.cache/babeltune/models --corpora /work/shared/corpora \
        --out bench/results/vocab_extension.json
    python3 bench/vocab_extension.py --smoke --out /tmp/vocab_smoke.json     # tiny random model on CPU, < 2 min

Results are written (atomically) after every run, with the command, GPU and library versions.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LANGUAGES = ("hi", "mr", "ko", "ja", "ar")                  # UD files in CORPORA/ud/<lang>.txt
PLAN = [("smollm2-135m", lang) for lang in ("hi", "mr", "ko", "ja", "mahasent")] + [("gemma-3-270m", "mr")]   # ar: --only
HELDOUT_EVERY = 10


def read_corpus(corpora: Path, name: str) -> tuple[str, list[str]]:
    """(language code, documents) of one benchmark corpus."""
    if name == "mahasent":
        with open(corpora / "mahasent" / "train.csv", encoding="utf-8", newline="") as handle:
            return "mr", [row["tweet"].strip() for row in csv.DictReader(handle) if row["tweet"].strip()]
    path = corpora / "ud" / f"{name}.txt"
    return name, [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def split(docs: list[str]) -> tuple[list[str], list[str]]:
    heldout = [d for d in docs if zlib.crc32(d.encode()) % HELDOUT_EVERY == 0]
    return [d for d in docs if zlib.crc32(d.encode()) % HELDOUT_EVERY != 0], heldout


def english_docs(corpora: Path) -> list[str]:
    path = corpora / "ud" / "en.txt"
    path = path if path.is_file() else REPO / "examples/data/english/eval.txt"
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()][:300]


def tokenizer_figures(model_dir: Path, train: list[str], heldout: list[str], english: list[str], extend: int) -> dict:
    """Tokens/char before/after on held-out text, new merges kept, English ids unchanged?"""
    from transformers import AutoTokenizer

    from babeltune.trainer.vocab import extended_tokenizer

    base = AutoTokenizer.from_pretrained(model_dir)
    new, added, scripts = extended_tokenizer(base, train, extend)

    def rate(tok, texts):
        return sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts) / sum(map(len, texts))

    same = all(base(t)["input_ids"] == new(t)["input_ids"] for t in english)
    before, after = rate(base, heldout), rate(new, heldout)
    return {"new_tokens": len(added), "joined_scripts": scripts, "tokens_per_char_before": round(before, 4),
            "tokens_per_char_after": round(after, 4), "cut": round(before / after, 3), "english_ids_unchanged": same}


def time_budget_backend(seconds: float, clock: dict, min_steps: int):
    """hf-peft whose Trainer stops after ``seconds`` of training (equal GPU time for both variants), and not before
    ``min_steps`` optimizer steps (an adapter that took no step past warmup would fail the reload check)."""
    import torch
    from transformers import Trainer, TrainerCallback

    from babeltune.plugins.hf_peft import HfPeftBackend

    def sync():
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    class Budget(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            sync()
            clock["start"] = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            sync()
            clock["seconds"] = time.perf_counter() - clock["start"]
            clock["tokens"] = state.num_input_tokens_seen
            clock["steps"] = state.global_step
            if clock["seconds"] >= seconds and state.global_step >= min_steps:
                control.should_training_stop = True

    class Timed(Trainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.add_callback(Budget())

    class Backend(HfPeftBackend):
        def trainer_class(self):
            return Timed

    return Backend()


def train_variant(model_dir: Path, lang: str, files: dict, extend: int, args, out: Path) -> dict:
    from babeltune.config import validate_config
    from babeltune.trainer.run import run_training

    config = validate_config({
        "language": lang, "model": {"name": str(model_dir), "max_seq_length": args.seq_len},
        "data": {"train": str(files["train"]), "eval": str(files["heldout"]), "mode": "cpt", "packing": "blocks"},
        "adapter": {"r": 16, "lora_alpha": 16, "target_modules": "all-linear"},
        "training": {"output_dir": str(out), "per_device_train_batch_size": args.batch, "learning_rate": args.lr,
                     "max_steps": 100_000, "warmup_steps": args.warmup, "lr_scheduler_type": "constant_with_warmup",
                     "gradient_checkpointing": False, "logging_steps": 50, "save_steps": 100_000, "seed": 3407},
        "eval": {"evaluation_strategy": "no", "save_strategy": "no", "max_eval_documents": args.eval_docs,
                 "extra_corpora": {"en": str(files["english"])}},
        "vocab": {"extend": extend}, "backend": {"name": "hf-peft", "options": {"liger": False}},
    }, source="bench")
    clock: dict = {}
    started = time.perf_counter()
    result = run_training(config, backend=time_budget_backend(args.seconds, clock, args.min_steps), echo=lambda line: None,
                          overwrite=True)
    report = json.loads(result.eval_report.read_text())["languages"]
    tpc = files["tokens_per_char"][bool(extend)]
    return {"extend": extend, "train_seconds": round(clock.get("seconds", 0), 2), "steps": clock.get("steps"),
            "train_chars_per_second": round(clock.get("tokens", 0) / tpc / max(clock.get("seconds", 1e-9), 1e-9), 1),
            "heldout_bits_per_char": report[lang]["after"]["bits_per_char"],
            "english_bits_per_char": report["en"]["after"]["bits_per_char"],
            "base_heldout_bits_per_char": report[lang]["before"]["bits_per_char"] if not extend else None,
            "generation_chars_per_second": generation_speed(model_dir, result.adapter_dir, files["prompt"], args),
            "wall_seconds": round(time.perf_counter() - started, 1)}


def generation_speed(model_dir: Path, adapter_dir: Path, prompt: str, args) -> float:
    """Greedy generation of args.gen_tokens new tokens on the merged model: new characters per second."""
    import torch
    from transformers import AutoTokenizer

    from babeltune.trainer.export import load_base_and_adapter

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = load_base_and_adapter(adapter_dir, str(model_dir), dtype=dtype, device=device).merge_and_unload()
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"][:, :32].to(device)
    kwargs = dict(max_new_tokens=args.gen_tokens, min_new_tokens=args.gen_tokens, do_sample=False,
                  pad_token_id=tokenizer.pad_token_id or 0)
    model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=kwargs["pad_token_id"])   # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    output = model.generate(ids, **kwargs)
    if device == "cuda":
        torch.cuda.synchronize()
    text = tokenizer.decode(output[0, ids.shape[1]:], skip_special_tokens=True)
    return round(len(text) / (time.perf_counter() - start), 1)


def environment() -> dict:
    import importlib.metadata as md

    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    versions = {name: md.version(name) for name in ("torch", "transformers", "peft", "tokenizers")}
    return {"command": " ".join([sys.executable, *sys.argv]), "gpu": gpu, "versions": versions,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def write(out: Path, results: dict) -> None:
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, out)


def run_case(model_dir: Path, corpus_name: str, corpora: Path, args, work: Path) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    lang, docs = read_corpus(corpora, corpus_name)
    train, heldout = split(docs)
    english = english_docs(corpora)
    figures = tokenizer_figures(model_dir, train, heldout, english, args.extend)
    files = {"train": work / "train.txt", "heldout": work / "heldout.txt", "english": work / "en.txt",
             "prompt": heldout[0]}
    for key, texts in (("train", train), ("heldout", heldout), ("english", english)):
        files[key].write_text("\n".join(texts) + "\n", encoding="utf-8")
    files["tokens_per_char"] = {False: figures["tokens_per_char_before"], True: figures["tokens_per_char_after"]}
    case = {"model": model_dir.name, "corpus": corpus_name, "language": lang, "train_characters": sum(map(len, train)),
            "heldout_characters": sum(map(len, heldout)), "tokenizer": figures, "runs": {}}
    for name, extend in (("plain", 0), ("extended", args.extend)):
        print(f"[{model_dir.name} {corpus_name}] {name} ...", flush=True)
        case["runs"][name] = train_variant(model_dir, lang, files, extend, args, work / name)
    plain, ext = case["runs"]["plain"], case["runs"]["extended"]
    case["compare"] = {"train_chars_per_second_ratio": round(ext["train_chars_per_second"] / max(plain["train_chars_per_second"], 1e-9), 3),
                       "heldout_bits_per_char_delta": round(ext["heldout_bits_per_char"] - plain["heldout_bits_per_char"], 4),
                       "english_bits_per_char_delta": round(ext["english_bits_per_char"] - plain["english_bits_per_char"], 4),
                       "generation_chars_per_second_ratio": round(ext["generation_chars_per_second"] / max(plain["generation_chars_per_second"], 1e-9), 3)}
    return case


def smoke_model(work: Path, corpora: Path) -> Path:
    """A tiny random Llama with a byte-level BPE trained on the smoke corpora (CPU, seconds)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = work / "tiny-model"
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train([str(p) for p in sorted((corpora / "ud").glob("*.txt"))], trainers.BpeTrainer(
        vocab_size=1024, special_tokens=["<|endoftext|>", "<s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<s>", pad_token="<pad>")
    fast.save_pretrained(folder)
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(fast), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                                 tie_word_embeddings=True, bos_token_id=1, eos_token_id=0, pad_token_id=2)).save_pretrained(folder)
    return folder


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models-dir", type=Path, help="folder of converted HF models (<name>-fp32 or <name>)")
    parser.add_argument("--corpora", type=Path, default=REPO.parent / "shared" / "corpora")
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/vocab_extension.json")
    parser.add_argument("--extend", type=int, default=4000, help="new merges for the extended runs")
    parser.add_argument("--seconds", type=float, default=12.0, help="training time per run (equal for both variants)")
    parser.add_argument("--min-steps", type=int, default=20, help="optimizer steps each run takes at least")
    parser.add_argument("--warmup", type=int, default=10, help="warmup steps")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--eval-docs", type=int, default=200)
    parser.add_argument("--gen-tokens", type=int, default=128)
    parser.add_argument("--only", help="comma-separated model:corpus pairs, e.g. smollm2-135m:mr")
    parser.add_argument("--smoke", action="store_true", help="tiny random model, shipped samples, CPU, < 2 min")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="vocab-bench-"))
    if args.smoke:
        args.corpora = REPO / "tests/data"
        args.seconds, args.seq_len, args.batch, args.eval_docs, args.gen_tokens, args.extend = 2, 64, 4, 16, 16, 100
        args.min_steps, args.warmup, args.lr = 4, 1, 5e-3
        plan = [("tiny", "mr")]
        models = {"tiny": smoke_model(work, args.corpora)}
    else:
        if args.models_dir is None:
            parser.error("--models-dir is required (or --smoke)")
        plan = [tuple(p.split(":")) for p in args.only.split(",")] if args.only else PLAN
        models = {}
        for name, _ in plan:
            found = [args.models_dir / f"{name}-fp32", args.models_dir / name]
            models[name] = next((p for p in found if (p / "config.json").is_file()), None)
            if models[name] is None:
                parser.error(f"--models-dir: no converted {name} in {args.models_dir} (looked for {name}-fp32, {name})")
    results = {**environment(), "settings": {k: str(v) for k, v in vars(args).items()}, "cases": []}
    write(args.out, results)
    for name, corpus_name in plan:
        started = time.perf_counter()
        try:
            case = run_case(models[name], corpus_name, args.corpora, args, work / f"{name}-{corpus_name}")
        except Exception as exc:   # one failing case must not lose the others: recorded, and the run goes on
            case = {"model": name, "corpus": corpus_name, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
        case["case_seconds"] = round(time.perf_counter() - started, 1)
        results["cases"].append(case)
        write(args.out, results)
        print(json.dumps({k: case.get(k) for k in ("model", "corpus", "tokenizer", "compare", "error")}, ensure_ascii=False), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
