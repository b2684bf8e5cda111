"""The colour distortion of a batch on the GPU in one launch (the twin: color.py's NumPy ops).

On CuPy's own operations the colour jitter is sixteen gathers and scatters (four positions,
four ops, each on the images that have it there) of a few to a few dozen kernels each, and
the grayscale one more: about three hundred launches per view of a batch. Here one block of
threads takes one image through all of it, in place, the ops in that image's order:

    brightness  x = clip(x f)                      contrast  x = clip((x - mean_c) f + mean_c)
    saturation  x = clip(v - (v - x) s'/s)         hue       rotate h in HSV by delta
    grayscale   x = 0.2989 r + 0.5870 g + 0.1140 b, in every channel

with the formulas of color.py (read that first), in the images' precision, for each pixel,
and the contrast's channel means from a sum over the block's pixels. The random draws are
the CPU's (draw_jitter, draw_grayscale), one table row per image, so a seed makes the same
views on both devices, to float32 rounding.
"""
import numpy

from nn.functional.cuda.kernels import Kernel

from ._batch import apply_to_chosen
from .color import apply_jitter, rgb_to_grayscale

THREADS = 256
COLUMNS = 10  # a table row: jittered, grayscale, 4 op parameters, the 4 ops in order


def distortion_table(jittered, params, order, grayscale):
    """The host draws as one float64 (N, 10) table, one transfer to the device: per image,
    jittered, grayscale, the brightness, contrast, saturation and hue parameters, and the
    indices of the four ops in the order the image takes them."""
    return numpy.concatenate([jittered[:, None], grayscale[:, None], params.T, order],
                             axis=1).astype(numpy.float64)


def distort_twin(images, out, table, count, pixels):
    jittered, grayscale = table[:, 0] > 0, table[:, 1] > 0
    params, order = table[:, 2:6].T, table[:, 6:10].astype(numpy.int64)
    out[...] = apply_jitter(images, jittered, params, order)
    apply_to_chosen(out, grayscale, rgb_to_grayscale)


DISTORT = Kernel("color_distort", r"""
__device__ data_t clip01(data_t v) { return v < 0 ? (data_t)0 : (v > 1 ? (data_t)1 : v); }

extern "C" __global__ void color_distort(const data_t* images, data_t* out,
                                         const double* table, long long count,
                                         long long pixels) {
    // one block per image (3, H, W): the channels are `pixels` apart
    __shared__ double sums[3][256];
    __shared__ data_t means[3];
    long long n = blockIdx.x;
    const data_t* src = images + n * 3 * pixels;
    data_t* x = out + n * 3 * pixels;
    const double* row = table + n * 10;
    for (long long p = threadIdx.x; p < 3 * pixels; p += blockDim.x) x[p] = src[p];
    __syncthreads();
    for (int position = 0; position < 4 && row[0] > 0; position++) {
        int op = (int)row[6 + position];
        data_t f = (data_t)row[2 + op];
        if (op == 1) {                                   // contrast: the channel means first
            double s[3] = {0.0, 0.0, 0.0};
            for (long long p = threadIdx.x; p < pixels; p += blockDim.x)
                for (int c = 0; c < 3; c++) s[c] += (double)x[c * pixels + p];
            for (int c = 0; c < 3; c++) sums[c][threadIdx.x] = s[c];
            __syncthreads();
            for (int half = blockDim.x / 2; half > 0; half /= 2) {
                if (threadIdx.x < half)
                    for (int c = 0; c < 3; c++) sums[c][threadIdx.x] += sums[c][threadIdx.x + half];
                __syncthreads();
            }
            if (threadIdx.x < 3) means[threadIdx.x] = (data_t)(sums[threadIdx.x][0] / pixels);
            __syncthreads();
        }
        for (long long p = threadIdx.x; p < pixels; p += blockDim.x) {
            data_t r = x[p], g = x[pixels + p], b = x[2 * pixels + p];
            if (op == 0) {                               // brightness
                r = clip01(r * f); g = clip01(g * f); b = clip01(b * f);
            } else if (op == 1) {                        // contrast
                r = clip01((r - means[0]) * f + means[0]);
                g = clip01((g - means[1]) * f + means[1]);
                b = clip01((b - means[2]) * f + means[2]);
            } else if (op == 2) {                        // saturation, without HSV
                data_t v = fmax(r, fmax(g, b));
                data_t spread = v - fmin(r, fmin(g, b));
                data_t s = spread / (v > 0 ? v : (data_t)1);
                data_t scaled = fmin(s * f, (data_t)1);
                data_t stretch = s > 0 ? scaled / (s > 0 ? s : (data_t)1) : (data_t)1;
                r = clip01(v - (v - r) * stretch);
                g = clip01(v - (v - g) * stretch);
                b = clip01(v - (v - b) * stretch);
            } else {                                     // hue: to HSV, rotate, back
                data_t v = fmax(r, fmax(g, b));
                data_t spread = v - fmin(r, fmin(g, b));
                data_t safe = spread > 0 ? spread : (data_t)1;
                data_t s = v > 0 ? spread / (v > 0 ? v : (data_t)1) : (data_t)0;
                data_t sector = r == v ? (g - b) / safe
                              : (g == v ? (data_t)2 + (b - r) / safe : (data_t)4 + (r - g) / safe);
                data_t h = spread > 0 ? (sector < 0 ? sector + (data_t)6 : sector) / (data_t)6
                                      : (data_t)0;
                h = h + f;
                h = h - floor(h);
                data_t rgb[3];
                const data_t offsets[3] = {5, 3, 1};
                for (int c = 0; c < 3; c++) {
                    data_t turned = offsets[c] + (data_t)6 * h;
                    data_t k = turned >= 6 ? turned - (data_t)6 : turned;
                    data_t m = fmin(fmax(fmin(k, (data_t)4 - k), (data_t)0), (data_t)1);
                    rgb[c] = clip01(v - v * s * m);
                }
                r = rgb[0]; g = rgb[1]; b = rgb[2];
            }
            x[p] = r; x[pixels + p] = g; x[2 * pixels + p] = b;
        }
        __syncthreads();
    }
    if (row[1] > 0) {                                    // grayscale
        for (long long p = threadIdx.x; p < pixels; p += blockDim.x) {
            data_t gray = (data_t)0.2989 * x[p] + (data_t)0.5870 * x[pixels + p]
                          + (data_t)0.1140 * x[2 * pixels + p];
            x[p] = gray; x[pixels + p] = gray; x[2 * pixels + p] = gray;
        }
    }
}
""", distort_twin)


def distort_colors(images, jittered, params, order, grayscale):
    """color_jitter's and random_grayscale's effect for their draws, on a GPU batch (N, 3, H,
    W), as a new array: one launch (and one transfer of the draws)."""
    from autograd.backend import array_module
    xp = array_module(images)
    images = xp.ascontiguousarray(images)
    out = xp.empty_like(images)
    table = xp.asarray(distortion_table(jittered, params, order, grayscale))
    count, pixels = images.shape[0], images.shape[2] * images.shape[3]
    DISTORT.run(xp, (count,), (THREADS,),
                (images, out, table, numpy.int64(count), numpy.int64(pixels)),
                {"data_t": images.dtype})
    return out
