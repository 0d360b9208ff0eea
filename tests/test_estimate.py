"""The measured throughput table and its loader, the run-time estimate (`advise` on GPU and CPU, `train`'s
own line after the first steps), and the GPU install extra."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from click.testing import CliRunner

from babeltune.advisor.throughput import TABLE_PATH, load_table, shape_curve, table_gpu_for_device
from babeltune.errors import BabeltuneError

ROOT = Path(__file__).resolve().parents[1]
TWEETS = ROOT / "examples" / "data" / "marathi" / "train.txt"
MARATHI = ROOT / "tests" / "data" / "text" / "mr.txt"
SMOLLM2_PARAMS = 134_515_008


def table_with(tmp_path, *records) -> Path:
    data = json.loads(TABLE_PATH.read_text(encoding="utf-8"))
    data["records"] += list(records)
    path = tmp_path / "throughput.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_shipped_table_reproduces_its_measurements_and_interpolates_between_them():
    for backend in ("hf-peft", "unsloth"):   # each backend's curve reproduces its own measured records
        own = shape_curve(load_table(), "h100", SMOLLM2_PARAMS, backend=backend)
        records = [r for r in load_table().records if r.gpu == "h100" and r.packing == "blocks"
                   and r.params == SMOLLM2_PARAMS and r.backend == backend]
        assert records
        for record in records:
            assert own.tokens_per_s(record.tokens) == pytest.approx(record.tokens_per_s)
    curve = shape_curve(load_table(), "h100", SMOLLM2_PARAMS)
    between = curve.tokens_per_s(4096)
    assert curve.tokens_per_s(1024) < between < curve.tokens_per_s(8192)
    largest = max((r for r in load_table().records if r.gpu == "h100" and r.params == SMOLLM2_PARAMS and
                   r.packing == "blocks"), key=lambda r: r.tokens)
    assert curve.tokens_per_s(65_536) == curve.tokens_per_s(largest.tokens)   # flat beyond the largest measured shape
    assert curve.tokens_per_s(512) == pytest.approx(curve.tokens_per_s(1024) / 2)   # fixed cost per step below


@pytest.mark.parametrize("driver_name, key", [
    ("NVIDIA H100 80GB HBM3", "h100"), ("NVIDIA H100 PCIe", "h100-pcie"), ("NVIDIA H200", "h200"),
    ("NVIDIA A100-SXM4-80GB", "a100"), ("NVIDIA A100-SXM4-40GB", "a100-40gb"), ("NVIDIA A10", "a10"),
    ("NVIDIA GeForce RTX 4090", "rtx4090"), ("Tesla T4", "t4"), ("NVIDIA L40S", "l40s"), ("NVIDIA B200", None)])
def test_driver_gpu_names_map_to_table_keys(driver_name, key):
    """The name torch.cuda.get_device_name reports picks the table's GPU (bench/estimate_check.py uses it)."""
    assert table_gpu_for_device(driver_name) == key


def test_adding_a_record_is_all_it_takes(tmp_path):
    """The lead adds new GPU measurements as records; the loader picks them up with no code change."""
    before = shape_curve(load_table(), "l4", SMOLLM2_PARAMS)
    assert any("scaled to l4" in c for c in before.caveats)
    path = table_with(tmp_path, {
        "gpu": "l4", "model": "smollm2-135m", "params": SMOLLM2_PARAMS, "backend": "hf-peft", "kernels": "liger",
        "micro_batch": 32, "seq_len": 256, "packing": "blocks", "gradient_checkpointing": False,
        "tokens_per_s": 9_000, "source": "test"})
    after = shape_curve(load_table(path), "l4", SMOLLM2_PARAMS)
    assert after.tokens_per_s(8192) == pytest.approx(9_000)
    assert not any("scaled to l4" in c for c in after.caveats)
    assert "l4 smollm2-135m hf-peft/liger 32 x 256: 9,000 tok/s" in after.basis()


def test_gpu_without_records_is_scaled_by_published_tflops_and_names_it():
    table = load_table()
    h100 = shape_curve(table, "h100", SMOLLM2_PARAMS).tokens_per_s(8192)
    l4 = shape_curve(table, "l4", SMOLLM2_PARAMS)
    assert l4.tokens_per_s(8192) == pytest.approx(h100 * 121 / 989)
    assert "published tensor TFLOPS" in l4.basis()


def test_gpu_names_and_bad_tables_are_one_line_errors(tmp_path):
    table = load_table()
    assert table.resolve_gpu("RTX 4090") == "rtx4090" and table.resolve_gpu("H100-SXM") == "h100"
    with pytest.raises(BabeltuneError, match=r"^--gpu: 'v100' is not a GPU babeltune knows \(known: h100"):
        table.resolve_gpu("v100")
    bad = table_with(tmp_path, {**table.records[0].model_dump(), "gpu": "b200"})
    with pytest.raises(BabeltuneError) as info:
        load_table(bad)
    assert "\n" not in str(info.value) and "'b200' is not a key of gpus" in str(info.value)


def run_advise(*args):
    from babeltune.advisor.cli import advise

    return CliRunner().invoke(advise, [str(a) for a in args], catch_exceptions=False)


@pytest.mark.slow   # ~16 s in the fast lane (over ~10 s: slow)
def test_advise_prints_and_writes_the_run_time_estimate(tmp_path, tiny_model_dir):
    """On this CPU-only machine: the GPU estimate from the table, what the run costs here (measured probe of the
    actual model), and the command for a CPU-sized variant."""
    out = tmp_path / "a.yaml"
    result = run_advise("--lang", "mr", "--corpus", MARATHI, "--model", tiny_model_dir, "--gpu", "a100", "--out", out)
    assert result.exit_code == 0, result.output
    header = [line for line in out.read_text(encoding="utf-8").splitlines() if line.startswith("# ")]
    gpu = next(line for line in header if line.startswith("# estimated run time on an A100"))
    assert "tok/s" in gpu and "scaled to a100 by published tensor TFLOPS" in gpu
    cpu = next(line for line in header if line.startswith("# estimated run time on this CPU"))
    assert "measured on this CPU" in cpu
    offer = next(line for line in header if "this machine has no GPU" in line)
    assert offer.endswith("--gpu cpu --minutes 15")
    assert "estimated run time on an A100" in result.stderr


@pytest.fixture
def fixed_probe(monkeypatch):
    """A deterministic CPU probe (the sizing arithmetic, not this machine's load, is under test)."""
    from babeltune.advisor import probe

    result = probe.ProbeResult(tokens_per_s=200.0, forward_tokens_per_s=600.0, load_s=2.0, first_step_s=4.0,
                               micro_batch=4, seq_len=64, threads=2, import_s=5.0)
    monkeypatch.setattr(probe, "probe_cpu", lambda config, **kw: result)
    return result


@pytest.mark.parametrize("minutes", [2, 6])
def test_cpu_variant_is_sized_to_the_minutes_asked(tmp_path, tiny_model_dir, fixed_probe, minutes):
    out = tmp_path / "cpu.yaml"
    result = run_advise("--lang", "mr", "--corpus", TWEETS, "--model", tiny_model_dir, "--gpu", "cpu",
                        "--minutes", minutes, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    estimate, steps = data["estimate"], data["config"]["training"]["max_steps"]
    assert estimate["device"] == "this CPU" and estimate["steps"] == steps
    assert minutes * 60 * 0.8 <= estimate["seconds"] <= minutes * 60 * 1.05
    assert data["parameters"]["training.max_steps"]["reason"].startswith("advise --minutes: ")
    assert estimate["step_tokens"] <= 512 and data["cpu_estimate"] is None


def test_minutes_without_cpu_target_is_one_line_error(tiny_model_dir):
    result = run_advise("--lang", "mr", "--corpus", MARATHI, "--model", tiny_model_dir, "--minutes", "5")
    assert result.exit_code == 2 and result.stderr.strip().startswith("error: --minutes: 5 sizes a run on this CPU")


def test_train_prints_its_plan_and_one_estimate_after_the_warm_up(monkeypatch):
    from babeltune.trainer import callbacks as cb

    clock = iter([0.0, 0.0, 9.0] + [x for k in range(1, 12) for x in (10.0 * k, 10.0 * k + 2.0)])
    monkeypatch.setattr(cb.time, "monotonic", lambda: next(clock))
    lines = []
    progress = cb.progress_callback(lines.append)
    args = SimpleNamespace(max_steps=20, num_train_epochs=3, per_device_train_batch_size=4,
                           gradient_accumulation_steps=1, eval_strategy="steps", eval_steps=5)
    state = SimpleNamespace(global_step=0, max_steps=20, num_input_tokens_seen=0, log_history=[])
    progress.on_train_begin(args, state, None)
    for step in range(1, 8):
        progress.on_step_begin(args, state, None)
        state.global_step = step
        progress.on_step_end(args, state, None)
    assert lines[0] == "optimizer steps: 20 (training.max_steps 20)"
    estimates = [line for line in lines if line.startswith("estimate:")]
    assert estimates == ["estimate: training ~0:30 to go: 15 more steps x 2.00 s (measured over steps 2-5 of this "
                         "run; step 1, the warm-up, took 9.00 s), plus 3 evaluations and the final scoring"]


def test_train_says_when_max_steps_replaces_the_planned_steps(tmp_path):
    """Issue 14: the steps advise planned and the steps train runs agree, or train says why."""
    from babeltune.trainer.cli import load_train_config

    config = {"language": "mr", "model": {"name": "m", "max_seq_length": 64}, "data": {"train": str(MARATHI)},
              "training": {"per_device_train_batch_size": 4, "learning_rate": 1e-4, "max_steps": 69},
              "eval": {"evaluation_strategy": "no"}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    said = []
    loaded = load_train_config(str(path), (), backend=None, output_dir=None, max_steps=40, echo=said.append)
    assert loaded.training.max_steps == 40
    assert said == ["--max-steps 40 replaces training.max_steps (69, the steps the config planned)"]
    said.clear()
    load_train_config(str(path), (), backend=None, output_dir=None, max_steps=None, echo=said.append)
    assert said == []


def test_gpu_extra_brings_liger_and_the_table_ships_with_the_package():
    tomllib = pytest.importorskip("tomllib")

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert any(dep.startswith("liger-kernel") for dep in project["project"]["optional-dependencies"]["gpu"])
    data = project["tool"]["setuptools"]["package-data"]["babeltune.advisor"]
    assert "data/*.json" in data and TABLE_PATH.parent.name == "data" and TABLE_PATH.is_file()
    assert yaml.safe_load(TABLE_PATH.read_text(encoding="utf-8"))["records"]


# ---------------------------------------------------------------------------------------------
# the estimate against the committed GPU measurements (issue 12: within 25% of the measured run)

ESTIMATE_CHECK = ROOT / "bench" / "results" / "estimate_check.json"
# (documents, tokens) of each corpus as `advise` measured it with SmolLM2-135M's tokenizer, the tokenizer of the
# GPU run's advise; the held-out split is derived from them as advise derives it (cross-checked below against
# the evaluation part each row recorded)
CORPUS_FACTS = {"mr": (3000, 188_403), "hi": (1000, 120_436), "de": (1000, 46_882)}


def recomputed_gpu_estimate(row: dict):
    """advise's GPU estimate for a row of bench/results/estimate_check.json, from its shape, steps and corpus."""
    from babeltune.advisor.estimate import estimate_run, gpu_eval_batch_s, gpu_startup_s
    from babeltune.advisor.rules.schedule import EOS_PER_DOCUMENT, eval_fraction
    from babeltune.config import validate_config

    shape, backend = row["shape"], row["backend"]
    config = validate_config({
        "language": row["lang"], "model": {"name": "m", "max_seq_length": shape["seq_len"]},
        "data": {"train": str(TWEETS), "packing": shape["packing"]},
        "training": {"per_device_train_batch_size": shape["micro_batch"], "learning_rate": 1e-4,
                     "gradient_accumulation_steps": shape["grad_accum"], "max_steps": shape["max_steps"],
                     "save_steps": shape.get("save_steps", shape["eval_steps"]),
                     "gradient_checkpointing": shape["gradient_checkpointing"]},
        "eval": {"evaluation_strategy": shape["evaluation_strategy"], "eval_steps": shape["eval_steps"],
                 "save_strategy": shape["evaluation_strategy"],
                 "early_stopping_patience": shape["early_stopping_patience"]},
        "backend": {"name": backend}})
    documents, tokens = CORPUS_FACTS[row["lang"]]
    held_documents = round(documents * eval_fraction())
    held_tokens = held_documents * (tokens / documents + EOS_PER_DOCUMENT)
    curve = shape_curve(load_table(), "h100", SMOLLM2_PARAMS, backend=backend, packing=shape["packing"],
                        gradient_checkpointing=shape["gradient_checkpointing"])
    micro_tokens = shape["micro_batch"] * shape["seq_len"]
    batch_tokens = config.eval.per_device_eval_batch_size * min(held_tokens / held_documents, shape["seq_len"])
    estimate = estimate_run(config, step_tokens=micro_tokens * shape["grad_accum"], heldout_tokens=held_tokens,
                            tokens_per_s=curve.tokens_per_s(micro_tokens), device="an H100", basis="test",
                            startup_s=gpu_startup_s(backend), heldout_documents=held_documents,
                            eval_batch_s=gpu_eval_batch_s(curve, batch_tokens))
    return estimate, held_tokens


def advised_rows(backend: str) -> list[tuple[dict, bool]]:
    """(row, first run in its process) for every advised run of ``backend`` that was measured."""
    rows, seen = [], set()
    for row in json.loads(ESTIMATE_CHECK.read_text(encoding="utf-8"))["rows"]:
        if row["kind"] == "advised" and row["backend"] == backend and "measured" in row:
            rows.append((row, (row["model"], backend) not in seen))
            seen.add((row["model"], backend))
    return rows


@pytest.mark.parametrize("backend", ["hf-peft", "unsloth"])
def test_gpu_estimate_lands_within_25_percent_of_the_measured_runs(backend):
    """What the estimate covers is what run_s measures: run_training from loading the model to the manifest
    (evaluations, checkpoint saves, adapter save, reload check, final scoring included; Python's imports before
    it not). The bench ran each (model, backend) in one process: only its first run paid the fresh process's
    start-up (FIRST_RUN_IN_PROCESS_S), which a user's `train` always pays; the later rows are compared without it."""
    from babeltune.advisor.estimate import FIRST_RUN_IN_PROCESS_S

    rows = advised_rows(backend)
    assert len(rows) >= (3 if backend == "hf-peft" else 1)
    for row, first in rows:
        estimate, held_tokens = recomputed_gpu_estimate(row)
        # the same held-out split (and, for hf-peft, throughput) that advise used on the GPU machine; the old
        # estimate read hf-peft's curve for every backend
        if backend == "hf-peft":
            assert estimate.tokens_per_s == pytest.approx(row["estimate"]["tokens_per_s"], rel=1e-6)
        recorded_old = row["estimate"]["parts"]["evaluation"]        # (9 + 2) x held-out / (3 x tokens/s)
        assert 11 * held_tokens / (3 * row["estimate"]["tokens_per_s"]) == pytest.approx(recorded_old, abs=0.051)
        measured = row["measured"]
        assert estimate.evaluations == estimate.saves == 10 and measured["steps"] == estimate.steps
        seconds = estimate.seconds - (0 if first else FIRST_RUN_IN_PROCESS_S)
        assert 0.75 <= seconds / measured["run_s"] <= 1.25, (row["lang"], seconds, measured["run_s"])
        assert not 0.75 <= row["estimate"]["seconds"] / measured["run_s"] <= 1.25   # the estimate it replaces


def test_eval_batch_model_holds_out_of_sample_on_the_first_run():
    """The per-evaluation constants come from the hi and de rows (13 eval batches each); the mr row scores 38
    batches per evaluation: its estimate without the fresh-process term (fitted to it) still lands within 25%."""
    from babeltune.advisor.estimate import FIRST_RUN_IN_PROCESS_S

    row, first = advised_rows("hf-peft")[0]
    assert first and row["lang"] == "mr"
    estimate, _ = recomputed_gpu_estimate(row)
    assert estimate.eval_batches == 38
    assert 0.75 <= (estimate.seconds - FIRST_RUN_IN_PROCESS_S) / row["measured"]["run_s"] <= 1.25


def test_estimate_line_names_where_the_time_goes():
    row, _ = advised_rows("hf-peft")[0]
    estimate, _ = recomputed_gpu_estimate(row)
    line = estimate.line()
    for part in ("training 69 steps x 8,192 tokens", "10 evaluations", "10 checkpoint saves", "final scoring",
                 "start-up and reload"):
        assert part in line
    assert "plus model loading" not in line
    assert sum(estimate.parts.values()) == pytest.approx(estimate.seconds)


README_DEMO_ESTIMATE_S, README_DEMO_MEASURED_S = 38 * 60 + 30, 39 * 60 + 44   # README: 38:30 estimated, 39:44 took


def test_cpu_demo_estimate_still_holds_within_50_percent(tiny_model_dir, fixed_probe):
    """The README demo (advise --gpu cpu --max-steps 40 on the shipped sample): the CPU estimate keeps its probe-
    measured training, evaluations and start-up; this change adds only the per-evaluation and per-save costs
    (40 steps are a multiple of eval_steps: no extra last-step evaluation), seconds against a 38:30 estimate."""
    from babeltune.advisor.estimate import EVAL_FIXED_S, SAVE_S

    result = run_advise("--lang", "mr", "--corpus", TWEETS, "--model", tiny_model_dir, "--gpu", "cpu",
                        "--max-steps", 40, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    estimate, config = data["estimate"], data["config"]
    assert estimate["device"] == "this CPU" and estimate["steps"] == 40
    assert 40 % config["eval"]["eval_steps"] == 0 and estimate["evaluations"] == 40 // config["eval"]["eval_steps"]
    scoring = estimate["heldout_tokens"] / fixed_probe.forward_tokens_per_s
    assert estimate["parts"]["final scoring"] == pytest.approx(2 * scoring, abs=0.06)
    added = estimate["evaluations"] * EVAL_FIXED_S + estimate["saves"] * SAVE_S
    assert estimate["parts"]["saves"] == pytest.approx(estimate["saves"] * SAVE_S, abs=0.06)
    assert added < 10
    assert 0.5 <= (README_DEMO_ESTIMATE_S + added) / README_DEMO_MEASURED_S <= 1.5


@pytest.mark.parametrize("max_steps, eval_steps, save_steps, evaluations, saves", [
    (69, 7, 7, 10, 10),      # 7, 14, ..., 63 and the last step (69 is not a multiple of 7)
    (70, 7, 14, 10, 5),      # 70 is a multiple of 7: no extra evaluation; saves at 14 ... 70
    (69, 7, 14, 10, 5)])     # saves at 14 ... 56 and the last step
def test_evaluations_and_saves_include_the_last_step(max_steps, eval_steps, save_steps, evaluations, saves):
    """transformers >= 5 evaluates and saves at the last step too (DefaultFlowCallback.on_step_end)."""
    from babeltune.advisor.estimate import planned_evaluations, planned_saves
    from babeltune.config import validate_config

    config = validate_config({
        "language": "mr", "model": {"name": "m", "max_seq_length": 64}, "data": {"train": str(TWEETS)},
        "training": {"per_device_train_batch_size": 4, "learning_rate": 1e-4, "max_steps": max_steps,
                     "save_steps": save_steps},
        "eval": {"evaluation_strategy": "steps", "eval_steps": eval_steps, "save_strategy": "steps"}})
    assert (planned_evaluations(config), planned_saves(config)) == (evaluations, saves)
