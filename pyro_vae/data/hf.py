"""A local Hugging Face dataset as a dataset: ``data: {name: hf, path: DIR_OR_FILE}`` (no network).

``path`` is one of

- a directory written by ``datasets``' ``save_to_disk`` (a ``DatasetDict`` with ``dataset_dict.json``,
  or one ``Dataset`` with ``state.json``), read with ``datasets.load_from_disk``: memory-mapped Arrow
  files, nothing written, nothing downloaded;
- a ``.parquet`` file, or a directory of them as the Hub lays them out (``data/train-00000-of-00001.parquet``,
  ``train/0000.parquet``): a file's split is the part of its name before the first ``-`` or its folder's name.

Splits named ``train``, ``test`` and ``validation``/``valid``/``val`` are used as given; without a test
split a seeded ``test_size`` of the training rows (or of all rows) is the test split, and without a
valid split ``data.valid_size`` holds out the end of the training split.

``image_column`` holds either images (the ``datasets.Image`` feature: encoded bytes or a file path;
decoded, converted, cropped, resized and cached as for ``image_folder``, see :mod:`pyro_vae.data.image_cache`)
or numbers (fixed-size lists/arrays, read with the ``npz`` rule: ``uint8`` = 8-bit pixels, anything else
as float32). ``label_column`` (``auto``: ``label`` or ``labels`` when present) holds integer classes or
strings (numbered in sorted order). ``datasets`` is an optional extra: ``pip install "pyro-vae[hf]"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from .._typing import NonNegativeInt, PositiveFloat, PositiveInt
from ..errors import DataError
from ..registry import register
from .dataset import Splits, points_from_array
from .image_cache import Transform, decoded, file_entries, fingerprint
from .image_folder import ImageCrop, seeded_test_split

_SPLITS = {"train": "train", "test": "test", "validation": "valid", "valid": "valid", "val": "valid"}
INSTALL = 'pip install "pyro-vae[hf]"'


def _datasets() -> Any:
    try:
        import datasets
    except ImportError:
        raise DataError(f"data.name: hf needs the optional Hugging Face datasets package: {INSTALL}") from None
    return datasets


def _split_of(f: Path) -> str:
    for name in (f.stem.split("-")[0], f.parent.name):
        if name.lower() in _SPLITS:
            return _SPLITS[name.lower()]
    return "all"


def _tables(p: Path) -> dict[str, Any]:
    """``{split: pyarrow.Table}`` of the dataset at ``p`` (split ``all`` when it names none)."""
    datasets = _datasets()
    import pyarrow.parquet as pq

    if p.is_dir() and ((p / "dataset_dict.json").is_file() or (p / "state.json").is_file()):
        try:
            loaded = datasets.load_from_disk(str(p))
        except Exception as e:  # noqa: BLE001  FileNotFoundError, json/arrow errors for a damaged directory
            raise DataError(
                f"data.path: {str(p)!r} is not a readable saved dataset ({type(e).__name__}: {e})"
            ) from None
        parts = dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"all": loaded}
        out: dict[str, Any] = {}
        for name, ds in parts.items():
            split = _SPLITS.get(name.lower())
            if split is None:
                continue  # e.g. an "unsupervised" split
            out[split] = ds.with_format("arrow")[:]
        if not out and len(parts) == 1:
            out = {"all": next(iter(parts.values())).with_format("arrow")[:]}
        if not out:
            raise DataError(f"data.path: {str(p)!r} has splits {', '.join(parts)}; expected train and test")
        return out
    files = [p] if p.is_file() else sorted(p.rglob("*.parquet"))
    if not files:
        raise DataError(
            f"data.path: {str(p)!r} is neither a saved dataset (dataset_dict.json or state.json) nor .parquet files"
        )
    groups: dict[str, list[Path]] = {}
    for f in files:
        groups.setdefault(_split_of(f), []).append(f)
    if "all" in groups and len(groups) > 1:
        odd = groups["all"][0]
        raise DataError(f"data.path: cannot tell the split of {str(odd)!r}; name it train-*, test-* or validation-*")
    try:
        return {s: pq.read_table([str(f) for f in fs]) if len(fs) > 1 else pq.read_table(str(fs[0]))
                for s, fs in groups.items()}  # fmt: skip
    except Exception as e:  # noqa: BLE001  pyarrow.ArrowInvalid and OSError for a damaged file
        raise DataError(
            f"data.path: cannot read the parquet files under {str(p)!r} ({type(e).__name__}: {e})"
        ) from None


def _column(table: Any, name: str, option: str, where: str) -> Any:
    if name not in table.column_names:
        raise DataError(f"{option}: {name!r} is not a column of {where}; columns: {', '.join(table.column_names)}")
    return table.column(name)


def _sources(column: Any, root: Path) -> list[str | bytes] | None:
    """Encoded images (bytes, or file paths) of an image column; None for a numeric column."""
    import pyarrow as pa

    kind = column.type
    if pa.types.is_struct(kind) and kind.get_field_index("bytes") >= 0:
        out: list[str | bytes] = []
        for v in column.to_pylist():
            if v is None or (v.get("bytes") is None and not v.get("path")):
                raise DataError(f"data.image_column: row {len(out)} holds no image")
            out.append(v["bytes"] if v.get("bytes") is not None else str(root / v["path"]))
        return out
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        return column.to_pylist()
    return None


def _element_type(kind: Any) -> Any:
    """The scalar type inside nested lists and ``datasets``' ArrayND extension types."""
    import pyarrow as pa

    while True:
        if isinstance(kind, pa.ExtensionType):
            kind = kind.storage_type
        elif pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
            kind = kind.value_type
        else:
            return kind


@register("data", "hf")
def hf(
    *,
    path: str,  # a save_to_disk directory, a .parquet file or a directory of them
    image_column: str = "image",  # images (datasets.Image) or numeric arrays
    label_column: str = "auto",  # auto: "label" or "labels" if present; none: no labels
    size: PositiveInt = 64,  # image columns: output side in pixels
    crop: ImageCrop = "center",  # center: largest centred square; none: squash to size x size; N: centred N x N
    channels: Literal[1, 3] = 3,  # image columns: 1 greyscale (ITU-R 601-2 luma), 3 RGB
    test_size: PositiveFloat = 0.1,  # no test split: < 1 a fraction, >= 1 a count of rows (seeded)
    cache: bool = True,  # keep decoded images in cache_dir (false: decode at every start, write nothing)
    cache_dir: str | None = None,  # default $PYRO_VAE_CACHE, else ~/.cache/pyro-vae
    decode_workers: NonNegativeInt = 0,  # processes decoding images; 0: every core
) -> Splits:
    """A local Hugging Face dataset (save_to_disk directory or parquet files) with an image and a label column."""
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"data.path: {str(p)!r} does not exist")
    tables = _tables(p)
    where = repr(str(p))
    cols = {s: _column(t, image_column, "data.image_column", where) for s, t in tables.items()}
    lab = label_column
    if lab == "auto":
        first = next(iter(tables.values()))
        lab = next((c for c in ("label", "labels") if c in first.column_names), "none")
    labels = None if lab == "none" else {s: _column(t, lab, "data.label_column", where) for s, t in tables.items()}

    # rows of each split: (split name, row indices into that table)
    if "train" in tables or "all" in tables:
        base = "train" if "train" in tables else "all"
        rows: dict[str, list[tuple[str, Sequence[int]]]] = {
            "train": [(base, range(len(tables[base])))],
            "valid": [],
            "test": [],
        }
        if "valid" in tables:
            rows["valid"] = [("valid", range(len(tables["valid"])))]
        if "test" in tables:
            rows["test"] = [("test", range(len(tables["test"])))]
        else:
            tr, te = seeded_test_split(len(tables[base]), test_size, "rows")
            rows["train"], rows["test"] = [(base, tr)], [(base, te)]
    else:
        raise DataError(f"data.path: {where} has no train split (splits: {', '.join(tables)})")
    if not len(rows["train"][0][1]):
        raise DataError(f"data.path: the training split of {where} is empty")

    order = [(s, part) for s in ("train", "valid", "test") for part in rows[s]]
    counts = {s: sum(len(r) for _, r in rows[s]) for s in rows}

    srcs = {s: _sources(c, p if p.is_dir() else p.parent) for s, c in cols.items()}
    if all(v is not None for v in srcs.values()):
        t = Transform(size, crop, channels)
        flat: list[str | bytes] = [srcs[name][i] for _, (name, idx) in order for i in idx]  # type: ignore[index]
        data_files = [str(f) for f in sorted(p.rglob("*")) if f.is_file()] if p.is_dir() else [str(p)]
        key = fingerprint(file_entries(data_files, p if p.is_dir() else p.parent), t,
                          extra=f"hf|{image_column}|{test_size}")  # fmt: skip
        names = [f"{name} row {i}" for _, (name, idx) in order for i in idx]
        arr = decoded(flat, t, key=key, label=f"hf-{p.name}", cache_dir=cache_dir, cache=cache,
                      workers=decode_workers, name=lambda k: f"{names[k]} of {where}")  # fmt: skip
        x_all = torch.from_numpy(arr)
    elif any(v is not None for v in srcs.values()):
        raise DataError(f"data.image_column: {image_column!r} holds images in some splits and numbers in others")
    else:
        leaf = _element_type(next(iter(cols.values())).type)  # list<...<uint8>>: the element type decides the npz rule
        try:
            dtype = np.dtype(leaf.to_pandas_dtype())
            parts = [np.asarray(cols[name].take(list(idx)).to_pylist(), dtype=dtype) for _, (name, idx) in order]
        except Exception as e:  # noqa: BLE001  ragged lists (arrays of unequal length), non-numeric elements
            raise DataError(
                f"data.image_column: {image_column!r} does not hold equal-size numeric arrays ({e})"
            ) from None
        if any(a.dtype.kind not in "biuf" for a in parts):
            raise DataError(f"data.image_column: {image_column!r} holds neither images nor numbers")
        x_all = points_from_array(np.concatenate(parts), image_column)

    y_all = None
    if labels is not None:
        values = [v for _, (name, idx) in order for v in labels[name].take(list(idx)).to_pylist()]
        if any(v is None for v in values):
            raise DataError(f"data.label_column: {lab!r} has missing values")
        if all(isinstance(v, str) for v in values):
            classes = {c: i for i, c in enumerate(sorted(set(values)))}
            values = [classes[v] for v in values]
        elif not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
            raise DataError(f"data.label_column: {lab!r} must hold integer classes or strings")
        y_all = torch.as_tensor(np.asarray(values, dtype=np.int64))
    a, b = counts["train"], counts["train"] + counts["valid"]
    y = (None, None, None) if y_all is None else (y_all[:a], y_all[a:b], y_all[b:])
    valid = counts["valid"] > 0
    return Splits(x_all[:a], x_all[b:], y[0], y[2], x_all[a:b] if valid else None, y[1] if valid else None)


__all__ = ["INSTALL", "hf"]
