"""`train` with vocab.extend (babeltune.trainer.vocab): extended tokenizer, new rows, save/reload, eval, merge."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from babeltune.config import load_config

from conftest import DATA, TEXT, build_tiny_llama

CONFIGS = DATA / "configs"
ENGLISH = Path(__file__).parents[1] / "examples/data/english/eval.txt"


def quiet(_line):
    pass


def config(model_dir: Path, out: Path, *sets: str):
    return load_config(CONFIGS / "tiny-cpt.yaml", [f"model.name={model_dir}", f"training.output_dir={out}",
                                                   f"data.train={TEXT / 'mr.txt'}", "training.max_steps=4",
                                                   "eval.eval_steps=4", *sets])


@pytest.fixture(scope="module")
def untied_model_dir(tmp_path_factory, tiny_model_dir) -> Path:
    import shutil

    folder = tmp_path_factory.mktemp("tiny-untied")
    for name in tiny_model_dir.iterdir():
        if name.name.startswith("tokenizer") or name.name == "special_tokens_map.json":
            shutil.copy(name, folder / name.name)
    from transformers import AutoTokenizer

    build_tiny_llama(folder, vocab_size=len(AutoTokenizer.from_pretrained(folder)), tie_word_embeddings=False)
    return folder


def lines(path: Path) -> list[str]:
    return [l for l in path.read_text(encoding="utf-8").splitlines() if l.strip()]


def test_extended_tokenizer_keeps_english_ids_and_shortens_marathi(tiny_model_dir):
    from transformers import AutoTokenizer

    from babeltune.trainer.vocab import extended_tokenizer

    base = AutoTokenizer.from_pretrained(tiny_model_dir)
    new, added, _ = extended_tokenizer(base, lines(TEXT / "mr.txt"), 200)
    assert len(added) == 200 and len(new) == len(base) + 200
    english = lines(ENGLISH) + lines(TEXT / "en.txt")
    assert [new(t)["input_ids"] for t in english] == [base(t)["input_ids"] for t in english]
    marathi = lines(DATA / "ud" / "mr.txt")
    assert sum(len(new(t)["input_ids"]) for t in marathi) < 0.92 * sum(len(base(t)["input_ids"]) for t in marathi)
    assert new.decode(new(marathi[0])["input_ids"], skip_special_tokens=True) == marathi[0]
    assert not set(added) & set(new.get_added_vocab())      # merges of the model, not added tokens


def test_new_rows_start_as_the_mean_of_their_pieces(tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from babeltune.trainer.vocab import extend_for_training

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    before = model.get_input_embeddings().weight.detach().clone()
    base = AutoTokenizer.from_pretrained(tiny_model_dir)
    cfg = config(tiny_model_dir, Path("unused"), "vocab.extend=50")
    new, extension, notes = extend_for_training(cfg, model, base, lines(TEXT / "mr.txt"))
    weight = model.get_input_embeddings().weight
    assert weight.shape[0] == len(new) == before.shape[0] + 50 and "tokens/char" in notes[0]
    assert torch.equal(weight[:before.shape[0]], before)
    token = extension.tokens[0]
    pieces = base.backend_tokenizer.model.tokenize(token)
    assert len(pieces) >= 2 and extension.pieces[0] == [p.id for p in pieces]
    assert torch.allclose(weight[extension.new_ids[0]], before[[p.id for p in pieces]].mean(0))


@pytest.mark.slow
@pytest.mark.parametrize("which", ["tied", "untied"])
def test_extended_run_reloads_to_equal_logits_and_evaluates(which, tiny_model_dir, untied_model_dir, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from babeltune.trainer.run import run_training
    from babeltune.trainer.vocab import EXTENSION_FILE, resize_for_adapter

    model_dir = tiny_model_dir if which == "tied" else untied_model_dir
    out = tmp_path / which
    result = run_training(config(model_dir, out, "vocab.extend=100"), merge=True, echo=quiet)
    adapter = result.adapter_dir
    saved = json.loads((adapter / EXTENSION_FILE).read_text())
    tokenizer = AutoTokenizer.from_pretrained(adapter)
    assert len(tokenizer) == saved["rows"] and len(saved["new_ids"]) == 100
    adapter_config = json.loads((adapter / "adapter_config.json").read_text())
    assert sorted(adapter_config["trainable_token_indices"]) == (["embed_tokens"] if which == "tied" else ["embed_tokens", "lm_head"])

    # a user's reload: fresh base, resized, adapter; the same logits as the trained model gave the reload check
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    resize_for_adapter(base, adapter)
    model = PeftModel.from_pretrained(base, str(adapter)).eval()
    merged = AutoModelForCausalLM.from_pretrained(result.merged_dir).eval()
    ids = tokenizer(lines(DATA / "ud" / "mr.txt")[0], return_tensors="pt")["input_ids"]
    assert int(ids.max()) >= saved["base_rows"]                    # the text uses new tokens
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, merged(ids).logits, atol=1e-4)
        with model.disable_adapter():                               # the new rows trained away from their start
            assert not torch.allclose(model(ids).logits, merged(ids).logits, atol=1e-4)
    weights = {name for name in safe_open_names(adapter / "adapter_model.safetensors")}
    assert any("trainable_tokens_delta" in n for n in weights) and not any(n.endswith("embed_tokens.weight") for n in weights)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["reload_check"]["relative_diff"] <= manifest["reload_check"]["tolerance"]
    report = json.loads(result.eval_report.read_text())
    assert "bits_per_char" in json.dumps(report)
    assert any("vocab.extend: +100 merges" in note for note in manifest["backend_notes"])


def safe_open_names(path: Path) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        return list(handle.keys())


def test_unsloth_gets_trainable_token_indices_or_a_clear_refusal(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from babeltune.errors import BabeltuneError
    from babeltune.plugins.unsloth import vocab_peft_args
    from babeltune.trainer.vocab import VocabExtension

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    extension = VocabExtension(base_rows=10, rows=12, new_ids=[10, 11], pieces=[[1, 2], [3, 4]])

    def passes_kwargs(model, r=16, **kwargs):
        pass

    def fixed(model, r=16, modules_to_save=None):
        pass

    assert vocab_peft_args(passes_kwargs, model, extension) == {"trainable_token_indices": {"embed_tokens": [10, 11]}}
    with pytest.raises(BabeltuneError, match="vocab.extend: .*--backend hf-peft"):
        vocab_peft_args(fixed, model, extension)


@pytest.mark.slow
def test_resume_of_an_extended_run_rebuilds_the_same_tokenizer_and_ends_with_the_same_rows(tiny_model_dir, tmp_path):
    import torch
    from safetensors.torch import load_file

    from babeltune.trainer.checkpoints import last_complete_checkpoint
    from babeltune.trainer.run import run_training

    sets = ("vocab.extend=60", "training.save_steps=2", "eval.evaluation_strategy=no")
    straight = run_training(config(tiny_model_dir, tmp_path / "straight", *sets), evaluate=False, echo=quiet)
    out = tmp_path / "resumed"
    run_training(config(tiny_model_dir, out, *sets), evaluate=False, echo=quiet)
    marker = next((out / "checkpoint-4").glob("babeltune_complete*"))
    marker.unlink()                                           # as if killed while saving checkpoint-4
    assert last_complete_checkpoint(out).name == "checkpoint-2"
    resumed = run_training(config(tiny_model_dir, out, *sets), resume=True, evaluate=False, echo=quiet)
    assert resumed.resumed_from == out / "checkpoint-2" and resumed.steps == 4
    a = load_file(str(straight.adapter_dir / "adapter_model.safetensors"))
    b = load_file(str(resumed.adapter_dir / "adapter_model.safetensors"))
    rows = [k for k in a if "trainable_tokens_delta" in k]
    assert rows and a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    assert (straight.adapter_dir / "tokenizer.json").read_bytes() == (resumed.adapter_dir / "tokenizer.json").read_bytes()


def test_ia3_refuses_a_vocabulary_extension_in_one_line(tiny_model_dir):
    from babeltune.errors import BabeltuneError
    from babeltune.plugins.ia3 import IA3Backend

    cfg = config(tiny_model_dir, Path("unused"), "vocab.extend=50", "backend.name=ia3")
    with pytest.raises(BabeltuneError, match="vocab.extend: 50 .*--backend hf-peft"):
        IA3Backend().load(cfg, runtime=None)
