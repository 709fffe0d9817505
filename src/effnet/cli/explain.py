"""`effnet explain`: Grad-CAM overlays, one PNG per image (and per class with --top), written to a folder."""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from ..errors import EffnetError
from ..filenames import escape_name, json_name, utf8_text
from .options import model_option, notice, positive_int, render, usage_mistakes, weights_option


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("explain", help="where the model looked: Grad-CAM overlays written as PNG files",
                       description="Grad-CAM on the last feature map, computed with the PyTorch model: for each "
                                   "image, a PNG of the photo with the heatmap of a class blended over it (the "
                                   "top-1 class unless --class or --top is given).")
    model_option(p)
    weights_option(p)
    target = p.add_mutually_exclusive_group()
    target.add_argument("--class", dest="target", metavar="K|LABEL",
                        help="explain this class (an index 0-999 or an ImageNet label such as espresso)")
    target.add_argument("--top", type=positive_int, default=1, metavar="K",
                        help="explain each of the K most likely classes (default 1)")
    p.add_argument("--device", default="auto", metavar="auto|cpu|cuda|cuda:N",
                   help="where the gradients are computed (default auto: the first NVIDIA GPU when PyTorch sees one)")
    p.add_argument("--output", required=True, metavar="DIR", help="folder the PNG overlays are written to")
    p.add_argument("--json", action="store_true", help="one JSON object per image and class")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..classifier import Classifier
    from ..engines import EngineOptions, resolve_engine
    from ..explain import resolve_target

    # A bad --class or --device is a usage mistake, refused before any work or any folder is made.
    with usage_mistakes(EffnetError):
        target = resolve_target(args.target)
        # Gradients in fp32 (the card's original model), on the GPU where there is one; no compiled graphs.
        engine = resolve_engine("torch", "fp32", device=args.device, options=EngineOptions(compile=False))
    output = Path(args.output)
    if output.exists() and not output.is_dir():
        raise EffnetError(f"--output {escape_name(output)} is a file; give a folder")
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EffnetError(f"cannot create --output {escape_name(output)}: {exc.strerror or exc}") from exc
    classifier = Classifier(args.model, args.weights, backend=engine)
    notice(f"explaining with {classifier.name} on PyTorch, {engine.device} (B7 takes a few seconds per image "
           f"on a CPU)")
    used: set[str] = set()
    failed = 0
    for image in args.images:
        try:
            explanations = (classifier.explain_top(image, args.top) if target is None
                            else [classifier.explain(image, target)])
        except EffnetError as exc:
            failed += 1
            _report(args.json, {"image": json_name(image), "error": utf8_text(render(exc))}, f"effnet: {render(exc)}")
            continue
        for explanation in explanations:
            path = output / _file_name(Path(image).stem, explanation.index, explanation.label, used)
            try:
                explanation.overlay.save(path)
            except OSError as exc:
                raise EffnetError(f"cannot write {escape_name(path)}: {exc.strerror or exc}") from exc
            _report(args.json, {"image": json_name(image), "index": explanation.index, "label": explanation.label,
                                "prob": round(explanation.probability, 6), "file": json_name(path)},
                    f"{escape_name(image)}: {explanation.label} ({100 * explanation.probability:.2f}%, class "
                    f"{explanation.index}) -> {escape_name(path)}")
    if failed:
        print(f"effnet: {failed} of {len(args.images)} images could not be explained", file=sys.stderr)
    return 1 if failed else 0


def _report(as_json: bool, record: dict, text: str) -> None:
    if as_json:
        print(json.dumps(record), flush=True)
    elif "error" in record:
        print(text, file=sys.stderr, flush=True)
    else:
        print(text, flush=True)


def _file_name(stem: str, index: int, label: str, used: set[str]) -> str:
    """<stem>.<index>-<label>.png, unique within this run (two inputs may share a stem)."""
    slug = re.sub(r"[^A-Za-z0-9]+", "_", label).strip("_").lower()
    name, n = f"{stem}.{index}-{slug}.png", 1
    while name in used:
        n += 1
        name = f"{stem}-{n}.{index}-{slug}.png"
    used.add(name)
    return name

