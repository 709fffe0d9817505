"""`effnet classify`: files and folders in, top-k predictions out (text or JSON lines)."""
from __future__ import annotations

import argparse
import json

from ..contract import weights_id
from ..errors import EffnetError
from ..filenames import escape_name, json_name, utf8_text
from .options import (
    TerminalProgress,
    before_engine,
    decode_option,
    engine_choice,
    engine_options,
    model_option,
    notice,
    positive_int,
    render,
    weights_option,
)


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("classify", help="classify images (files or folders)",
                       description="Classify images with an ImageNet-1k EfficientNet (B7, the card's model, by default). "
                                   "A folder stands for the images under it: every format Pillow reads, hidden "
                                   "entries (names starting with '.') left out; entries that cannot be read are "
                                   "reported as skipped.")
    model_option(p)
    weights_option(p)
    p.add_argument("--top", type=positive_int, default=5, metavar="K",
                   help="predictions per image (default 5; more than the 1000 classes shows all of them)")
    p.add_argument("--json", action="store_true",
                   help="one JSON object per line, with the model, weights, backend, precision and device in each")
    p.add_argument("--batch-size", type=positive_int, default=None, metavar="N",
                   help="images per engine call (default 8 on CPUs, 64 on GPUs)")
    engine_options(p)
    decode_option(p)
    p.add_argument("--max-pixels", type=positive_int, default=None, metavar="N",
                   help="refuse images whose header claims more than N pixels, before decoding "
                        "(default: Pillow's own refusal threshold, about 179 million)")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders of images")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..classifier import Classifier
    from ..contract import num_classes
    from ..files import expand_inputs

    listing = expand_inputs(args.paths)
    for skipped in listing.skipped:  # before the model loads: a person sees at once what will be missing
        notice(f"skipped {escape_name(skipped.path)}: {skipped.reason}")
    files = listing.files
    if not files:
        extra = f" ({len(listing.skipped)} entries skipped)" if listing.skipped else ""
        raise EffnetError(f"no images found in {' '.join(map(escape_name, args.paths))}{extra}")
    top = clamp_top(args.top, num_classes())
    engine = engine_choice(args, batch_size=args.batch_size)
    before_engine(args.model, args.weights, engine)
    classifier = Classifier(args.model, args.weights, backend=engine, batch_size=args.batch_size,
                            max_pixels=args.max_pixels, decode=args.decode)
    fields = output_fields(classifier.describe())
    failed = 0
    with TerminalProgress() as bar:
        bar.start(len(files))
        if not args.json:
            bar.line(header(fields))
        for outcome in classifier.classify_iter(files, top=top):
            bar.advance()
            if outcome.failure is not None:
                failed += 1
                if args.json:
                    error = utf8_text(render(outcome.failure))
                    bar.line(json.dumps({"image": json_name(outcome.source), "error": error, **fields}))
                else:
                    notice(render(outcome.failure))
            elif args.json:
                ranked = [{"index": p.index, "label": p.label, "prob": round(p.probability, 6)}
                          for p in outcome.predictions]
                bar.line(json.dumps({"image": json_name(outcome.source), "top": ranked, **fields}))
            else:
                bar.line("\n".join([escape_name(outcome.source)] + [
                    f"  {rank:>2}. {p.label:<32} {100 * p.probability:6.2f}%  (class {p.index})"
                    for rank, p in enumerate(outcome.predictions, 1)]))
    return summarize(failed, len(files), len(listing.skipped))


def clamp_top(top: int, classes: int) -> int:
    """`--top` beyond the class count shows every class, with a note (not an error: the intent is clear)."""
    if top <= classes:
        return top
    notice(f"--top {top} is more than the {classes} classes; showing all {classes}")
    return classes


def output_fields(described: dict) -> dict:
    """What every result line carries: model, weights, engine, precision, device (and the GPU, where one)."""
    keys = ("model", "weights_sha256", "backend", "precision", "device", "gpu")
    return {k: described[k] for k in keys if k in described}


def header(fields: dict) -> str:
    """The first line of text output: which model, weights, engine, precision and device produced the results."""
    where = fields["device"] + (f" ({fields['gpu']})" if "gpu" in fields else "")
    return (f"# {fields['model']}, weights {weights_id(fields['weights_sha256'])}, "
            f"{fields['backend']} {fields['precision']} on {where}")


def summarize(failed: int, total: int, skipped: int) -> int:
    """The closing line on stderr when something went wrong, and the exit status: 1 if anything did."""
    if not failed and not skipped:
        return 0
    parts = [f"{failed} of {total} images could not be classified"] if failed else [f"{total} images classified"]
    if skipped:
        parts.append(f"{skipped} folder entries skipped")
    notice("; ".join(parts))
    return 1
