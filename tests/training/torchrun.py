"""Run a training job under torchrun on the CPU (gloo) and read back each rank's weights at the end of training.

Both ranks ending with the same weights shows that DDP averaged every parameter's gradient across them: each rank
trains on other rows, so without the all-reduce their weights would part after the first step.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import torch

SCRIPT = """
import importlib, sys
import torch
from transformers import TrainerCallback

class SaveWeights(TrainerCallback):
    def on_train_end(self, args, state, control, model=None, **kwargs):
        weights = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
        torch.save(weights, f"{sys.argv[1]}/rank{args.process_index}.pt")

module = importlib.import_module(sys.argv[2])
config_class, job = getattr(module, sys.argv[3]), getattr(module, sys.argv[4])
job(config_class.from_arguments(sys.argv[5:]), callbacks=[SaveWeights()])
"""


def command_line(config) -> list[str]:
    """`config`'s fields as the job's command-line options (`--batch-size 8 --freeze-encoder false ...`)."""
    options = []
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        text = str(value).lower() if isinstance(value, bool) else str(value)
        options += [f"--{field.name.replace('_', '-')}", text]
    return options


def run_ranks(
    job, config, tmp_path: Path, processes: int = 2, nodes: int = 1
) -> list[dict[str, torch.Tensor]]:
    """Run `job(config)` (a training function of an nbutils module) on `processes` CPU processes with torchrun;
    each rank's trainable parameters at the end of training, rank 0 first.

    With `nodes` > 1, one torchrun agent per node, all on 127.0.0.1, each with processes / nodes processes: the
    multi-node launch (static rendezvous at a free port), short of the network.
    """
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    tmp_path.mkdir(parents=True, exist_ok=True)
    script = tmp_path / "torchrun_job.py"
    script.write_text(SCRIPT)
    job_args = [str(script), str(tmp_path), job.__module__, type(config).__name__, job.__name__]
    job_args += command_line(config)
    if nodes == 1:
        commands = [[torchrun, f"--nproc-per-node={processes}", "--standalone", *job_args]]
    else:
        port = _free_port()
        commands = [
            [torchrun, f"--nnodes={nodes}", f"--nproc-per-node={processes // nodes}", f"--node-rank={node}",
             "--master-addr=127.0.0.1", f"--master-port={port}", *job_args]
            for node in range(nodes)
        ]  # fmt: skip
    agents = [
        subprocess.Popen(c, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for c in commands
    ]
    for agent in agents:
        _, stderr = agent.communicate(timeout=600)
        assert agent.returncode == 0, stderr[-3000:]
    return [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(processes)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_same_trained_weights(
    ranks: list[dict[str, torch.Tensor]], start: dict[str, torch.Tensor], unused: tuple[str, ...] = ()
) -> None:
    """Every rank ends with rank 0's trainable weights, and each of them moved away from `start` (its
    initialisation), except those whose names start with one of `unused` (modules the loss never reaches)."""
    first, *others = ranks
    for other in others:
        assert other.keys() == first.keys()
        for name in first:
            torch.testing.assert_close(other[name], first[name], rtol=1e-5, atol=1e-6, msg=name)
    for name in first.keys() & start.keys():
        if name.startswith(unused):
            assert torch.equal(first[name], start[name]), (
                f"{name} was trained, though the loss never reaches it"
            )
            continue
        assert not torch.equal(first[name], start[name]), f"{name} was not trained"
