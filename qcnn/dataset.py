"""Labelled image folders (file,class_index CSV) for evaluation and calibration."""
from __future__ import annotations

import csv
from pathlib import Path


def read_labels(labels_csv: str | Path, images_dir: str | Path | None = None) -> list[tuple[Path, int]]:
    """(image path, class index) pairs from a CSV with `file` and `class_index` columns.
    Image paths are relative to `images_dir` (default: the CSV's folder)."""
    labels_csv = Path(labels_csv)
    root = Path(images_dir) if images_dir is not None else labels_csv.parent
    try:
        with open(labels_csv, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"file", "class_index"} <= set(reader.fieldnames):
                raise ValueError(f"{labels_csv}: needs 'file' and 'class_index' columns")
            rows = [(root / r["file"], int(r["class_index"])) for r in reader]
    except OSError as exc:
        raise ValueError(f"{labels_csv}: {exc.strerror or exc}") from exc
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{labels_csv}: {exc}") from exc
    if not rows:
        raise ValueError(f"{labels_csv}: no rows")
    return rows
