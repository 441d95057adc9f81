"""Labeled text rows from CSV/TSV and JSON-lines files: (text, raw label or None, line number).

A missing, null or empty label means unlabeled; `data.classification.load_files` turns rows into label ids.
"""

from __future__ import annotations

import csv
import json
import pathlib

from jaxtextgan.errors import InputError

Row = tuple[str, str | None, int]  # text, raw label (None when missing or empty), line number


def _label_text(value) -> str | None:
  if value is None:
    return None
  if isinstance(value, bool) or not isinstance(value, (str, int, float)):
    return str(value)
  if isinstance(value, float) and value.is_integer():
    value = int(value)
  text = str(value).strip()
  return text or None


def read_csv(path, *, text_column: str = "text", label_column: str | None = "label",
             delimiter: str | None = None) -> list[Row]:
  """Rows of a CSV/TSV file with a header; the delimiter defaults to tab for .tsv and comma otherwise."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise InputError(f"data file {path} does not exist: check the path")
  if delimiter is None:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
  rows: list[Row] = []
  with open(path, encoding="utf-8-sig", newline="") as f:
    reader = csv.reader(f, delimiter=delimiter)
    header = next(reader, None)
    if header is None:
      raise InputError(f"{path} is empty: it needs a header line naming the {text_column!r} column")
    header = [h.strip() for h in header]
    if text_column not in header:
      raise InputError(f"{path} has no column {text_column!r} (columns: {header}): set text_column")
    text_at = header.index(text_column)
    label_at = header.index(label_column) if label_column in header else None
    if label_column is not None and label_at is None:
      raise InputError(f"{path} has no column {label_column!r} (columns: {header}): set label_column")
    end = reader.line_num
    for fields in reader:
      # A quoted field may span lines: report the line where the record starts.
      start, end = end + 1, reader.line_num
      if not fields or (len(fields) == 1 and not fields[0].strip()):
        continue
      if len(fields) != len(header):
        raise InputError(f"{path} line {start} has {len(fields)} fields, the header has {len(header)}: "
                         f"quote fields that contain the delimiter")
      label = _label_text(fields[label_at]) if label_at is not None else None
      rows.append((fields[text_at], label, start))
  return rows


def read_jsonl(path, *, text_column: str = "text", label_column: str | None = "label") -> list[Row]:
  """Rows of a JSON-lines file, one object per line; a missing, null or empty label means unlabeled."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise InputError(f"data file {path} does not exist: check the path")
  rows: list[Row] = []
  with open(path, encoding="utf-8-sig") as f:
    for number, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise InputError(f"{path} line {number} is not valid JSON ({e.msg}): write one JSON object per line") from None
      if not isinstance(record, dict):
        raise InputError(f"{path} line {number} is a JSON {type(record).__name__}, not an object: write one "
                         f"object per line")
      text = record.get(text_column)
      if not isinstance(text, str):
        raise InputError(f"{path} line {number} has no string field {text_column!r}: set text_column")
      label = _label_text(record.get(label_column)) if label_column is not None else None
      rows.append((text, label, number))
  return rows


def read_rows(path, *, text_column: str = "text", label_column: str | None = "label") -> list[Row]:
  """CSV/TSV or JSONL by file extension (.jsonl/.json/.ndjson are JSON lines)."""
  if pathlib.Path(path).suffix.lower() in (".jsonl", ".json", ".ndjson"):
    return read_jsonl(path, text_column=text_column, label_column=label_column)
  return read_csv(path, text_column=text_column, label_column=label_column)
