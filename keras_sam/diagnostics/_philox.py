"""`tf.random.stateless_normal` in NumPy, so that every backend starts alike.

`hessian_eigenvalues` starts its Lanczos iteration from a seeded random
direction. TensorFlow draws it with `tf.random.stateless_normal(shape,
seed=[a, b])`; this module draws the same numbers without TensorFlow, so that
on JAX an unconverged estimate (few iterations) is the same number as on
TensorFlow, not merely an estimate of the same eigenvalue.

It follows TensorFlow's CPU kernels (`StatelessRandomGetKeyCounter`,
`StatelessRandomNormalV2` with Philox): the seed pair is scrambled into a
Philox-4x32-10 key and counter by one Philox call, each further call gives
four 32-bit words, and Box–Muller turns each pair of words into two normals.
The float32 arithmetic is TensorFlow's; log, sin and cos are evaluated in
float64 and rounded, where TensorFlow calls the C library's float32 functions,
which are not always correctly rounded: about one entry in a hundred differs
from TensorFlow's by a few units in its last place (at most 3 in 10⁶ draws on
glibc). That is far below the rounding of the float32 Hessian-vector products
the iteration then applies.
"""

from __future__ import annotations

import numpy as np

__all__ = ["stateless_normal"]

_M = (np.uint64(0xD2511F53), np.uint64(0xCD9E8D57))  # multipliers
_W = (np.uint32(0x9E3779B9), np.uint32(0xBB67AE85))  # key increments (Weyl)
_SEED_KEY = (np.uint32(0x3EC8F720), np.uint32(0x02461E29))
_LOW = np.uint64(0xFFFFFFFF)
_SHIFT = np.uint64(32)


def _philox(counter: list, key: tuple) -> list:
    """Philox-4x32-10 of each counter (4 uint32 arrays) under `key`."""
    c0, c1, c2, c3 = (np.asarray(c, np.uint32) for c in counter)
    k0, k1 = np.uint32(key[0]), np.uint32(key[1])
    with np.errstate(over="ignore"):
        for round_ in range(10):
            product0 = _M[0] * c0.astype(np.uint64)
            product1 = _M[1] * c2.astype(np.uint64)
            hi0, lo0 = (product0 >> _SHIFT).astype(np.uint32), (product0 & _LOW).astype(np.uint32)
            hi1, lo1 = (product1 >> _SHIFT).astype(np.uint32), (product1 & _LOW).astype(np.uint32)
            c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
            if round_ < 9:
                k0, k1 = k0 + _W[0], k1 + _W[1]
    return [c0, c1, c2, c3]


def _uniform(words: np.ndarray) -> np.ndarray:
    """TensorFlow's `Uint32ToFloat`: 23 random mantissa bits, in [0, 1)."""
    bits = (words & np.uint32(0x7FFFFF)) | np.uint32(127 << 23)
    return bits.view(np.float32) - np.float32(1.0)


def stateless_normal(shape, seed) -> np.ndarray:
    """`tf.random.stateless_normal(shape, seed)` (float32, mean 0, stddev 1).

    Args:
        shape: the output shape.
        seed: two non-negative integers, as TensorFlow's `seed` argument.
    """
    shape = tuple(int(n) for n in shape)
    size = int(np.prod(shape, dtype=np.int64))
    seed0, seed1 = (int(s) % 2**64 for s in seed)
    words = [seed0 & 0xFFFFFFFF, seed0 >> 32, seed1 & 0xFFFFFFFF, seed1 >> 32]
    mix = [int(w[()]) for w in _philox([np.array(w, np.uint32) for w in words], _SEED_KEY)]
    key = (mix[0], mix[1])
    # Call g (one per four outputs) runs on the 128-bit counter (0, 0, mix[2], mix[3]) + g.
    calls = np.arange((size + 3) // 4, dtype=np.uint64)
    base = mix[2] | mix[3] << 32  # the upper 64 bits; g never carries into them
    counter = [
        (calls & _LOW).astype(np.uint32),
        (calls >> _SHIFT).astype(np.uint32),
        np.full(calls.shape, base & 0xFFFFFFFF, np.uint32),
        np.full(calls.shape, base >> 32, np.uint32),
    ]
    x0, x1, x2, x3 = _philox(counter, key)
    pairs = [(x0, x1), (x2, x3)]
    out = np.empty((len(calls), 4), np.float32)
    for j, (first, second) in enumerate(pairs):
        u1 = np.maximum(_uniform(first), np.float32(1.0e-7))
        # `2.0f * M_PI * u` is evaluated in double, then stored as a float.
        v1 = (2.0 * np.pi * _uniform(second).astype(np.float64)).astype(np.float32)
        log_u1 = np.log(u1.astype(np.float64)).astype(np.float32)
        u2 = np.sqrt(np.float32(-2.0) * log_u1)
        sine = np.sin(v1.astype(np.float64)).astype(np.float32)
        cosine = np.cos(v1.astype(np.float64)).astype(np.float32)
        out[:, 2 * j] = sine * u2
        out[:, 2 * j + 1] = cosine * u2
    return out.reshape(-1)[:size].reshape(shape)
