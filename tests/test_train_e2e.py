"""End to end on CPU with the tiny random Llama: adapter, reload, metrics, loss curve, manifest, eval, merge,
and the guards (gradient check, NaN guard)."""

from __future__ import annotations

import json
import math

import pytest

from babeltune.config import load_config
from babeltune.errors import BabeltuneError
from babeltune.trainer.backend import Backend

from conftest import DATA, tiny_config

CONFIGS = DATA / "configs"


def quiet(_line):
    pass


def test_cpt_run_writes_a_loadable_adapter_metrics_plot_manifest_and_eval(tiny_model_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from babeltune.trainer.run import run_training

    out = tmp_path / "run"
    result = run_training(tiny_config("tiny-cpt.yaml", tiny_model_dir, out), echo=quiet)
    assert result.steps == 12 and math.isfinite(result.final_loss)
    adapter = out / "adapter"
    assert result.adapter_dir == adapter
    assert (adapter / "adapter_model.safetensors").is_file() and (adapter / "adapter_config.json").is_file()
    assert (adapter / "tokenizer.json").is_file() and (adapter / "babeltune_config.yaml").is_file()
    assert load_config(adapter / "babeltune_config.yaml").training.max_steps == 12   # resolved config is valid input

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(adapter))
    assert any("lora_B" in name and p.abs().sum() > 0 for name, p in model.named_parameters())

    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 12 and [r["step"] for r in records if "eval_loss" in r] == [6, 12]
    assert losses[-1] < losses[0]                                          # it learned something
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    manifest = json.loads((out / "manifest.json").read_text())
    import torch

    assert manifest["libraries"]["torch"] and manifest["device"]["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    assert all(len(manifest["sha256"][k]) == 64 for k in ("config", "train_corpus", "tokenizer"))
    assert manifest["result"]["final_loss"] == pytest.approx(result.final_loss)
    assert manifest["config"]["model"]["name"] == str(tiny_model_dir) and manifest["backend"] == "hf-peft"
    assert manifest["result"]["tokens_seen"] == 12 * 4 * 64      # steps x batch x block, counted on the host

    report = json.loads(result.eval_report.read_text())
    assert result.eval_report == out / "eval.json" and json.dumps(report).count("bits_per_char") >= 2
    # eval.forgetting (default [en]): English reference sentences scored before and after, next to mr
    english, cap = report["languages"]["en"], load_config(adapter / "babeltune_config.yaml").eval.max_eval_documents
    assert english["documents"] == min(200, cap) and english["after"]["bits_per_char"] > 0
    assert english["source"] == f"babeltune's en reference sentences ({min(200, cap)})"
    checkpoints = sorted(p.name for p in out.glob("checkpoint-*"))
    assert checkpoints == ["checkpoint-12", "checkpoint-4", "checkpoint-8"]
    assert all((out / c / "babeltune_complete.json").is_file() for c in checkpoints)


@pytest.mark.slow   # ~15 s in the fast lane (over ~10 s: slow)
def test_sft_run_with_checkpointing_and_merge(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from babeltune.trainer.run import run_training

    out = tmp_path / "sft"
    result = run_training(tiny_config("tiny-sft.yaml", tiny_model_dir, out), merge=True, evaluate=False, echo=quiet)
    assert result.steps == 4 and result.merged_dir == out / "merged" and result.eval_report is None
    merged = AutoModelForCausalLM.from_pretrained(out / "merged")
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    diffs = [float((a - b).abs().max()) for (n, a), (_, b) in zip(merged.named_parameters(), base.named_parameters())
             if "q_proj" in n]
    assert diffs and max(diffs) > 0                                        # the adapter is folded in


def test_running_again_into_a_used_output_dir_needs_resume(tiny_model_dir, tmp_path):
    from babeltune.trainer.run import run_training

    out = tmp_path / "used"
    (out / "checkpoint-4").mkdir(parents=True)
    with pytest.raises(BabeltuneError, match="already holds checkpoints"):
        run_training(tiny_config("tiny-cpt.yaml", tiny_model_dir, out), echo=quiet)


class Wrapped(Backend):
    """The real hf-peft backend with a twist applied to what it loads (to exercise the core's guards)."""

    name = "hf-peft-wrapped"

    def __init__(self, twist):
        from babeltune.trainer.plugins import select_backend

        self.inner, self.twist = select_backend("hf-peft", echo=quiet), twist

    def load(self, config, runtime):
        loaded = self.inner.load(config, runtime)
        self.twist(loaded)
        return loaded

    def optimizer_param_groups(self, model, config):
        return self.inner.optimizer_param_groups(model, config)


def test_gradient_check_names_a_module_that_gets_no_gradient(tiny_model_dir, tmp_path):
    import torch

    from babeltune.trainer.run import run_training

    def orphan(loaded):   # a trainable parameter the forward pass never uses: silently untrained elsewhere
        loaded.model.base_model.model.register_parameter("orphan_adapter", torch.nn.Parameter(torch.zeros(4)))
        loaded.expected_trainable.append("orphan_adapter")

    with pytest.raises(BabeltuneError, match="gradient check at step 1.*orphan_adapter: no gradient"):
        run_training(tiny_config("tiny-cpt.yaml", tiny_model_dir, tmp_path / "g"), backend=Wrapped(orphan), echo=quiet)


@pytest.mark.slow   # ~12 s in the fast lane (over ~10 s: slow)
def test_nan_guard_stops_keeps_the_last_good_checkpoint_and_lists_causes(tiny_model_dir, tmp_path):
    from babeltune.trainer.run import run_training

    calls = {"n": 0}

    def poison_after_step_5(loaded):
        def hook(module, inputs, output):
            if module.training:
                calls["n"] += 1
                if calls["n"] > 5:
                    output.loss = output.loss * float("nan")
            return output
        loaded.model.register_forward_hook(hook)

    out = tmp_path / "nan"
    with pytest.raises(BabeltuneError) as info:
        run_training(tiny_config("tiny-cpt.yaml", tiny_model_dir, out, "training.max_nonfinite_losses=2"),
                     backend=Wrapped(poison_after_step_5), echo=quiet)
    message = str(info.value)
    assert "2 optimizer steps with a non-finite loss (first at step 6)" in message
    assert "checkpoint-4" in message and "likely cause 1: learning rate too high" in message
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-4"]   # nothing saved after the NaN
    assert not (out / "adapter").exists()


def test_modules_to_save_with_their_own_learning_rate_train_and_reload(tiny_model_dir, tmp_path):
    from safetensors import safe_open

    from babeltune.trainer.run import run_training

    out = tmp_path / "emb"
    config = tiny_config("tiny-cpt.yaml", tiny_model_dir, out, "adapter.modules_to_save=[embed_tokens, lm_head]",
                         "adapter.embedding_learning_rate=1e-3", "training.max_steps=3", "eval.evaluation_strategy=no")
    result = run_training(config, evaluate=False, echo=quiet)
    assert result.steps == 3
    with safe_open(str(out / "adapter" / "adapter_model.safetensors"), "pt") as saved:
        embedding_keys = [k for k in saved.keys() if "embed_tokens" in k]
    assert embedding_keys                                          # the trained embeddings are in the adapter
    manifest = json.loads((out / "manifest.json").read_text())
    check = manifest["reload_check"]
    assert check["relative_diff"] <= check["tolerance"] or check["unexplained_share"] <= 0.25


@pytest.mark.slow   # ~12 s in the fast lane (over ~10 s: slow)
def test_early_stopping_ends_the_run_and_keeps_the_best_checkpoint(tiny_model_dir, tmp_path):
    from babeltune.trainer.run import run_training

    out = tmp_path / "early"
    # An improvement must be >= 10 nats to count, so the second evaluation already exhausts patience 1.
    config = tiny_config("tiny-cpt.yaml", tiny_model_dir, out, "eval.early_stopping_patience=1",
                         "eval.early_stopping_threshold=10", "eval.eval_steps=2", "training.save_steps=2")
    result = run_training(config, evaluate=False, echo=quiet)
    assert result.steps == 4 and result.stopped_early
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["result"]["stopped_early"] and manifest["result"]["max_steps"] == 12
    state = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["best_model_checkpoint"].endswith(f"checkpoint-{state['best_global_step']}")  # loaded at the end


def test_nan_guard_reads_flags_back_only_at_decisions_but_never_misses_a_save():
    """Between logging steps the guard keeps its flags on the device (no sync); the next save still sees them."""
    import torch
    from transformers import TrainerControl, TrainerState

    from babeltune.trainer.callbacks import nan_guard_callback

    guard, state = nan_guard_callback(limit=3), TrainerState(max_steps=100)
    losses = [1.0, float("nan"), 1.0, float("inf"), 1.0]
    for step, value in enumerate(losses, 1):
        control = TrainerControl()
        guard.on_step_begin(None, state, control)
        guard._watch(None, None, {"loss": torch.tensor(value)})
        state.global_step = step
        control.should_save = step == 5
        guard.on_step_end(None, state, control)
        if step < 5:
            assert guard.count == 0 and not control.should_save   # not read back yet: no decision at this step
    assert (guard.count, guard.first_step) == (2, 2) and not control.should_save and not guard.tripped
    for step in (6, 7):
        control = TrainerControl(should_log=True)
        guard.on_step_begin(None, state, control)
        guard._watch(None, None, {"loss": torch.tensor(float("nan"))})
        state.global_step = step
        guard.on_step_end(None, state, control)
    assert guard.tripped and guard.count == 4 and control.should_training_stop


def test_nan_guard_counts_the_last_step_and_unhooks_at_train_end():
    import torch
    from transformers import TrainerControl, TrainerState

    from babeltune.trainer.callbacks import nan_guard_callback

    guard, state, model = nan_guard_callback(limit=3), TrainerState(max_steps=100), torch.nn.Identity()
    guard.on_train_begin(None, state, TrainerControl(), model=model)
    guard.on_step_begin(None, state, TrainerControl())
    model(torch.tensor(1.0))
    guard._watch(None, None, {"loss": torch.tensor(float("nan"))})
    state.global_step = 1
    guard.on_step_end(None, state, TrainerControl())   # no decision at this step: not read back yet
    assert guard.count == 0 and len(model._forward_hooks) == 1
    guard.on_train_end(None, state, TrainerControl())
    assert (guard.count, guard.first_step) == (1, 1) and guard.handle is None and not model._forward_hooks


def test_padding_free_trains_under_sdpa_with_documents_kept_apart(tiny_model_dir, tmp_path):
    from babeltune.trainer.run import run_training

    out = tmp_path / "pf"
    config = tiny_config("tiny-padding-free.yaml", tiny_model_dir, out, "training.max_steps=4", "training.num_train_epochs=null",
                         "eval.evaluation_strategy=no", "eval.save_strategy=no", "eval.early_stopping_patience=null")
    result = run_training(config, evaluate=False, echo=quiet)
    manifest = json.loads((out / "manifest.json").read_text())
    assert result.steps == 4 and math.isfinite(result.final_loss)
    assert manifest["data"]["packing"] == "padding_free" and manifest["attn_implementation"] == "sdpa"
    assert not any("using blocks instead" in note for note in manifest["data_notes"])


def test_reload_check_tolerates_kernel_noise_but_not_a_wrong_adapter(tiny_model_dir, tmp_path):
    """Fused kernels move bf16 logits a few percent of their maximum (passes: a small share of the adapter's
    effect); an adapter on disk that is not the trained one misses most of the effect (fails)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from babeltune.trainer import export

    assert export.ReloadCheck(1.3, 0.05, 0.55, 0.03, unexplained_share=0.07).passed
    assert not export.ReloadCheck(9.0, 0.4, 0.55, 0.03, unexplained_share=0.6).passed
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    model.save_pretrained(tmp_path / "adapter")
    texts = ["नमस्कार, आज हवामान छान आहे.", "मराठी भाषा"]
    check, _ = export.reload_check(model, tmp_path / "adapter", str(tiny_model_dir), tokenizer, texts,
                                   precision="fp32", max_length=32)
    assert check.passed and check.unexplained_share < 1e-4
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name and "v_proj" in name:
                param.zero_()        # the in-memory model no longer matches what was saved
    with pytest.raises(BabeltuneError, match="not the trained one"):
        export.reload_check(model, tmp_path / "adapter", str(tiny_model_dir), tokenizer, texts, precision="fp32", max_length=32)
