"""Reader studies: what clinicians judged about the drafts, kept in one SQLite file.

A reader reviews a fixed worklist of studies (:func:`worklist`: a dataset split in R2Gen layout
or a folder of image files). Per draft they record either

- an **error review** (:class:`Judgment`): the ReXVal error counts (six error types, each
  clinically significant or insignificant), an overall acceptability, comments and their
  corrected report; or
- a **blinded comparison** (:class:`Comparison`): the draft and the dataset's own report shown
  side by side in a random left/right order (:meth:`ReaderStudy.draft_side`), and which one
  they found better, or "equal".

The file (:class:`ReaderStudy`) is in WAL mode with ``synchronous=FULL``: every save is one
transaction that is on disk when ``save_*`` returns, so a killed server loses nothing saved and
leaves nothing half-written, and several readers (threads or processes) may save at once. It
never holds pixels or DICOM fields: only study ids, the weights' name and revision, the
generation options, the draft text and the judgments. :mod:`rrg_core.reader_stats` exports it.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import random
import secrets
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .datasets import ANNOTATION_NAMES, load_split

# ReXVal (Yu et al., 2023): the six error types, each counted as clinically significant or not.
ERROR_TYPES: dict[str, str] = {
    "false_finding": "False report of a finding",
    "missed_finding": "Omission of a finding",
    "location": "Incorrect location or position of a finding",
    "severity": "Incorrect severity of a finding",
    "false_comparison": "Mention of a comparison that is not present",
    "missed_comparison": "Omission of a comparison describing a change from a previous study",
}
SIGNIFICANCE: tuple[str, ...] = ("significant", "insignificant")
ERROR_COLUMNS: tuple[str, ...] = tuple(f"{kind}_{level}" for kind in ERROR_TYPES for level in SIGNIFICANCE)
# Overall acceptability, best first; the first two count as "acceptable".
ACCEPTABILITY: dict[str, str] = {
    "accept": "Accept as is",
    "minor": "Minor edits",
    "major": "Major edits",
    "reject": "Reject",
}
ACCEPTABLE: tuple[str, ...] = ("accept", "minor")
SIDES: tuple[str, ...] = ("left", "right")
CHOICES: tuple[str, ...] = (*SIDES, "equal")
SCHEMA_VERSION = "1"
BUSY_TIMEOUT_S = 30.0  # a save waits this long for another reader's transaction


def default_path() -> Path:
    """Where a study is kept unless told otherwise: the user's data folder ($XDG_DATA_HOME)."""
    data_home = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return data_home / "rrg" / "reader-study.sqlite"


@dataclass(frozen=True)
class WorkItem:
    """One study of a worklist: its id, its image files (frontal first) and the dataset's report."""

    study_id: str
    image_paths: tuple[Path, ...]
    reference: str | None  # None for a folder of images: nothing to compare the draft with


def worklist(source: str | os.PathLike, split: str = "test", sample: int | None = None, seed: int = 0) -> list[WorkItem]:
    """The studies to review: a dataset split (a folder holding an annotation file in R2Gen layout)
    or every file of a folder of images, one study each (its id is the file's relative path).
    ``sample`` keeps that many, drawn with ``seed`` and kept in the source's order, so every reader
    of the same command sees the same studies. Raises ValueError / FileNotFoundError with a sentence."""
    root = Path(source)
    if not root.is_dir():
        raise FileNotFoundError(f"the review worklist {root} is not a folder")
    if any((root / name).is_file() for name in ANNOTATION_NAMES):
        items = [WorkItem(s.study_id, tuple(s.image_paths), s.report) for s in load_split(root, split)]
        where = f"the {split} split of {root}"
    else:
        files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
        items = [WorkItem(p.relative_to(root).as_posix(), (p,), None) for p in files]
        where = str(root)
    if not items:
        raise ValueError(f"{where} holds no studies to review")
    if sample is not None and sample < len(items):
        if sample < 1:
            raise ValueError(f"the review sample must hold at least one study; got {sample}")
        keep = sorted(random.Random(seed).sample(range(len(items)), sample))
        items = [items[i] for i in keep]
    return items


def weights_identity(folder: str | os.PathLike, spec: str | None) -> tuple[str, str]:
    """(name, revision) of the weights a study judges. A Hub snapshot is named by its repo and
    revised by its commit; a local folder by its name and the first 12 hex digits of the SHA-256
    of its model.safetensors, so retrained weights in the same folder count as other weights."""
    folder = Path(folder)
    if spec is not None and not Path(spec).is_dir():
        return spec.partition("@")[0], folder.name
    digest = hashlib.sha256()
    with open(folder / "model.safetensors", "rb") as weights:
        for block in iter(lambda: weights.read(1 << 20), b""):
            digest.update(block)
    return folder.resolve().name, digest.hexdigest()[:12]


@dataclass(frozen=True)
class Draft:
    """What was judged: a draft of one study by given weights with given generation options."""

    study_id: str
    weights: str
    revision: str
    options: dict[str, Any]  # e.g. beams, max_length, the reader's overrides
    text: str

    def key(self) -> tuple[str, str, str, str, str]:
        return self.study_id, self.weights, self.revision, json.dumps(self.options, sort_keys=True), self.text


@dataclass(frozen=True)
class Judgment:
    """A reader's error review of one draft."""

    reviewer: str
    acceptability: str  # a key of ACCEPTABILITY
    errors: dict[str, int] = field(default_factory=dict)  # ERROR_COLUMNS -> count; missing ones are 0
    comments: str = ""
    edited_report: str = ""

    def __post_init__(self) -> None:
        if self.acceptability not in ACCEPTABILITY:
            raise ValueError(f"acceptability must be one of {', '.join(ACCEPTABILITY)}; got {self.acceptability!r}")
        unknown = set(self.errors) - set(ERROR_COLUMNS)
        if unknown:
            raise ValueError(f"unknown error columns {sorted(unknown)}; the columns are {', '.join(ERROR_COLUMNS)}")
        for column, count in self.errors.items():
            if not isinstance(count, int) or isinstance(count, bool) or count < 0:
                raise ValueError(f"{column}: an error count is a whole number of at least 0; got {count!r}")

    def count(self, column: str) -> int:
        return self.errors.get(column, 0)


@dataclass(frozen=True)
class Comparison:
    """A reader's blinded choice between the draft and the dataset's report."""

    reviewer: str
    draft_side: str  # where the draft was shown: left | right (never shown to the reader)
    choice: str  # the side the reader found better, or "equal"
    comments: str = ""

    def __post_init__(self) -> None:
        if self.draft_side not in SIDES or self.choice not in CHOICES:
            raise ValueError(f"a comparison has a draft side in {SIDES} and a choice in {CHOICES}; "
                             f"got {self.draft_side!r}, {self.choice!r}")

    @property
    def preferred(self) -> str:
        """The choice unblinded: draft | reference | equal."""
        return "equal" if self.choice == "equal" else "draft" if self.choice == self.draft_side else "reference"


_ERROR_DDL = ",\n    ".join(f"{c} INTEGER NOT NULL CHECK ({c} >= 0)" for c in ERROR_COLUMNS)
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS drafts (
    id INTEGER PRIMARY KEY,
    study_id TEXT NOT NULL, weights TEXT NOT NULL, revision TEXT NOT NULL, options TEXT NOT NULL, draft TEXT NOT NULL,
    UNIQUE (study_id, weights, revision, options, draft)
);
CREATE TABLE IF NOT EXISTS judgments (
    draft_id INTEGER NOT NULL REFERENCES drafts (id),
    reviewer TEXT NOT NULL,
    {_ERROR_DDL},
    acceptability TEXT NOT NULL CHECK (acceptability IN ({", ".join(f"'{a}'" for a in ACCEPTABILITY)})),
    comments TEXT NOT NULL, edited_report TEXT NOT NULL, saved_at TEXT NOT NULL,
    PRIMARY KEY (draft_id, reviewer)
);
CREATE TABLE IF NOT EXISTS comparisons (
    draft_id INTEGER NOT NULL REFERENCES drafts (id),
    reviewer TEXT NOT NULL,
    draft_side TEXT NOT NULL CHECK (draft_side IN ('left', 'right')),
    choice TEXT NOT NULL CHECK (choice IN ('left', 'right', 'equal')),
    comments TEXT NOT NULL, saved_at TEXT NOT NULL,
    PRIMARY KEY (draft_id, reviewer)
);
"""
_DRAFT_COLUMNS = "d.study_id, d.weights, d.revision, d.options, d.draft"
TASKS = ("judgments", "comparisons")


class ReaderStudy:
    """One reader-study file. Every call opens its own connection, so an instance may be shared
    by threads, and other processes may use the same file at the same time."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._transaction() as db:
            for statement in filter(str.strip, _SCHEMA.split(";")):
                db.execute(statement)
            db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?), ('blinding_key', ?)",
                       (SCHEMA_VERSION, secrets.token_hex(32)))
        self._blinding_key = bytes.fromhex(self._meta("blinding_key"))

    def save_judgment(self, draft: Draft, judgment: Judgment) -> None:
        """Store (or replace) ``judgment.reviewer``'s error review of ``draft``: one durable transaction."""
        columns = ", ".join(ERROR_COLUMNS)
        values = [judgment.count(c) for c in ERROR_COLUMNS]
        with self._transaction() as db:
            draft_id = self._draft_id(db, draft)
            db.execute(
                f"INSERT OR REPLACE INTO judgments (draft_id, reviewer, {columns}, acceptability, comments, "
                f"edited_report, saved_at) VALUES ({', '.join('?' * (len(values) + 6))})",
                (draft_id, judgment.reviewer, *values, judgment.acceptability, judgment.comments,
                 judgment.edited_report, _now()),
            )

    def save_comparison(self, draft: Draft, comparison: Comparison) -> None:
        """Store (or replace) ``comparison.reviewer``'s blinded comparison of ``draft``."""
        with self._transaction() as db:
            draft_id = self._draft_id(db, draft)
            db.execute("INSERT OR REPLACE INTO comparisons VALUES (?, ?, ?, ?, ?, ?)",
                       (draft_id, comparison.reviewer, comparison.draft_side, comparison.choice, comparison.comments,
                        _now()))

    def judgment(self, draft: Draft, reviewer: str) -> Judgment | None:
        """The reviewer's saved error review of exactly this draft, if any."""
        row = self._saved("judgments", draft, reviewer)
        return None if row is None else _judgment(row)

    def comparison(self, draft: Draft, reviewer: str) -> Comparison | None:
        row = self._saved("comparisons", draft, reviewer)
        return None if row is None else Comparison(reviewer, row["draft_side"], row["choice"], row["comments"])

    def reviewed(self, task: str, reviewer: str, weights: str, revision: str) -> set[str]:
        """Study ids the reviewer has saved a ``task`` (judgments | comparisons) for with these weights."""
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}; got {task!r}")
        with self._connect() as db:
            rows = db.execute(f"SELECT DISTINCT d.study_id FROM {task} t JOIN drafts d ON d.id = t.draft_id "
                              "WHERE t.reviewer = ? AND d.weights = ? AND d.revision = ?", (reviewer, weights, revision))
            return {row[0] for row in rows}

    def draft_side(self, reviewer: str, study_id: str, weights: str, revision: str) -> str:
        """Where the draft goes in this reviewer's blinded comparison of the study: random (a keyed
        hash with this file's secret key), and the same every time the study is shown again."""
        message = "\0".join((reviewer, study_id, weights, revision)).encode()
        return SIDES[hmac.new(self._blinding_key, message, hashlib.sha256).digest()[0] & 1]

    def judgment_rows(self) -> list[dict[str, Any]]:
        """Every error review with its draft, oldest save first (for the export)."""
        return self._rows("judgments")

    def comparison_rows(self) -> list[dict[str, Any]]:
        """Every blinded comparison with its draft, unblinded (``preferred``)."""
        rows = self._rows("comparisons")
        for row in rows:
            row["preferred"] = Comparison(row["reviewer"], row["draft_side"], row["choice"]).preferred
        return rows

    def check(self) -> str:
        """SQLite's own integrity check plus the drafts every save refers to: "ok" when sound."""
        with self._connect() as db:
            integrity = db.execute("PRAGMA integrity_check").fetchone()[0]
            orphans = db.execute("PRAGMA foreign_key_check").fetchall()
        return integrity if integrity != "ok" or not orphans else f"{len(orphans)} saves refer to no draft"

    def _rows(self, task: str) -> list[dict[str, Any]]:
        with self._connect() as db:
            rows = db.execute(f"SELECT {_DRAFT_COLUMNS}, t.* FROM {task} t JOIN drafts d ON d.id = t.draft_id "
                              "ORDER BY t.saved_at, t.rowid").fetchall()
        return [{k: v for k, v in dict(row).items() if k != "draft_id"} for row in rows]

    def _saved(self, task: str, draft: Draft, reviewer: str) -> sqlite3.Row | None:
        with self._connect() as db:
            return db.execute(f"SELECT t.* FROM {task} t JOIN drafts d ON d.id = t.draft_id WHERE t.reviewer = ? AND "
                              "(d.study_id, d.weights, d.revision, d.options, d.draft) = (?, ?, ?, ?, ?)",
                              (reviewer, *draft.key())).fetchone()

    def _meta(self, key: str) -> str:
        with self._connect() as db:
            return db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()[0]

    @staticmethod
    def _draft_id(db: sqlite3.Connection, draft: Draft) -> int:
        db.execute("INSERT OR IGNORE INTO drafts (study_id, weights, revision, options, draft) VALUES (?, ?, ?, ?, ?)",
                   draft.key())
        return db.execute("SELECT id FROM drafts WHERE (study_id, weights, revision, options, draft) = (?, ?, ?, ?, ?)",
                          draft.key()).fetchone()[0]

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)  # transactions by hand
        try:
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode = WAL")  # readers never block the writer, nor it them
            db.execute("PRAGMA synchronous = FULL")  # a commit is on disk before it returns
            db.execute("PRAGMA foreign_keys = ON")
            yield db
        finally:
            db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, rolled back on any error: all of a save or none of it."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")  # take the write lock now: no deadlock between two savers
            try:
                yield db
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")


def _judgment(row: sqlite3.Row) -> Judgment:
    return Judgment(row["reviewer"], row["acceptability"], {c: row[c] for c in ERROR_COLUMNS}, row["comments"],
                    row["edited_report"])


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")
