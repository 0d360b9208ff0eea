"""`train --gpus N --fsdp`: the launcher's plan, the fsdp arguments the HF Trainer gets, the refusals, and real
2-process FSDP2 runs on CPU (gloo): loss curve equal to the single-process run, one checkpoint set, the adapter
written once and loadable on one device, and `--resume` after kill -9 of the launcher.

accelerate shards only on accelerators, so the multi-process runs go through tests/fsdp_cpu_worker.py, which flips
accelerate's CPU state to FSDP and then runs `train` unchanged; without it the run is refused (tested too)."""

from __future__ import annotations

import re

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from babeltune.config import load_config
from babeltune.errors import BabeltuneError
from babeltune.trainer import cli, distributed, fsdp
from babeltune.trainer.checkpoints import MARKER

from conftest import DATA, TEXT

CONFIG = DATA / "configs" / "tiny-cpt.yaml"
WORKER = Path(__file__).parent / "fsdp_cpu_worker.py"
STEPS, SAVE_EVERY = 9, 3   # 9 optimizer steps of 8 sequences stay inside the first epoch (75 rows): no partial batch


def settings(model_dir, out) -> list[str]:
    return [f"model.name={model_dir}", f"training.output_dir={out}", f"data.train={TEXT / 'mr.txt'}",
            "training.gradient_accumulation_steps=2", f"training.max_steps={STEPS}", f"training.save_steps={SAVE_EVERY}",
            "eval.evaluation_strategy=no"]


def worker_command(model_dir, out, *extra: str, worker: bool = True) -> list[str]:
    args = ["--config", str(CONFIG), "--no-eval", "--fsdp", *extra]
    for item in settings(model_dir, out):
        args += ["--set", item]
    command = distributed.torchrun_command(2, args)
    if worker:   # the CPU worker instead of `-m babeltune.trainer.cli`
        at = command.index("babeltune.trainer.cli")
        command[at - 1:at + 1] = [str(WORKER)]
    return command


def worker_env() -> dict:
    return {**os.environ, **distributed.worker_environment(), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def losses(run_dir) -> list[float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if "loss" in r]


@pytest.fixture(scope="module")
def single_run(tiny_model_dir, tmp_path_factory) -> Path:
    """The same effective batch (4 x 2 accumulation) on one process: the curve the sharded runs must follow."""
    from babeltune.trainer.run import run_training

    out = tmp_path_factory.mktemp("fsdp-single")
    run_training(load_config(CONFIG, settings(tiny_model_dir, out)), evaluate=False, echo=lambda _line: None)
    return out


# ---------------------------------------------------------------------------------------------
# Launcher, config and refusals (one process)


def test_dry_run_shows_the_torchrun_command_environment_and_fsdp_config(tiny_model_dir):
    result = CliRunner().invoke(cli.train, ["--config", str(CONFIG), "--set", f"model.name={tiny_model_dir}",
                                            "--dry-run", "--gpus", "2", "--fsdp"])
    assert result.exit_code == 0, result.output
    plan = yaml.safe_load(result.output.split("# launcher (--gpus): sharded, FSDP\n", 1)[1])
    assert plan["command"][1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m"]
    assert plan["command"][6:] == ["babeltune.trainer.cli", "--config", str(CONFIG), "--set",
                                   f"model.name={tiny_model_dir}", "--fsdp"]
    assert plan["environment"] == {"BABELTUNE_LAUNCHED": "1", "PYTHONUNBUFFERED": "1"}
    assert plan["fsdp"] is True and plan["distributed"] == "fsdp"
    assert plan["fsdp_config"] == {"version": 2, "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
                                   "transformer_layer_cls_to_wrap": ["LlamaDecoderLayer"],
                                   "state_dict_type": "SHARDED_STATE_DICT", "reshard_after_forward": True,
                                   "cpu_ram_efficient_loading": False}
    ddp = CliRunner().invoke(cli.train, ["--config", str(CONFIG), "--dry-run", "--gpus", "2"])
    assert "# launcher (--gpus): data-parallel, DDP" in ddp.output and "fsdp_config" not in ddp.output


def test_fsdp_flag_alone_is_a_one_line_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "babeltune.trainer.cli", "--config", str(CONFIG), "--fsdp"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == ("error: --fsdp: shards the model over several GPUs, but one process was asked for; "
                                   "pass --gpus N (N >= 2), or drop --fsdp")


def test_the_trainer_gets_fsdp2_wrapping_each_decoder_layer(tiny_model_dir, monkeypatch, tmp_path):
    """What the HF Trainer makes of babeltune's fsdp arguments: accelerate's FSDP2 plugin arguments."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, TrainingArguments

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    config = load_config(CONFIG, ["training.distributed=fsdp"])
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert fsdp.training_kwargs(config, model) == {}          # one process: nothing to shard
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert fsdp.training_kwargs(load_config(CONFIG), model) == {}   # ddp
    kwargs = fsdp.training_kwargs(config, model)
    assert kwargs["fsdp"] is True and kwargs["fsdp_config"]["transformer_layer_cls_to_wrap"] == ["LlamaDecoderLayer"]
    monkeypatch.setenv("WORLD_SIZE", "1")   # TrainingArguments itself needs no process group
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", **kwargs)
    assert args.fsdp_plugin_args["fsdp_version"] == 2
    assert args.fsdp_plugin_args["auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert args.fsdp_plugin_args["transformer_cls_names_to_wrap"] == "LlamaDecoderLayer"
    assert args.fsdp_plugin_args["state_dict_type"] == "SHARDED_STATE_DICT"
    assert args.fsdp_plugin_args["reshard_after_forward"] is True


def test_qlora_and_backends_that_cannot_shard_are_refused(monkeypatch):
    lines = []
    with pytest.raises(BabeltuneError, match=r"^training.distributed: fsdp shards bf16 weights, but model.load_in_4bit is true"):
        fsdp.check_config(load_config(CONFIG, ["training.distributed=fsdp", "model.load_in_4bit=true"]), lines.append)
    monkeypatch.setenv("WORLD_SIZE", "1")
    fsdp.check_config(load_config(CONFIG, ["training.distributed=fsdp"]), lines.append)
    assert lines == ["training.distributed: fsdp, but one process: nothing to shard, training on one device "
                     "(train --gpus N shards over N GPUs)"]
    from babeltune.trainer.plugins import available_backends

    backends = available_backends()
    monkeypatch.setenv("WORLD_SIZE", "2")
    config = load_config(CONFIG, ["training.distributed=fsdp"])
    fsdp.check_backend(config, backends["hf-peft"])
    with pytest.raises(BabeltuneError, match=r"backend unsloth cannot shard its model with FSDP; use --backend hf-peft"):
        fsdp.check_backend(config, backends["unsloth"])
    fsdp.check_backend(load_config(CONFIG), backends["unsloth"])   # ddp: no objection
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")   # `accelerate launch` with an FSDP config, config left at ddp
    with pytest.raises(BabeltuneError, match=r"^training.distributed: ddp, but accelerate launch asked for FSDP"):
        fsdp.check_config(load_config(CONFIG), lines.append)
    fsdp.check_config(config, lines.append)


# ---------------------------------------------------------------------------------------------
# Real 2-process runs on CPU (gloo)


@pytest.mark.slow
def test_sharded_run_matches_one_process_and_writes_one_checkpoint_set(tiny_model_dir, single_run, tmp_path):
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    out = tmp_path / "fsdp"
    proc = subprocess.run(worker_command(tiny_model_dir, out), env=worker_env(), capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert losses(out) == pytest.approx(losses(single_run), abs=2e-3) and len(losses(out)) == STEPS
    log = proc.stderr
    assert "fsdp: FSDP2 over 2 processes, one unit per LlamaDecoderLayer" in log
    assert "2 LlamaDecoderLayer" in log and log.count("reload check:") == 1   # rank 0 alone reports
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["device"]["world_size"] == 2 and manifest["config"]["training"]["distributed"] == "fsdp"
    plan = manifest["fsdp"]
    assert plan["units"]["LlamaDecoderLayer"] == 2 and len(plan["local_parameters_per_rank"]) == 2
    assert sum(plan["local_parameters_per_rank"]) == plan["parameters"]   # every parameter held by exactly one rank
    assert max(plan["local_parameters_per_rank"]) < plan["parameters"]     # really sharded
    assert manifest["reload_check"]["notes"] == [fsdp.SHARDED_CHECK_NOTE, "rank 0 freed the sharded model before the reload"]
    assert manifest["reload_check"]["max_abs_diff"] == 0

    # one checkpoint set: each checkpoint-N holds one shard per rank, the adapter once, the completion marker
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6", "checkpoint-9"]
    last = out / "checkpoint-9"
    assert sorted(p.name for p in (last / "pytorch_model_fsdp_0").glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    assert (last / "optimizer_0").is_dir() and (last / MARKER).is_file() and (last / "adapter_model.safetensors").is_file()

    # the final adapter loads on one device with PEFT alone and equals the last checkpoint's
    final, checkpoint = load_file(out / "adapter" / "adapter_model.safetensors"), load_file(last / "adapter_model.safetensors")
    assert final.keys() == checkpoint.keys() and all(torch.equal(final[k], checkpoint[k]) for k in final)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(out / "adapter"))
    lora_b = [p for name, p in model.named_parameters() if "lora_B" in name]
    assert lora_b and all(p.device.type == "cpu" for p in lora_b) and any(float(p.abs().max()) > 0 for p in lora_b)


def live_children(pids: list[str]) -> list[str]:
    alive = []
    for pid in pids:
        stat = Path(f"/proc/{pid}/stat")
        if stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z":
            alive.append(pid)
    return alive


@pytest.mark.slow
def test_kill_9_of_the_launcher_stops_the_workers_and_resume_matches(tiny_model_dir, single_run, tmp_path):
    out = tmp_path / "killed"
    launcher = subprocess.Popen(worker_command(tiny_model_dir, out), env=worker_env(), start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (out / f"checkpoint-{SAVE_EVERY}" / MARKER).exists():
        assert launcher.poll() is None and time.monotonic() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.02)
    workers = subprocess.run(["pgrep", "-P", str(launcher.pid)], capture_output=True, text=True).stdout.split()
    os.killpg(launcher.pid, signal.SIGKILL)
    launcher.wait()
    assert len(workers) == 2
    deadline = time.monotonic() + 3   # the kernel kills them at once; orphans would train on for seconds
    while live_children(workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    survivors = live_children(workers)
    for pid in survivors:   # ours: do not leave them running if the check fails
        os.kill(int(pid), signal.SIGKILL)
    assert not survivors, "torchrun workers kept training after their launcher was killed"
    assert not (out / "manifest.json").exists() and not (out / f"checkpoint-{STEPS}").exists()   # nobody finished it

    resumed = subprocess.run(worker_command(tiny_model_dir, out, "--resume"), env=worker_env(), capture_output=True,
                             text=True, timeout=400)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert losses(out)[-1] == pytest.approx(losses(single_run)[-1], abs=2e-3)
    assert losses(out) == pytest.approx(losses(single_run), abs=2e-3)
    manifest = json.loads((out / "manifest.json").read_text())
    assert Path(manifest["resumed_from"]).name in {f"checkpoint-{SAVE_EVERY}", f"checkpoint-{2 * SAVE_EVERY}"}
    assert manifest["result"]["steps"] == STEPS


@pytest.mark.slow
def test_fsdp_on_cpu_without_the_worker_switch_is_refused(tiny_model_dir, tmp_path):
    """accelerate drops the FSDP plugin on CPU (MULTI_CPU): the run must stop instead of training unsharded."""
    out = tmp_path / "refused"
    proc = subprocess.run(worker_command(tiny_model_dir, out, worker=False), env=worker_env(), capture_output=True,
                          text=True, timeout=400)
    assert proc.returncode != 0
    assert ("error: training.distributed: fsdp, but accelerate did not enable FSDP here (it shards only on "
            "GPUs/accelerators; on CPU it would run data parallel)") in proc.stderr
    assert not list(out.glob("checkpoint-*"))


# ---------------------------------------------------------------------------------------------
# advise --gpus N: DDP or FSDP from the memory model


def test_memory_model_divides_weights_and_adapter_state_and_adds_the_gathered_layers():
    from advisor_fixtures import LLAMA2_7B
    from babeltune.advisor.memory import GIB, estimate_memory, linear_parameters

    common = dict(batch_size=2, seq_len=1024, lora_r=16, target_modules="all-linear", load_in_4bit=False,
                  gradient_checkpointing=True)
    copy, sharded = estimate_memory(LLAMA2_7B, **common), estimate_memory(LLAMA2_7B, **common, shards=4)
    assert sharded.parts["weights"] == pytest.approx(copy.parts["weights"] / 4)
    assert sharded.parts["trainable"] == pytest.approx(copy.parts["trainable"] / 4)
    for part in ("activations", "logits", "overhead"):
        assert sharded.parts[part] == pytest.approx(copy.parts[part])
    # two decoder layers (running + prefetched) and the 32000 x 4096 lm_head, in bf16
    layer = linear_parameters(LLAMA2_7B) / 32
    assert sharded.parts["gathered"] == pytest.approx(2 * (2 * layer + 32000 * 4096) / GIB)
    assert "gathered" not in copy.parts and sharded.inputs["shards"] == 4
    with_embeddings = estimate_memory(LLAMA2_7B, **common, shards=4, modules_to_save=["embed_tokens"])
    assert with_embeddings.parts["gathered"] - sharded.parts["gathered"] == pytest.approx(32000 * 4096 * 6 / GIB)


@pytest.mark.parametrize("gpu, gpus, distributed, four_bit", [
    (24, 2, "ddp", False),    # bf16 fits one 24 GB GPU: a copy per GPU
    (12, 2, "fsdp", False),   # 13.6 GiB on one GPU > 10.8 budget; sharded over 2 fits
    (8, 2, "ddp", True),      # not even sharded over 2: QLoRA on each GPU
    (12, 1, "ddp", True),     # one GPU: as before
])
def test_advisor_picks_ddp_or_fsdp_from_the_memory_model(gpu, gpus, distributed, four_bit):
    from advisor_fixtures import LLAMA2_7B, MARATHI, measurements
    from babeltune.advisor.rules import RuleContext, apply_rules

    ctx = RuleContext(measurements=measurements(), facts=LLAMA2_7B, profile=MARATHI, gpu_memory_gib=gpu, gpus=gpus)
    decisions = apply_rules(ctx)
    assert decisions["distributed"].value == distributed and decisions["load_in_4bit"].value is four_bit
    assert ctx.estimate().total_gib <= gpu * 0.9
    assert ctx.estimate().inputs["shards"] == (gpus if distributed == "fsdp" else 1)
    reason = decisions["distributed"].reason
    if distributed == "fsdp":
        # the one-GPU figure depends on the advised sequence length; the decision and its binding constraint do not
        assert re.match(r"bf16 needs 1\d\.\d GiB > 10\.8 GiB on one GPU", reason), reason
        assert f"sharded over {gpus} GPUs (FSDP)" in reason and "per GPU" in reason
    elif gpus > 1:
        assert "GiB" in reason and ("full copy (DDP)" in reason or "4-bit weights on every GPU" in reason)


def test_advise_writes_the_decision_into_the_config(tmp_path, tiny_model_dir):
    """A folder with the tiny tokenizer and a Llama-2-7B config.json (advise reads no weights)."""
    import shutil

    from transformers import LlamaConfig

    from babeltune.advisor.cli import advise

    model = tmp_path / "llama-7b-shape"
    model.mkdir()
    for item in tiny_model_dir.glob("tokenizer*"):
        shutil.copy(item, model)
    LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                num_key_value_heads=32, max_position_embeddings=4096, tie_word_embeddings=False).save_pretrained(model)
    out = tmp_path / "advised.yaml"
    result = CliRunner().invoke(advise, ["--lang", "mr", "--corpus", str(TEXT / "mr.txt"), "--model", str(model),
                                         "--gpu-memory", "12GB", "--gpus", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert "  distributed: fsdp\n" in text and "  load_in_4bit: false\n" in text
    reason = text.split("  distributed: fsdp")[0].rsplit("\n", 2)[-2]
    assert reason.startswith("  # bf16 needs ") and "sharded over 2 GPUs (FSDP)" in reason
    assert "train --config FILE --gpus 2" in text
    assert load_config(out).training.distributed == "fsdp"


def test_liger_stays_off_under_fsdp(monkeypatch):
    from babeltune.plugins.hf_peft import apply_liger
    from babeltune.trainer.backend import Runtime

    gpu = Runtime(device="cuda", precision="bf16", model_dir="unused", world_size=2)
    monkeypatch.setenv("WORLD_SIZE", "2")
    auto = load_config(CONFIG, ["training.distributed=fsdp"])
    assert apply_liger(None, auto, gpu, "auto").startswith("kernels: plain (training.distributed is fsdp: its fused loss")
    with pytest.raises(BabeltuneError, match=r"backend.options.liger: true, but training.distributed is fsdp"):
        apply_liger(None, load_config(CONFIG, ["training.distributed=fsdp", "backend.options.liger=true"]), gpu, True)


def test_bench_refuses_in_one_line_without_two_gpus(tmp_path):
    import torch

    if torch.cuda.device_count() >= 2:
        pytest.skip("this machine can run the bench")
    out = tmp_path / "fsdp.json"
    proc = subprocess.run([sys.executable, str(Path(__file__).parents[1] / "bench" / "fsdp.py"), "--gpus", "2",
                           "--out", str(out)], capture_output=True, text=True)
    assert proc.returncode == 2 and not out.exists() and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: bench/fsdp.py: needs --gpus N >= 2 CUDA GPUs, ")
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.gpu
def test_fsdp_on_two_gpus_matches_ddp(tiny_model_dir, tmp_path):
    """The GPU path the CPU runs cannot reach (NCCL, bf16 mixed precision under FSDP2, CUDA placement): through the
    real CLI, `--gpus 2 --fsdp` follows `--gpus 2` (DDP) on the same global batch."""
    import torch

    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs")
    runs = {}
    for name, extra in (("ddp", []), ("fsdp", ["--fsdp"])):
        out = tmp_path / name
        args = ["--config", str(CONFIG), "--gpus", "2", "--no-eval", *extra]
        for item in settings(tiny_model_dir, out):
            args += ["--set", item]
        proc = subprocess.run([sys.executable, "-m", "babeltune.trainer.cli", *args], capture_output=True, text=True,
                              cwd=tmp_path, env={**os.environ, "CUDA_VISIBLE_DEVICES": "0,1"}, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[name] = losses(out)
    assert runs["fsdp"] == pytest.approx(runs["ddp"], abs=1e-2)   # bf16: FSDP2 reduces gradients in bf16
    manifest = json.loads((tmp_path / "fsdp" / "manifest.json").read_text())
    assert manifest["device"]["device"] == "cuda" and manifest["fsdp"]["units"]["LlamaDecoderLayer"] == 2
    assert len(manifest["gpu_peak_reserved_gib_per_rank"]) == 2
