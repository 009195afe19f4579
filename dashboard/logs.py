"""Reading the tail of a stage's log file while the worker still writes it.

Two modes: the last N lines (first view) and "bytes from offset B" (incremental polling). Both
read a bounded amount, so a multi-GB log never loads into memory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

MAX_CHUNK = 256 * 1024


@dataclass
class LogChunk:
    text: str
    offset: int  # where ``text`` starts in the file
    next_offset: int  # pass back as ?offset= to continue
    size: int  # file size when read
    exists: bool = True


def _decode(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


def tail_lines(path: Path | None, lines: int) -> LogChunk:
    if path is None or not path.is_file():
        return LogChunk("", 0, 0, 0, exists=False)
    with path.open("rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        start, block, data = size, 8192, b""
        while start > 0 and data.count(b"\n") <= lines and size - start < MAX_CHUNK:
            step = min(block, start)
            start -= step
            fh.seek(start)
            data = fh.read(step) + data
        parts = data.split(b"\n")
        if start > 0:  # the first piece is probably a partial line
            start += len(parts[0]) + 1
            parts = parts[1:]
        trailing_newline = data.endswith(b"\n")
        if trailing_newline:
            parts = parts[:-1]
        kept = parts[-lines:] if lines else []
        skipped = sum(len(p) + 1 for p in parts[: len(parts) - len(kept)])
        text = b"\n".join(kept) + (b"\n" if trailing_newline and kept else b"")
        return LogChunk(_decode(text), start + skipped, size, size)


def read_from(path: Path | None, offset: int) -> LogChunk:
    if path is None or not path.is_file():
        return LogChunk("", offset, offset, 0, exists=False)
    with path.open("rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if offset > size:  # the file was truncated/rotated: start again
            offset = 0
        fh.seek(offset)
        data = fh.read(min(MAX_CHUNK, size - offset))
        # never split a UTF-8 character or a line: stop after the last complete line
        if offset + len(data) < size or not data.endswith(b"\n"):
            cut = data.rfind(b"\n")
            if cut >= 0 and offset + len(data) < size:
                data = data[: cut + 1]
        return LogChunk(_decode(data), offset, offset + len(data), size)
