"""Build a data dir from FACAD (Yang et al., ECCV 2020): one front image per item, its description, attributes
and category, split reproducibly. Every record left out is listed in build_report.json with its reason.

With `views="all"`, every view of a training item's first colour becomes a training image with the item's
caption (more pixels per caption, as the FACAD authors trained); val and test keep the front view, one image per
item, and since views are only added to items already in train, no item's views cross splits. A view that fails
to download or decode is left out (build_report.json, "skipped_views"); its item keeps its other views.

Items whose normalised descriptions are identical stay in one split, so a test caption is never also a train
caption. A description shared by more than `max_shared_description` items is boilerplate ("this wedding gown
can't be purchased online..."), not a description, and those items are skipped. The ids of each split are
written to `splits/<split>.txt`, one per line, so the scores of two builds can be checked for comparability.

Record format: docs/data.md ("FACAD"). Images follow the FACAD authors' layout,
`<IMG_ROOT>/<id>/<colour words joined by "_", "/" removed>/<view>.jpeg`; only the first colour is used, and
only its front view "0" unless `views="all"`. View v > 0 of item i is image `i_v.jpg` with image id
`i + v * stride`, the stride a power of ten above every item id (build_report.json records it).
"""

from __future__ import annotations

import json
import random
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from PIL import Image

from fashioncap.data.download import DownloadJob, download_images, full_resolution_url
from fashioncap.data.images import ImageProblem, open_rgb
from fashioncap.errors import ConfigError, OutputExistsError
from fashioncap.io_utils import atomic_directory, safe_join, write_json_atomic, write_text_atomic
from fashioncap.text import normalize_text, plural

SPLIT_ORDER = ("train", "val", "test")
VIEWS = ("front", "all")
JPEG_QUALITY = 90
TERMS = "FACAD: research use only, redistribution restricted by its authors"  # quoted by model cards
DETAILS_HEADING = re.compile(r"^\s*details\s*&\s*care\s*", re.IGNORECASE)


@dataclass(frozen=True)
class FacadItem:
    id: int
    caption: str
    caption_field: str  # the record field the caption came from: "description" or "detail_info"
    attributes: list[str]
    category: int
    category_name: str
    source: Path  # the front image under IMG_ROOT
    url: str | None
    extra_views: tuple[tuple[int, str | None], ...] = ()  # the first colour's other views: (view, its URL)

    def view_source(self, view: int) -> Path:
        return self.source.with_name(f"{view}.jpeg")


Unit = list[FacadItem]  # items that share a normalised description (most units hold one item)
Encoded = tuple[FacadItem, tuple[int, int]]  # an item and its encoded image's (width, height)
ExtraViews = dict[
    int, list[tuple[int, tuple[int, int]]]
]  # item id -> [(view, encoded size)] beyond the front


@dataclass
class Candidates:
    """The valid records of a meta file as items, with what reading them left out."""

    records: int
    items: list[FacadItem]
    category_names: dict[int, str]
    skipped: list[dict]


@dataclass
class Selection:
    """The encoded items of each split, and what the download and encode walk left out."""

    splits: dict[str, list[Encoded]]
    examined: int
    download_failures: int
    skipped: list[dict]


class Skip(Exception):
    """A record left out: `field` says which part of it was wrong."""

    def __init__(self, field: str, reason: str):
        super().__init__(reason)
        self.field, self.reason = field, reason


def detail_info_caption(text: str) -> str:
    """A caption from FACAD's raw detail_info: normalised, without the "DETAILS & CARE" heading it starts with."""
    return normalize_text(DETAILS_HEADING.sub("", text))


def colour_dir(colour: str) -> str:
    """The FACAD authors' folder name for a colour: '/' removed, words joined by '_' ("Black/ White" -> "Black_White")."""
    return "_".join(colour.replace("/", "").split())


def read_meta(path: str | Path) -> list[tuple[str, object]]:
    """(position label, record) pairs from a JSON list or a JSON-lines file; an unparsable line's record is a Skip."""
    text = Path(path).read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        return [(f"#{i}", record) for i, record in enumerate(json.loads(text))]
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                records.append((f"line {number}", json.loads(line)))
            except json.JSONDecodeError:
                records.append((f"line {number}", Skip("record", "not valid JSON")))
    return records


def parse_record(record, image_root: Path, max_words: int) -> FacadItem:
    """Validate one meta record and map it to an item, or raise Skip(field, reason)."""
    if not isinstance(record, dict):
        raise Skip("record", "not a JSON object")
    item_id = record.get("id")
    if not isinstance(item_id, int) or isinstance(item_id, bool):
        raise Skip("id", "missing or not an integer")
    images = record.get("images")
    if not isinstance(images, list) or not images or not isinstance(images[0], dict):
        raise Skip("images", "missing or empty")
    colour, url = images[0].get("color"), images[0].get("0")
    if not isinstance(colour, str) or colour_dir(colour) in ("", ".", ".."):
        raise Skip("images.color", f"the first colour has no usable name: {colour!r}")
    try:
        source = safe_join(image_root, f"{item_id}/{colour_dir(colour)}/0.jpeg")
    except ValueError as e:
        raise Skip("images.color", str(e)) from None
    # The description is kept as FACAD ships it (lower case, hyphens kept); the detail_info fallback is raw text.
    description, details = record.get("description"), record.get("detail_info")
    field, caption = (
        "description",
        " ".join(description.lower().split()) if isinstance(description, str) else "",
    )
    if not caption:
        field, caption = "detail_info", detail_info_caption(details) if isinstance(details, str) else ""
    if not caption:
        raise Skip("description", "empty caption (no description, no detail_info)")
    if len(caption.split()) > max_words:
        raise Skip(field, f"caption has {len(caption.split())} words, more than max_words={max_words}")
    attr = record.get("attr", [])
    if not isinstance(attr, list) or not all(isinstance(a, str) for a in attr):
        raise Skip("attr", "must be a list of strings")
    category, name = record.get("categoryid"), record.get("category")
    if not isinstance(category, int) or isinstance(category, bool):
        raise Skip("categoryid", "missing or not an integer")
    if not isinstance(name, str) or not name.strip():
        raise Skip("category", f"unknown category: id {category} has no name")
    extra_views = sorted(
        (int(key), full_resolution_url(url) if isinstance(url, str) and url else None)
        for key, url in images[0].items()
        if key.isdigit() and key != "0"
    )
    return FacadItem(
        id=item_id,
        caption=caption,
        caption_field=field,
        attributes=list(dict.fromkeys(a for a in attr if a != "nah")),
        category=category,
        category_name=" ".join(name.lower().split()),
        source=source,
        url=full_resolution_url(url) if isinstance(url, str) and url else None,
        extra_views=tuple(extra_views),
    )


def read_candidates(meta: str | Path, image_root: Path, max_words: int) -> Candidates:
    """Every valid record of the meta file as an item; duplicate ids and conflicting category names are skipped."""
    records = read_meta(meta)
    items: list[FacadItem] = []
    names: dict[int, str] = {}
    seen: set[int] = set()
    skipped: list[dict] = []
    for label, record in records:
        if isinstance(record, Skip):
            skipped.append({"record": label, "field": record.field, "reason": record.reason})
            continue
        record_id = record.get("id", label) if isinstance(record, dict) else label
        try:
            item = parse_record(record, image_root, max_words)
            if item.id in seen:
                raise Skip("id", "duplicate id (the first record with it is kept)")
            if names.setdefault(item.category, item.category_name) != item.category_name:
                raise Skip("category", f"category id {item.category} is {names[item.category]!r} elsewhere")
        except Skip as e:
            skipped.append({"record": record_id, "field": e.field, "reason": e.reason})
            continue
        seen.add(item.id)
        items.append(item)
    return Candidates(records=len(records), items=items, category_names=names, skipped=skipped)


def group_by_description(items: list[FacadItem], max_shared: int) -> tuple[list[Unit], list[Unit]]:
    """(units, boilerplate): items with identical normalised captions form one unit, so they can share a split;
    a caption shared by more than `max_shared` items is boilerplate. Both lists keep meta-file order."""
    groups: dict[str, Unit] = {}
    for item in items:
        groups.setdefault(normalize_text(item.caption), []).append(item)
    units = [group for group in groups.values() if len(group) <= max_shared]
    boilerplate = [group for group in groups.values() if len(group) > max_shared]
    return units, boilerplate


def encode_image(source: Path, target: Path, size: int) -> tuple[int, int]:
    """Re-encode to RGB JPEG, fitted into size x size (aspect kept, never upscaled); returns (width, height)."""
    image = open_rgb(source, draft=size)
    image.thumbnail((size, size), Image.Resampling.LANCZOS, reducing_gap=3.0)
    image.save(target, format="JPEG", quality=JPEG_QUALITY)
    return image.size


def split_sizes(requested: dict[str, int], available: int) -> dict[str, int]:
    """The requested sizes, or (with fewer usable items) the same proportions of what there is; train gets the rest."""
    total = sum(requested.values())
    if available >= total:
        return dict(requested)
    sizes = {s: requested[s] * available // total for s in ("val", "test")}
    sizes["train"] = available - sizes["val"] - sizes["test"]
    return {s: sizes[s] for s in SPLIT_ORDER}


def fill_splits(units: list[list], sizes: dict[str, int]) -> tuple[dict[str, list], list[list]]:
    """Whole units, in order, each into the first split (train, val, test) with room for all of it, so no unit
    straddles two splits; returns the splits and the units that fit nowhere."""
    splits: dict[str, list] = {s: [] for s in SPLIT_ORDER}
    left_over = []
    for unit in units:
        split = next((s for s in SPLIT_ORDER if len(splits[s]) + len(unit) <= sizes[s]), None)
        if split is None:
            left_over.append(unit)
        else:
            splits[split].extend(unit)
    return splits, left_over


def select_and_encode(
    units: list[Unit],
    requested: dict[str, int],
    images_dir: Path,
    *,
    download: bool,
    image_size: int,
    workers: int,
    timeout: float,
    retries: int,
    progress: bool,
) -> Selection:
    """Walk the units in order, downloading (if asked) and encoding their images until the splits are full.

    Only the images that end up in the splits are kept in `images_dir`; an item whose image fails is skipped.
    """
    from tqdm.auto import tqdm

    needed = sum(requested.values())
    usable: list[list[Encoded]] = []
    skipped: list[dict] = []
    position = examined = download_failures = filled = 0
    with (
        ThreadPoolExecutor(max_workers=max(1, workers)) as pool,
        tqdm(total=needed, desc="facad", unit="img", disable=not progress) as bar,
    ):
        while filled < needed and position < len(units):
            # Examine a little more than still missing, to absorb failures without a second round trip.
            batch = _next_units(units, position, needed - filled + max(8, (needed - filled) // 20))
            position += len(batch)
            items = [item for unit in batch for item in unit]
            examined += len(items)
            failed: dict[object, str] = {}
            if download:
                jobs = [DownloadJob(it.id, it.url, it.source) for it in items if it.url]
                failed = download_images(jobs, workers, timeout, retries, progress=progress)
                download_failures += len(failed)
                no_url = [it for it in items if not it.url and not it.source.is_file()]
                failed.update({it.id: "no image URL in the record" for it in no_url})
            encode = partial(_encode_item, failed=failed, out=images_dir, size=image_size)
            results = dict(zip((it.id for it in items), pool.map(encode, items), strict=True))
            skipped += [
                {"record": item_id, "field": result.field, "reason": result.reason}
                for item_id, result in results.items()
                if isinstance(result, Skip)
            ]
            usable += [encoded for unit in batch if (encoded := _encoded(unit, results))]
            filled = sum(map(len, fill_splits(usable, requested)[0].values()))
            bar.update(filled - bar.n)
    splits, left_over = fill_splits(usable, split_sizes(requested, sum(map(len, usable))))
    for item, _ in (encoded for unit in left_over for encoded in unit):
        # examined beyond what the splits need: not part of the data dir
        (images_dir / f"{item.id}.jpg").unlink()
    return Selection(splits=splits, examined=examined, download_failures=download_failures, skipped=skipped)


def encode_extra_views(
    train: list[Encoded],
    images_dir: Path,
    *,
    download: bool,
    image_size: int,
    workers: int,
    timeout: float,
    retries: int,
    progress: bool,
) -> tuple[ExtraViews, list[dict]]:
    """Download (if asked) and encode every view but the front of the training items' first colour; returns
    the encoded views per item and the views left out, with their reasons."""
    wanted = [(item, view, url) for item, _ in train for view, url in item.extra_views]
    failed: dict[object, str] = {}
    if download:
        jobs = [DownloadJob((it.id, view), url, it.view_source(view)) for it, view, url in wanted if url]
        failed = download_images(jobs, workers, timeout, retries, progress=progress)
        failed.update(
            {(it.id, view): "no image URL in the record" for it, view, url in wanted
             if not url and not it.view_source(view).is_file()}
        )  # fmt: skip

    def encode(entry) -> tuple[int, int] | Skip:
        item, view, _ = entry
        if (item.id, view) in failed:
            return Skip(f"images.{view}", f"download failed: {failed[item.id, view]}")
        try:
            return encode_image(
                item.view_source(view), images_dir / view_file_name(item.id, view), image_size
            )
        except ImageProblem as e:
            return Skip("image", f"{item.view_source(view)}: {e}")

    views: ExtraViews = {}
    skipped = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for (item, view, _), result in zip(wanted, pool.map(encode, wanted), strict=True):
            if isinstance(result, Skip):
                skipped.append(
                    {"record": item.id, "view": view, "field": result.field, "reason": result.reason}
                )
            else:
                views.setdefault(item.id, []).append((view, result))
    return views, skipped


def view_file_name(item_id: int, view: int) -> str:
    return f"{item_id}.jpg" if view == 0 else f"{item_id}_{view}.jpg"


def view_stride(items: list[FacadItem]) -> int:
    """A power of ten above every item id: view v > 0 of item i is image id i + v * stride, unique."""
    return 10 ** len(str(max((abs(item.id) for item in items), default=0)))


def _next_units(units: list[Unit], position: int, wanted: int) -> list[Unit]:
    """The units from `position` on that hold at least `wanted` items (fewer at the end of the list)."""
    batch, count = [], 0
    for unit in units[position:]:
        if count >= wanted:
            break
        batch.append(unit)
        count += len(unit)
    return batch


def _encoded(unit: Unit, results: dict[int, tuple[int, int] | Skip]) -> list[Encoded]:
    return [(item, results[item.id]) for item in unit if not isinstance(results[item.id], Skip)]


def split_images(
    splits: dict[str, list[Encoded]], extra_views: ExtraViews, stride: int
) -> dict[str, list[tuple[FacadItem, int, int, tuple[int, int]]]]:
    """Each split's images as (item, view, image id, size): every item's front, then its extra views (train)."""
    return {
        split: [
            entry
            for item, size in chosen
            for entry in [
                (item, 0, item.id, size),
                *((item, v, item.id + v * stride, s) for v, s in extra_views.get(item.id, [])),
            ]
        ]
        for split, chosen in splits.items()
    }


def write_splits(
    out: Path, splits: dict[str, list[Encoded]], images: dict[str, list], seed: int, split_strategy: str
) -> None:
    """annotations/<split>.json (COCO captions, one per image) and splits/<split>.txt (the item ids, to compare
    builds by)."""
    for split in SPLIT_ORDER:
        write_json_atomic(
            out / "annotations" / f"{split}.json", _coco(images[split], split, seed, split_strategy), None
        )
        write_text_atomic(
            out / "splits" / f"{split}.txt", "".join(f"{item.id}\n" for item, _ in splits[split])
        )


def category_forms(names: dict[int, str]) -> dict[str, list[str]]:
    """categories.json: each id's name and its plural, or the name alone when it is its own plural ("jeans")."""
    return {str(c): list(dict.fromkeys([n, plural(n)])) for c, n in sorted(names.items())}


def build_report(
    settings: dict,
    candidates: Candidates,
    units: list[Unit],
    boilerplate: list[Unit],
    selection: Selection,
    images: dict[str, list],
    skipped_views: list[dict],
    seconds: float,
) -> dict:
    """build_report.json: the settings, the counts (items and images per split, views per item) and every
    skipped record (and view) with its field and reason."""
    shared = [unit for unit in units if len(unit) > 1]
    kept = sum(map(len, images.values()))
    boilerplate_skips = [
        {
            "record": item.id,
            "field": item.caption_field,
            "reason": f"boilerplate: {len(group)} items share this description "
            f"(more than max_shared_description={settings['max_shared_description']})",
        }
        for group in boilerplate
        for item in group
    ]
    return {
        "builder": "facad",
        "terms": TERMS,
        **settings,
        "resize": f"fit into {settings['image_size']}x{settings['image_size']}, aspect kept, never upscaled; "
        f"RGB JPEG q{JPEG_QUALITY}",
        "counts": {split: len(selection.splits[split]) for split in SPLIT_ORDER},
        "images": {split: len(images[split]) for split in SPLIT_ORDER},
        "views_per_item": {split: _views_per_item(images[split]) for split in SPLIT_ORDER},
        "records": candidates.records,
        "candidates": len(candidates.items),
        "duplicate_description_groups": {"groups": len(shared), "items": sum(map(len, shared))},
        "boilerplate_skipped": {"groups": len(boilerplate), "items": len(boilerplate_skips)},
        "examined": selection.examined,
        "download_failures": selection.download_failures,
        "seconds": round(seconds, 3),
        "images_per_second": round(kept / seconds, 1) if seconds > 0 else None,
        "skipped": candidates.skipped + boilerplate_skips + selection.skipped,
        "skipped_views": skipped_views,
    }


def _views_per_item(images: list) -> dict[str, int]:
    """{number of views: items with that many} over a split's images."""
    per_item: dict[int, int] = {}
    for item, *_ in images:
        per_item[item.id] = per_item.get(item.id, 0) + 1
    histogram: dict[str, int] = {}
    for count in sorted(per_item.values()):
        histogram[str(count)] = histogram.get(str(count), 0) + 1
    return histogram


def build_facad(
    meta: str | Path,
    image_root: str | Path,
    out_dir: str | Path,
    *,
    download: bool = False,
    train: int = 10000,
    val: int = 1000,
    test: int = 2000,
    split_strategy: str = "random",
    image_size: int = 384,
    max_words: int = 50,
    max_shared_description: int = 3,
    views: str = "front",
    seed: int = 0,
    workers: int = 16,
    timeout: float = 30.0,
    retries: int = 3,
    progress: bool = True,
    overwrite: bool = False,
) -> Path:
    """Build a FACAD data dir at `out_dir` (atomically: an interrupted build leaves nothing there).

    Items sharing a normalised description form a unit; units of more than `max_shared_description` items
    (boilerplate) are skipped. Units are ordered by `split_strategy` (`random`: shuffled with `seed`; `order`:
    meta-file order) and walked in that order until enough usable items are found, so only the images that end
    up in the splits are downloaded and re-encoded. Whole units fill train, then val, then test. `views`:
    "front" (one image per item) or "all" (every view of a training item's first colour, see the module doc).
    """
    if views not in VIEWS:
        raise ConfigError(f"views must be one of {', '.join(VIEWS)} (got {views!r})")
    if split_strategy not in ("random", "order"):
        raise ConfigError(f"split_strategy must be 'random' or 'order' (got {split_strategy!r})")
    requested = {"train": train, "val": val, "test": test}
    if min(requested.values()) < 0 or sum(requested.values()) == 0:
        raise ConfigError(f"split sizes must be >= 0 and not all 0 (got {requested})")
    if max_shared_description < 1:
        raise ConfigError(f"max_shared_description must be >= 1 (got {max_shared_description})")
    if Path(out_dir).exists() and not overwrite:  # fail before reading a large meta file or downloading
        raise OutputExistsError(f"{out_dir} already exists (pass overwrite=True / --overwrite to replace it)")
    start = time.perf_counter()
    candidates = read_candidates(meta, Path(image_root), max_words)
    units, boilerplate = group_by_description(candidates.items, max_shared_description)
    if split_strategy == "random":
        random.Random(seed).shuffle(units)
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        (tmp / "images").mkdir()
        selection = select_and_encode(
            units,
            requested,
            tmp / "images",
            download=download,
            image_size=image_size,
            workers=workers,
            timeout=timeout,
            retries=retries,
            progress=progress,
        )
        extra_views, skipped_views = ({}, [])
        if views == "all":
            extra_views, skipped_views = encode_extra_views(
                selection.splits["train"], tmp / "images", download=download, image_size=image_size,
                workers=workers, timeout=timeout, retries=retries, progress=progress,
            )  # fmt: skip
        stride = view_stride(candidates.items)
        images = split_images(selection.splits, extra_views, stride)
        write_splits(tmp, selection.splits, images, seed, split_strategy)
        write_json_atomic(tmp / "categories.json", category_forms(candidates.category_names))
        settings = {
            "meta": str(meta),
            "image_root": str(image_root),
            "seed": seed,
            "split_strategy": split_strategy,
            "image_size": image_size,
            "max_words": max_words,
            "max_shared_description": max_shared_description,
            "views": views,
            "view_image_id": f"item id + view x {stride} (view 0, the front: the item id)",
            "requested": requested,
        }
        report = build_report(
            settings, candidates, units, boilerplate, selection, images, skipped_views,
            time.perf_counter() - start,
        )  # fmt: skip
        write_json_atomic(tmp / "build_report.json", report)
    return Path(out_dir)


def _encode_item(item: FacadItem, failed: dict, out: Path, size: int) -> tuple[int, int] | Skip:
    if item.id in failed:
        return Skip("images.0", f"download failed: {failed[item.id]}")
    try:
        return encode_image(item.source, out / f"{item.id}.jpg", size)
    except ImageProblem as e:
        return Skip("image", f"{item.source}: {e}")


def _coco(
    chosen: list[tuple[FacadItem, int, int, tuple[int, int]]], split: str, seed: int, strategy: str
) -> dict:
    info = {"description": "FACAD (Yang et al., ECCV 2020), built by fashioncap", "split": split}
    info.update(seed=seed, split_strategy=strategy)
    images = [
        {"id": image_id, "file_name": view_file_name(it.id, view), "width": w, "height": h}
        for it, view, image_id, (w, h) in chosen
    ]
    annotations = [
        {
            "id": image_id,
            "image_id": image_id,
            "caption": it.caption,
            "attributes": it.attributes,
            "category": it.category,
        }
        for it, _, image_id, _ in chosen
    ]
    return {"info": info, "licenses": [], "images": images, "annotations": annotations}
