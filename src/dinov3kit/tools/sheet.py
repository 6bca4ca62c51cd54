"""Contact sheets: rows of captioned thumbnails (search queries and their results)."""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

from ..images import ImageLoadError
from .sources import load_image_file

PAD = 8
CAPTION = 22
BACKGROUND = (245, 245, 245)
QUERY_FRAME = (30, 120, 220)


def thumbnail(path: str, size: int) -> Image.Image:
    """`path` fitted into a `size` square (aspect kept, padded), or a grey tile saying it is unreadable."""
    tile = Image.new("RGB", (size, size), (225, 225, 225))
    try:
        image = load_image_file(path)
    except (ImageLoadError, OSError) as error:
        ImageDraw.Draw(tile).text((PAD, size // 2), f"unreadable\n{type(error).__name__}", fill="black", font=_font(12))
        return tile
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    tile.paste(image, ((size - image.width) // 2, (size - image.height) // 2))
    return tile


def contact_sheet(rows: Sequence[tuple[str, Sequence[tuple[str, str]]]], size: int = 160) -> Image.Image:
    """One line per (query image, [(result image, caption), ...]): the query framed, then its results."""
    columns = 1 + max((len(results) for _, results in rows), default=0)
    cell_w, cell_h = size + PAD, size + CAPTION + PAD
    sheet = Image.new("RGB", (PAD + columns * cell_w + PAD, PAD + len(rows) * cell_h), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    font = _font(14)
    for line, (query, results) in enumerate(rows):
        top = PAD + line * cell_h
        sheet.paste(thumbnail(query, size), (PAD, top))
        draw.rectangle([PAD - 3, top - 3, PAD + size + 2, top + size + 2], outline=QUERY_FRAME, width=3)
        draw.text((PAD, top + size + 3), "query", fill=QUERY_FRAME, font=font)
        for column, (path, caption) in enumerate(results, start=1):
            left = PAD + column * cell_w + PAD
            sheet.paste(thumbnail(path, size), (left, top))
            draw.text((left, top + size + 3), caption, fill="black", font=font)
    return sheet


def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)
