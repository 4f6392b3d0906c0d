"""Tabular data from CSV: one row per sample, a header row, one label column, every other column a feature.

``path`` is one ``.csv`` file, split into train and test by ``test_fraction`` (stratified per class,
seeded), or a folder holding ``train.csv`` and ``test.csv`` with the same columns. The label column is
``label_column`` (a column name, or a 0-based position; -1 is the last), else the one column named
``label``, ``class`` or ``target`` (any case), else the last column. Labels that are all integers are the
class indices; any other labels are text, mapped to classes in sorted order (docs/data.md#labels).
Features are returned as float32 ``(N, F)`` static features (docs/data.md#csv).
"""

from __future__ import annotations

import csv
import math
import os
from array import array
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sbnn.data import DataError, Dataset
from sbnn.data.user_arrays import user_dataset

CSV_FORMAT = "a CSV with a header row, one label column and numeric feature columns (docs/data.md#csv)"
LABEL_NAMES = ("label", "class", "target")
MAX_CSV_BYTES = 1 << 30   # larger tables: a folder of .npy files, which is memory-mapped
DEFAULT_TEST_FRACTION = 0.2


@dataclass
class _Table:
    """One CSV file read: its column names, the label column's index, features ``(N, F)`` and label cells."""

    file: Path
    header: list[str]
    label: int
    features: np.ndarray
    labels: list[str]


def _label_index(file: Path, header: list[str], label_column: str | int | None) -> int:
    """The label column's position (see the module docstring)."""
    if label_column is None:
        named = [i for i, name in enumerate(header) if name.strip().lower() in LABEL_NAMES]
        if len(named) > 1:
            columns = ", ".join(repr(header[i]) for i in named)
            raise DataError(f"{file}: columns {columns} could each be the label; choose one with label_column")
        return named[0] if named else len(header) - 1
    if isinstance(label_column, str):
        if label_column not in header:
            raise DataError(f"{file}: no column {label_column!r} (label_column); columns: {', '.join(header)}")
        return header.index(label_column)
    if not -len(header) <= label_column < len(header):
        raise DataError(f"{file}: label_column {label_column} is outside the {len(header)} columns")
    return label_column % len(header)


def _number(file: Path, line: int, column: str, cell: str) -> float:
    try:
        value = float(cell)
    except ValueError:
        problem = "an empty cell (missing value)" if not cell.strip() else f"{cell!r} is not a number"
        raise DataError(f"{file}: line {line}, column {column!r}: {problem}") from None
    if not math.isfinite(value):
        raise DataError(f"{file}: line {line}, column {column!r}: {cell.strip()} (NaN or Inf)")
    return value


def _rows(file: Path, reader, header: list[str], label: int) -> tuple[np.ndarray, list[str]]:
    """Features ``(N, F)`` float64 and the label cells of every data row."""
    values, labels = array("d"), []
    names = [name for i, name in enumerate(header) if i != label]
    for row in reader:
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        if len(row) != len(header):
            raise DataError(f"{file}: line {reader.line_num} has {len(row)} fields, the header {len(header)}")
        cell = row[label].strip()
        if not cell:
            raise DataError(f"{file}: line {reader.line_num}: the label ({header[label]!r}) is empty")
        labels.append(cell)
        cells = row[:label] + row[label + 1:]
        values.extend(_number(file, reader.line_num, name, text) for name, text in zip(names, cells))
    return np.frombuffer(values, dtype=np.float64).reshape(len(labels), len(names)), labels


def _read_table(file: Path, delimiter: str, label_column: str | int | None) -> _Table:
    if not file.is_file():
        raise DataError(f"{file}: {'not a file' if file.exists() else 'file not found'}; expected {CSV_FORMAT}")
    size = file.stat().st_size
    if size > MAX_CSV_BYTES:
        raise DataError(f"{file}: {size} bytes, more than the {MAX_CSV_BYTES >> 20} MiB a CSV may hold here; "
                        "store it as a folder of .npy files (docs/data.md#npy)")
    try:
        with open(file, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle, delimiter=delimiter, strict=True)
            header = [name.strip() for name in next(reader, [])]
            if len(header) < 2:
                raise DataError(f"{file}: {'empty' if not header else 'one column'}; expected {CSV_FORMAT}")
            if all(_is_number(name) for name in header):
                raise DataError(f"{file}: the first line holds numbers, not column names; add a header row")
            label = _label_index(file, header, label_column)
            features, labels = _rows(file, reader, header, label)
    except UnicodeDecodeError as error:
        raise DataError(f"{file}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    except csv.Error as error:
        raise DataError(f"{file}: not a readable CSV ({' '.join(str(error).split())})") from None
    if not labels:
        raise DataError(f"{file}: a header but no data rows")
    return _Table(file, header, label, features, labels)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _label_values(tables: list[_Table]) -> list[np.ndarray]:
    """Each table's labels: int64 when every label of every table is an integer, else text."""
    cells = [table.labels for table in tables]
    if not all(_is_number(cell) for labels in cells for cell in labels):
        return [np.array(labels, dtype=str) for labels in cells]
    result = []
    for table, labels in zip(tables, cells):
        numbers = np.array([float(cell) for cell in labels])
        bad = np.flatnonzero(~np.isfinite(numbers) | (numbers != np.round(numbers)) | (numbers < 0))
        if bad.size:
            raise DataError(f"{table.file}: the label column {table.header[table.label]!r} holds {labels[bad[0]]!r}: "
                            "labels must be class indices 0..K-1 or text (is it the right column? see label_column)")
        result.append(numbers.astype(np.int64))
    return result


def _split(file: Path, labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (in file order) of the train and test split: ``round(n_c * test_fraction)`` rows of each
    class ``c``, drawn with ``seed``, go to test."""
    rng = np.random.default_rng(seed)
    test = np.zeros(len(labels), dtype=bool)
    for value in np.unique(labels):
        members = np.flatnonzero(labels == value)
        test[rng.permutation(members)[:round(len(members) * test_fraction)]] = True
    if test.all() or not test.any():
        raise DataError(f"{file}: test_fraction={test_fraction} of {len(labels)} rows leaves an empty split")
    return np.flatnonzero(~test), np.flatnonzero(test)


def load_csv(path: str | os.PathLike[str], *, seed: int = 0, label_column: str | int | None = None,
             test_fraction: float | None = None, delimiter: str = ",") -> Dataset:
    """Tabular data from one CSV file or a folder holding ``train.csv`` and ``test.csv``.

    Args:
        path: the ``.csv`` file (split with ``test_fraction``) or the folder.
        seed: seeds the split of a single file.
        label_column: the label column's name or 0-based position; default: the column named ``label``,
            ``class`` or ``target``, else the last.
        test_fraction: share of each class's rows that goes to the test split of a single file
            (default 0.2); refused with a folder.
        delimiter: the field separator, one character.

    Returns:
        A Dataset of float32 static features ``(N, F)``; ``classes`` records text labels (sorted).
    """
    _check_options(label_column, test_fraction, delimiter)
    source = Path(path)
    if source.is_dir():
        if test_fraction is not None:
            raise ValueError(f"csv: test_fraction splits a single file; {source} is a folder of train.csv and test.csv")
        tables = [_read_table(source / f"{split}.csv", delimiter, label_column) for split in ("train", "test")]
        if tables[1].header != tables[0].header:
            raise DataError(f"{tables[1].file}: its columns differ from those of {tables[0].file}")
        (y_train, y_test), (x_train, x_test) = _label_values(tables), (tables[0].features, tables[1].features)
    else:
        table = _read_table(source, delimiter, label_column)
        (labels,) = _label_values([table])
        train, test = _split(source, labels, DEFAULT_TEST_FRACTION if test_fraction is None else test_fraction, seed)
        x_train, y_train, x_test, y_test = table.features[train], labels[train], table.features[test], labels[test]
    arrays = {"x_train": x_train.astype(np.float32), "y_train": y_train,
              "x_test": x_test.astype(np.float32), "y_test": y_test}
    return user_dataset("csv", str(source), arrays)


def _check_options(label_column: object, test_fraction: object, delimiter: object) -> None:
    if label_column is not None and (isinstance(label_column, bool) or not isinstance(label_column, (str, int))):
        raise ValueError(f"csv: label_column must be a column name or a 0-based position, got {label_column!r}")
    if test_fraction is not None and (isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float))
                                      or not 0.0 < test_fraction < 1.0):
        raise ValueError(f"csv: test_fraction must lie in (0, 1), got {test_fraction!r}")
    if not isinstance(delimiter, str) or len(delimiter) != 1 or delimiter in "\"\r\n":
        raise ValueError(f"csv: delimiter must be one character (not a quote or line break), got {delimiter!r}")
