"""The Triton form of every surrogate of __init__.py, same ids, same order of operations."""
import triton
import triton.language as tl

HALF_PI = tl.constexpr(1.5707963267948966)


@triton.jit
def surrogate_grad(u, alpha, KIND: tl.constexpr):
    """d z / d u at u for surrogate id KIND (kernels.surrogate)."""
    if KIND == 1:
        d = alpha * tl.abs(u) + 1.0
        r = 1.0 / (d * d)
    elif KIND == 2:
        y = (alpha * HALF_PI) * u
        r = 1.0 / (y * y + 1.0) * (alpha * 0.5)
    elif KIND == 3:
        s = tl.sigmoid(alpha * u)
        r = s * (1.0 - s) * alpha
    elif KIND == 4:
        r = tl.full(u.shape, 1.0, u.dtype)
    elif KIND == 5:
        r = tl.maximum(1.0 - alpha * tl.abs(u), 0.0) * alpha
    elif KIND == 6:
        e = tl.exp(-alpha * u)
        r = alpha * e / ((e + 1) * (e + 1))
    elif KIND == 7:
        r = tl.where(u >= 0, -alpha, alpha)
    else:
        r = tl.zeros(u.shape, u.dtype)
    return r
