"""The CPU room: each op family's kernel for NumPy arrays, and only those.

nn/functional/ holds each op's math, its readable reference implementation and the one
dispatcher that picks what runs; on the CPU it picks these: blocked, threaded NumPy, each
tested against its op's reference. What they share (the thread pool, whole-array products
and sums on every core, scratch memory) is nn/runtime/.

    conv.py                 convolution as im2col + GEMM in channels-last memory, in chunks
    winograd.py             3x3 convolution by Winograd's F(2x2, 3x3)
    batch_norm.py           batch norm (+ residual + ReLU) in cache-sized blocks of rows
    batch_norm_blocks.py    its blocks of rows, its centring, the moments of a batch
    linear.py               the fully connected layer: its products on every core
    pooling.py              max pooling in channels-last memory
"""
