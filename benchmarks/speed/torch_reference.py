"""The card's original PyTorch model (geffnet's `tf_efficientnet_*`), measured in fresh processes.

PyTorch eager allocates every activation afresh; glibc serves big blocks with mmap and gives them back,
so each forward pass page-faults its activations in again (about 3 million minor faults for 8 passes of
B7). How often depends on malloc's dynamic thresholds, i.e. on the process's history: in one process we
saw 1.4 to 2.8 img/s. So PyTorch runs in fresh worker processes, once as a user gets it and once with
glibc told to keep memory (the strongest PyTorch baseline).

Run as a script, this file is that worker: `python torch_reference.py MODEL WEIGHTS INPUT.npy SECONDS`.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from effnet.bench import Measurement, measure

MALLOC_KEEP = {"MALLOC_MMAP_THRESHOLD_": "100000000000", "MALLOC_TRIM_THRESHOLD_": "100000000000"}


def geffnet_model(model: str, weights: str | os.PathLike[str]):
    """geffnet's eval-mode `tf_<model>` with the weights file loaded strictly (effnet keeps timm's
    attribute names, so the same file loads into both)."""
    import geffnet
    import torch

    net = getattr(geffnet, f"tf_{model}")(pretrained=False)
    net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True), strict=True)
    return net.eval()


def worker(model: str, weights: str, x_path: str, seconds: float) -> None:
    """Measure geffnet's model on the saved input in this (fresh) process; print the Measurement as JSON."""
    import torch

    net = geffnet_model(model, weights)
    x = torch.from_numpy(np.load(x_path))

    def step() -> int:
        with torch.inference_mode():
            net(x)
        return len(x)

    m = measure(step, seconds, warmup=2)
    print(json.dumps({"images": m.images, "wall_s": m.wall_s, "latencies_s": m.latencies_s, "cpu_s": m.cpu_s,
                      "threads": torch.get_num_threads()}))


def in_fresh_process(model: str, weights: Path, x_path: Path,
                     env_extra: Mapping[str, str]) -> Callable[[float], Measurement]:
    """A function measuring geffnet's model for `seconds` in a new process with `env_extra` set."""
    def run(seconds: float) -> Measurement:
        env = {**os.environ, **env_extra}
        # -P: this file's folder (the speed package's modules) stays off the worker's import path.
        command = [sys.executable, "-P", __file__, model, str(weights), str(x_path), str(seconds)]
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"the PyTorch worker failed ({done.returncode}): {done.stderr[-2000:]}")
        d = json.loads(done.stdout.strip().splitlines()[-1])
        return Measurement(d["images"], d["wall_s"], d["latencies_s"], d["cpu_s"])

    return run


if __name__ == "__main__":
    worker(sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]))
