"""advise -> train with a vocabulary extension -> eval, on CPU with the tiny random model; and bits/char of an
extended run compares with a plain run's (same characters, different token counts)."""

from __future__ import annotations


import pytest

from conftest import TEXT


@pytest.mark.slow
def test_advise_train_eval_with_an_extension(tiny_model_dir, tmp_path, monkeypatch):
    from babeltune.advisor.advise import advise, config_data
    from babeltune.corpus.reader import CorpusSpec
    from babeltune.advisor.rules import vocabulary
    from babeltune.config import validate_config
    from babeltune.trainer.evaluate import evaluate_corpora
    from babeltune.trainer.run import run_training

    corpus = CorpusSpec(str(TEXT / "mr.txt"))
    small = advise("mr", corpus, model=str(tiny_model_dir), gpu_memory=24, probe=False)
    assert small.config.vocab.extend == 0 and "tokens/char" in small.decisions["vocab.extend"].reason
    # the shipped sample is far below the published threshold: lower it to follow the path a large corpus takes
    monkeypatch.setattr(vocabulary, "MIN_EXTENSION_CHARS", 1_000)
    monkeypatch.setattr(vocabulary, "MIN_CHARS_PER_NEW_TOKEN", 10)
    monkeypatch.setattr(vocabulary, "MIN_SPEEDUP", 1.05)
    advice = advise("mr", corpus, model=str(tiny_model_dir), gpu_memory=24, probe=False)
    extend = advice.config.vocab.extend
    assert extend > 0 and f"+{extend:,} merges" in advice.decisions["vocab.extend"].reason

    runs = {}
    for name, value in (("plain", 0), ("extended", extend)):
        raw = config_data(advice.config)
        raw["vocab"]["extend"] = value
        raw["model"].update(max_seq_length=64, attn_implementation="eager")
        raw["training"].update(output_dir=str(tmp_path / name), max_steps=3, num_train_epochs=None,
                               per_device_train_batch_size=4, gradient_accumulation_steps=1, save_steps=3,
                               learning_rate=0.005, gradient_checkpointing=False)
        raw["eval"].update(evaluation_strategy="no", save_strategy="no", early_stopping_patience=None, eval_steps=None,
                           max_eval_documents=16)
        runs[name] = run_training(validate_config(raw), echo=lambda line: None)

    heldout = tmp_path / "extended" / "heldout.jsonl"
    reports = {name: evaluate_corpora(str(tiny_model_dir), {"mr": CorpusSpec(str(heldout), text_field="text")},
                                      adapter=str(run.adapter_dir), max_length=64, echo=None).to_dict()["languages"]["mr"]
               for name, run in runs.items()}
    plain, extended = reports["plain"]["after"], reports["extended"]["after"]
    assert plain["characters"] == extended["characters"] > 0                               # the same text
    assert extended["tokens"] < plain["tokens"]                                             # fewer tokens for it
    for report in (plain, extended):                # bits/char divides by characters, never by tokens
        assert report["bits_per_char"] == pytest.approx(report["nats"] / 0.6931471805599453 / report["characters"])
    assert 0.5 < extended["bits_per_char"] / plain["bits_per_char"] < 2
