"""`babeltune merge` and `advise --merge` on CPU: two tiny rsLoRA adapters trained on the shipped Marathi and Hindi
samples, merged with PEFT's add_weighted_adapter; the checks that refuse a merge; the bits/char table."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from babeltune.config import load_config
from babeltune.errors import BabeltuneError

from conftest import DATA, TEXT, build_tiny_llama

CONFIG = DATA / "configs" / "tiny-cpt.yaml"


def quiet(_line):
    pass


@pytest.fixture(scope="module")
def adapters(tiny_model_dir, tmp_path_factory) -> dict[str, Path]:
    """mr and hi adapters (r 8, rsLoRA, all attention projections) after 3 steps each on their language."""
    from babeltune.trainer.run import run_training

    root = tmp_path_factory.mktemp("merge-inputs")
    folders = {}
    for language in ("mr", "hi"):
        config = load_config(CONFIG, [f"model.name={tiny_model_dir}", f"training.output_dir={root / language}",
                                      f"data.train={TEXT / (language + '.txt')}", f"language={language}",
                                      "adapter.use_rslora=true", "training.max_steps=3", "training.save_steps=100",
                                      "eval.evaluation_strategy=no", "training.learning_rate=0.02"])
        folders[language] = run_training(config, evaluate=False, echo=quiet).adapter_dir
    return folders


def copy_adapter(source: Path, target: Path, **config_changes) -> Path:
    shutil.copytree(source, target)
    if config_changes:
        path = target / "adapter_config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **config_changes}))
    return target


def pairs(adapters: dict[str, Path]) -> dict[str, str]:
    return {language: str(folder) for language, folder in adapters.items()}


def logits_under(model_dir: Path, adapter: Path, input_ids):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), str(adapter)).eval()
    with torch.no_grad():
        return model(input_ids=input_ids).logits


def test_merge_writes_a_loadable_adapter_with_identity_manifest_and_a_finite_eval_table(adapters, tiny_model_dir, tmp_path):
    from babeltune.models.identity import identity_of, read_identity
    from babeltune.trainer.merge import merge_adapters

    out = tmp_path / "merged"
    folder, evaluation = merge_adapters(pairs(adapters), {"method": "cat", "weights": "1,1", "density": None}, out,
                                        evals={"mr": str(TEXT / "mr.txt"), "hi": str(TEXT / "hi.txt"),
                                               "en": str(TEXT / "en.txt")},
                                        max_documents=6, max_length=64, echo=quiet)
    assert folder == out and not list(tmp_path.glob(".merged.staging-*"))
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 16 and config["lora_alpha"] == 16 and config["use_rslora"] is False   # cat: 8 + 8
    assert read_identity(out).differs_from(identity_of(tiny_model_dir)) is None

    import torch

    ids = torch.arange(3, 40).reshape(1, -1)
    merged, mr_only = logits_under(tiny_model_dir, out, ids), logits_under(tiny_model_dir, adapters["mr"], ids)
    assert torch.isfinite(merged).all() and not torch.allclose(merged, mr_only)

    manifest = json.loads((out / "babeltune_merge.json").read_text())
    assert manifest["method"] == "cat" and manifest["weights"] == [1.0, 1.0]
    assert list(manifest["inputs"]) == ["mr", "hi"] and all(len(v["adapter_sha256"]) == 64 for v in manifest["inputs"].values())
    assert manifest["base_model"]["architecture"] == identity_of(tiny_model_dir).architecture
    assert manifest["libraries"]["peft"]

    rows = {row.language: row for row in evaluation.rows}
    assert set(rows) == {"mr", "hi", "en"} and rows["en"].own is None
    for language in ("mr", "hi"):
        row = rows[language]
        assert all(math.isfinite(v) and v > 0 for v in (row.base, row.own, row.merged))
        assert row.own < row.base                        # each adapter learned its language
        assert math.isfinite(row.vs_own_percent)
    assert manifest["eval"]["languages"]["mr"]["merged"] == pytest.approx(rows["mr"].merged)


def test_merging_one_adapter_with_weight_1_gives_back_that_adapter_despite_rslora(adapters, tiny_model_dir, tmp_path):
    """Regression: PEFT copies use_rslora into the merged adapter, whose scaling must be 1: without the workaround
    the merged rsLoRA update came out sqrt(r) times too strong (huggingface/peft#3449)."""
    import torch

    from babeltune.trainer.merge import merge_adapters

    ids = torch.arange(3, 40).reshape(1, -1)
    reference = logits_under(tiny_model_dir, adapters["mr"], ids)
    for method in ("linear", "cat", "svd"):
        out, _ = merge_adapters(pairs(adapters), {"method": method, "weights": "1,0", "density": None},
                                tmp_path / method, echo=quiet)
        got = logits_under(tiny_model_dir, out, ids)
        assert torch.allclose(got, reference, atol=1e-4), (method, float((got - reference).abs().max()))


def test_adapters_of_different_base_models_are_refused(adapters, tmp_path):
    from babeltune.models.identity import write_identity
    from babeltune.trainer.merge import merge_adapters

    other_base = tmp_path / "other-base"
    build_tiny_llama(other_base, vocab_size=1024, seed=7)      # same shapes, other weights
    stranger = copy_adapter(adapters["hi"], tmp_path / "hi-other")
    write_identity(stranger, other_base)
    with pytest.raises(BabeltuneError, match=r"--adapter hi=.*the weights differs.*share a base model"):
        merge_adapters({"mr": str(adapters["mr"]), "hi": str(stranger)}, {"method": "cat", "weights": None,
                       "density": None}, tmp_path / "out", echo=quiet)
    assert not (tmp_path / "out").exists()


def test_linear_needs_one_rank_and_cat_names_no_such_limit(adapters, tmp_path):
    from babeltune.trainer.merge import check_compatible, merge_spec, read_inputs

    inputs = read_inputs({"mr": str(adapters["mr"]), "hi": str(copy_adapter(adapters["hi"], tmp_path / "hi4", r=4))})
    for method in ("linear", "ties", "dare_ties"):
        with pytest.raises(BabeltuneError, match=rf"--method {method}: needs adapters of one rank.*mr r=8, hi r=4.*cat or svd"):
            check_compatible(inputs, merge_spec(method, None, None, 2))
    check_compatible(inputs, merge_spec("cat", None, None, 2))     # cat and svd take different ranks


@pytest.mark.parametrize("changes, message", [
    ({"target_modules": ["q_proj", "v_proj"]}, r"target_modules \['q_proj', 'v_proj'\] differ from mr's"),
    ({"use_dora": True}, r"DoRA .*peft#3761"),
    ({"modules_to_save": ["embed_tokens"]}, r"trains embed_tokens in full"),
    ({"peft_type": "IA3"}, r"a IA3 adapter; babeltune merge combines LoRA adapters only"),
])
def test_incompatible_configs_are_one_line_each(adapters, tmp_path, changes, message):
    from babeltune.trainer.merge import check_compatible, merge_spec, read_inputs

    inputs = read_inputs({"mr": str(adapters["mr"]), "hi": str(copy_adapter(adapters["hi"], tmp_path / "hi", **changes))})
    with pytest.raises(BabeltuneError, match=message) as caught:
        check_compatible(inputs, merge_spec("cat", None, None, 2))
    assert len(caught.value.lines) == 1


@pytest.mark.parametrize("method, weights, density, message", [
    ("tie", None, None, r"--method 'tie': not a merge method; did you mean 'ties'"),
    ("cat", "0.5", None, r"--weights '0.5': expected 2 finite numbers"),
    ("cat", "a,b", None, r"--weights 'a,b': expected 2 comma-separated numbers"),
    ("cat", "1,nan", None, r"expected 2 finite numbers"),
    ("cat", None, 0.5, r"--density 0.5: only dare_ties and ties prune"),
    ("ties", None, 1.5, r"--density 1.5: must be in \(0, 1\]"),
])
def test_bad_method_weights_and_density_are_refused(method, weights, density, message):
    from babeltune.trainer.merge import merge_spec

    with pytest.raises(BabeltuneError, match=message):
        merge_spec(method, weights, density, 2)
    assert merge_spec("ties", None, None, 2).density == 0.5 and merge_spec("cat", None, None, 3).weights == (1.0,) * 3


def test_cli_errors_are_one_line_exit_2_and_write_nothing(adapters, tmp_path):
    base = [sys.executable, "-m", "babeltune", "merge", "--adapter", f"mr={adapters['mr']}", "--out", str(tmp_path / "o")]
    cases = [
        (base + ["--adapter", f"hi={adapters['hi']}", "--method", "average"], "--method 'average': not a merge method"),
        (base, "--adapter: 1 given; merging needs at least two"),
        (base + ["--adapter", f"hi={tmp_path / 'missing'}"], "--adapter hi"),
        (base + ["--adapter", "hi"], "--adapter 'hi': expected LANG=DIR"),
    ]
    for args, expected in cases:
        result = subprocess.run(args, capture_output=True, text=True, timeout=300)
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert result.returncode == 2 and len(errors) == 1 and expected in errors[0], result.stderr
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "o").exists()


def test_an_existing_out_folder_needs_overwrite(adapters, tmp_path):
    from babeltune.trainer.merge import merge_adapters

    out = tmp_path / "merged"
    out.mkdir()
    (out / "keep.txt").write_text("earlier work")
    with pytest.raises(BabeltuneError, match=r"--out .*exists and is not empty; .*--overwrite"):
        merge_adapters(pairs(adapters), {"method": "cat", "weights": None, "density": None}, out, echo=quiet)
    assert (out / "keep.txt").read_text() == "earlier work"


def test_advise_merge_measures_each_candidate_and_gives_a_reason_and_the_command(adapters, tmp_path):
    from click.testing import CliRunner

    from babeltune.advisor.cli import advise

    args = ["--merge", "--adapter", f"mr={adapters['mr']}", "--adapter", f"hi={adapters['hi']}",
            "--eval", f"mr={TEXT / 'mr.txt'}", "--eval", f"hi={TEXT / 'hi.txt'}", "--max-documents", "4",
            "--max-length", "64", "--method", "cat", "--json"]
    result = CliRunner().invoke(advise, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [c["merge"] for c in report["candidates"]] == ["cat weights 1,1", "cat weights 0.5,0.5"]
    worst = [c["worst_vs_own_percent"] for c in report["candidates"]]
    assert all(math.isfinite(w) for w in worst)
    best = report["candidates"][worst.index(min(worst))]
    assert report["best"] == best["merge"] and report["passed"] == (min(worst) <= 5.0)
    assert report["reasons"][0].startswith(f"merge = {best['merge']}: keeps every language within 5%" if report["passed"]
                                           else "merge: none of 2 merges")
    assert "bits/char" in report["reasons"][0] and "next: babeltune merge --adapter mr=" in result.stderr


def test_advise_merge_needs_eval_text_for_every_adapter_language(adapters):
    from click.testing import CliRunner

    from babeltune.advisor.cli import advise

    result = CliRunner().invoke(advise, ["--merge", "--adapter", f"mr={adapters['mr']}", "--adapter",
                                         f"hi={adapters['hi']}", "--eval", f"mr={TEXT / 'mr.txt'}"])
    assert result.exit_code == 2 and "error: --eval: no held-out text for hi" in result.stderr


def test_advise_merge_reasons_judge_the_worst_language_and_say_when_the_limit_exceeds_the_gain():
    from babeltune.trainer.merge import LanguageRow, MergeEval, MergeSpec
    from babeltune.trainer.merge_advice import MergeAdvice

    def candidate(method, mr, hi):
        return MergeEval(MergeSpec(method, (1.0, 1.0)), [LanguageRow("mr", 10, 100, 5.0, 4.0, mr),
                                                        LanguageRow("hi", 10, 100, 5.0, 4.8, hi),
                                                        LanguageRow("en", 10, 100, 2.0, None, 2.1)])
    advice = MergeAdvice(5.0, [candidate("linear", 4.3, 4.9), candidate("cat", 4.1, 4.85)], documents={"mr": 10, "hi": 10})
    assert advice.best.spec.method == "cat" and advice.best.worst_vs_own() == pytest.approx(2.5)   # mr +2.5%, hi +1.04%
    lines = advice.reason_lines()
    assert lines[0].startswith("merge = cat weights 1,1: keeps every language within 5% of its own adapter's bits/char: "
                               "mr +2.50% (4.100 vs 4.000 bits/char, base 5.000, 90% of its gain kept)")
    assert len(lines) == 2 and lines[1].startswith("note: hi: 5% of its own adapter's bits/char (0.240) is more than "
                                                   "the adapter's gain over the base (0.200)")
    strict = MergeAdvice(1.0, advice.candidates, documents=advice.documents)
    assert not strict.passed and strict.reason_lines()[0].startswith("merge: none of 2 merges keeps every language "
                                                                     "within 1% of its own adapter; the closest is cat")


def test_advise_merge_usage_errors_are_one_line():
    result = subprocess.run([sys.executable, "-m", "babeltune", "advise", "--merge", "--eval", "mr=x.txt"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: Missing option '--adapter' (see `babeltune advise --merge --help`)"
