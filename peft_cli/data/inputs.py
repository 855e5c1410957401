"""Unlabeled text to predict on: a TSV (header row) or JSONL file, or stdin, read into the same
canonical examples as the GLUE reader ({"idx", "text_a", "text_b", "label"}; label is a dummy 0).

Columns are named as the task's config names them (conf/task/*.yaml): a pair task accepts
`sentence1`/`sentence2` (RTE), `question1`/`question2` (QQP), `premise`/`hypothesis` (MNLI on the
hub), `#1 String`/`#2 String` (MRPC) or plainly `text_a`/`text_b`. An `index` (or `idx`, `id`)
column, when present, names each row in the output; otherwise rows are numbered from 0.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

from peft_cli.core.config import TaskConfig
from peft_cli.core.errors import UserError
from peft_cli.data.glue import Example

TEXT_FIELDS = ("text_a", "text_b")
INDEX_COLUMNS = ["index", "idx", "id"]


def text_columns(task: TaskConfig) -> dict[str, list[str]]:
    """Text field -> the column names that may hold it, as the task's config spells them."""
    out = {}
    for f in TEXT_FIELDS:
        names = [task.hub.columns.get(f), task.tsv.columns.get(f), f]
        if f in task.hub.columns or f in task.tsv.columns:
            out[f] = list(dict.fromkeys(n for n in names if isinstance(n, str)))
    return out


def read_source(source: str) -> tuple[str, str]:
    """(text, name for messages) of a file path or '-' (stdin)."""
    if source == "-":
        return sys.stdin.read(), "<stdin>"
    path = Path(source)
    if not path.is_file():
        raise UserError(f"input file not found: {path}")
    try:
        return path.read_text(encoding="utf-8-sig"), str(path)
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text ({e})") from None


def read_examples(
    text: str, name: str, columns: dict[str, list[str]], index: list[str] | None = None, jsonl: bool | None = None
) -> list[Example]:
    """Rows of a TSV (header row, GLUE quoting: none) or JSONL text -> canonical examples.
    `columns`: field -> accepted names (first found wins); `index`: accepted names of the index column.
    `jsonl=None`: JSONL if `name` ends in .jsonl/.json or the text starts with '{'."""
    if not text.strip():
        raise UserError(f"{name} is empty: expected a header row (or JSON lines) and at least one example")
    if jsonl is None:
        jsonl = name.endswith((".jsonl", ".json")) or text.lstrip().startswith("{")
    header, rows = _jsonl(text, name) if jsonl else _tsv(text, name)
    if not rows:
        raise UserError(f"{name} has no examples, only a header")
    where = {f: _pick(header, names, f, name) for f, names in columns.items()}
    at = next((c for c in (index or INDEX_COLUMNS) if c in header), None)
    if index and at is None:
        raise UserError(f"{name} has no '{index[0]}' column; found: {', '.join(header)}")
    out = []
    for i, (line, row) in enumerate(rows):
        texts = {}
        for f, col in where.items():
            value = row.get(col)
            if value is None:
                raise UserError(f"{name}:{line}: no '{col}' in this row")
            if not isinstance(value, str):
                raise UserError(f"{name}:{line}: '{col}' must be a string, got {value!r}")
            texts[f] = value
        idx = row.get(at, i) if at else i
        out.append({"idx": idx, "text_a": texts["text_a"], "text_b": texts.get("text_b"), "label": 0})
    return out


def _pick(header: list[str], names: list[str], field: str, name: str) -> str:
    for n in names:
        if n in header:
            return n
    found = ", ".join(header) or "none"
    raise UserError(f"{name} has no column for {field}: name it {' or '.join(repr(n) for n in names)} (found: {found})")


def _tsv(text: str, name: str) -> tuple[list[str], list[tuple[int, dict]]]:
    try:
        table = list(csv.reader(io.StringIO(text), delimiter="\t", quoting=csv.QUOTE_NONE))
    except csv.Error as e:
        raise UserError(f"{name}: not a tab-separated file ({e})") from None
    header, body = table[0], table[1:]
    rows = []
    for i, row in enumerate(body):
        if not row:
            continue
        if len(row) != len(header):
            raise UserError(f"{name}:{i + 2}: row has {len(row)} tab-separated columns, the header has {len(header)}")
        rows.append((i + 2, dict(zip(header, row, strict=True))))
    return header, rows


def _jsonl(text: str, name: str) -> tuple[list[str], list[tuple[int, dict]]]:
    rows = []
    header: dict[str, None] = {}
    for i, line in enumerate(text.splitlines()):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{name}:{i + 1}: not a JSON line ({e.msg})") from None
        if not isinstance(record, dict):
            raise UserError(f"{name}:{i + 1}: expected a JSON object with the text columns")
        header.update(dict.fromkeys(record))
        rows.append((i + 1, record))
    return list(header), rows
