"""Ctrl-C and SIGTERM keep the run's progress.

While the Trainer runs, the first SIGINT/SIGTERM only sets a flag: the current optimizer step finishes, a
complete checkpoint is saved at that step boundary, training stops and `train` exits non-zero with the exact
command that resumes it. A second signal aborts at once (the last complete checkpoint stays usable).
The training loop pays one attribute read per optimizer step for this (no device sync, no file access).
Under torchrun (several processes) the default handling stays: the ranks would have to agree on the step.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Optional

from babeltune.errors import BabeltuneError

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(BabeltuneError):
    """Stopped by a signal; exit status 128 + the signal number, as a shell reports a process it interrupted."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


class GracefulStop:
    """Installs the handlers for the duration of a ``with`` block (main thread only; elsewhere a no-op)."""

    def __init__(self):
        self.signum: Optional[int] = None
        self.second: Optional[int] = None
        self.previous: dict = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return "Ctrl-C" if self.signum == signal.SIGINT else signal.Signals(self.signum).name

    def __enter__(self) -> "GracefulStop":
        if threading.current_thread() is threading.main_thread():
            self.previous = {signum: signal.signal(signum, self.handle) for signum in SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        self.previous = {}

    def handle(self, signum, frame) -> None:
        if self.requested:
            self.second = signum
            self.__exit__()
            raise KeyboardInterrupt   # the second signal: abort now
        self.signum = signum
        # os.write, not print: the handler may run while the main thread is inside a print
        os.write(2, f"{self.name}: finishing this step and saving a checkpoint, then stopping "
                    f"({'Ctrl-C' if signum == signal.SIGINT else 'the signal'} again aborts at once)\n".encode())


def stop_callback(stop: GracefulStop):
    """Asks the Trainer to save and stop at the first step boundary after a signal. Must come before the
    completion marker and the NaN guard in the callback list (the guard may still veto a damaged save)."""
    from transformers import TrainerCallback

    class StopOnSignal(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if stop.signum is not None:
                control.should_save = True
                control.should_training_stop = True
            return control

        def on_save(self, args, state, control, **kwargs):
            if stop.signum is not None:   # the signal came during this save: stop after it
                control.should_training_stop = True
            return control

    return StopOnSignal()


def interrupted_error(stop: GracefulStop, step: int, max_steps: int, checkpoint: Optional[Path],
                      resume_command: Optional[str]) -> TrainingInterrupted:
    saved = f"checkpoint {checkpoint}" if checkpoint else "no checkpoint could be saved"
    how = f"resume with: {resume_command}" if resume_command else "resume with --resume"
    return TrainingInterrupted(f"interrupted by {stop.name} after step {step}/{max_steps}; saved {saved}; {how}",
                               stop.signum)


def aborted_error(stop: GracefulStop, checkpoint: Optional[Path], resume_command: Optional[str]) -> TrainingInterrupted:
    signum = stop.second or signal.SIGINT
    if checkpoint is None:
        return TrainingInterrupted("interrupted twice: aborted at once, before any complete checkpoint", signum)
    how = f"resume with: {resume_command}" if resume_command else "resume with --resume"
    return TrainingInterrupted(f"interrupted twice: aborted at once; the last complete checkpoint is {checkpoint}; {how}",
                               signum)
