"""`fashioncap data check`: is this data dir usable, and if not, why (every problem with its file, record and field)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from fashioncap.data.coco import DataError, available_splits, load_categories, parse_annotations
from fashioncap.data.images import ImageProblem, open_rgb


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
    cannot_run: list[str] = field(default_factory=list)  # what a usable dir still cannot do, and why

    @property
    def ok(self) -> bool:
        return not any(p.severity == "error" for p in self.problems)

    def add(self, file, record, field_name, reason, severity="error") -> None:
        self.problems.append(Problem(str(file), record, field_name, reason, severity))

    def to_dict(self) -> dict:
        return {
            "data_dir": self.data_dir,
            "usable": self.ok,
            "cannot_run": self.cannot_run,
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
        usable = "usable" + (f", but {'; '.join(self.cannot_run)}" if self.cannot_run else "")
        lines.append(usable if self.ok else f"NOT usable: {errors} error(s)")
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
            data_dir / "categories.json",
            None,
            None,
            "missing: the SLS metric and the SLS reward need it",
            "warning",
        )
        report.cannot_run.append(
            "the SLS metric and the SLS reward (sls) cannot run here: no categories.json"
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
