"""Load a data dir (COCO captions format, see docs/data.md) or a Hub data set into `datasets`.

Training wants one row per annotation (with all references of its image: `with_references`); evaluation
wants one row per image with all its references (`group_references`). Images stay file paths until a row is
read (`datasets.Image` decodes lazily), and no path ever resolves outside the data dir. Every error names the
file, the record and the field.
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets

from fashioncap.errors import UserError, missing_path
from fashioncap.io_utils import safe_join

KNOWN_SPLITS = ("train", "val", "test", "pretrain")
COLUMNS = ("image_id", "image", "caption", "attributes", "category")


class DataError(UserError, ValueError):
    """A data problem located precisely: which file, which record (annotation or image id), which field."""

    def __init__(self, file, record, field: str | None, reason: str):
        self.file, self.record, self.field, self.reason = str(file), record, field, reason
        where = f"{self.file}" + (f", record {record}" if record is not None else "")
        where += f", field {field!r}" if field else ""
        super().__init__(f"{where}: {reason}")


def features():
    """The column types every split has, whatever the source."""
    return datasets.Features(
        {
            "image_id": datasets.Value("int64"),
            "image": datasets.Image(),
            "caption": datasets.Value("string"),
            "attributes": datasets.List(datasets.Value("string")),
            "category": datasets.Value("int64"),
        }
    )


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def read_json(path: Path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise DataError(path, None, None, "file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(path, None, None, f"not valid JSON: {e}") from None


def available_splits(data_dir: str | Path) -> list[str]:
    """Splits with an annotation file: the usual ones in their usual order, then any others by name."""
    names = sorted(p.stem for p in (Path(data_dir) / "annotations").glob("*.json"))
    return [s for s in KNOWN_SPLITS if s in names] + [s for s in names if s not in KNOWN_SPLITS]


def references_file(data_dir: str | Path, split: str) -> Path:
    """The split's annotation file: COCO captions format, all references of each image (what metrics read)."""
    if not Path(data_dir).is_dir():
        raise missing_path("data dir", data_dir, "give a data dir (docs/data.md layout), e.g. data/synthetic")
    path = safe_join(data_dir, f"annotations/{split}.json")
    if not path.is_file():
        raise DataError(path, None, None, f"no annotation file for split {split!r}")
    return path


def load_categories(data_dir: str | Path) -> dict[int, list[str]]:
    """The data dir's categories.json as id -> lower-cased surface forms."""
    return read_categories(safe_join(data_dir, "categories.json"))


def read_categories(path: str | Path) -> dict[int, list[str]]:
    """A categories.json file as id -> lower-cased surface forms (a single name becomes a one-element list)."""
    path = Path(path)
    raw = read_json(path)
    if not isinstance(raw, dict):
        raise DataError(path, None, None, "expected an object mapping category id -> name or list of names")
    categories: dict[int, list[str]] = {}
    for key, value in raw.items():
        try:
            category_id = int(key)
        except ValueError:
            raise DataError(path, key, "id", "category ids must be integers") from None
        names = [value] if isinstance(value, str) else value
        if (
            not isinstance(names, list)
            or not names
            or not all(isinstance(n, str) and n.strip() for n in names)
        ):
            raise DataError(path, key, "name", "expected a non-empty name or a list of non-empty names")
        forms = [" ".join(n.lower().split()) for n in names]
        categories[category_id] = list(dict.fromkeys(forms))
    return categories


def _image_path(path: Path, image_root: Path, image, check_files: bool) -> tuple[int, str]:
    image_id = image.get("id") if isinstance(image, dict) else None
    if not _is_int(image_id):
        raise DataError(path, image_id, "images.id", "every image needs an integer id")
    file_name = image.get("file_name")
    if not isinstance(file_name, str):
        raise DataError(path, image_id, "images.file_name", "missing or not a string")
    try:
        file = safe_join(image_root, file_name)
    except ValueError as e:
        raise DataError(path, image_id, "images.file_name", str(e)) from None
    if check_files and not file.is_file():
        raise DataError(path, image_id, "images.file_name", f"image file not found: {file}")
    return image_id, str(file)


def _annotation_row(path: Path, ann, images: dict[int, str]) -> tuple:
    if not isinstance(ann, dict):
        raise DataError(path, None, "annotations", "every annotation must be an object")
    record = ann.get("id", ann.get("image_id"))
    image_id = ann.get("image_id")
    if not _is_int(image_id) or image_id not in images:
        raise DataError(path, record, "image_id", f"no image with id {image_id!r} in 'images'")
    caption = ann.get("caption")
    if not isinstance(caption, str) or not caption.strip():
        raise DataError(path, record, "caption", "missing or empty caption")
    attributes = ann.get("attributes", [])
    if not isinstance(attributes, list) or not all(isinstance(a, str) for a in attributes):
        raise DataError(path, record, "attributes", "must be a list of strings")
    category = ann.get("category", -1)
    if not _is_int(category):
        raise DataError(path, record, "category", "must be an integer category id")
    return image_id, images[image_id], caption, attributes, category


def parse_annotations(
    data_dir: str | Path, split: str, on_error=None, check_files: bool = True
) -> dict[str, list]:
    """Validate annotations/<split>.json and return its rows as columns (image paths resolved and checked).

    The first bad record raises `DataError`; with `on_error`, each bad record is passed to it and skipped
    instead (`data check` reports them all). Annotations of a skipped image are dropped without a second report.
    """
    data_dir = Path(data_dir)
    path = references_file(data_dir, split)
    coco = read_json(path)
    if not isinstance(coco, dict):
        raise DataError(path, None, None, "expected a COCO captions object with 'images' and 'annotations'")
    for key in ("images", "annotations"):
        if not isinstance(coco.get(key), list):
            raise DataError(path, None, key, "missing or not a list")

    def report(error: DataError) -> None:
        if on_error is None:
            raise error
        on_error(error)

    images: dict[int, str] = {}
    bad_images: set = set()
    for image in coco["images"]:
        try:
            image_id, file = _image_path(path, data_dir / "images", image, check_files)
            if image_id in images:
                raise DataError(path, image_id, "images.id", "duplicate image id")
            images[image_id] = file
        except DataError as e:
            if e.record is not None:
                bad_images.add(e.record)
            report(e)

    columns: dict[str, list] = {name: [] for name in COLUMNS}
    seen: set = set()
    for ann in coco["annotations"]:
        try:
            ann_id = ann.get("id") if isinstance(ann, dict) else None
            if ann_id is not None:
                if ann_id in seen:
                    raise DataError(path, ann_id, "annotations.id", "duplicate annotation id")
                seen.add(ann_id)
            if isinstance(ann, dict) and ann.get("image_id") in bad_images:
                continue
            row = _annotation_row(path, ann, images)
        except DataError as e:
            report(e)
            continue
        for name, value in zip(COLUMNS, row, strict=True):
            columns[name].append(value)
    return columns


def _load_local(data_dir: Path, splits):
    splits = list(splits) if splits else available_splits(data_dir)
    if not splits:
        raise DataError(
            data_dir / "annotations", None, None, "no annotation files (annotations/<split>.json)"
        )
    return datasets.DatasetDict(
        {
            split: datasets.Dataset.from_dict(parse_annotations(data_dir, split), features=features())
            for split in splits
        }
    )


def _load_hub(dataset_id: str, splits):
    try:
        loaded = datasets.load_dataset(dataset_id)
    except Exception as e:  # network, auth, unknown id: one clear message
        raise DataError(
            dataset_id,
            None,
            None,
            f"not a local data dir, and loading it from the Hugging Face Hub failed: {e}",
        ) from e
    missing = [s for s in (splits or []) if s not in loaded]
    if missing:
        raise DataError(dataset_id, None, None, f"no split(s) {missing}; available: {sorted(loaded)}")
    result = datasets.DatasetDict()
    for split in splits or list(loaded):
        ds = loaded[split]
        absent = [c for c in ("image_id", "image", "caption") if c not in ds.column_names]
        if absent:
            raise DataError(dataset_id, None, ", ".join(absent), f"split {split!r} lacks required column(s)")
        if "attributes" not in ds.column_names:
            ds = ds.add_column("attributes", [[] for _ in range(len(ds))])
        if "category" not in ds.column_names:
            ds = ds.add_column("category", [-1] * len(ds))
        result[split] = ds.select_columns(list(COLUMNS)).cast(features())
    return result


def load_captions(source: str | Path, splits: list[str] | None = None):
    """Load `source` (a data dir, or a Hub data set id with the same columns) as a `datasets.DatasetDict`.

    One row per annotation: image_id (int), image (decoded lazily), caption, attributes (list of str, [] if
    absent), category (int, -1 if absent).
    """
    path = Path(source)
    if path.is_dir():
        return _load_local(path, splits)
    if path.exists():
        raise DataError(path, None, None, "expected a data dir (categories.json, annotations/, images/)")
    return _load_hub(str(source), splits)


def with_references(dataset):
    """Training rows (one per annotation) plus `references`: every caption of the row's image, its own too.

    Rewards that score a caption against all references of its image (CIDEr-D) read this column.
    """
    references: dict[int, list[str]] = {}
    for image_id, caption in zip(dataset["image_id"], dataset["caption"], strict=True):
        references.setdefault(image_id, []).append(caption)
    return dataset.add_column(
        "references",
        [references[image_id] for image_id in dataset["image_id"]],
        feature=datasets.List(datasets.Value("string")),
    )


def group_references(dataset):
    """One row per image (first-appearance order): image_id, image, references, attributes (union), category."""
    rows = dataset.select_columns(list(COLUMNS)).cast_column("image", datasets.Image(decode=False)).to_dict()
    grouped: dict[int, dict] = {}
    for image_id, image, caption, attributes, category in zip(*(rows[c] for c in COLUMNS), strict=True):
        entry = grouped.setdefault(
            image_id,
            {"image_id": image_id, "image": image, "references": [], "attributes": {}, "category": category},
        )
        entry["references"].append(caption)
        entry["attributes"].update(dict.fromkeys(attributes))
    out = {
        "image_id": list(grouped),
        "image": [g["image"] for g in grouped.values()],
        "references": [g["references"] for g in grouped.values()],
        "attributes": [list(g["attributes"]) for g in grouped.values()],
        "category": [g["category"] for g in grouped.values()],
    }
    feats = datasets.Features(
        {
            "image_id": datasets.Value("int64"),
            "image": datasets.Image(),
            "references": datasets.List(datasets.Value("string")),
            "attributes": datasets.List(datasets.Value("string")),
            "category": datasets.Value("int64"),
        }
    )
    return datasets.Dataset.from_dict(out, features=feats)
