"""The CUDA room: each op family's kernel for CuPy arrays, and only those.

nn/functional/ holds each op's math, its readable reference implementation and the one
dispatcher that picks what runs; on a GPU it picks these. Each uses our CUDA kernels where
CuPy's own operations would take many launches (nn/runtime/cuda.py: each kernel beside its
NumPy twin), and cuBLAS for the products.

    conv.py                 convolution: channels-last im2col and col2im kernels, cuBLAS GEMMs
    batch_norm.py           batch norm (+ residual + ReLU) in three launches each way
    batch_norm_kernels.py   its six kernels and their twins
    linear.py               the fully connected layer: cuBLAS's products
    loss.py                 cross-entropy: a block of threads per row
    pooling.py              max pooling: a running maximum over the window offsets
"""
