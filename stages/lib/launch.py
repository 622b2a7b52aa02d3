"""Data-parallel training: `loradag train` relaunches itself under `accelerate launch` for `train.processes` > 1.

accelerate's launcher starts the processes through torchrun (one per GPU; on a CPU-only machine they talk over
gloo) and each runs the same trainer, which transformers wraps in DDP, or FSDP / DeepSpeed when
`train.accelerate_config` names such an accelerate config file. Only the main process (rank 0) writes outputs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from stages.lib.common import UserError, log


def resolve_processes(processes: int | str, cuda_devices: int) -> int:
    """`auto` -> one process per visible GPU (one on a CPU-only machine); a number is taken as is."""
    if processes == "auto":
        return max(cuda_devices, 1)
    return int(processes)


def processes_for(processes: int | str, quantization: str, batch_size: int, cuda_devices: int) -> int:
    """How many processes train: `train.processes` resolved, or the launcher's count inside a launch."""
    count = world_size() if launched() else resolve_processes(processes, cuda_devices)
    if count > 1 and quantization == "4bit":
        raise UserError(f"train.processes: {processes} with train.quantization: 4bit: QLoRA trains on one GPU "
                        "here; set train.processes: 1 (or quantization: none to train on several GPUs)")  # fmt: skip
    if batch_size % count:
        raise UserError(f"train.batch_size ({batch_size}) must be a multiple of the {count} processes "
                        f"(train.processes: {processes}): each takes an equal share of the global batch")  # fmt: skip
    return count


def world_size() -> int:
    """How many training processes run together (torchrun sets WORLD_SIZE in each; 1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def launched() -> bool:
    """True inside a process that accelerate / torchrun started (so it must not launch again)."""
    return "LOCAL_RANK" in os.environ


def launch_command(processes: int, params_path: Path, accelerate_config: str, cuda: bool) -> list[str]:
    """`accelerate launch` running `loradag train` in `processes` processes on this machine."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(processes),
               "--num_machines", "1"]  # fmt: skip
    if accelerate_config:
        command += ["--config_file", accelerate_config]  # its distributed_type (FSDP, DeepSpeed) decides
    else:
        # torchrun's launcher; without CUDA torch.distributed falls back to gloo on the CPU
        command += ["--multi_gpu", "--mixed_precision", "no", "--dynamo_backend", "no"]
    if not cuda:
        command += ["--main_process_port", str(free_port())]
    return [*command, "-m", "stages.lib.cli", "train", "--params", str(params_path)]


def free_port() -> int:
    """A free local port for the processes' rendezvous (tests and CI may run two launches at once)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def relaunch(processes: int, params_path: Path, accelerate_config: str, cuda: bool) -> None:
    """Run the training in `processes` processes and wait; a failed process fails the stage."""
    if accelerate_config and not Path(accelerate_config).is_file():
        raise UserError(f"train.accelerate_config: {accelerate_config} is not a file")
    command = launch_command(processes, params_path, accelerate_config, cuda)
    log.info("train: %d processes: %s", processes, " ".join(command[1:]))
    result = subprocess.run(command, check=False)
    if result.returncode != 0:
        raise UserError(
            f"train: the {processes} training processes failed (exit {result.returncode}); their errors are above. "
            "The last good adapter is still in place, and a rerun resumes from the last checkpoint"
        )
