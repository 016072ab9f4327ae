"""Labelled image folders (file,class_index CSV) for evaluation and calibration."""
from __future__ import annotations

import csv
from pathlib import Path

from .files import open_text


def read_labels(labels_csv: str | Path, images_dir: str | Path | None = None) -> list[tuple[Path, int]]:
    """(image path, class index) pairs from a CSV with `file` and `class_index` columns.
    Image paths are relative to `images_dir` (default: the CSV's folder)."""
    labels_csv = Path(labels_csv)
    root = Path(images_dir) if images_dir is not None else labels_csv.parent
    try:
        with open_text(labels_csv) as f:          # regular files only: a FIFO would block forever
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"file", "class_index"} <= set(reader.fieldnames):
                raise ValueError("needs 'file' and 'class_index' columns")
            rows = [_row(r, root, reader.line_num) for r in reader]
    except OSError as exc:
        raise ValueError(f"{labels_csv}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError:
        raise ValueError(f"{labels_csv}: not UTF-8 text") from None
    except (ValueError, csv.Error) as exc:
        raise ValueError(f"{labels_csv}: {exc}") from exc
    if not rows:
        raise ValueError(f"{labels_csv}: no rows")
    return rows


def _row(r: dict, root: Path, line: int) -> tuple[Path, int]:
    name, index = r.get("file"), r.get("class_index")
    if not name or index is None:
        raise ValueError(f"line {line}: needs a file and a class_index")
    try:
        return root / name, int(index)
    except ValueError:
        raise ValueError(f"line {line}: class_index {index[:20]!r} is not an integer") from None
