"""Benchmark: `babeltune export` round trip on real built-ins, on CPU in minutes (no GPU needed).

For each model: train a LoRA adapter for a few steps on the shipped Marathi sample, merge it (the reference:
the merged HF model in fp32), export it as GGUF (f16 and q8_0 by default), load each file back with babeltune's
own GGUF -> HF conversion (tokenizer rebuilt from the GGUF vocabulary) and with transformers' GGUF loader, and
compare bits per character on held-out Marathi and English, file sizes, and token ids (every held-out text).
Results are written after every model (the file is valid JSON at every point), progress goes to stderr.

    python3 bench/export_roundtrip.py                                  # smollm2-135m, writes bench/results/export_roundtrip.json
    python3 bench/export_roundtrip.py --models smollm2-135m,gemma-3-270m --out /tmp/export.json
    python3 bench/export_roundtrip.py --smoke --out /tmp/smoke.json    # a tiny random Llama, seconds
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULT = REPO / "bench" / "results" / "export_roundtrip.json"
TRAIN_TEXT = REPO / "examples" / "data" / "marathi" / "train.txt"
HELD_OUT = {"mr": REPO / "examples" / "data" / "marathi" / "eval.txt", "en": REPO / "tests" / "data" / "text" / "en.txt"}

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def read_lines(path: Path, limit: int) -> list[str]:
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()][:limit]


def versions() -> dict:
    import gguf  # noqa: F401  (gguf has no __version__: ask the installed distribution)
    from importlib.metadata import version

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from gpu_bench import babeltune_commit

    names = ("babeltune", "torch", "transformers", "peft", "tokenizers", "gguf", "numpy")
    return {"python": platform.python_version(), **{name: version(name) for name in names},
            "babeltune_commit": babeltune_commit()}


def build_smoke_model(folder: Path) -> Path:
    """A tiny random Llama (2 layers, hidden 64) with a byte-level BPE trained on the shipped text."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train([str(TRAIN_TEXT), str(HELD_OUT["en"])], trainers.BpeTrainer(
        vocab_size=1024, special_tokens=["<|endoftext|>", "<s>", "<pad>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>", bos_token="<s>", pad_token="<pad>")
    fast.save_pretrained(folder)
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(fast), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                                 bos_token_id=1, eos_token_id=0, pad_token_id=2)).save_pretrained(folder)
    return folder


def train_adapter(model_dir: Path, out: Path, steps: int, block: int = 64, batch: int = 4) -> dict:
    """LoRA r=8 on all projections, `steps` AdamW steps (lr 2e-3) on Marathi; saved with the base identity."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from babeltune.models.identity import write_identity
    from babeltune.models.tokenizers import hf_tokenizer

    torch.manual_seed(0)
    tokenizer = hf_tokenizer(model_dir)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32), LoraConfig(
        r=8, lora_alpha=16, lora_dropout=0.0, task_type="CAUSAL_LM",
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    ids = [i for line in read_lines(TRAIN_TEXT, steps * batch * 4) for i in tokenizer(line + "\n", add_special_tokens=False)["input_ids"]]
    blocks = torch.tensor(ids[: (len(ids) // block) * block]).view(-1, block)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    started, losses = time.time(), []
    for step in range(steps):
        rows = blocks[(step * batch) % len(blocks):][:batch]
        loss = model(input_ids=rows, labels=rows).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(round(float(loss.detach()), 4))
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    write_identity(out, model_dir)
    return {"steps": steps, "tokens_per_step": block * batch, "loss_first": losses[0], "loss_last": losses[-1],
            "seconds": round(time.time() - started, 1)}


def score(model, tokenizer, texts: dict[str, list[str]]) -> dict[str, float]:
    from babeltune.trainer.evaluate import score_texts

    return {language: round(score_texts(model, tokenizer, lines, max_length=512, batch_size=8).bits_per_char, 5)
            for language, lines in texts.items()}


def relative(value: dict[str, float], reference: dict[str, float]) -> dict[str, float]:
    return {language: round((value[language] - reference[language]) / reference[language], 6) for language in reference}


def ids_equal(reference_tokenizer, other_tokenizer, texts: dict[str, list[str]]) -> dict:
    checked = [text for lines in texts.values() for text in lines]
    differing = [text for text in checked if reference_tokenizer(text)["input_ids"] != other_tokenizer(text)["input_ids"]]
    return {"texts": len(checked), "identical": len(checked) - len(differing), "first_difference": differing[:1]}


def round_trip(gguf_file: Path, workdir: Path, tokenizer, texts, reference) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from babeltune.models.convert import convert_gguf

    started = time.time()
    folder = convert_gguf(gguf_file, workdir / f"{gguf_file.stem}-hf")
    own_tokenizer = AutoTokenizer.from_pretrained(str(folder))
    own_model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    own = score(own_model, own_tokenizer, texts)
    del own_model
    hf_model = AutoModelForCausalLM.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name, dtype=torch.float32).eval()
    via_transformers = score(hf_model, tokenizer, texts)
    return {"babeltune_reload_bits_per_char": own, "babeltune_reload_relative_diff": relative(own, reference),
            "transformers_reload_bits_per_char": via_transformers,
            "transformers_reload_relative_diff": relative(via_transformers, reference),
            "token_ids_babeltune_reader": ids_equal(tokenizer, own_tokenizer, texts),
            "reload_and_score_seconds": round(time.time() - started, 1)}


def measure(name: str, model_dir: Path, workdir: Path, dtypes: list[str], steps: int, documents: int) -> dict:
    from transformers import AutoModelForCausalLM

    from babeltune.models.tokenizers import hf_tokenizer
    from babeltune.trainer.export_cli import export_adapter, merged_model

    texts = {language: read_lines(path, documents) for language, path in HELD_OUT.items()}
    log(f"{name}: training a LoRA adapter for {steps} steps on {TRAIN_TEXT.name}")
    adapter = workdir / f"{name}-adapter"
    result = {"model": name, "model_dir": str(model_dir), "held_out_documents": {k: len(v) for k, v in texts.items()},
              "adapter": train_adapter(model_dir, adapter, steps)}
    base_scores = score(AutoModelForCausalLM.from_pretrained(str(model_dir)).eval(), hf_tokenizer(model_dir), texts)
    merged, tokenizer = merged_model(adapter, model_dir, echo=log)
    reference = score(merged, tokenizer, texts)
    result.update(base_bits_per_char=base_scores, merged_hf_fp32_bits_per_char=reference, exports={})
    del merged
    for dtype in dtypes:
        log(f"{name}: exporting {dtype}")
        started = time.time()
        exported = export_adapter(str(adapter), str(workdir / f"{name}.{dtype}.gguf"), dtype=dtype, echo=log)
        entry = {"summary": exported.summary(), "file_bytes": exported.bytes, "file_mib": round(exported.bytes / 2**20, 1),
                 "tensor_types": exported.tensor_types, "export_seconds": round(time.time() - started, 1)}
        log(f"{name}: {dtype} {entry['file_mib']} MiB; loading it back")
        entry.update(round_trip(exported.path, workdir, tokenizer, texts, reference))
        result["exports"][dtype] = entry
        log(f"{name}: {dtype} relative bits/char difference {entry['babeltune_reload_relative_diff']}")
        exported.path.unlink()
    return result


def write(path: Path, report: dict) -> None:
    from babeltune.atomic import atomic_write_text

    atomic_write_text(path, json.dumps(report, indent=2, ensure_ascii=False) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="smollm2-135m", help="comma-separated built-in names or HF folders")
    parser.add_argument("--dtypes", default="f16,q8_0")
    parser.add_argument("--steps", type=int, default=20, help="adapter training steps (4 x 64 tokens each)")
    parser.add_argument("--documents", type=int, default=100, help="held-out documents per language")
    parser.add_argument("--out", type=Path, default=RESULT)
    parser.add_argument("--smoke", action="store_true", help="a tiny random Llama instead of --models")
    args = parser.parse_args()
    from babeltune.models.resolve import resolve_model_dir

    report = {"command": "python3 " + " ".join([os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]]),
              "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "device": "cpu"},
              "versions": versions(), "held_out": {k: str(v.relative_to(REPO)) for k, v in HELD_OUT.items()},
              "models": []}
    with tempfile.TemporaryDirectory(prefix="export-roundtrip-") as scratch:
        workdir = Path(scratch)
        names = ["tiny-random-llama"] if args.smoke else [name.strip() for name in args.models.split(",") if name.strip()]
        for name in names:
            model_dir = build_smoke_model(workdir / "tiny") if args.smoke else Path(resolve_model_dir(name))
            started = time.time()
            entry = measure(name, model_dir, workdir, args.dtypes.split(","), 4 if args.smoke else args.steps,
                            min(args.documents, 20) if args.smoke else args.documents)
            entry["seconds"] = round(time.time() - started, 1)
            report["models"].append(entry)
            write(args.out, report)
            log(f"{name}: done in {entry['seconds']} s; written to {args.out}")


if __name__ == "__main__":
    main()
