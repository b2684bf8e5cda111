"""A picture of NT-Xent for a small batch: what the loss compares, and where its gradient pushes.

N images, two views each: rows 0..N-1 are the first views, rows N..2N-1 the second (simclr/loss.py),
labelled 1..N and 1'..N' here. With unit rows u = z / |z| and s_ik = u_i . u_k:

    p_ik   = exp(s_ik / T) / sum_{m != i} exp(s_im / T)          (k != i; the diagonal masked)
    loss   = (1 / 2N) sum_i -log p_i,pos(i),    pos(i) = i + N for i < N, i - N otherwise
    dloss / ds_ik = (p_ik - [k = pos(i)]) / (2N T)               (0 on the masked diagonal)

taking each entry s_ik as its own variable, as the loss reads the matrix (s_ik and s_ki are the
same number u_i . u_k, so the gradient with respect to u adds both: (G + G^T) u / T). Every
negative pulls its similarity down in proportion to how likely the softmax thinks it is; the
positive is pushed up by all of the probability the softmax gave to the others.
"""
import numpy

from . import canvas


def nt_xent_picture_data(z, temperature=0.5):
    """The arrays the picture draws, in float64, from projections z (2N, d) (an array or a
    Tensor): similarity (2N, 2N) s; masked (2N, 2N) bool, the diagonal; positives (2N,) the
    column pos(i) of each row; softmax (2N, 2N) p (0 where masked); gradient (2N, 2N)
    dloss / ds; loss, the mean over rows (equal to simclr.loss.nt_xent(z))."""
    z = numpy.asarray(getattr(z, "data", z), dtype="float64")
    if z.ndim != 2 or z.shape[0] % 2 or z.shape[0] < 4:
        raise ValueError(f"nt_xent_picture_data: expected z of shape (2N, d) with N >= 2, "
                         f"got shape {z.shape}")
    two_n = z.shape[0]
    u = z / numpy.linalg.norm(z, axis=1, keepdims=True)          # (2N, d), unit rows
    similarity = u @ u.T                                           # (2N, 2N), s_ik in [-1, 1]
    masked = numpy.eye(two_n, dtype=bool)
    positives = (numpy.arange(two_n) + two_n // 2) % two_n
    logits = numpy.where(masked, -numpy.inf, similarity / temperature)
    logits -= logits.max(axis=1, keepdims=True)                    # softmax is shift-invariant
    softmax = numpy.exp(logits)
    softmax /= softmax.sum(axis=1, keepdims=True)                  # exp(-inf) = 0: masked out
    rows = numpy.arange(two_n)
    target = numpy.zeros((two_n, two_n))
    target[rows, positives] = 1.0
    return {"similarity": similarity, "masked": masked, "positives": positives,
            "softmax": softmax, "gradient": (softmax - target) / (two_n * temperature),
            "loss": float(-numpy.log(softmax[rows, positives]).mean())}


def view_labels(two_n):
    """1..N for the first views, 1'..N' for the second."""
    n = two_n // 2
    return [str(i + 1) for i in range(n)] + [f"{i + 1}'" for i in range(n)]


def demo_projections(images=4, dim=8, noise=0.6, seed=0):
    """Projections (2N, d) of N made-up images whose two views agree up to noise: what a
    half-trained encoder might give."""
    rng = numpy.random.default_rng(seed)
    first = rng.standard_normal((images, dim))
    return numpy.concatenate([first, first + noise * rng.standard_normal((images, dim))])


def nt_xent_picture(z, temperature=0.5, row=0):
    """One image: the similarity matrix (positives outlined, the diagonal hatched), row `row`'s
    softmax, and the gradient of the loss with respect to every entry."""
    data = nt_xent_picture_data(z, temperature)
    two_n = len(data["positives"])
    if not 0 <= row < two_n:
        raise ValueError(f"row must be in 0..{two_n - 1} (2N = {two_n} views), got {row}")
    labels = view_labels(two_n)
    cell = 40 if two_n <= 12 else max(14, 480 // two_n)
    gradient_limit = float(numpy.abs(data["gradient"]).max())
    panels = [
        _matrix_panel(data["similarity"], 1.0, data, labels, cell, "{:.2f}",
                      "similarity s_ik = u_i . u_k"),
        _row_panel(data, row, labels, cell, temperature),
        _matrix_panel(data["gradient"], gradient_limit, data, labels, cell, "{:+.3f}",
                      "gradient dloss/ds_ik = (p_ik - [k = pos(i)]) / (2N T)"),
    ]
    title = (f"NT-Xent, N = {two_n // 2} images (2N = {two_n} views), temperature T = "
             f"{temperature:g}: loss = {data['loss']:.4f}")
    legend = ("orange outline: the positive pair (i, i') of each row;  hatched: the diagonal, "
              "masked (a view is not its own negative);  blue < 0 < red")
    return _side_by_side(panels, title, legend)


def _matrix_panel(values, limit, data, labels, cell, value_format, title):
    """A 2N x 2N matrix as coloured cells with their values, labelled rows and columns."""
    two_n = len(labels)
    margin = canvas.text_size("00'", canvas.NORMAL)[0] + 12
    top = 2 * canvas.line_height(canvas.LARGE) + 8
    width = max(margin + two_n * cell + 12, canvas.text_size(title, canvas.LARGE)[0] + 20)
    image, draw = canvas.blank(width, top + two_n * cell + 12)
    canvas.draw_text(draw, (10, 4), title, canvas.LARGE)
    show_values = cell >= 36
    for i in range(two_n):
        y = top + i * cell
        canvas.draw_text(draw, (margin - 8 - canvas.text_size(labels[i])[0], y + cell / 2 - 8),
                         labels[i])
        canvas.draw_text(draw, (margin + i * cell + cell / 2, top - 18), labels[i], centre=True)
        for k in range(two_n):
            box = (margin + k * cell, y, margin + (k + 1) * cell, y + cell)
            if data["masked"][i, k]:
                canvas.hatched_cell(draw, box)
            else:
                colour = canvas.diverging(values[i, k], limit)
                draw.rectangle(box, fill=colour, outline="white")
                if show_values:
                    canvas.draw_text(draw, ((box[0] + box[2]) / 2, y + cell / 2 - 7),
                                     value_format.format(values[i, k]), canvas.SMALL - 2,
                                     fill=canvas.TEXT if canvas.is_light(colour) else "white",
                                     centre=True)
        k = data["positives"][i]
        draw.rectangle((margin + k * cell, y, margin + (k + 1) * cell, y + cell),
                       outline=canvas.HIGHLIGHT, width=3)
    return image


def _row_panel(data, row, labels, cell, temperature):
    """Row `row`'s softmax over the other views, as bars; the positive's bar in orange."""
    two_n, p = len(labels), data["softmax"][row]
    positive = data["positives"][row]
    title = f"row {labels[row]}: softmax p_{labels[row]},k over k != {labels[row]}"
    note = f"-log p(positive {labels[positive]}) = {-numpy.log(p[positive]):.4f}"
    top, height = 2 * canvas.line_height(canvas.LARGE) + 8, two_n * cell
    width = max(two_n * cell + 60, canvas.text_size(title, canvas.LARGE)[0] + 20)
    image, draw = canvas.blank(width, top + height + 12)
    canvas.draw_text(draw, (10, 4), title, canvas.LARGE)
    canvas.draw_text(draw, (10, 6 + canvas.line_height(canvas.LARGE)), note, canvas.SMALL)
    left, base = 40, top + height - 24
    scale = (height - 60) / max(float(p.max()), 1e-12)
    draw.line([(left, base), (left + two_n * cell, base)], fill=canvas.LINE)
    for k in range(two_n):
        x0, x1 = left + k * cell + 4, left + (k + 1) * cell - 4
        if data["masked"][row, k]:
            canvas.hatched_cell(draw, (x0, base - 30, x1, base))
        else:
            colour = canvas.HIGHLIGHT if k == positive else (86, 140, 200)
            draw.rectangle((x0, base - p[k] * scale, x1, base), fill=colour)
            canvas.draw_text(draw, ((x0 + x1) / 2, base - p[k] * scale - 16), f"{p[k]:.2f}",
                             canvas.SMALL - 2, centre=True)
        canvas.draw_text(draw, ((x0 + x1) / 2, base + 4), labels[k], centre=True)
    return image


def _side_by_side(panels, title, legend):
    """Panels in a row under a title, a legend line below."""
    gap = 24
    width = sum(p.width for p in panels) + gap * (len(panels) + 1)
    width = max(width, canvas.text_size(legend, canvas.SMALL)[0] + 2 * gap)
    head = canvas.line_height(canvas.LARGE) + 20
    height = head + max(p.height for p in panels) + canvas.line_height(canvas.SMALL) + 20
    image, draw = canvas.blank(width, height)
    canvas.draw_text(draw, (gap, 10), title, canvas.LARGE)
    x = gap
    for panel in panels:
        image.paste(panel, (x, head))
        x += panel.width + gap
    canvas.draw_text(draw, (gap, height - canvas.line_height(canvas.SMALL) - 8), legend,
                     canvas.SMALL, fill=canvas.MUTED)
    return image
