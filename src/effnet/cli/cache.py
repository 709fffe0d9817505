"""`effnet cache`: what the cache holds (table or JSON), `remove NAME...`, `prune --max-size SIZE`."""
from __future__ import annotations

import argparse
import json
import time

from ..filenames import escape_name, json_name
from .options import emit, notice


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cache", help="list, remove or prune what effnet's cache holds",
                       description="effnet's cache ($EFFNET_HOME): weights files, exported models, OpenVINO's "
                                   "compiled blobs, eval runs and the digest memo, with their sizes. Without an "
                                   "action it lists them.")
    p.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    listing = actions.add_parser("list", help="list the entries (the default)")
    remove = actions.add_parser("remove", help="remove entries by the names `effnet cache` lists")
    remove.add_argument("names", nargs="+", metavar="NAME")
    prune = actions.add_parser("prune", help="remove least-recently-used exports, blobs and eval runs "
                                             "until the cache is at most --max-size")
    prune.add_argument("--max-size", required=True, type=_size, metavar="SIZE",
                       help="e.g. 1G, 500M (binary units) or bytes; 0 removes every derived entry")
    prune.add_argument("--include-weights", action="store_true",
                       help="also remove weights files (official, rejected, partial downloads) if still over, "
                            "least recently used first")
    prune.add_argument("--dry-run", action="store_true", help="say what would be removed, remove nothing")
    for action in (listing, remove, prune):
        action.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                            help="one JSON object instead of text")
    p.set_defaults(run=run)


def _size(text: str) -> int:
    from ..cache_contents import parse_size

    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def run(args: argparse.Namespace) -> int:
    from ..cache_contents import WEIGHT_KINDS, cache_entries, prune, remove_entries
    from ..cache_layout import cache_dir

    root = cache_dir()
    if args.action == "remove":
        removed = remove_entries(args.names)
        if args.json:
            emit(json.dumps({"root": json_name(root), "removed": [_json(e) for e in removed]}))
        else:
            for entry in removed:
                emit(f"removed {escape_name(entry.name)} ({_human(entry.size)})")
        return 0
    if args.action == "prune":
        result = prune(args.max_size, include_weights=args.include_weights, dry_run=args.dry_run)
        verb = "would remove" if args.dry_run else "removed"
        if args.json:
            emit(json.dumps({"root": json_name(root), "dry_run": args.dry_run, "max_size": result.max_size,
                             "size_before": result.size_before, "size_after": result.size_after,
                             "removed": [_json(e) for e in result.removed]}))
        else:
            for entry in result.removed:
                emit(f"{verb} {escape_name(entry.name)} ({_human(entry.size)}, last used {_when(entry.last_used)})")
            emit(f"cache {escape_name(root)}: {_human(result.size_before)} -> {_human(result.size_after)} "
                 f"(max {_human(result.max_size)})")
        if result.size_after > result.max_size:
            weights = any(e.kind in WEIGHT_KINDS for e in result.protected)
            hint = " add --include-weights to remove weights files too," if weights and not args.include_weights else ""
            rest = ", ".join(escape_name(e.name) for e in result.protected[:3])
            notice(f"still over {_human(result.max_size)}:{hint} the rest is "
                   f"{rest}{', ...' if len(result.protected) > 3 else ''}")
        return 0
    entries = cache_entries()
    if args.json:
        emit(json.dumps({"root": json_name(root), "total": sum(e.size for e in entries),
                         "entries": [_json(e) for e in entries]}))
        return 0
    if not entries:
        emit(f"the cache {escape_name(root)} is empty")
        return 0
    emit(_table(entries))
    emit(f"{len(entries)} entries, {_human(sum(e.size for e in entries))} in {escape_name(root)}")
    return 0


def _table(entries) -> str:
    rows = [("NAME", "KIND", "SIZE", "LAST USED", "DETAIL")]
    rows += [(escape_name(e.name), e.kind, _human(e.size), _when(e.last_used), e.detail) for e in entries]
    w = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join(f"{r[0]:<{w[0]}}  {r[1]:<{w[1]}}  {r[2]:>{w[2]}}  {r[3]:<{w[3]}}  {r[4]}".rstrip() for r in rows)


def _json(entry) -> dict:
    """An entry as --json writes it: its name escaped as every file name is (README, Command line)."""
    return {**entry.to_json(), "name": json_name(entry.name)}


def _human(size: int) -> str:
    from ..cache_contents import format_size

    return format_size(size)


def _when(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(timestamp))
