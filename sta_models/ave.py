"""AVE annotations and splits (SPEC §1).

Real annotation files are messy, so reading never crashes on a bad row: each bad row becomes a
:class:`Problem` (file, line, reason) and the rest are used. A sample is a *row*: one video id may
carry several categories, and :attr:`AnnotationRow.key` names a row uniquely.

Split choices where the SPEC is silent: with ``trainSet.txt`` present, a missing ``valSet.txt`` is
carved out of the training videos (seeded) and a missing ``testSet.txt`` takes the annotated
videos that no split file names. With no split files at all, videos are split by id, stratified
by category and seeded, so one video never lands in two splits.
"""

from __future__ import annotations

import os
import random
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

CATEGORIES: tuple[str, ...] = (
    "Church bell", "Male speech, man speaking", "Bark", "Fixed-wing aircraft, airplane",
    "Race car, auto racing", "Female speech, woman speaking", "Helicopter", "Violin, fiddle", "Flute",
    "Ukulele", "Frying (food)", "Truck", "Shofar", "Motorcycle", "Acoustic guitar", "Train horn", "Clock",
    "Banjo", "Goat", "Baby cry, infant cry", "Bus", "Chainsaw", "Cat", "Horse", "Toilet flush",
    "Rodents, rats, mice", "Accordion", "Mandolin",
)
CATEGORY_ID: dict[str, int] = {name: i for i, name in enumerate(CATEGORIES)}
SPLIT_FILES = {"train": "trainSet.txt", "val": "valSet.txt", "test": "testSet.txt"}


@dataclass(frozen=True)
class AnnotationRow:
    """One annotated event: ``category`` sounds in ``video_id`` during seconds ``start <= k < end``."""

    category: str
    category_id: int
    video_id: str
    start: int
    end: int
    line: int

    @property
    def key(self) -> str:
        return f"{self.video_id}.c{self.category_id:02d}"

    @property
    def seconds(self) -> range:
        return range(self.start, self.end)


@dataclass(frozen=True)
class Problem:
    """A row that was skipped, and why."""

    path: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


MAX_EVENT_END_S = 3600  # AVE clips last 10 s; a time past an hour is a typo, and would make stages loop for ever


def _int(text: str) -> int | None:
    text = text.strip()
    return int(text) if text.isascii() and text.isdigit() else None  # "²".isdigit() is True too


def read_annotations(path: str | Path) -> tuple[list[AnnotationRow], list[Problem]]:
    """Rows of an AVE annotation (or split) file and the problems met; see SPEC §1 for the rules."""
    path = Path(path)
    rows: list[AnnotationRow] = []
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    text = path.read_bytes().decode("utf-8-sig", errors="replace")
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        if number == 1 and line.startswith("Category"):
            continue
        parts = line.split("&")
        if len(parts) != 5:
            problems.append(Problem(str(path), number, f"expected 5 '&'-separated fields, got {len(parts)}"))
            continue
        category, video_id, _quality, start_text, end_text = (p.strip() for p in parts)
        if category not in CATEGORY_ID:
            problems.append(Problem(str(path), number, f"unknown category {category!r}"))
            continue
        if not video_id:
            problems.append(Problem(str(path), number, "empty video id"))
            continue
        start, end = _int(start_text), _int(end_text)
        if start is None or end is None:
            problems.append(Problem(str(path), number, f"malformed times {start_text!r}, {end_text!r}"))
            continue
        if end <= start:
            problems.append(Problem(str(path), number, f"zero-length event ({start}-{end}), skipped"))
            continue
        if end > MAX_EVENT_END_S:
            problems.append(Problem(str(path), number, f"event end {end} s is beyond the {MAX_EVENT_END_S} s "
                                    "maximum, skipped"))
            continue
        row = AnnotationRow(category, CATEGORY_ID[category], video_id, start, end, number)
        if row.key in seen:
            problems.append(Problem(str(path), number, f"duplicate of line {seen[row.key]} ({row.key})"))
            continue
        seen[row.key] = number
        rows.append(row)
    return rows, problems


@dataclass
class AveDataset:
    """Rows per split of one AVE-layout root; ``problems`` lists everything skipped."""

    root: Path
    train: list[AnnotationRow]
    val: list[AnnotationRow]
    test: list[AnnotationRow]
    problems: list[Problem] = field(default_factory=list)
    _split_by_key: dict[str, str] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._split_by_key = {r.key: name for name in ("train", "val", "test") for r in getattr(self, name)}

    @property
    def rows(self) -> list[AnnotationRow]:
        return [*self.train, *self.val, *self.test]

    def video_path(self, video_id: str) -> Path:
        return self.root / "AVE" / f"{video_id}.mp4"

    def split_of(self, row: AnnotationRow) -> str:
        """``"train"``, ``"val"`` or ``"test"``; KeyError for a row not in this dataset."""
        return self._split_by_key[row.key]


def _seeded_split(rows: list[AnnotationRow], seed: int, fractions: dict[str, float]) -> dict[str, list[AnnotationRow]]:
    """Split by video id, stratified by each video's first category, deterministic for a seed."""
    by_category: dict[int, list[str]] = defaultdict(list)
    first: dict[str, int] = {}
    for r in rows:
        if r.video_id not in first:
            first[r.video_id] = r.category_id
            by_category[r.category_id].append(r.video_id)
    rng = random.Random(seed)
    assign: dict[str, str] = {}
    for cat in sorted(by_category):
        ids = sorted(by_category[cat])
        rng.shuffle(ids)
        pos = 0
        for name, frac in fractions.items():
            n = round(frac * len(ids))
            if frac > 0 and n == 0 and len(ids) - pos > 1:
                n = 1
            for vid in ids[pos : pos + n]:
                assign[vid] = name
            pos += n
        for vid in ids[pos:]:
            assign[vid] = "train"
    out: dict[str, list[AnnotationRow]] = {"train": [], "val": [], "test": []}
    for r in rows:
        out[assign[r.video_id]].append(r)
    return out


def load_dataset(root: str | Path, seed: int = 0, val_fraction: float = 0.1, test_fraction: float = 0.1) -> AveDataset:
    """Read ``root``'s annotations and splits; rows whose video is missing are reported and dropped."""
    root = Path(root)
    problems: list[Problem] = []
    annotations = root / "Annotations.txt"
    all_rows: list[AnnotationRow] = []
    if annotations.exists():
        all_rows, found = read_annotations(annotations)
        problems += found
    present = {name: root / f for name, f in SPLIT_FILES.items() if (root / f).exists()}
    if not annotations.exists() and not present:
        raise FileNotFoundError(f"{root}: neither Annotations.txt nor split files found")
    if "train" in present:
        splits: dict[str, list[AnnotationRow]] = {}
        for name, path in present.items():
            splits[name], found = read_annotations(path)
            problems += found
        if "val" not in splits:
            carved = _seeded_split(splits["train"], seed, {"val": val_fraction})
            splits["train"], splits["val"] = carved["train"], carved["val"]
        if "test" not in splits:
            named = {r.video_id for rows in splits.values() for r in rows}
            splits["test"] = [r for r in all_rows if r.video_id not in named]
    else:
        splits = _seeded_split(all_rows, seed, {"val": val_fraction, "test": test_fraction})
    videos = root / "AVE"
    available = {n[:-4] for n in os.listdir(videos) if n.endswith(".mp4")} if videos.is_dir() else set()
    taken: dict[str, str] = {}
    kept: dict[str, list[AnnotationRow]] = {}
    for name in ("train", "val", "test"):
        kept[name] = []
        for r in splits.get(name, []):
            where = f"{SPLIT_FILES[name] if name in present else 'Annotations.txt'}"
            if r.video_id not in available:
                problems.append(Problem(str(root / where), r.line, f"missing video AVE/{r.video_id}.mp4"))
            elif r.key in taken:
                problems.append(Problem(str(root / where), r.line, f"{r.key} already in the {taken[r.key]} split"))
            else:
                taken[r.key] = name
                kept[name].append(r)
    return AveDataset(root=root, train=kept["train"], val=kept["val"], test=kept["test"], problems=problems)
