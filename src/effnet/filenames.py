"""How a file name is written in effnet's results and messages: on one line, and so that it maps back to
the file. A file name may hold any byte but '/' and NUL: a newline would split a result line or a one-line
error, and bytes that are not UTF-8 cannot go into JSON, whose text is Unicode.

The escaping, as `ls --quoting-style=escape` and C do it, over the name's bytes: a backslash is written
`\\\\`; a newline, tab and carriage return `\\n`, `\\t`, `\\r`; every other control character (C0, DEL, C1)
and the Unicode line and paragraph separators as their UTF-8 bytes, `\\xHH` each. Bytes that are not UTF-8
stay as they are in text output (written back as the bytes they were, as `ls` does) and are written
`\\xHH` where the output must be UTF-8 (JSON lines). Python's `codecs.escape_decode`, or bash's
`printf '%b'`, gives the name's bytes back.
"""
from __future__ import annotations

import os
import re

# What escape_name rewrites: a backslash, the control characters (Cc), U+2028/U+2029 (which split lines
# for str.splitlines and JavaScript), and os.fsdecode's stand-ins for bytes that are not UTF-8.
_SPECIAL = re.compile("[\\\\\x00-\x1f\x7f-\x9f\u2028\u2029\udc80-\udcff]")
_SHORT = {"\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r"}
_NOT_UTF8 = re.compile("[\udc80-\udcff]")


def escape_name(name: str | bytes | os.PathLike) -> str:
    """`name` as effnet writes it: one line, backslash escapes for what would break it (see the module's
    docstring). A name with none of those characters is returned unchanged."""
    text = os.fsdecode(name)
    if not _SPECIAL.search(text):
        return text
    return _SPECIAL.sub(_escape, text)


def utf8_text(text: str) -> str:
    """`text` with each byte that is not UTF-8 (a surrogate from os.fsdecode) written `\\xHH`: for outputs
    that must be UTF-8, such as JSON, where such a byte would come out as a lone surrogate."""
    return _NOT_UTF8.sub(lambda m: f"\\x{ord(m.group()) - 0xDC00:02x}", text)


def json_name(name: str | bytes | os.PathLike) -> str:
    """`name` as `--json` writes it: escaped, and UTF-8 throughout."""
    return utf8_text(escape_name(name))


def _escape(match: re.Match[str]) -> str:
    ch = match.group()
    if ch in _SHORT:
        return _SHORT[ch]
    if "\udc80" <= ch <= "\udcff":
        return ch  # a byte that is not UTF-8: the stream writes it back as that byte (surrogateescape)
    return "".join(f"\\x{byte:02x}" for byte in ch.encode("utf-8"))
