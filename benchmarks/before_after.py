"""Did a change cost speed? `effnet bench --images` end to end with the code of another revision and with the
working tree, alternating round by round on the same weights, images and engine, so that both see the same
host (a shared host moves absolute figures by 2-3x between hours; alternation keeps the ratio honest).

    python benchmarks/before_after.py --base b86359b --weights ~/.cache/effnet/bench/b7-random-bn-calibrated.pth

Prints each round's img/s and CPU share, the means and the per-round after/before ratios with their median.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def photo_folder(folder: Path) -> Path:
    """Nine JPEGs of scikit-image's photos (of several sizes), written once."""
    if folder.is_dir() and any(folder.iterdir()):
        return folder
    import numpy as np
    import skimage.data as data
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for name in ("coffee", "chelsea", "astronaut", "rocket", "camera", "cat", "hubble_deep_field",
                 "immunohistochemistry", "retina"):
        image = getattr(data, name)()
        image = np.stack([image] * 3, -1) if image.ndim == 2 else image[..., :3]
        Image.fromarray(image).save(folder / f"{name}.jpg", quality=92)
    return folder


def bench(src: Path, args: argparse.Namespace, images: Path) -> tuple[float, float]:
    """One `effnet bench` run with the package found in `src`: (img/s, CPU share)."""
    command = [sys.executable, "-m", "effnet.cli", "bench", "--model", args.model, "--weights", args.weights,
               "--images", str(images), "--seconds", str(args.seconds), "--json"]
    done = subprocess.run(command, env=dict(os.environ, PYTHONPATH=str(src)), capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"effnet bench failed with {src}:\n{done.stderr[-2000:]}")
    result = json.loads(done.stdout)
    return result["throughput_ips"], result.get("cpu_share") or float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the git revision to compare the working tree with")
    parser.add_argument("--model", default="efficientnet_b7")
    parser.add_argument("--weights", required=True, help="a weights file both versions load (or 'random')")
    parser.add_argument("--seconds", type=float, default=15.0, help="measured seconds per round and version")
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    images = photo_folder(Path(tempfile.gettempdir()) / "effnet-before-after-photos")
    with tempfile.TemporaryDirectory(prefix="effnet-base-") as base:
        archive = subprocess.run(["git", "-C", str(HERE.parent), "archive", args.base, "src"],
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", base], input=archive, check=True)
        versions = {"before": Path(base) / "src", "after": HERE.parent / "src"}
        runs: dict[str, list[float]] = {"before": [], "after": []}
        for round_ in range(1, args.rounds + 1):
            for name, src in versions.items():
                rate, cpu = bench(src, args, images)
                runs[name].append(rate)
                print(f"round {round_} {name:6s} {rate:.3f} img/s  cpu {cpu:.2f}", flush=True)
    ratios = [after / before for before, after in zip(runs["before"], runs["after"])]
    print(f"mean img/s: before {statistics.mean(runs['before']):.3f}, after {statistics.mean(runs['after']):.3f}")
    print(f"after/before per round: {' / '.join(f'{r:.2f}' for r in ratios)}; median {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
