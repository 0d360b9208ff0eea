"""`train --config FILE`: the command-line front of ``babeltune.trainer.run.run_training``.

Config problems are collected and shown once (``key: message`` per line, exit 2, no traceback).
torch/transformers load only once a run really starts, so `--help` and config errors are instant.
"""

from __future__ import annotations

import os
import shlex
import sys
from typing import Optional

import click
import yaml

from babeltune.cli_errors import Command
from babeltune.errors import BabeltuneError, handle_errors
from babeltune.trainer import distributed

RESUME_LAST = "\0last"  # --resume given without a value


def echo_err(message: str) -> None:
    click.echo(message, err=True)


def flag_values(*, backend: Optional[str], output_dir: Optional[str], max_steps: Optional[int]) -> dict:
    """`train`'s own flags as the config keys they override (--max-steps also drops num_train_epochs)."""
    values: dict = {}
    if output_dir is not None:
        values["training.output_dir"] = output_dir
    if max_steps is not None:
        values.update({"training.num_train_epochs": None, "training.max_steps": max_steps})
    if backend is not None:
        values["backend.name"] = backend
    return values


def load_train_config(path: str, sets: tuple[str, ...], *, backend: Optional[str], output_dir: Optional[str],
                      max_steps: Optional[int], echo=echo_err):
    """The config through the one loader: the YAML, --set, then the dedicated flags as overrides; validated once
    (backend.options against the selected backend's Options), every problem in one error."""
    from babeltune.config import load_config
    from babeltune.trainer.plugins import options_model

    def replaced(key: str, old, _new) -> None:
        if key == "training.num_train_epochs":
            echo(f"--max-steps {max_steps} replaces training.num_train_epochs ({old})")
        elif key == "training.max_steps":
            echo(f"--max-steps {max_steps} replaces training.max_steps ({old}, the steps the config planned)")

    return load_config(path, list(sets), values=flag_values(backend=backend, output_dir=output_dir, max_steps=max_steps),
                       on_replace=replaced, options_for=options_model)


def show_dry_run(config) -> None:
    """The resolved config and what the backend makes of it; loads no model."""
    from babeltune.trainer.export import resolved_config_yaml
    from babeltune.trainer.plugins import select_backend

    click.echo(resolved_config_yaml(config))
    chosen = select_backend(config.backend.name, echo=echo_err)
    click.echo(f"# backend {chosen.name}: translate()")
    click.echo(yaml.safe_dump(chosen.translate(config), sort_keys=False, allow_unicode=True, default_flow_style=False))


TRAIN_EXAMPLES = """
\b
Examples:
  train --config advised.yaml
  train --config advised.yaml --backend ia3 --max-steps 200 --output-dir runs/mr-ia3
  train --config advised.yaml --resume                     # continue from the last complete checkpoint
  train --config advised.yaml --set training.learning_rate=1e-4 --dry-run
"""


@click.command("train", cls=Command, epilog=TRAIN_EXAMPLES, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False),
              help="Config YAML written by `advise`.")
@click.option("--backend", default=None, help="Training backend (see `babeltune plugins`); overrides backend.name.")
@click.option("--output-dir", default=None, help="Overrides training.output_dir.")
@click.option("--max-steps", type=click.IntRange(min=1), default=None, help="Optimizer steps; replaces training.num_train_epochs.")
@click.option("--resume", is_flag=False, flag_value=RESUME_LAST, default=None, metavar="[CKPT]",
              help="Continue from the last complete checkpoint in output_dir, or from CKPT.")
@click.option("--overwrite", is_flag=True,
              help="Start a new run in an output_dir that holds an earlier run: its checkpoints and outputs are removed first.")
@click.option("--allow-config-change", is_flag=True,
              help="With --resume: continue although the config changed values that shape training (recorded in the manifest).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a config key, e.g. --set training.learning_rate=1e-4.")
@click.option("--merge", is_flag=True, help="Also write the adapter merged into the base model (output_dir/merged).")
@click.option("--dry-run", is_flag=True, help="Print the resolved config and the backend's arguments, then stop.")
@click.option("--no-eval", is_flag=True, help="Skip the held-out bits-per-character evaluation at the end.")
@click.option("--gpus", type=click.IntRange(min=1), default=1, show_default=True,
              help="Data-parallel over N GPUs of this machine (torchrun + DDP; rank 0 writes the outputs).")
@click.option("--fsdp", is_flag=True, help="With --gpus N: shard the frozen base model over the GPUs (FSDP2) instead "
              "of a full copy on each; same as --set training.distributed=fsdp.")
@click.option("--trust-remote-code", is_flag=True,
              help="Allow Python code that the model folder names in auto_map to run (off: such folders are refused); "
                   "recorded in manifest.json.")
@click.option("--strict", is_flag=True, help="Fail on an unreadable/binary corpus file, a line with undecodable bytes or a "
              "malformed CSV row instead of skipping it (skips are always reported and counted in the manifest).")
@handle_errors
def train(config_path, backend, output_dir, max_steps, resume, overwrite, allow_config_change, sets, merge, dry_run,
          no_eval, gpus, fsdp, trust_remote_code, strict):
    """Train an adapter from a config written by `advise`."""
    sets = check_fsdp_flag(fsdp, gpus) + tuple(sets) + (("data.strict=true",) if strict else ())   # recorded in the resolved config
    config = load_train_config(config_path, sets, backend=backend, output_dir=output_dir, max_steps=max_steps)
    if dry_run:
        show_dry_run(config)
        show_launch_plan(config, gpus, click.get_current_context().params)
        return
    from babeltune.models.safety import allow_remote_code

    click.get_current_context().with_resource(allow_remote_code(trust_remote_code))   # until the command ends
    from babeltune.console import quiet_libraries

    click.get_current_context().with_resource(quiet_libraries())   # no library tqdm bars or FutureWarnings
    if gpus > 1 and not os.environ.get(distributed.LAUNCHED_ENV):
        distributed.check_gpus(gpus)
        from babeltune.models.resolve import resolve_model_dir

        resolve_model_dir(config.model.name)   # convert a built-in/GGUF model once, before N processes want it
        args = worker_args(click.get_current_context().params)
        mode = "sharded (FSDP)" if config.training.distributed == "fsdp" else "data-parallel"
        sys.exit(distributed.launch(gpus, args, echo_err, mode))
    from babeltune.trainer.run import run_training

    distributed.die_with_launcher()   # a torchrun worker must not outlive a killed launcher
    result = run_training(config, resume=True if resume == RESUME_LAST else resume, merge=merge,
                          echo=distributed.main_process_echo(echo_err), config_file=config_path, evaluate=not no_eval,
                          allow_config_change=allow_config_change, overwrite=overwrite,
                          resume_command=resume_command(click.get_current_context()))
    if distributed.is_main_process():
        loss = "n/a" if result.final_loss is None else f"{result.final_loss:.4f}"
        click.echo(f"trained {result.steps} steps, final loss {loss}; adapter: {result.adapter_dir}")


def worker_args(params: dict) -> list[str]:
    """`train`'s own arguments rebuilt from the parsed options, without --gpus (for the torchrun workers)."""
    args = ["--config", params["config_path"]]
    for option, key in (("--backend", "backend"), ("--output-dir", "output_dir"), ("--max-steps", "max_steps")):
        if params[key] is not None:
            args += [option, str(params[key])]
    if params["resume"] is not None:
        args += ["--resume"] if params["resume"] == RESUME_LAST else [f"--resume={params['resume']}"]
    for item in params["sets"]:
        args += ["--set", item]
    args += ["--allow-config-change"] if params.get("allow_config_change") else []
    args += ["--overwrite"] if params.get("overwrite") else []
    args += ["--merge"] if params["merge"] else []
    args += ["--no-eval"] if params["no_eval"] else []
    args += ["--strict"] if params.get("strict") else []
    args += ["--trust-remote-code"] if params.get("trust_remote_code") else []
    args += ["--fsdp"] if params.get("fsdp") else []
    return args


def command_prefix(ctx: click.Context) -> list[str]:
    """How this command was started: `python -m babeltune.trainer.cli` as typed, else `train`/`babeltune train`."""
    typed = list(getattr(sys, "orig_argv", []))
    if "-m" in typed and typed[typed.index("-m") + 1:][:1] == [__spec__.name if __spec__ else __name__]:
        return typed[: typed.index("-m") + 2]
    return shlex.split(ctx.command_path)


def resume_command(ctx: click.Context) -> str:
    """The exact command that continues this run (said when Ctrl-C/SIGTERM stops it)."""
    params = {**ctx.params, "resume": RESUME_LAST, "overwrite": False, "allow_config_change": False}
    return shlex.join(command_prefix(ctx) + worker_args(params))


def check_fsdp_flag(fsdp: bool, gpus: int) -> tuple[str, ...]:
    """--fsdp as its config override; alone on one process it has nothing to shard over."""
    if not fsdp:
        return ()
    if gpus < 2 and distributed.world_size() < 2:
        raise BabeltuneError("--fsdp: shards the model over several GPUs, but one process was asked for; "
                             "pass --gpus N (N >= 2), or drop --fsdp")
    return ("training.distributed=fsdp",)


def show_launch_plan(config, gpus: int, params: dict) -> None:
    """--dry-run with --gpus N: the worker command, its environment and (FSDP) the Trainer's fsdp arguments."""
    if gpus < 2:
        return
    from babeltune.trainer.fsdp import dry_run_plan

    click.echo("# launcher (--gpus): " + ("sharded, FSDP" if config.training.distributed == "fsdp" else "data-parallel, DDP"))
    click.echo(yaml.safe_dump(dry_run_plan(config, gpus, worker_args(params)), sort_keys=False, default_flow_style=False))


def main(argv: Optional[list[str]] = None) -> None:
    train.main(args=argv, prog_name="train", standalone_mode=True)


if __name__ == "__main__":
    main(sys.argv[1:])
