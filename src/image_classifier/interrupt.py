"""Stop training cleanly on SIGINT (Ctrl-C) or SIGTERM (a scheduler, `kill`, a launcher shutting down).

The signal only sets a flag. The training loop asks `StopOnSignal.requested` at every optimizer
step; when any process has been signalled, every process agrees, they save a checkpoint together
and `fit` raises `TrainingInterrupted`, which the command line turns into the resume command and
the shell's exit code (130 after Ctrl-C, 143 after SIGTERM).
"""

from __future__ import annotations

import os
import shlex
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Mapping, Optional, Sequence

import torch

__all__ = ["StopOnSignal", "TrainingInterrupted", "resume_command"]


class TrainingInterrupted(Exception):
    """Training stopped on a signal after saving `checkpoint`; `exit_code` is 128 + the signal number."""

    def __init__(self, signum: int, checkpoint: str | os.PathLike):
        self.signum, self.checkpoint = signum, Path(checkpoint)
        self.exit_code = 128 + signum
        super().__init__(f"training stopped by {signal.Signals(signum).name}; its state is saved in {checkpoint}")


class StopOnSignal:
    """While entered, SIGINT and SIGTERM request a stop at the next optimizer step instead of killing the process.

    Launchers deliver a signal more than once within moments (Ctrl-C reaches the whole process
    group, and torchrun forwards it to its workers again), so repeats are ignored; a repeat more
    than `force_after` seconds after the first stops at once, the usual way (for a save that hangs).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, force_after: float = 10.0):
        self.force_after = force_after
        self.received: Optional[int] = None     # the signal this process got
        self.agreed: Optional[int] = None       # the signal any process got, once `requested` has seen it
        self._first_at = 0.0
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopOnSignal":
        if threading.current_thread() is threading.main_thread():   # Python only lets that thread set handlers
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        self._restore()

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _handle(self, signum: int, frame) -> None:
        # No printing here: a handler can run in the middle of a write to the same stream.
        if self.received is None:
            self.received, self._first_at = signum, time.monotonic()
        elif time.monotonic() - self._first_at > self.force_after:
            self._restore()
            signal.raise_signal(signum)

    def requested(self, accelerator) -> Optional[int]:
        """The signal any process received (the largest number), the same on every process; None to carry on.

        With several processes this is a collective: every process calls it at the same step, so they
        all stop at that step and all enter `save_state` (one left training would hang the others).
        """
        if accelerator.num_processes > 1:
            flag = torch.tensor([self.received or 0], device=accelerator.device)
            self.agreed = int(accelerator.gather(flag).max()) or None
        else:
            self.agreed = self.received
        return self.agreed


def resume_command(argv: Optional[Sequence[str]] = None, environ: Optional[Mapping[str, str]] = None) -> str:
    """The command that continues this run: the same script and flags plus `--resume_from_checkpoint latest`.

    Under `accelerate launch` the launcher's own options are not visible to the script; what it
    left in the environment (process and machine counts, CPU, precision) is turned back into flags.
    """
    argv = list(sys.argv if argv is None else argv)
    env = os.environ if environ is None else environ
    flags, skip = [], False
    for arg in argv[1:]:
        if skip:
            skip = False
        elif arg == "--resume_from_checkpoint":
            skip = True
        elif not arg.startswith("--resume_from_checkpoint="):
            flags.append(arg)
    command = [argv[0], *flags, "--resume_from_checkpoint", "latest"]
    world_size = int(env.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return shlex.join([sys.executable, *command])
    launch = ["accelerate", "launch"]
    prefix = ""
    if env.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes"):
        # `accelerate launch --cpu` starts a single process; torchrun's launcher (--multi_gpu) plus this
        # variable gives several CPU processes.
        prefix = "ACCELERATE_USE_CPU=1 "
        launch.append("--multi_gpu")
    launch += ["--num_processes", str(world_size)]
    machines = int(env.get("GROUP_WORLD_SIZE", "1"))
    if machines > 1:
        launch += ["--num_machines", str(machines), "--machine_rank", env.get("GROUP_RANK", "0"),
                   "--main_process_ip", env.get("MASTER_ADDR", "?"), "--main_process_port", env.get("MASTER_PORT", "?")]
    if env.get("ACCELERATE_MIXED_PRECISION", "no") != "no":
        launch += ["--mixed_precision", env["ACCELERATE_MIXED_PRECISION"]]
    text = prefix + shlex.join([*launch, *command])
    if machines > 1:
        text += "    (on every machine, each with its own --machine_rank)"
    return text
