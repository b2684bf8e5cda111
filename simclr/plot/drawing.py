"""Text, ticks, legends and axes on a Pillow image: what charts.py draws its charts with.

Text uses Pillow's own font at a legible size (Pillow >= 10.1 with FreeType; older Pillows fall
back to its small bitmap font). Ticks fall on "nice" numbers: multiples of 1, 2 or 5 times a
power of ten, labelled with as many decimals as their step needs.
"""
import functools
import math

from PIL import Image, ImageDraw, ImageFont

# Okabe & Ito's colour-blind-safe palette (black as grey, their yellow last: it is faint on
# white), then two of Paul Tol's, for data sets of ten classes.
PALETTE = [(0, 114, 178), (230, 159, 0), (0, 158, 115), (213, 94, 0), (204, 121, 167),
           (86, 180, 233), (90, 90, 90), (136, 34, 85), (153, 153, 51), (240, 228, 66)]
TEXT, AXIS, GRID = (25, 25, 25), (90, 90, 90), (232, 232, 232)
MARKERS = ["circle", "square", "triangle", "diamond"]
SMALL, NORMAL, LARGE = 12, 14, 17  # font sizes in pixels
PAD = 10


@functools.lru_cache(maxsize=None)
def font(size=NORMAL):
    """Pillow's own font at `size` px (Pillow >= 10.1 with FreeType); else its small bitmap."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):
        return ImageFont.load_default()


def text_width(text, size=NORMAL):
    return max((font(size).getlength(line) for line in str(text).split("\n")), default=0)


def line_height(size=NORMAL):
    return font(size).getbbox("Ag")[3] + 3


def text_height(text, size=NORMAL):
    return line_height(size) * len(str(text).split("\n"))


def draw_text(draw, xy, text, size=NORMAL, align="left", fill=TEXT):
    """Text whose lines start at xy (align 'left'), are centred on x ('centre') or end at x
    ('right'); xy's y is the top of the first line."""
    x, y = xy
    for line in str(text).split("\n"):
        offset = {"left": 0, "centre": text_width(line, size) / 2,
                  "right": text_width(line, size)}[align]
        draw.text((x - offset, y), line, font=font(size), fill=fill)
        y += line_height(size)


def draw_vertical_text(image, centre, text, size=NORMAL):
    """Text turned a quarter left (an axis label of y), centred on `centre`."""
    label = Image.new("RGB", (int(text_width(text, size)) + 2, text_height(text, size)), "white")
    draw_text(ImageDraw.Draw(label), (0, 0), text, size)
    label = label.rotate(90, expand=True)
    image.paste(label, (int(centre[0] - label.width / 2), int(centre[1] - label.height / 2)))


def draw_title(draw, title, width):
    """The title centred at the top, first line large; returns the y below it."""
    if not title:
        return PAD
    first, *rest = str(title).split("\n")
    draw_text(draw, (width / 2, PAD), first, LARGE, "centre")
    y = PAD + line_height(LARGE)
    if rest:
        draw_text(draw, (width / 2, y), "\n".join(rest), NORMAL, "centre", AXIS)
        y += text_height("\n".join(rest))
    return y + PAD


def title_width(title):
    """The width a title needs, margins included."""
    if not title:
        return 0
    first, *rest = str(title).split("\n")
    return max(text_width(first, LARGE), text_width("\n".join(rest))) + 2 * PAD


def nice_ticks(low, high, count=5, min_step=0.0):
    """About `count` tick values at multiples of a step of 1, 2 or 5 times 10^k (at least
    min_step: 1 for whole numbers such as steps), covering [low, high]; returns (ticks, step).
    The first and last tick lie at or outside the range."""
    if not high > low:
        low, high = low - (abs(low) or 1) * 0.5, high + (abs(high) or 1) * 0.5
    raw = max((high - low) / count, min_step)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw * 0.999)
    first, last = math.floor(low / step + 1e-9), math.ceil(high / step - 1e-9)
    return [k * step for k in range(first, last + 1)], step


def format_tick(value, step):
    """A tick label with as many decimals as the step needs (0.25 -> 2, 200 -> 0)."""
    if abs(value) < step * 1e-6:
        return "0"
    if abs(value) >= 1e6 or step < 1e-4:
        return f"{value:.3g}"
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    return f"{value:.{decimals}f}"


def colour_of(index):
    return PALETTE[index % len(PALETTE)]


def draw_marker(draw, x, y, shape, colour, radius=4):
    box = [x - radius, y - radius, x + radius, y + radius]
    if shape == "square":
        draw.rectangle(box, fill=colour)
    elif shape == "triangle":
        r = radius + 1
        draw.polygon([(x, y - r), (x + r, y + radius), (x - r, y + radius)], fill=colour)
    elif shape == "diamond":
        draw.polygon([(x, y - radius - 1), (x + radius + 1, y), (x, y + radius + 1),
                      (x - radius - 1, y)], fill=colour)
    else:
        draw.ellipse(box, fill=colour)


# A legend entry: (label, colour, kind): kind "box" (a bar's colour), "dot" (a scatter's), or
# a line, with a marker of that shape or (None) without.

def legend_rows(entries, width):
    """The entries wrapped into rows that fit `width` px."""
    rows, row, used = [], [], 0
    for entry in entries:
        needed = 34 + text_width(entry[0]) + 18
        if row and used + needed > width:
            rows.append(row)
            row, used = [], 0
        row.append(entry)
        used += needed
    return rows + ([row] if row else [])


def draw_legend(draw, entries, top, width):
    """The legend, in centred rows from y = top; returns the y below it."""
    for row in legend_rows(entries, width - 2 * PAD):
        total = sum(34 + text_width(label) + 18 for label, _, _ in row) - 18
        x, middle = (width - total) / 2, top + line_height() / 2
        for label, colour, kind in row:
            if kind == "box":
                draw.rectangle([x + 8, middle - 6, x + 22, middle + 6], fill=colour)
            elif kind == "dot":
                draw_marker(draw, x + 14, middle, "circle", colour, radius=5)
            else:
                draw.line([x, middle, x + 28, middle], fill=colour, width=3)
                if kind:
                    draw_marker(draw, x + 14, middle, kind, colour)
            draw_text(draw, (x + 34, top), label)
            x += 34 + text_width(label) + 18
        top += line_height() + 4
    return top


class Axes:
    """A plot area `box` (left, top, right, bottom px) showing x_range by y_range; maps data
    to pixels (x on a log10 scale if x_log)."""

    def __init__(self, box, x_range, y_range, x_log=False):
        self.box, self.x_log = box, x_log
        self.x_range = tuple(math.log10(v) for v in x_range) if x_log else x_range
        self.y_range = y_range

    def px(self, x):
        left, _, right, _ = self.box
        low, high = self.x_range
        x = math.log10(x) if self.x_log else x
        return left + (right - left) * ((x - low) / (high - low) if high > low else 0.5)

    def py(self, y):
        _, top, _, bottom = self.box
        low, high = self.y_range
        return bottom - (bottom - top) * ((y - low) / (high - low) if high > low else 0.5)


def chart_frame(image, draw, *, title, x_label, y_label, x_ticks, y_ticks, legend=(),
                x_log=False):
    """Title, axes with grid lines and tick labels, axis labels and a legend under the chart.
    x_ticks, y_ticks: [(value, label)], their first and last values the ends of the axes.
    Returns the Axes of the plot area."""
    width, height = image.size
    top = draw_title(draw, title, width)
    legend_height = len(legend_rows(legend, width - 2 * PAD)) * (line_height() + 4)
    tick_width = max(text_width(label, SMALL) for _, label in y_ticks)
    left = PAD + text_height(y_label) + 8 + tick_width + 6
    right = width - PAD - text_width(x_ticks[-1][1], SMALL) / 2 - 4
    bottom = height - PAD - legend_height - text_height(x_label) - line_height(SMALL) - 14
    axes = Axes((left, top, right, bottom), (x_ticks[0][0], x_ticks[-1][0]),
                (y_ticks[0][0], y_ticks[-1][0]), x_log)
    for value, label in y_ticks:
        y = axes.py(value)
        draw.line([left, y, right, y], fill=GRID)
        draw_text(draw, (left - 6, y - line_height(SMALL) / 2), label, SMALL, "right")
    for value, label in x_ticks:
        x = axes.px(value)
        draw.line([x, top, x, bottom], fill=GRID)
        draw.line([x, bottom, x, bottom + 4], fill=AXIS)
        draw_text(draw, (x, bottom + 6), label, SMALL, "centre")
    draw.line([left, top, left, bottom, right, bottom], fill=AXIS, width=1)
    draw_text(draw, ((left + right) / 2, bottom + 10 + line_height(SMALL)), x_label, NORMAL,
              "centre")
    draw_vertical_text(image, (PAD + text_height(y_label) / 2, (top + bottom) / 2), y_label)
    draw_legend(draw, legend, height - PAD - legend_height, width)
    return axes


def value_ticks(values, count=5, include_zero=False):
    """Nice [(value, label)] ticks covering `values` (and 0 if include_zero); whole numbers
    only, when the values are all whole."""
    values = [float(v) for v in values] + ([0.0] if include_zero else [])
    whole = bool(values) and all(v.is_integer() for v in values)
    ticks, step = nice_ticks(min(values, default=0.0), max(values, default=1.0), count,
                             min_step=1.0 if whole else 0.0)
    return [(value, format_tick(value, step)) for value in ticks]


def log_ticks(xs):
    """Ticks of a log axis: at the data's x values when there are few, else powers of ten."""
    values = sorted(set(xs)) or [1.0]
    if len(values) > 12:
        values = [10.0 ** k for k in range(math.floor(math.log10(values[0])),
                                           math.ceil(math.log10(values[-1])) + 1)]
    return [(value, f"{value:g}") for value in values]
