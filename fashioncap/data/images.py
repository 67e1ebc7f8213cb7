"""Image decoding shared by the builders, the collator, `caption` and `report`.

An image counts as usable only if it decodes completely: truncated, zero-byte, corrupt and decompression-bomb
files are caught here, once, with a reason a person can act on.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

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
