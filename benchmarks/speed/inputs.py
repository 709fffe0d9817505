"""What every configuration runs on: real photos as JPEGs, their centre crops, and (without --weights)
seeded random weights whose BatchNorm statistics come from those photos."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from effnet import ResolvedModel
from effnet.export.openvino import bgr_nchw
from effnet.decode import center_crop, load_image
from effnet.files import folder_images
from effnet.preprocessing import PreprocessConfig, normalize

from .runner import log

PHOTOS = ("coffee", "astronaut", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
          "colorwheel", "logo", "motorcycle_left")


@dataclass(frozen=True)
class Inputs:
    """The benchmark's images in the forms the engines take."""

    files: list[Path]  # JPEGs for the end-to-end row (and int8 calibration)
    crops: np.ndarray  # (N, S, S, 3) uint8 RGB centre crops of the first ten files
    x_norm: np.ndarray  # (1, 3, S, S) float32 normalised RGB of the first crop: PyTorch and ONNX input
    x_bgr: np.ndarray  # (1, 3, S, S) float32 BGR 0-255 of the first crop: the card's IR input

    @property
    def folder(self) -> Path:
        return self.files[0].parent


def prepare_inputs(config: PreprocessConfig, images: str | os.PathLike[str] | None, work: Path) -> Inputs:
    """The files in `images` (default: scikit-image's photos, written under `work`) and their crops."""
    files = folder_images(images, "--images") if images else make_photos(work / "photos")
    crops = np.stack([center_crop(load_image(f), config) for f in files[:10]])
    return Inputs(files, crops, normalize(crops[0], config)[None], bgr_nchw(crops[:1]))


def make_photos(folder: Path) -> list[Path]:
    """scikit-image's colour photos as JPEGs of camera-ish size (longer side 800 px, quality 90)."""
    import skimage.data as data
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name in PHOTOS:
        path = folder / f"{name}.jpg"
        if not path.exists():
            try:
                arr = getattr(data, name)()
            except Exception as exc:  # noqa: BLE001 - a photo the installed skimage lacks
                log(f"skipping photo {name}: {exc}")
                continue
            if arr.ndim != 3:
                continue
            im = Image.fromarray(np.asarray(arr[..., :3], dtype=np.uint8))
            scale = 800 / max(im.size)
            im = im.resize((round(im.width * scale), round(im.height * scale)), Image.Resampling.LANCZOS)
            im.save(path, quality=90)
        out.append(path)
    return out


def calibrated_weights_file(work: Path, model: str) -> Path:
    """Where the calibrated random weights of `model` are kept (B7's name predates the --model flag)."""
    return work / f"{model.removeprefix('efficientnet_')}-random-bn-calibrated.pth"


def calibrated_random_weights(random_init: ResolvedModel, crops: np.ndarray, path: Path) -> Path:
    """Seeded random weights with BatchNorm running statistics measured on real photo crops, so that
    activations have realistic ranges (what trained weights give) without downloading anything.

    Saved as a file, made once: the resolved model then has a real sha256, which keys the export and
    engine caches and names the weights in the reports.
    """
    if path.exists():
        return path
    import torch

    if not random_init.random_weights:
        raise ValueError("calibrated_random_weights starts from the random init (resolve(name, None))")
    log(f"making calibrated random {random_init.name} weights (one forward pass in train mode)")
    torch.manual_seed(0)
    model = random_init.create_model(input_size=random_init.input_size)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average: the stats of exactly this batch
    x = torch.from_numpy(np.stack([normalize(c, random_init.preprocess) for c in crops[:6]]))
    model.train()
    with torch.no_grad():
        model(x)
    model.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, path)
    return path
