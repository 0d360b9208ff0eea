"""`babeltune demo`: the whole path on the embedded default, as a user would type it.

advise (measure the shipped Marathi sample under SmolLM2-135M's own tokenizer, write an explained
config sized for this CPU with its measured run-time estimate) -> train (hf-peft LoRA, a few dozen
CPU-sized steps) -> eval (bits per character on held-out Marathi and English, before and after the
adapter). Each step runs the real console command in a
subprocess and prints it first, so the demo doubles as a tutorial.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import click

from babeltune.errors import BabeltuneError, handle_errors

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE = REPO_ROOT / "examples" / "data"
MODEL = "smollm2-135m"


def _run(step: str, args: list[str], capture: bool = False) -> str:
    command = [sys.executable, "-m", "babeltune.cli", *args]
    click.secho(f"\n[{step}] $ babeltune {shlex.join(args)}", fg="cyan", bold=True)
    result = subprocess.run(command, text=True, stdout=subprocess.PIPE if capture else None)
    if result.returncode != 0:
        raise BabeltuneError(f"demo: step '{step}' failed with exit code {result.returncode} (see its output above)")
    return result.stdout or ""


def _summarise(report: dict) -> bool:
    """Print before/after bits per character; True when Marathi improved."""
    improved = False
    click.secho("\nbits per character (lower is better; comparable across tokenizers)", bold=True)
    for lang, row in report["languages"].items():
        before, after = row["before"]["bits_per_char"], row["after"]["bits_per_char"]
        click.echo(f"  {lang:<8} before {before:.4f}  after {after:.4f}  change {after - before:+.4f}")
        if lang.startswith("mr") or lang.startswith("mar"):
            improved = after < before
    return improved


@click.command("demo")
@click.option("--out-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/demo"),
              show_default=True, help="Where the advised config, the run and the eval report go.")
@click.option("--steps", type=click.IntRange(1, 10_000), default=40, show_default=True,
              help="Optimizer steps (advise --gpu cpu: ~512 tokens each, a few seconds per step).")
@handle_errors
def demo(out_dir: Path, steps: int) -> None:
    """advise -> train -> eval on the shipped Marathi sample with SmolLM2-135M (offline, CPU-friendly)."""
    if not (SAMPLE / "marathi" / "train.txt").is_file():
        raise BabeltuneError(f"demo: sample corpus {SAMPLE / 'marathi' / 'train.txt'} not found "
                             "(run the demo from a clone of the babeltune repository)")
    out_dir.mkdir(parents=True, exist_ok=True)
    # `train` refuses to start over an earlier run's checkpoints (it would need --resume): a demo
    # run always starts fresh, so clear the previous demo run first.
    shutil.rmtree(out_dir / "run", ignore_errors=True)
    config = out_dir / "advised.yaml"
    # --gpu cpu: a CPU-sized config (tokens per step, evaluations) timed on this machine, whose header
    # carries the estimated run time; train runs it as written.
    _run("1/3 advise", ["advise", "--lang", "marathi", "--corpus", str(SAMPLE / "marathi" / "train.txt"),
                        "--model", MODEL, "--gpu", "cpu", "--max-steps", str(steps), "--out", str(config),
                        "--report", str(out_dir / "report")])
    _run("2/3 train", ["train", "--config", str(config), "--backend", "hf-peft",
                       "--set", f"training.output_dir={out_dir / 'run'}"])
    adapter = out_dir / "run" / "adapter"
    raw = _run("3/3 eval", ["eval", "--model", MODEL, "--adapter", str(adapter),
                            "--corpus", f"mr={SAMPLE / 'marathi' / 'eval.txt'}",
                            "--corpus", f"en={SAMPLE / 'english' / 'eval.txt'}",
                            "--json", "--out", str(out_dir / "eval.json")], capture=True)
    if not _summarise(json.loads(raw)):
        raise BabeltuneError("demo: held-out Marathi bits per character did not drop after training "
                             f"(see {out_dir / 'eval.json'}; try more --steps)")
    click.secho(f"\ndemo: done. Config {config}, adapter {adapter}, report {out_dir / 'eval.json'}", fg="green")
