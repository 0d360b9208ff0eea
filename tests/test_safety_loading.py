"""Nothing run, nothing lost when loading (issue 17, items 1, 7, 11, 13, 14): no code from a model or adapter
folder (auto_map), no pickle weights, no adapter on another base model, an atomic final adapter folder, and output
paths that fail with one line."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from babeltune.errors import BabeltuneError

from conftest import DATA, TEXT, build_tiny_llama

CONFIGS = DATA / "configs"
MR = TEXT / "mr.txt"
ROOT = Path(__file__).resolve().parents[1]

# Importing this module proves the code ran: it writes MARKER before defining anything.
CODE = """from pathlib import Path
Path({marker!r}).write_text("remote code ran")
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
class EvilConfig(LlamaConfig):
    model_type = "evilllama"
class EvilModel(LlamaForCausalLM):
    config_class = EvilConfig
class EvilTokenizer(PreTrainedTokenizerFast):
    pass
"""


def error_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


def assert_one_error_line(result, *fragments: str) -> str:
    output = result.output + getattr(result, "stderr", "")
    assert result.exit_code == 2, output
    lines = error_lines(result)
    # progress lines may come first; the error is one line, and the last one
    assert [line for line in lines if line.startswith("error")] == lines[-1:], lines
    assert "Traceback" not in output and "Do you wish to run the custom code" not in output, output
    for fragment in fragments:
        assert fragment in lines[-1], (fragment, lines[-1])
    return lines[-1]


def plant_code(folder: Path, marker: Path, file: str, auto_map: dict, **extra) -> Path:
    (folder / "evil_code.py").write_text(CODE.format(marker=str(marker)))
    path = folder / file
    data = json.loads(path.read_text()) if path.is_file() else {}
    data.update(auto_map=auto_map, **extra)
    path.write_text(json.dumps(data))
    return folder


@pytest.fixture
def marker(tmp_path) -> Path:
    return tmp_path / "MARKER"


@pytest.fixture
def evil_model(tiny_model_dir, tmp_path, marker) -> Path:
    """The tiny model with a model_type transformers does not know and an auto_map to evil_code.py."""
    folder = tmp_path / "evil-model"
    shutil.copytree(tiny_model_dir, folder)
    return plant_code(folder, marker, "config.json", {"AutoConfig": "evil_code.EvilConfig",
                                                      "AutoModelForCausalLM": "evil_code.EvilModel"},
                      model_type="evilllama")


@pytest.fixture(scope="module")
def adapter(tiny_model_dir, tmp_path_factory) -> Path:
    """A LoRA adapter on the tiny model saved the way `train` saves its final adapter."""
    from babeltune.trainer import export

    folder = tmp_path_factory.mktemp("run") / "adapter"
    model, tokenizer, config = lora_model(tiny_model_dir, seed=0)
    export.save_final(model, tokenizer, config, folder, model_dir=str(tiny_model_dir))
    return folder


@pytest.fixture(scope="module")
def other_base(tiny_model_dir, tmp_path_factory) -> Path:
    """Same architecture and shapes as the tiny model, other weights (another seed)."""
    folder = tmp_path_factory.mktemp("other-base")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_model_dir / name, folder / name)
    vocab = json.loads((tiny_model_dir / "config.json").read_text())["vocab_size"]
    build_tiny_llama(folder, vocab_size=vocab, seed=1)
    return folder


def lora_model(model_dir: Path, seed: int):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from babeltune.config import load_config

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False,
                             task_type="CAUSAL_LM")
    config = load_config(CONFIGS / "tiny-cpt.yaml", [f"model.name={model_dir}"])
    return get_peft_model(base, peft_config), AutoTokenizer.from_pretrained(model_dir), config


def copy_adapter(adapter: Path, target: Path) -> Path:
    shutil.copytree(adapter, target)
    return target


def run_eval(*args, input=None):
    from babeltune.trainer.evaluate_cli import eval_command

    return CliRunner().invoke(eval_command, [str(a) for a in args] + ["--corpus", f"mr={MR}", "--max-documents", "3",
                                                                       "--max-length", "64"], input=input)


def run_advise(*args, input=None):
    from babeltune.advisor.cli import advise

    return CliRunner().invoke(advise, ["--lang", "mr", "--corpus", str(MR)] + [str(a) for a in args], input=input)


def run_train(config_path: Path, *args, input=None):
    from babeltune.trainer.cli import train

    return CliRunner().invoke(train, ["--config", str(config_path)] + [str(a) for a in args], input=input)


def train_config(tmp_path: Path, model_dir: Path, output_dir: Path | None = None) -> Path:
    data = yaml.safe_load((CONFIGS / "tiny-cpt.yaml").read_text())
    data["model"]["name"] = str(model_dir)
    data["data"]["train"] = str(MR)
    data["training"]["output_dir"] = str(output_dir or tmp_path / "run")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


# ------------------------------------------------------------------------------------ 1. no remote code

@pytest.mark.parametrize("command", ["eval", "advise", "train"])
def test_auto_map_in_model_config_is_refused_even_when_stdin_says_yes(command, evil_model, marker, tmp_path):
    if command == "eval":
        result = run_eval("--model", evil_model, input="y\n")
    elif command == "advise":
        result = run_advise("--model", evil_model, "--json", input="y\n")
    else:
        result = run_train(train_config(tmp_path, evil_model), input="y\n")
    assert_one_error_line(result, str(evil_model / "config.json"), "auto_map", "evil_code.py", "--trust-remote-code")
    assert not marker.exists()
    assert not (tmp_path / "run" / "manifest.json").exists()


def test_no_prompt_and_no_code_with_a_terminal_on_stdin(evil_model, marker):
    """The real CLI in a subprocess whose stdin is a pseudo-terminal that answers "y"."""
    import pty

    primary, secondary = pty.openpty()
    os.write(primary, b"y\ny\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    try:
        proc = subprocess.run([sys.executable, "-m", "babeltune.cli", "eval", "--model", str(evil_model),
                               "--corpus", f"mr={MR}", "--max-documents", "2"],
                              stdin=secondary, capture_output=True, text=True, env=env, timeout=120)
    finally:
        os.close(primary)
        os.close(secondary)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "auto_map" in lines[0], proc.stderr
    assert "Do you wish" not in proc.stdout + proc.stderr and "Traceback" not in proc.stderr
    assert not marker.exists()


@pytest.mark.parametrize("file,auto_map", [
    ("tokenizer_config.json", {"AutoTokenizer": [None, "evil_code.EvilTokenizer"]}),
    ("adapter_config.json", {"AutoModelForCausalLM": "evil_code.EvilModel"}),
])
def test_auto_map_in_an_adapter_folder_is_refused(file, auto_map, tiny_model_dir, adapter, tmp_path, marker):
    folder = plant_code(copy_adapter(adapter, tmp_path / "adapter"), marker, file, auto_map)
    result = run_eval("--model", tiny_model_dir, "--adapter", folder, input="y\n")
    assert_one_error_line(result, str(folder / file), "auto_map")
    assert not marker.exists()


def test_auto_map_in_a_tokenizer_config_of_the_model_is_refused(tiny_model_dir, tmp_path, marker):
    folder = shutil.copytree(tiny_model_dir, tmp_path / "model")
    plant_code(folder, marker, "tokenizer_config.json", {"AutoTokenizer": [None, "evil_code.EvilTokenizer"]},
               tokenizer_class="EvilTokenizer")
    for result in (run_eval("--model", folder, input="y\n"), run_advise("--tokenizer", folder, "--model", tiny_model_dir,
                                                                         "--json", input="y\n")):
        assert_one_error_line(result, "tokenizer_config.json", "auto_map")
    assert not marker.exists()


def test_auto_map_beside_a_model_type_transformers_knows_is_refused_with_the_fix(tiny_model_dir, tmp_path, marker):
    from babeltune.models.safety import check_model_folder

    folder = plant_code(shutil.copytree(tiny_model_dir, tmp_path / "model"), marker, "config.json",
                        {"AutoModelForCausalLM": "evil_code.EvilModel"})
    with pytest.raises(BabeltuneError, match="if transformers supports model_type 'llama' itself, delete the 'auto_map' key"):
        check_model_folder(folder, "--model")


def test_every_loader_states_trust_remote_code(tiny_model_dir, monkeypatch):
    """Belt and braces: transformers only prompts when trust_remote_code is left out (None)."""
    import transformers

    from babeltune.models.facts import facts_from_folder
    from babeltune.models.safety import allow_remote_code
    from babeltune.models.tokenizers import hf_tokenizer
    from babeltune.plugins import toolkit
    from babeltune.trainer import evaluate

    seen = []
    for cls in (transformers.AutoConfig, transformers.AutoTokenizer, transformers.AutoModelForCausalLM):
        original = cls.from_pretrained.__func__

        def spy(klass, *args, _original=original, _name=cls.__name__, **kwargs):
            seen.append((_name, kwargs.get("trust_remote_code")))
            return _original(klass, *args, **kwargs)
        monkeypatch.setattr(cls, "from_pretrained", classmethod(spy))

    from babeltune.config import load_config
    from babeltune.trainer.backend import Runtime

    config = load_config(CONFIGS / "tiny-cpt.yaml", [f"model.name={tiny_model_dir}"])
    runtime = Runtime(device="cpu", precision="fp32", model_dir=str(tiny_model_dir))

    def load_all():
        toolkit.model_class_for(str(tiny_model_dir))
        toolkit.load_base_model(config, runtime, "eager")
        hf_tokenizer(tiny_model_dir)
        facts_from_folder(tiny_model_dir, "tiny")
        evaluate._load_model(tiny_model_dir, "cpu", lambda _line: None)
        evaluate._adapter_tokenizer(tiny_model_dir, None)

    load_all()
    assert {name for name, _ in seen} == {"AutoConfig", "AutoTokenizer", "AutoModelForCausalLM"}
    assert all(trust is False for _, trust in seen), seen
    seen.clear()
    with allow_remote_code(True):
        load_all()
    assert seen and all(trust is True for _, trust in seen), seen


def test_trust_remote_code_flag_runs_the_code_and_the_manifest_records_it(evil_model, marker, tiny_model_dir):
    result = run_eval("--model", evil_model, "--trust-remote-code")
    assert result.exit_code == 0, result.output
    assert marker.read_text() == "remote code ran"           # the flag is what allows it, nothing else

    from babeltune.config import load_config
    from babeltune.models.safety import allow_remote_code
    from babeltune.plugins.toolkit import model_class_for
    from babeltune.trainer.backend import Runtime
    from babeltune.trainer.manifest import build_manifest

    with allow_remote_code(True):
        assert model_class_for(str(evil_model)).__name__ == "EvilModel"
    config = load_config(CONFIGS / "tiny-cpt.yaml", [f"model.name={tiny_model_dir}", f"data.train={MR}"])
    runtime = Runtime(device="cpu", precision="fp32", model_dir=str(tiny_model_dir))
    assert build_manifest(config, runtime, backend="hf-peft")["trust_remote_code"] is False
    with allow_remote_code(True):
        assert build_manifest(config, runtime, backend="hf-peft")["trust_remote_code"] is True


def test_train_passes_the_flag_to_its_gpu_workers():
    from babeltune.trainer.cli import worker_args

    params = dict(config_path="c.yaml", backend=None, output_dir=None, max_steps=None, resume=None, sets=(),
                  merge=False, no_eval=False, trust_remote_code=True)
    assert "--trust-remote-code" in worker_args(params)
    assert "--trust-remote-code" not in worker_args(dict(params, trust_remote_code=False))


# ------------------------------------------------------------------------------------ 7. no pickle weights

def malicious_pickle(path: Path, marker: Path) -> Path:
    """A torch.save file whose unpickling writes MARKER (what weights_only=False would run)."""
    import torch

    class Payload:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').write('unpickled')",))

    torch.save({"model.embed_tokens.weight": Payload()}, path)
    return path


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt"])
def test_pickle_model_weights_are_refused_without_unpickling(name, tiny_model_dir, tmp_path, marker):
    folder = shutil.copytree(tiny_model_dir, tmp_path / "model", ignore=shutil.ignore_patterns("*.safetensors"))
    malicious_pickle(folder / name, marker)
    assert_one_error_line(run_eval("--model", folder), str(folder / name), "safetensors")
    assert_one_error_line(run_train(train_config(tmp_path, folder)), str(folder / name), "safetensors")
    assert not marker.exists()


def test_pickle_adapter_weights_are_refused(tiny_model_dir, adapter, tmp_path, marker):
    folder = copy_adapter(adapter, tmp_path / "adapter")
    (folder / "adapter_model.safetensors").unlink()
    malicious_pickle(folder / "adapter_model.bin", marker)
    assert_one_error_line(run_eval("--model", tiny_model_dir, "--adapter", folder),
                          str(folder / "adapter_model.bin"), "safetensors")
    assert not marker.exists()


def test_a_pickle_beside_safetensors_weights_is_never_opened(tiny_model_dir, tmp_path, marker):
    folder = shutil.copytree(tiny_model_dir, tmp_path / "model")
    malicious_pickle(folder / "pytorch_model.bin", marker)
    result = run_eval("--model", folder)
    assert result.exit_code == 0, result.output
    assert not marker.exists()


# ------------------------------------------------------------------------------------ 11. base model identity

def test_identity_is_stable_and_tells_weights_apart(tiny_model_dir, other_base, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from babeltune.models.identity import identity_of

    same = identity_of(tiny_model_dir)
    copy = identity_of(shutil.copytree(tiny_model_dir, tmp_path / "copy"))
    assert same.differs_from(copy) is None and same.weights == copy.weights
    other = identity_of(other_base)
    assert other.architecture == same.architecture and other.differs_from(same) == "weights"
    # a bf16 save of the same model is the same base model (weights are compared only in one dtype)
    AutoModelForCausalLM.from_pretrained(tiny_model_dir).to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    shutil.copy(tiny_model_dir / "tokenizer.json", tmp_path / "bf16")
    assert identity_of(tmp_path / "bf16").differs_from(same) is None
    bigger = tmp_path / "bigger"
    build_tiny_llama(bigger, vocab_size=json.loads((tiny_model_dir / "config.json").read_text())["vocab_size"],
                     num_hidden_layers=3)
    assert identity_of(bigger).differs_from(same) == "architecture"


def test_saved_adapter_records_its_base_model(adapter, tiny_model_dir):
    from babeltune.models.identity import IDENTITY_FILE, identity_of, read_identity

    record = read_identity(adapter)
    assert (adapter / IDENTITY_FILE).is_file() and record.source == str(tiny_model_dir)
    assert record.differs_from(identity_of(tiny_model_dir)) is None


def test_eval_refuses_an_adapter_for_another_base_model(adapter, other_base, tiny_model_dir):
    from babeltune.models.identity import identity_of

    line = assert_one_error_line(run_eval("--model", other_base, "--adapter", adapter), "--adapter", "weights differs")
    assert identity_of(tiny_model_dir).weights in line and identity_of(other_base).weights in line
    assert run_eval("--model", tiny_model_dir, "--adapter", adapter).exit_code == 0


def test_reload_check_and_merge_refuse_another_base_model(adapter, other_base, tiny_model_dir, tmp_path):
    from babeltune.trainer import export

    model, tokenizer, _ = lora_model(tiny_model_dir, seed=0)
    with pytest.raises(BabeltuneError, match="weights differs") as error:
        export.load_saved(adapter, str(other_base), model)
    assert len(str(error.value).splitlines()) == 1
    with pytest.raises(BabeltuneError, match="weights differs"):
        export.merge(model, tokenizer, tmp_path / "merged", adapter_dir=adapter, model_dir=str(other_base))
    assert not (tmp_path / "merged").exists()


def test_adapter_without_a_record_loads_with_one_warning(adapter, tiny_model_dir, tmp_path):
    from babeltune.models.identity import IDENTITY_FILE

    folder = copy_adapter(adapter, tmp_path / "foreign")
    (folder / IDENTITY_FILE).unlink()
    result = run_eval("--model", tiny_model_dir, "--adapter", folder)
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and IDENTITY_FILE in warnings[0] and str(folder) in warnings[0]


def test_a_checkpoint_is_checked_against_its_run_manifest(adapter, other_base, tiny_model_dir, tmp_path):
    from dataclasses import asdict

    from babeltune.models.identity import IDENTITY_FILE, identity_of

    checkpoint = copy_adapter(adapter, tmp_path / "run" / "checkpoint-4")
    (checkpoint / IDENTITY_FILE).unlink()
    (tmp_path / "run" / "manifest.json").write_text(json.dumps({"base_model": asdict(identity_of(tiny_model_dir))}))
    assert_one_error_line(run_eval("--model", other_base, "--adapter", checkpoint), "weights differs")
    result = run_eval("--model", tiny_model_dir, "--adapter", checkpoint)
    assert result.exit_code == 0 and "warning" not in result.stderr, result.output


# ------------------------------------------------------------------------------------ 14. atomic adapter folder

def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_a_failed_final_save_keeps_the_older_adapter_whole(tiny_model_dir, tmp_path, monkeypatch):
    from babeltune.trainer import export

    target = tmp_path / "run" / "adapter"
    model, tokenizer, config = lora_model(tiny_model_dir, seed=0)
    export.save_final(model, tokenizer, config, target, model_dir=str(tiny_model_dir))
    before = folder_bytes(target)
    newer, newer_tokenizer, _ = lora_model(tiny_model_dir, seed=1)

    def disk_full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(target / "tokenizer.json"))
    monkeypatch.setattr(newer_tokenizer, "save_pretrained", disk_full)
    with pytest.raises(BabeltuneError, match="No space left on device") as error:
        export.save_final(newer, newer_tokenizer, config, target, model_dir=str(tiny_model_dir))
    assert len(str(error.value).splitlines()) == 1
    assert folder_bytes(target) == before                      # the old adapter, complete and unchanged
    assert sorted(p.name for p in target.parent.iterdir()) == ["adapter"]   # no staging folder left behind

    monkeypatch.undo()
    export.save_final(newer, newer_tokenizer, config, target, model_dir=str(tiny_model_dir))
    after = folder_bytes(target)
    assert after["adapter_model.safetensors"] != before["adapter_model.safetensors"]
    assert sorted(p.name for p in target.parent.iterdir()) == ["adapter"]
    assert oct(target.stat().st_mode & 0o777) == oct(0o777 & ~current_umask())


def test_a_full_disk_while_writing_the_adapter_weights_is_one_line(tiny_model_dir, tmp_path, monkeypatch):
    """safetensors reports a full disk in its own exception type (seen on a 12 KiB tmpfs)."""
    from safetensors import SafetensorError

    from babeltune.trainer import export

    target = tmp_path / "adapter"
    model, tokenizer, config = lora_model(tiny_model_dir, seed=0)
    export.save_final(model, tokenizer, config, target, model_dir=str(tiny_model_dir))
    before = folder_bytes(target)

    def disk_full(*_args, **_kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    monkeypatch.setattr(model, "save_pretrained", disk_full)
    with pytest.raises(BabeltuneError, match=r"adapter: cannot write \(.*No space left on device") as error:
        export.save_final(model, tokenizer, config, target, model_dir=str(tiny_model_dir))
    assert len(str(error.value).splitlines()) == 1
    assert folder_bytes(target) == before and sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_failed_first_save_leaves_no_adapter_folder(tiny_model_dir, tmp_path, monkeypatch):
    from babeltune.trainer import export

    model, tokenizer, config = lora_model(tiny_model_dir, seed=0)
    monkeypatch.setattr(tokenizer, "save_pretrained", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        export.save_final(model, tokenizer, config, tmp_path / "adapter", model_dir=str(tiny_model_dir))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("damage,expected", [
    ("tokenizer", "tokenizer"),
    ("weights", "adapter_model.safetensors"),
    ("truncated", "truncated"),
    ("config", "adapter_config.json"),
])
def test_eval_refuses_an_incomplete_adapter_folder(damage, expected, adapter, tiny_model_dir, tmp_path):
    folder = copy_adapter(adapter, tmp_path / "adapter")
    if damage == "tokenizer":
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            (folder / name).unlink(missing_ok=True)
    elif damage == "weights":
        (folder / "adapter_model.safetensors").unlink()
    elif damage == "truncated":
        weights = folder / "adapter_model.safetensors"
        weights.write_bytes(weights.read_bytes()[:-100])
    else:
        (folder / "adapter_config.json").unlink()
    assert_one_error_line(run_eval("--model", tiny_model_dir, "--adapter", folder), expected)


# ------------------------------------------------------------------------------------ 13. output paths

def test_advise_out_under_a_file_is_one_line(tiny_model_dir, tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    result = run_advise("--model", tiny_model_dir, "--out", blocker / "advised.yaml")
    assert_one_error_line(result, "--out", str(blocker))
    assert blocker.read_text() == "not a folder"


def test_eval_out_under_a_file_fails_before_loading(tiny_model_dir, tmp_path, monkeypatch):
    from babeltune.trainer import evaluate

    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    monkeypatch.setattr(evaluate, "_load_model", lambda *a: pytest.fail("loaded the model before checking --out"))
    assert_one_error_line(run_eval("--model", tiny_model_dir, "--out", blocker / "sub" / "report.json"), "--out", str(blocker))


def test_train_output_dir_under_a_file_fails_before_loading(tiny_model_dir, tmp_path, monkeypatch):
    from babeltune.trainer import run

    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    monkeypatch.setattr(run, "load_phase", lambda *a: pytest.fail("loaded the model before checking output_dir"))
    result = run_train(train_config(tmp_path, tiny_model_dir, blocker / "run"))
    assert_one_error_line(result, "training.output_dir", str(blocker))
    assert blocker.read_text() == "x"


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only folders")
def test_unwritable_output_folders_are_one_line(tiny_model_dir, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert_one_error_line(run_advise("--model", tiny_model_dir, "--out", locked / "a.yaml"), "--out", "writable")
        assert_one_error_line(run_eval("--model", tiny_model_dir, "--out", locked / "r.json"), "--out", "writable")
        assert_one_error_line(run_train(train_config(tmp_path, tiny_model_dir, locked / "run")), "training.output_dir")
    finally:
        locked.chmod(0o700)


def full_disk(monkeypatch):
    """Every atomic write runs out of space while writing its temporary file."""
    import babeltune.atomic as atomic

    def write(handle, data):
        handle.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(atomic, "_write_data", write)


def test_a_full_disk_is_one_line_and_leaves_the_old_file(tmp_path, monkeypatch):
    from babeltune.atomic import atomic_write_text

    target = tmp_path / "report.json"
    target.write_text("old")
    full_disk(monkeypatch)
    with pytest.raises(BabeltuneError, match="No space left on device") as error:
        atomic_write_text(target, "new" * 1000)
    assert str(target) in str(error.value) and len(str(error.value).splitlines()) == 1
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_eval_and_advise_out_on_a_full_disk(tiny_model_dir, tmp_path, monkeypatch):
    full_disk(monkeypatch)
    assert_one_error_line(run_eval("--model", tiny_model_dir, "--out", tmp_path / "r.json"), "No space left")
    assert_one_error_line(run_advise("--model", tiny_model_dir, "--out", tmp_path / "a.yaml"), "No space left")
    assert list(tmp_path.iterdir()) == []


def test_disk_full_raised_anywhere_in_a_command_is_one_line():
    import click

    from babeltune.errors import handle_errors

    @click.command()
    @handle_errors
    def command():
        raise OSError(errno.ENOSPC, "No space left on device", "/data/run/checkpoint-4/optimizer.pt")

    result = CliRunner().invoke(command, [])
    assert_one_error_line(result, "/data/run/checkpoint-4/optimizer.pt", "No space left on device")

    from safetensors import SafetensorError

    @click.command()
    @handle_errors
    def saving():
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    assert_one_error_line(CliRunner().invoke(saving, []), "No space left on device", "free disk space")
