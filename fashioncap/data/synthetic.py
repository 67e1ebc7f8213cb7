"""Synthetic fashion set: product-photo-style drawings with FACAD-style captions, built in seconds offline.

Every image shows one item (or a pair of shoes) on a plain light background. Category, colour, pattern and
one two-way shape attribute are drawn so that each is visible, and the caption names exactly what is drawn,
so a small model can learn to say it. The `pretrain` split carries short generic captions ("a red dress")
on its own images: a tiny base model learns every attribute word there before the trials fine-tune it to
the descriptive style of train/val/test.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from fashioncap.io_utils import atomic_directory, write_json_atomic

SPLITS = ("pretrain", "train", "val", "test")
# Bumped whenever the drawings or captions change, so `ensure_synthetic` rebuilds an older set.
# 2: a domed hat (was a mini-skirt look-alike), an open-front jacket, wide-leg jeans with a visible gap.
DRAWING_VERSION = 2
DEFAULT_SIZES = {"pretrain": 2000, "train": 1000, "val": 100, "test": 200}
BACKGROUND = (241, 240, 236)

COLOURS = {
    "red": (200, 35, 45),
    "blue": (45, 80, 195),
    "green": (40, 140, 65),
    "black": (28, 28, 30),
    "white": (252, 252, 252),
    "pink": (240, 135, 175),
    "yellow": (240, 200, 40),
    "grey": (128, 128, 132),
}
PATTERNS = ("solid", "striped", "dotted", "plaid")


@dataclass(frozen=True)
class Category:
    id: int
    noun: str  # the form captions use
    forms: tuple[str, ...]  # every surface form, for categories.json (plural and multi-word forms too)
    shapes: tuple[str, str]  # the two values of its shape attribute, written before the noun
    plural: bool = False  # captioned "a pair of ..." / "these ..."
    pair: str | None = None  # shoes drawn as a pair: "side" by side or "stacked"


CATEGORIES = (
    Category(1, "tee", ("tee", "tees", "t shirt", "t shirts"), ("short sleeve", "long sleeve")),
    Category(2, "dress", ("dress", "dresses"), ("sleeveless", "long sleeve")),
    Category(3, "skirt", ("skirt", "skirts"), ("mini", "midi")),
    Category(4, "jeans", ("jeans",), ("skinny", "wide leg"), plural=True),
    Category(5, "jacket", ("jacket", "jackets"), ("cropped", "longline")),
    Category(6, "sweater", ("sweater", "sweaters", "jumper", "jumpers"), ("crew neck", "turtleneck")),
    Category(7, "boots", ("boot", "boots"), ("ankle", "knee high"), True, "side"),
    Category(
        8,
        "sneakers",
        ("sneaker", "sneakers", "trainer", "trainers"),
        ("low top", "high top"),
        True,
        "stacked",
    ),
    Category(9, "sandals", ("sandal", "sandals"), ("flat", "high heel"), True, "stacked"),
    Category(10, "bag", ("bag", "bags", "handbag", "handbags"), ("tote", "crossbody")),
    Category(11, "hat", ("hat", "hats"), ("wide brim", "narrow brim")),
    Category(12, "scarf", ("scarf", "scarves"), ("fringed", "hemmed")),
)

# Descriptive (FACAD-style) templates, singular / plural: {a} "a" / "a pair of", {this} "this" / "these",
# {is} "is" / "are", {s} "s" / "" (verb ending).
TEMPLATES = (
    "{a} {pattern} {colour} {shape} {noun} for an easy everyday look",
    "{this} {colour} {shape} {noun} in a {pattern} design bring{s} polish to any outfit",
    "{a} classic {shape} {noun} rendered in {pattern} {colour} fabric",
    "{pattern} {colour} fabric shapes {this} {shape} {noun} with a modern feel",
    "{this} {shape} {noun} {is} cut in a {pattern} {colour} weave that pairs well with everything",
    "{a} {shape} {noun} in {colour} with a {pattern} look that is easy to style",
    "made for everyday wear {this} {pattern} {colour} {noun} {is} finished in a {shape} silhouette",
    "soft {colour} fabric in a {pattern} finish gives {this} {shape} {noun} a fresh look",
)
SHAPE_WORDS = frozenset(w for c in CATEGORIES for s in c.shapes for w in s.split())


# ---------------------------------------------------------------------------------------------- drawing
# A silhouette is a list of primitives in a unit box (x right, y down), drawn in order onto a mask:
# ("poly", points) and ("ellipse", box) fill; ("erase_poly", points) and ("erase_ellipse", box) cut a hole;
# ("stroke", points, width) is a filled thick line; ("line", points) is a detail line and ("band", points) a
# filled detail polygon, both drawn in the outline colour after filling.


def _mirror(points):
    return [(1.0 - x, y) for x, y in points]


def _top(kind: int, body_bottom: float, sleeves: str, width: float = 0.2, neck: str = "dip"):
    """Tee, sweater, jacket: a body with a neckline and short or long sleeves."""
    left, right = 0.5 - width, 0.5 + width
    body = [(left, 0.2), (0.42, 0.16), (0.5, 0.22 if neck == "dip" else 0.17), (0.58, 0.16), (right, 0.2)]
    body += [(right, body_bottom), (left, body_bottom)]
    if sleeves == "short":
        sleeve = [(left + 0.01, 0.2), (left - 0.16, 0.36), (left - 0.09, 0.44), (left, 0.36)]
    else:
        sleeve = [(left + 0.01, 0.2), (left - 0.15, 0.76), (left - 0.06, 0.78), (left, 0.4)]
    prims = [("poly", body), ("poly", sleeve), ("poly", _mirror(sleeve))]
    if neck == "turtle":
        prims.append(("poly", [(0.42, 0.07), (0.58, 0.07), (0.58, 0.2), (0.42, 0.2)]))
        prims.append(("line", [(0.42, 0.12), (0.58, 0.12)]))
    if kind == 2:  # sweater: a thick ribbed hem band and cuffs
        prims.append(("band", [(left, body_bottom - 0.08), (right, body_bottom - 0.08), (right, body_bottom),
                               (left, body_bottom)]))  # fmt: skip
        for side in (lambda pts: pts, _mirror):
            prims.append(("band", side([(left - 0.15, 0.7), (left - 0.06, 0.72), (left - 0.06, 0.78),
                                        (left - 0.15, 0.76)])))  # fmt: skip
    if kind == 3:  # jacket: worn open (a gap down the front, so no pattern hides it) with lapels beside it
        hem = body_bottom + 0.01
        prims.append(("erase_poly", [(0.46, 0.17), (0.54, 0.17), (0.54, hem), (0.46, hem)]))
        prims.append(("band", [(0.4, 0.16), (0.46, 0.17), (0.46, 0.36)]))
        prims.append(("band", [(0.6, 0.16), (0.54, 0.17), (0.54, 0.36)]))
    return prims


def _shoe(category: str, shape: str):
    """One shoe in side view, toe to the right, in its own unit box."""
    if category == "boots":
        top = 0.45 if shape == "ankle" else 0.02
        return [
            (
                "poly",
                [(0.22, top), (0.58, top), (0.6, 0.72), (0.9, 0.78), (0.96, 0.9), (0.96, 0.97), (0.2, 0.97)],
            ),
            ("line", [(0.2, 0.9), (0.96, 0.9)]),
        ]
    if category == "sneakers":
        top = 0.45 if shape == "low top" else 0.08
        return [
            (
                "poly",
                [(0.06, top), (0.42, top), (0.5, 0.5), (0.88, 0.66), (0.96, 0.8), (0.96, 0.94), (0.06, 0.94)],
            ),
            ("line", [(0.06, 0.82), (0.96, 0.82)]),
            ("line", [(0.5, 0.52), (0.62, 0.64)]),
        ]
    # sandals: a sole (flat, or raised on a heel) with straps
    if shape == "flat":
        sole = [(0.04, 0.82), (0.96, 0.82), (0.96, 0.94), (0.04, 0.94)]
        straps = [("stroke", [(0.7, 0.82), (0.78, 0.55), (0.86, 0.82)], 0.07)]
        straps.append(("stroke", [(0.12, 0.82), (0.2, 0.5), (0.3, 0.82)], 0.07))
    else:
        sole = [
            (0.04, 0.3),
            (0.22, 0.3),
            (0.66, 0.8),
            (0.96, 0.8),
            (0.96, 0.92),
            (0.6, 0.92),
            (0.22, 0.44),
            (0.2, 0.96),
            (0.12, 0.96),
            (0.12, 0.42),
            (0.04, 0.42),
        ]
        straps = [("stroke", [(0.74, 0.8), (0.8, 0.56), (0.88, 0.8)], 0.07)]
        straps.append(("stroke", [(0.06, 0.3), (0.14, 0.08), (0.22, 0.3)], 0.07))
    return [("poly", sole), *straps]


def _place(prims, x0: float, y0: float, w: float, h: float):
    """Map primitives from a unit box into the box (x0, y0, w, h) of the picture's unit box."""

    def tx(points):
        return [(x0 + x * w, y0 + y * h) for x, y in points]

    out = []
    for prim in prims:
        if prim[0] == "stroke":
            out.append(("stroke", tx(prim[1]), prim[2] * w))
        elif prim[0] in ("ellipse", "erase_ellipse"):
            (a, b), (c, d) = tx([prim[1][:2], prim[1][2:]])
            out.append((prim[0], (a, b, c, d)))
        else:
            out.append((prim[0], tx(prim[1])))
    return out


def silhouette(category: Category, shape: str) -> list:
    """Primitives of one item; the first value of `category.shapes` and the second look visibly different."""
    first = shape == category.shapes[0]
    name = category.noun
    if name == "tee":
        return _top(1, 0.86, "short" if first else "long", width=0.18)
    if name == "sweater":
        return _top(2, 0.84, "long", width=0.22, neck="dip" if first else "turtle")
    if name == "jacket":
        return _top(3, 0.6 if first else 0.92, "long", width=0.2, neck="flat")
    if name == "dress":
        bodice = [(0.4, 0.14), (0.6, 0.14), (0.62, 0.42), (0.82, 0.93), (0.18, 0.93), (0.38, 0.42)]
        prims = [("poly", bodice), ("line", [(0.38, 0.42), (0.62, 0.42)])]
        if first:
            prims += [
                ("stroke", [(0.42, 0.14), (0.43, 0.04)], 0.03),
                ("stroke", [(0.58, 0.14), (0.57, 0.04)], 0.03),
            ]
        else:
            sleeve = [(0.41, 0.13), (0.22, 0.6), (0.29, 0.63), (0.39, 0.3)]
            prims += [("poly", sleeve), ("poly", _mirror(sleeve))]
        return prims
    if name == "skirt":
        bottom, spread = (0.52, 0.26) if first else (0.9, 0.2)
        return [
            ("poly", [(0.32, 0.16), (0.68, 0.16), (0.68, 0.22), (0.32, 0.22)]),
            ("poly", [(0.33, 0.22), (0.67, 0.22), (1 - spread, bottom), (spread, bottom)]),
        ]
    if name == "jeans":
        hem = (0.44, 0.36) if first else (0.41, 0.16)  # inner and outer x of the left hem
        leg = [(0.3, 0.14), (0.5, 0.14), (0.5, 0.36), (hem[0], 0.94), (hem[1], 0.94), (0.3, 0.36)]
        return [
            ("poly", leg),
            ("poly", _mirror(leg)),
            ("line", [(0.3, 0.19), (0.7, 0.19)]),
            ("line", [(0.5, 0.19), (0.5, 0.34)]),
        ]
    if category.pair == "side":
        shoe = _shoe(name, shape)
        return _place(shoe, 0.02, 0.05, 0.46, 0.9) + _place(shoe, 0.52, 0.05, 0.46, 0.9)
    if category.pair == "stacked":
        shoe = _shoe(name, shape)
        return _place(shoe, 0.08, 0.14, 0.84, 0.36) + _place(shoe, 0.08, 0.52, 0.84, 0.36)
    if name == "bag":
        if first:  # tote: two short handles over a wide body
            return [
                ("ellipse", (0.32, 0.2, 0.68, 0.6)),
                ("erase_ellipse", (0.38, 0.26, 0.62, 0.6)),
                ("poly", [(0.2, 0.42), (0.8, 0.42), (0.86, 0.9), (0.14, 0.9)]),
            ]
        return [
            ("ellipse", (0.18, 0.04, 0.82, 0.8)),
            ("erase_ellipse", (0.22, 0.08, 0.78, 0.76)),
            ("poly", [(0.3, 0.56), (0.7, 0.56), (0.7, 0.86), (0.3, 0.86)]),
            ("line", [(0.3, 0.68), (0.7, 0.68)]),
        ]
    if name == "hat":  # a round crown with a ribbon band on a flat brim: nothing else is domed
        brim = (0.0, 0.56, 1.0, 0.76) if first else (0.2, 0.58, 0.8, 0.74)
        return [
            ("ellipse", (0.3, 0.22, 0.7, 1.0)),
            ("erase_poly", [(0.0, 0.64), (1.0, 0.64), (1.0, 1.0), (0.0, 1.0)]),
            ("ellipse", brim),
            ("band", [(0.3, 0.5), (0.7, 0.5), (0.7, 0.6), (0.3, 0.6)]),
        ]
    # scarf: a loop around a (missing) neck and two hanging ends; a long fringe or a hem line at each end
    prims = [
        ("ellipse", (0.3, 0.02, 0.7, 0.36)),
        ("erase_ellipse", (0.37, 0.08, 0.63, 0.3)),
        ("poly", [(0.3, 0.22), (0.44, 0.28), (0.46, 0.78), (0.32, 0.78)]),
        ("poly", [(0.5, 0.3), (0.64, 0.24), (0.72, 0.66), (0.58, 0.7)]),
    ]
    if first:
        for x0, y0 in ((0.32, 0.78), (0.58, 0.69)):
            prims += [
                ("stroke", [(x0 + 0.01 + i * 0.03, y0), (x0 + 0.01 + i * 0.03, y0 + 0.18)], 0.02)
                for i in range(5)
            ]
    else:
        prims += [("line", [(0.32, 0.73), (0.46, 0.73)]), ("line", [(0.57, 0.65), (0.71, 0.61)])]
    return prims


def _contrast(rgb) -> tuple[int, int, int]:
    """The second colour of a pattern: white on dark colours, near-black on light ones."""
    luminance = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    return (250, 250, 250) if luminance < 140 else (35, 35, 40)


def _texture(size: int, rgb, pattern: str, rng: np.random.Generator) -> Image.Image:
    """A full-canvas fill in `pattern`; the period scales with the image so 64px still shows it."""
    base = np.array(rgb, dtype=np.float32)
    if pattern == "solid":
        return Image.new("RGB", (size, size), tuple(rgb))
    other = np.array(_contrast(rgb), dtype=np.float32)
    period = max(8, size // 8)
    px, py = rng.integers(0, period, size=2)
    yy, xx = np.mgrid[0:size, 0:size]
    if pattern == "striped":
        weight = (((yy + py) // (period // 2)) % 2).astype(np.float32)
    elif pattern == "dotted":  # staggered rows of small dots
        row = (yy + py) // period
        dx = (xx + px + (row % 2) * (period // 2)) % period - period / 2
        dy = (yy + py) % period - period / 2
        weight = (dx * dx + dy * dy <= (period * 0.22) ** 2).astype(np.float32)
    else:  # plaid: thin crossing bands, darker where they meet
        band = max(2, period // 4)
        weight = 0.5 * (((xx + px) % period) < band) + 0.5 * (((yy + py) % period) < band)
    pixels = base + (other - base) * weight[..., None]
    return Image.fromarray(pixels.astype(np.uint8), "RGB")


def draw_item(size: int, category: Category, colour: str, pattern: str, shape: str, rng) -> Image.Image:
    """Render one product photo: scaled 85-100% and shifted a few pixels, with a darker outline."""
    scale = rng.uniform(0.85, 1.0)
    shift = rng.uniform(-1.0, 1.0, size=2) * size * 0.05
    extent = size * scale
    ox = (size - extent) / 2 + shift[0]
    oy = (size - extent) / 2 + shift[1]

    def px(points):
        return [(ox + x * extent, oy + y * extent) for x, y in points]

    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    details = []
    for prim in silhouette(category, shape):
        kind = prim[0]
        if kind in ("poly", "erase_poly"):
            draw.polygon(px(prim[1]), fill=255 if kind == "poly" else 0)
        elif kind in ("ellipse", "erase_ellipse"):
            (a, b), (c, d) = px([prim[1][:2], prim[1][2:]])
            draw.ellipse((a, b, c, d), fill=255 if kind == "ellipse" else 0)
        elif kind == "stroke":
            draw.line(px(prim[1]), fill=255, width=max(1, round(prim[2] * extent)))
        else:
            details.append((kind, px(prim[1])))
    rgb = COLOURS[colour]
    picture = Image.new("RGB", (size, size), BACKGROUND)
    picture.paste(_texture(size, rgb, pattern, rng), (0, 0), mask)
    # Outline = mask minus its erosion: white items stay visible on the light background.
    line_width = max(1, size // 64)
    eroded = mask.filter(ImageFilter.MinFilter(2 * line_width + 1))
    edge = Image.fromarray(np.asarray(mask) & ~np.asarray(eroded))
    outline = tuple(int(c * 0.55) for c in rgb) if colour != "white" else (150, 150, 150)
    picture.paste(outline, (0, 0), edge)
    pen = ImageDraw.Draw(picture)
    band = outline if sum(rgb) > 150 else (120, 120, 124)  # a dark item's outline would hide its bands
    for kind, points in details:
        if kind == "band":
            pen.polygon(points, fill=band)
        else:
            pen.line(points, fill=outline, width=line_width)
    return picture


# ---------------------------------------------------------------------------------------------- captions


def _attribute_words(caption: str, words: set[str]) -> list[str]:
    seen: list[str] = []
    for token in caption.split():
        if token in words and token not in seen:
            seen.append(token)
    return seen


def describe(category: Category, colour: str, pattern: str, shape: str, rng, generic: bool) -> str:
    """A caption naming what is drawn: a FACAD-style sentence, or a short generic one for pretraining."""
    plural = category.plural
    a = "a pair of" if plural else "a"
    if generic:  # colour always; pattern and shape in about half of the captions each
        words = [a]
        if rng.random() < 0.5:
            words += [pattern, colour] if rng.random() < 0.5 else [colour, pattern]
        else:
            words.append(colour)
        if rng.random() < 0.5:
            words.append(shape)
        return " ".join([*words, category.noun])
    template = TEMPLATES[rng.integers(len(TEMPLATES))]
    return template.format(
        a=a,
        this="these" if plural else "this",
        s="" if plural else "s",
        **{"is": "are" if plural else "is"},
        pattern=pattern,
        colour=colour,
        shape=shape,
        noun=category.noun,
    )


# ---------------------------------------------------------------------------------------------- build


def categories_json() -> dict[str, list[str]]:
    return {str(c.id): list(c.forms) for c in CATEGORIES}


def _build_split(out: Path, split: str, count: int, size: int, seed: int) -> dict:
    rng = np.random.default_rng(np.random.SeedSequence([seed, SPLITS.index(split)]))
    image_dir = out / "images" / split
    image_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for index in range(count):
        category = CATEGORIES[rng.integers(len(CATEGORIES))]
        colour = list(COLOURS)[rng.integers(len(COLOURS))]
        pattern = PATTERNS[rng.integers(len(PATTERNS))]
        shape = category.shapes[rng.integers(2)]
        picture = draw_item(size, category, colour, pattern, shape, rng)
        file_name = f"{split}/{index:06d}.png"
        picture.save(out / "images" / file_name, format="PNG", compress_level=1)
        caption = describe(category, colour, pattern, shape, rng, generic=split == "pretrain")
        words = {colour, pattern, *shape.split(), category.noun}
        image_id = index + 1
        images.append({"id": image_id, "file_name": file_name, "width": size, "height": size})
        annotations.append(
            {
                "id": image_id,
                "image_id": image_id,
                "caption": caption,
                "attributes": _attribute_words(caption, words),
                "category": category.id,
            }
        )
    info = {
        "description": "fashioncap synthetic fashion set",
        "split": split,
        "seed": seed,
        "image_size": size,
    }
    return {"info": info, "licenses": [], "images": images, "annotations": annotations}


def build_synthetic(
    out_dir: str | Path,
    train: int = DEFAULT_SIZES["train"],
    val: int = DEFAULT_SIZES["val"],
    test: int = DEFAULT_SIZES["test"],
    pretrain: int = DEFAULT_SIZES["pretrain"],
    image_size: int = 64,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Build the set into a temporary directory and move it to `out_dir` when complete.

    Each split draws from its own random stream, so changing one split's size leaves the others unchanged.
    """
    if image_size < 32:
        raise ValueError(f"image_size must be at least 32 (got {image_size})")
    counts = {"pretrain": pretrain, "train": train, "val": val, "test": test}
    if any(n < 0 for n in counts.values()):
        raise ValueError(f"split sizes must be >= 0 (got {counts})")
    start = time.perf_counter()
    out_dir = Path(out_dir)
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        write_json_atomic(tmp / "categories.json", categories_json())
        for split, count in counts.items():
            coco = _build_split(tmp, split, count, image_size, seed)
            write_json_atomic(tmp / "annotations" / f"{split}.json", coco, indent=None)
        seconds = time.perf_counter() - start
        total = sum(counts.values())
        report = {
            "builder": "synthetic",
            "version": DRAWING_VERSION,
            "seed": seed,
            "image_size": image_size,
            "counts": counts,
            "seconds": round(seconds, 3),
            "images_per_second": round(total / seconds, 1) if seconds > 0 else None,
            "skipped": [],
        }
        write_json_atomic(tmp / "build_report.json", report)
    return out_dir


def ensure_synthetic(out_dir: str | Path, **kwargs) -> Path:
    """Build the synthetic set unless `out_dir` already holds one built with the same settings (the demo's entry).

    A synthetic set built with other settings is rebuilt; a directory that is not a synthetic set is never replaced.
    """
    out_dir = Path(out_dir)
    settings = {**DEFAULT_SIZES, "image_size": 64, "seed": 0, **kwargs}
    report_path = out_dir / "build_report.json"
    if report_path.is_file():
        report = json.loads(report_path.read_text())
        wanted = {
            "version": DRAWING_VERSION,
            "counts": {s: settings[s] for s in SPLITS},
            "image_size": settings["image_size"],
            "seed": settings["seed"],
        }
        if report.get("builder") == "synthetic":
            if all(report.get(k) == v for k, v in wanted.items()):
                return out_dir
            return build_synthetic(out_dir, overwrite=True, **settings)
    return build_synthetic(out_dir, **settings)
