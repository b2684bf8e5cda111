"""What the kit's pictures are drawn with: Pillow alone, a few primitives (text, boxes, arrows,
a diverging colour scale, hatching for a masked cell) on the charts' fonts, sizes and text colour
(simclr/plot/drawing.py)."""
import math

from PIL import Image, ImageDraw

from simclr.plot.drawing import LARGE, NORMAL, SMALL, TEXT, font, line_height  # noqa: F401

LINE, MUTED = (110, 110, 110), (150, 150, 150)
LEAF, PARAMETER = (219, 233, 246), (253, 226, 196)    # light blue, light orange
CONSTANT, OPERATION = (236, 236, 236), (255, 255, 255)
HIGHLIGHT = (213, 94, 0)                  # orange (Okabe & Ito): the positives
MASKED, HATCH = (225, 225, 225), (175, 175, 175)


def text_size(text, size=NORMAL):
    """(width, height) of text of one or more lines."""
    lines = str(text).split("\n")
    return (max(font(size).getlength(line) for line in lines), line_height(size) * len(lines))


def draw_text(draw, xy, text, size=NORMAL, fill=TEXT, centre=False):
    """Text whose first line's top is at xy's y; its lines start at x, or are centred on x."""
    x, y = xy
    for line in str(text).split("\n"):
        offset = font(size).getlength(line) / 2 if centre else 0
        draw.text((x - offset, y), line, font=font(size), fill=fill)
        y += line_height(size)


def arrow(draw, start, end, fill=LINE, head=7):
    """A line from start to end with an arrowhead at end."""
    draw.line([start, end], fill=fill, width=1)
    angle = math.atan2(end[1] - start[1], end[0] - start[0])
    left = (end[0] - head * math.cos(angle - 0.4), end[1] - head * math.sin(angle - 0.4))
    right = (end[0] - head * math.cos(angle + 0.4), end[1] - head * math.sin(angle + 0.4))
    draw.polygon([end, left, right], fill=fill)


def diverging(value, limit):
    """A colour for value in [-limit, limit]: blue below zero, white at zero, red above
    (colour-blind-safe ends)."""
    t = 0.0 if limit <= 0 else max(-1.0, min(1.0, value / limit))
    end = (33, 102, 172) if t < 0 else (178, 24, 43)
    return tuple(int(round(255 + (e - 255) * abs(t))) for e in end)


def is_light(colour):
    return 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2] > 140


def hatched_cell(draw, box):
    """A masked cell: light grey with diagonal hatching."""
    x0, y0, x1, y1 = box
    draw.rectangle(box, fill=MASKED)
    for offset in range(0, int(x1 - x0 + y1 - y0), 6):
        start = (x0 + offset, y0) if offset <= x1 - x0 else (x1, y0 + offset - (x1 - x0))
        end = (x0, y0 + offset) if offset <= y1 - y0 else (x0 + offset - (y1 - y0), y1)
        draw.line([start, end], fill=HATCH)


def blank(width, height):
    image = Image.new("RGB", (int(math.ceil(width)), int(math.ceil(height))), "white")
    return image, ImageDraw.Draw(image)
