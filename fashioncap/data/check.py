"""Image validation shared by the builders, and `fashioncap data check`: is this data dir usable, and if not, why.

An image counts as usable only if it decodes completely: truncated, zero-byte, corrupt and decompression-bomb
files are caught here, once, with a reason a person can act on.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from fashioncap.data.coco import DataError, available_splits, load_categories, parse_annotations

WHITE = (255, 255, 255)


class ImageProblem(ValueError):
    """An image that cannot be used; the message is the reason."""


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB: alpha over white (product photos), 16/32-bit grey rescaled to 8 bits."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I") or mode == "F":
        values = np.asarray(image, dtype=np.float64)
        if mode.startswith("I;16") or values.max(initial=0) > 255:
            values = values / 257.0  # 65535 -> 255
        return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode in ("P", "PA") and ("transparency" in image.info or mode == "PA"):
        image = image.convert("RGBA")
    if "A" in image.mode or "a" in image.mode:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, WHITE + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV


def open_rgb(path: str | os.PathLike, draft: int | None = None) -> Image.Image:
    """Decode `path` completely into RGB (EXIF orientation applied), or raise ImageProblem with the reason.

    `draft`: let JPEG decode at reduced scale when the result only needs about this many pixels per side.
    """
    try:
        if os.path.getsize(path) == 0:
            raise ImageProblem("zero-byte file")
        with Image.open(path) as image:
            limit = Image.MAX_IMAGE_PIXELS
            if limit and image.width * image.height > limit:
                raise ImageProblem(
                    f"declared size {image.width}x{image.height} exceeds the decompression-bomb limit"
                )
            if draft:
                image.draft("RGB", (draft, draft))
            image.load()
            return to_rgb(ImageOps.exif_transpose(image))
    except ImageProblem:
        raise
    except FileNotFoundError:
        raise ImageProblem("file not found") from None
    except (
        Image.DecompressionBombError,
        Image.DecompressionBombWarning,
    ) as e:  # the warning, when it is an error
        raise ImageProblem(f"decompression bomb: {e}") from None
    except UnidentifiedImageError:
        raise ImageProblem("not an image (unrecognised format)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageProblem(f"cannot decode: {e}") from None


@dataclass
class Problem:
    file: str
    record: object
    field: str | None
    reason: str
    severity: str = "error"  # "error": not usable; "warning": usable, but worth knowing

    def format(self) -> str:
        where = self.file + (f", record {self.record}" if self.record is not None else "")
        where += f", field {self.field!r}" if self.field else ""
        return f"{self.severity.upper()}: {where}: {self.reason}"


@dataclass
class CheckReport:
    data_dir: str
    splits: dict[str, dict] = field(default_factory=dict)
    categories: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(p.severity == "error" for p in self.problems)

    def add(self, file, record, field_name, reason, severity="error") -> None:
        self.problems.append(Problem(str(file), record, field_name, reason, severity))

    def to_dict(self) -> dict:
        return {
            "data_dir": self.data_dir,
            "usable": self.ok,
            "splits": self.splits,
            "categories": self.categories,
            "problems": [p.__dict__ for p in self.problems],
        }

    def format(self) -> str:
        lines = [f"data dir: {self.data_dir}", f"categories: {self.categories}"]
        for split, stats in self.splits.items():
            lines.append(f"split {split}: " + ", ".join(f"{k} {v}" for k, v in stats.items()))
        lines += [p.format() for p in self.problems]
        errors = sum(p.severity == "error" for p in self.problems)
        lines.append("usable" if self.ok else f"NOT usable: {errors} error(s)")
        return "\n".join(lines)


def check_data_dir(data_dir: str | Path, max_words: int = 50, decode_images: bool = True) -> CheckReport:
    """Validate layout, categories, every annotation and (by default) every image; never raises on bad data."""
    data_dir = Path(data_dir)
    report = CheckReport(str(data_dir))
    if not data_dir.is_dir():
        report.add(data_dir, None, None, "not a directory")
        return report

    categories: dict[int, list[str]] = {}
    if not (data_dir / "categories.json").is_file():
        report.add(
            data_dir / "categories.json", None, None, "missing: category rewards and SLS need it", "warning"
        )
    else:
        try:
            categories = load_categories(data_dir)
        except DataError as e:
            report.add(e.file, e.record, e.field, e.reason)
    report.categories = len(categories)

    splits = available_splits(data_dir)
    if not splits:
        report.add(data_dir / "annotations", None, None, "no annotation files (annotations/<split>.json)")
    for split in splits:
        errors: list[DataError] = []
        try:
            columns = parse_annotations(data_dir, split, on_error=errors.append)
        except DataError as e:
            report.add(e.file, e.record, e.field, e.reason)
            continue
        for e in errors:
            report.add(e.file, e.record, e.field, e.reason)
        file = data_dir / "annotations" / f"{split}.json"
        _check_rows(report, file, columns, categories, max_words)
        images = dict(zip(columns["image_id"], columns["image"], strict=True))
        bad = 0
        if decode_images:
            for image_id, path in images.items():
                try:
                    open_rgb(path, draft=64)
                except ImageProblem as e:
                    bad += 1
                    report.add(file, image_id, "images.file_name", f"{Path(path).name}: {e}")
        report.splits[split] = {
            "annotations": len(columns["caption"]),
            "images": len(images),
            "bad_records": len(errors) + bad,
            "with_attributes": sum(bool(a) for a in columns["attributes"]),
            "with_category": sum(c != -1 for c in columns["category"]),
        }
    if splits and "train" not in splits:
        report.add(
            data_dir / "annotations", None, None, "no train split: usable for evaluation only", "warning"
        )
    return report


def _check_rows(report: CheckReport, file: Path, columns: dict, categories: dict, max_words: int) -> None:
    unknown = Counter()
    for image_id, caption, category in zip(
        columns["image_id"], columns["caption"], columns["category"], strict=True
    ):
        words = len(caption.split())
        if words > max_words:
            report.add(
                file, image_id, "caption", f"{words} words, more than --max-words {max_words}", "warning"
            )
        if category != -1 and categories and category not in categories:
            unknown[category] += 1
    for category, count in sorted(unknown.items()):
        report.add(
            file, None, "category", f"category {category} ({count} annotations) is not in categories.json"
        )
