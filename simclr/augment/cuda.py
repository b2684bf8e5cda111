"""The augmentation of a batch on the GPU in four launches (the twins: the NumPy ops of
crop.py, color.py and blur.py, read those first).

On CuPy's own operations one view of a batch is about three hundred launches: the crop's
resampling matrices and products, the flip's gather and scatter, sixteen gathers and scatters
of the colour jitter (four positions, four ops, each on the images that have it there), the
grayscale, and for ImageNet the blur's two passes of a kernel per tap. Here:

    crop_resize_flip   one thread per output pixel: the bicubic weights of its crop box
                       computed on the spot (Pillow's, antialiased when shrinking), the
                       flip in which column it reads, the uint8 image read directly
    color_distort      one block of threads per image, through all of the colour ops below
    blur_rows, blur_columns   the separable Gaussian of each chosen image, zero-padded

The random draws are the CPU's (sample_crop_boxes, draw_flips, draw_jitter, draw_grayscale,
draw_blur), one table row per image and one transfer per kernel, so a seed makes the same
views on both devices, to float32 rounding. The colour ops, per pixel:

    brightness  x = clip(x f)                      contrast  x = clip((x - mean_c) f + mean_c)
    saturation  x = clip(v - (v - x) s'/s)         hue       rotate h in HSV by delta
    grayscale   x = 0.2989 r + 0.5870 g + 0.1140 b, in every channel

with the formulas of color.py, in the images' precision, and the contrast's channel means
from a sum over the block's pixels.
"""
import numpy

from autograd.backend import array_module
from nn.runtime.cuda import THREADS, Kernel, blocks_for

from ._batch import apply_to_chosen
from .blur import blur_kernel_size, convolve_axis, gaussian_kernels
from .color import apply_jitter, rgb_to_grayscale
from .crop import horizontal_flip, resized_crop, to_float_nchw

MAX_SHRINK = 15  # crop_resize_flip: a crop side at most this many times the output's (64 taps)
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
    xp = array_module(images)
    images = xp.ascontiguousarray(images)
    out = xp.empty(images.shape, images.dtype)          # C-contiguous: the kernel writes it flat
    table = xp.asarray(distortion_table(jittered, params, order, grayscale))
    count, pixels = images.shape[0], images.shape[2] * images.shape[3]
    DISTORT.run(xp, (count,), (THREADS,),
                (images, out, table, numpy.int64(count), numpy.int64(pixels)),
                {"data_t": images.dtype})
    return out


def crop_twin(images, out, table, count, height, width, out_height, out_width, in_is_byte):
    boxes, flips = table[:, :4], table[:, 4] > 0
    out[...] = apply_to_chosen(resized_crop(to_float_nchw(images), boxes,
                                            (out_height, out_width)), flips, horizontal_flip)


CROP = Kernel("crop_resize_flip", r"""
__device__ double cubic(double t) {                  // Keys' kernel, a = -0.5 (crop.py)
    const double a = -0.5;
    t = fabs(t);
    if (t < 1) return ((a + 2) * t - (a + 3)) * t * t + 1;
    if (t < 2) return (((t - 5) * t + 8) * t - 4) * a;
    return 0;
}

// The taps of output coordinate i along an axis of `size` input pixels, for the span
// [start, start + length) resized to `out` pixels: first tap, count, weights normalised.
__device__ int taps(double start, double length, long long size, long long out, long long i,
                    long long* first, double* weights) {
    double scale = length / out;
    double stretch = fmax(scale, 1.0);
    double centre = start + (i + 0.5) * scale;
    long long lo = (long long)floor(centre - 2 * stretch - 0.5);
    long long hi = (long long)ceil(centre + 2 * stretch - 0.5);
    if (lo < 0) lo = 0;
    if (hi > size - 1) hi = size - 1;
    double total = 0;
    int count = 0;
    for (long long j = lo; j <= hi && count < 64; j++, count++) {
        weights[count] = cubic((j + 0.5 - centre) / stretch);
        total += weights[count];
    }
    for (int k = 0; k < count; k++) weights[k] /= total;
    *first = lo;
    return count;
}

extern "C" __global__ void crop_resize_flip(const in_t* images, data_t* out, const double* table,
                                            long long count, long long height, long long width,
                                            long long out_height, long long out_width,
                                            int in_is_byte) {
    // images (N, H, W, 3) as stored (uint8 in [0, 255], or floats in [0, 1]); out (N, 3, H', W')
    long long pixels = out_height * out_width;
    long long index = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (index >= count * pixels) return;
    long long n = index / pixels, i = (index % pixels) / out_width, l = index % out_width;
    const double* row = table + n * 5;               // top, left, height, width, flipped
    long long source = row[4] > 0 ? out_width - 1 - l : l;   // the column of the unflipped crop
    double wy[64], wx[64];
    long long y0, x0;
    int ny = taps(row[0], row[2], height, out_height, i, &y0, wy);
    int nx = taps(row[1], row[3], width, out_width, source, &x0, wx);
    long long o = (n * 3 * out_height + i) * out_width + l;
    for (int c = 0; c < 3; c++) {
        double sum = 0;
        for (int y = 0; y < ny; y++) {
            double across = 0;
            for (int x = 0; x < nx; x++) {
                in_t v = images[((n * height + y0 + y) * width + x0 + x) * 3 + c];
                data_t value = in_is_byte ? (data_t)v / (data_t)255
                                          : fmin(fmax((data_t)v, (data_t)0), (data_t)1);
                across += (double)(data_t)wx[x] * (double)value;
            }
            sum += (double)(data_t)wy[y] * (double)(data_t)across;
        }
        data_t result = (data_t)sum;
        out[o + c * pixels] = result < 0 ? (data_t)0 : (result > 1 ? (data_t)1 : result);
    }
}
""", crop_twin, type_names=("in_t", "data_t"),
              variants=[{"in_t": dtype, "data_t": "float32"}
                        for dtype in ("uint8", "float32", "float64")])


def crop_resize_flip(images, boxes, flips, size):
    """to_float_nchw, resized_crop to `size` (H', W') and horizontal_flip of the images marked
    in `flips`, for a GPU batch of images (N, H, W, 3) as stored: float32 (N, 3, H', W'), one
    launch (and one transfer of the boxes and flips). A crop more than MAX_SHRINK times its
    output size (more taps than the kernel holds) takes the CPU's code, on the GPU."""
    xp = array_module(images)
    count, height, width = images.shape[:3]
    boxes = numpy.asarray(boxes, numpy.float64)
    if (boxes[:, 2:] > MAX_SHRINK * numpy.asarray(size)).any():
        return apply_to_chosen(resized_crop(to_float_nchw(images), boxes, size), flips,
                               horizontal_flip)
    out = xp.empty((count, 3) + tuple(size), dtype=xp.float32)
    table = xp.asarray(numpy.concatenate([numpy.asarray(boxes, numpy.float64),
                                          numpy.asarray(flips, numpy.float64)[:, None]], axis=1))
    images = xp.ascontiguousarray(images)
    CROP.run(xp, (blocks_for(out.size // 3, THREADS),), (THREADS,),
             (images, out, table) + tuple(numpy.int64(v) for v in (count, height, width) + size)
             + (numpy.int32(images.dtype == numpy.uint8),),
             {"in_t": images.dtype, "data_t": out.dtype})
    return out


def blur_twin(images, out, table, count, height, width, radius, axis):
    """One pass of gaussian_blur (blur.py) over the chosen images: down the rows (axis 0),
    or along them and clipped (axis 1); the others copied."""
    chosen, sigma = table[:, 0] > 0, table[:, 1]
    out[...] = images
    index = numpy.flatnonzero(chosen)
    if index.size:
        kernels = gaussian_kernels(sigma[index], 2 * radius + 1).astype(images.dtype)
        passed = convolve_axis(images[index], kernels, 2 + axis)
        out[index] = passed if axis == 0 else numpy.clip(passed, 0.0, 1.0)


BLUR_SOURCE = r"""
extern "C" __global__ void NAME(const data_t* images, data_t* out, const double* table,
                                long long count, long long height, long long width,
                                long long radius, long long axis) {
    // one pass of the separable blur along `axis` of (N, 3, H, W); the weights exp(-t^2 /
    // (2 sigma^2)) normalised over t = -radius..radius, zeros beyond the border ('SAME')
    long long pixels = height * width;
    long long index = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (index >= count * 3 * pixels) return;
    long long n = index / (3 * pixels), y = (index % pixels) / width, x = index % width;
    const double* row = table + n * 2;                   // chosen, sigma
    if (!(row[0] > 0)) { out[index] = images[index]; return; }
    double two_variances = 2.0 * (row[1] * row[1]), total = 0;
    for (long long t = -radius; t <= radius; t++) total += exp(-(double)(t * t) / two_variances);
    data_t sum = 0;
    for (long long t = -radius; t <= radius; t++) {   // in the order of blur.py's taps
        long long yy = AXIS_IS_ROWS ? y + t : y, xx = AXIS_IS_ROWS ? x : x + t;
        data_t weight = (data_t)(exp(-(double)(t * t) / two_variances) / total);
        data_t value = (yy < 0 || yy >= height || xx < 0 || xx >= width)
                       ? (data_t)0 : images[index + (yy - y) * width + (xx - x)];
        sum += weight * value;
    }
    out[index] = AXIS_IS_ROWS ? sum : (sum < 0 ? (data_t)0 : (sum > 1 ? (data_t)1 : sum));
}
"""
BLUR_ROWS = Kernel("blur_rows", BLUR_SOURCE.replace("NAME", "blur_rows")
                   .replace("AXIS_IS_ROWS", "1"), blur_twin)
BLUR_COLUMNS = Kernel("blur_columns", BLUR_SOURCE.replace("NAME", "blur_columns")
                      .replace("AXIS_IS_ROWS", "0"), blur_twin)


def blur(images, chosen, sigma):
    """apply_blur's effect (blur.py) on a GPU batch (N, 3, H, W), as a new array: two
    launches, down the rows then along them."""
    xp = array_module(images)
    images = xp.ascontiguousarray(images)     # the kernels read and write flat (N, 3, H, W)
    count, _, height, width = images.shape
    table = xp.asarray(numpy.stack([numpy.asarray(chosen, numpy.float64),
                                    numpy.asarray(sigma, numpy.float64)], axis=1))
    scalars = tuple(numpy.int64(v) for v in (count, height, width,
                                             blur_kernel_size(height) // 2))
    grid, types = (blocks_for(images.size, THREADS),), {"data_t": images.dtype}
    middle, out = xp.empty(images.shape, images.dtype), xp.empty(images.shape, images.dtype)
    BLUR_ROWS.run(xp, grid, (THREADS,), (images, middle, table)
                  + scalars + (numpy.int64(0),), types)
    BLUR_COLUMNS.run(xp, grid, (THREADS,), (middle, out, table) + scalars + (numpy.int64(1),),
                     types)
    return out
