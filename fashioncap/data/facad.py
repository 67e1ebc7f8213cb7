"""Build a data dir from FACAD (Yang et al., ECCV 2020): one front image per item, its description, attributes
and category, split reproducibly. Every record left out is listed in build_report.json with its reason.

Record format: shared/data/facad_text_sample/README.md. Images follow the FACAD authors' layout,
`<IMG_ROOT>/<id>/<colour words joined by "_", "/" removed>/0.jpeg`; only the first colour's view "0" is used.
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

from fashioncap.data.check import ImageProblem, open_rgb
from fashioncap.data.download import DownloadJob, download_images, full_resolution_url
from fashioncap.io_utils import atomic_directory, safe_join, write_json_atomic

SPLIT_ORDER = ("train", "val", "test")
JPEG_QUALITY = 90


@dataclass(frozen=True)
class FacadItem:
    id: int
    caption: str
    attributes: list[str]
    category: int
    category_name: str
    source: Path  # the front image under IMG_ROOT
    url: str | None


class Skip(Exception):
    """A record left out: `field` says which part of it was wrong."""

    def __init__(self, field: str, reason: str):
        super().__init__(reason)
        self.field, self.reason = field, reason


def normalise_caption(text: str) -> str:
    """FACAD style for raw text (detail_info): lower case, words only, without the "DETAILS & CARE" heading."""
    text = re.sub(r"^\s*details\s*&\s*care\s*", "", text, flags=re.IGNORECASE)
    return " ".join(re.sub(r"[\W_]+", " ", text.lower()).split())


def colour_dir(colour: str) -> str:
    """The FACAD authors' folder name for a colour: '/' removed, words joined by '_' ("Black/ White" -> "Black_White")."""
    return "_".join(colour.replace("/", "").split())


def plural(name: str) -> str | None:
    """A plural surface form for SLS matching ("boot" -> "boots"); None when the name already ends in s."""
    if name.endswith(("ss", "sh", "ch", "x", "z")):
        return name + "es"
    if name.endswith("s"):
        return None
    if name.endswith("y") and len(name) > 1 and name[-2] not in "aeiou":
        return name[:-1] + "ies"
    return name + "s"


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
        field, caption = "detail_info", normalise_caption(details) if isinstance(details, str) else ""
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
    return FacadItem(
        id=item_id,
        caption=caption,
        attributes=list(dict.fromkeys(a for a in attr if a != "nah")),
        category=category,
        category_name=" ".join(name.lower().split()),
        source=source,
        url=full_resolution_url(url) if isinstance(url, str) and url else None,
    )


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
    seed: int = 0,
    workers: int = 16,
    timeout: float = 30.0,
    retries: int = 3,
    progress: bool = True,
    overwrite: bool = False,
) -> Path:
    """Build a FACAD data dir at `out_dir` (atomically: an interrupted build leaves nothing there).

    Items are ordered by `split_strategy` (`random`: shuffled with `seed`; `order`: meta-file order) and walked
    in that order until enough usable ones are found, so only the images that end up in the splits are
    downloaded and re-encoded. The usable items fill train, then val, then test.
    """
    from tqdm.auto import tqdm

    if split_strategy not in ("random", "order"):
        raise ValueError(f"split_strategy must be 'random' or 'order' (got {split_strategy!r})")
    requested = {"train": train, "val": val, "test": test}
    if min(requested.values()) < 0 or sum(requested.values()) == 0:
        raise ValueError(f"split sizes must be >= 0 and not all 0 (got {requested})")
    if Path(out_dir).exists() and not overwrite:  # fail before reading a large meta file or downloading
        raise FileExistsError(f"{out_dir} already exists (pass overwrite=True / --overwrite to replace it)")
    start = time.perf_counter()
    image_root = Path(image_root)
    skipped: list[dict] = []
    candidates: list[FacadItem] = []
    names: dict[int, str] = {}
    seen: set[int] = set()
    records = read_meta(meta)
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
        candidates.append(item)
    if split_strategy == "random":
        random.Random(seed).shuffle(candidates)

    needed = sum(requested.values())
    usable: list[tuple[FacadItem, tuple[int, int]]] = []
    downloaded_failures = 0
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        (tmp / "images").mkdir()
        position = 0
        with (
            ThreadPoolExecutor(max_workers=max(1, workers)) as pool,
            tqdm(total=needed, desc="facad", unit="img", disable=not progress) as bar,
        ):
            while len(usable) < needed and position < len(candidates):
                # Examine a little more than still missing, to absorb failures without a second round trip.
                missing = needed - len(usable)
                batch = candidates[position : position + missing + max(8, missing // 20)]
                position += len(batch)
                failed: dict[object, str] = {}
                if download:
                    jobs = [DownloadJob(it.id, it.url, it.source) for it in batch if it.url]
                    failed = download_images(jobs, workers, timeout, retries, progress=progress)
                    downloaded_failures += len(failed)
                    no_url = [it for it in batch if not it.url and not it.source.is_file()]
                    failed.update({it.id: "no image URL in the record" for it in no_url})
                encode = partial(_encode_item, failed=failed, out=tmp / "images", size=image_size)
                for item, result in zip(batch, pool.map(encode, batch), strict=True):
                    if isinstance(result, Skip):
                        skipped.append({"record": item.id, "field": result.field, "reason": result.reason})
                    elif len(usable) < needed:
                        usable.append((item, result))
                        bar.update()
                    else:  # examined beyond what the splits need: not part of the data dir
                        (tmp / "images" / f"{item.id}.jpg").unlink()

        sizes = split_sizes(requested, len(usable))
        offset = 0
        for split in SPLIT_ORDER:
            chosen = usable[offset : offset + sizes[split]]
            offset += sizes[split]
            write_json_atomic(
                tmp / "annotations" / f"{split}.json", _coco(chosen, split, seed, split_strategy), None
            )
        categories = {str(c): [n, p] if (p := plural(n)) else [n] for c, n in sorted(names.items())}
        write_json_atomic(tmp / "categories.json", categories)
        seconds = time.perf_counter() - start
        report = {
            "builder": "facad",
            "meta": str(meta),
            "image_root": str(image_root),
            "seed": seed,
            "split_strategy": split_strategy,
            "image_size": image_size,
            "resize": f"fit into {image_size}x{image_size}, aspect kept, never upscaled; RGB JPEG q{JPEG_QUALITY}",
            "max_words": max_words,
            "requested": requested,
            "counts": sizes,
            "records": len(records),
            "candidates": len(candidates),
            "examined": position,
            "download_failures": downloaded_failures,
            "seconds": round(seconds, 3),
            "images_per_second": round(len(usable) / seconds, 1) if seconds > 0 else None,
            "skipped": skipped,
        }
        write_json_atomic(tmp / "build_report.json", report)
    return Path(out_dir)


def _encode_item(item: FacadItem, failed: dict, out: Path, size: int) -> tuple[int, int] | Skip:
    if item.id in failed:
        return Skip("images.0", f"download failed: {failed[item.id]}")
    try:
        return encode_image(item.source, out / f"{item.id}.jpg", size)
    except ImageProblem as e:
        return Skip("image", f"{item.source}: {e}")


def _coco(chosen: list[tuple[FacadItem, tuple[int, int]]], split: str, seed: int, strategy: str) -> dict:
    info = {"description": "FACAD (Yang et al., ECCV 2020), built by fashioncap", "split": split}
    info.update(seed=seed, split_strategy=strategy)
    images = [{"id": it.id, "file_name": f"{it.id}.jpg", "width": w, "height": h} for it, (w, h) in chosen]
    annotations = [
        {
            "id": it.id,
            "image_id": it.id,
            "caption": it.caption,
            "attributes": it.attributes,
            "category": it.category,
        }
        for it, _ in chosen
    ]
    return {"info": info, "licenses": [], "images": images, "annotations": annotations}
