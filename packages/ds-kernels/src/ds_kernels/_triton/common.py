"""Triton device helpers shared by the optimizer kernels.

Note [masked and unmasked tiles]: each program updates one block of ``BLOCK`` elements. Blocks that
lie wholly inside their tensor take the unmasked variant of the tile, whose loads and stores
compile to 16-byte vector accesses; only a tensor's last, partial block takes the masked one. A
mask built from a size that the compiler cannot prove divisible (a size read from the pointer
table, an odd flat size) would otherwise scalarize every access.

Note [non-finite flag]: with a flag tensor, a program first reads it and writes nothing if it is
already set (so a flag computed before the launch, e.g. from the global gradient norm, turns the
whole step into a no-op), and a program that finds a non-finite gradient in its block writes
nothing for that block and sets the flag. Other programs of the same launch may already have
written their blocks by then: a step that raises the flag is a failed step, to be skipped by the
caller (as dynamic loss scaling does) rather than partially trusted.
"""

import triton
import triton.language as tl

FLT_MAX = tl.constexpr(3.4028234663852886e38)


@triton.jit
def load_f32(ptr, offs, mask, MASKED: tl.constexpr):
    """Load a block as float32 (masked lanes read 0)."""
    if MASKED:
        x = tl.load(ptr + offs, mask=mask, other=0.0)
    else:
        x = tl.load(ptr + offs)
    return x.to(tl.float32)


@triton.jit
def bf16_rtne(x):
    """float32 -> bfloat16, rounding to nearest even, spelled out in integer ops.

    The GPU's native conversion rounds the same way; Triton's interpreter truncates instead (and
    mishandles carries), so the kernels round explicitly to be bit-identical everywhere.
    """
    bits = x.to(tl.uint32, bitcast=True)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    rounded = tl.where(x != x, 0x7FC0, rounded)  # keep NaN a NaN (its low bits could carry to inf)
    return rounded.to(tl.uint16).to(tl.bfloat16, bitcast=True)


@triton.jit
def store_as(ptr, offs, x, mask, MASKED: tl.constexpr):
    """Store a float32 block, rounding to nearest even in the pointer's element type."""
    if ptr.dtype.element_ty == tl.bfloat16:
        y = bf16_rtne(x)
    else:
        y = x.to(ptr.dtype.element_ty)
    if MASKED:
        tl.store(ptr + offs, y, mask=mask)
    else:
        tl.store(ptr + offs, y)


@triton.jit
def nonfinite_count(x):
    """Number of inf/NaN lanes in a float32 block (NaN fails every comparison)."""
    return tl.sum(tl.where(tl.abs(x) <= FLT_MAX, 0, 1), axis=0)


@triton.jit
def read_skip(flag_ptr, HAS_FLAG: tl.constexpr):
    """The flag's value at program start (0.0 without a flag); see Note [non-finite flag]."""
    skip = 0.0
    if HAS_FLAG:
        skip = tl.load(flag_ptr).to(tl.float32)
    return skip


@triton.jit
def raise_flag(flag_ptr, bad):
    """Set the flag when this block saw ``bad`` > 0 non-finite values."""
    if bad > 0:
        tl.store(flag_ptr, 1.0)


@triton.jit
def read_inv_scale(scale_ptr, inv_scale, SCALE_ON_DEVICE: tl.constexpr):
    """1 / loss scale: the host value, or read from the device tensor."""
    if SCALE_ON_DEVICE:
        inv_scale = 1.0 / tl.load(scale_ptr).to(tl.float32)
    return inv_scale


@triton.jit
def one_minus_pow(step, ln_beta):
    """``1 - beta**step`` in float32 without cancellation: ``-expm1(step * ln(beta))``.

    Near ``beta**step == 1`` (early steps with beta2 = 0.999) a truncated series keeps full
    relative precision; elsewhere ``1 - exp(x)`` loses nothing.
    """
    x = step * ln_beta
    series = -x * (
        1.0
        + x
        / 2.0
        * (
            1.0
            + x
            / 3.0
            * (1.0 + x / 4.0 * (1.0 + x / 5.0 * (1.0 + x / 6.0 * (1.0 + x / 7.0 * (1.0 + x / 8.0)))))
        )
    )
    return tl.where(x > -0.5, series, 1.0 - tl.exp(x))


@triton.jit
def table_pointer(row_ptr, col: tl.constexpr, DT: tl.constexpr, ALIGNED: tl.constexpr):
    """Typed pointer from column ``col`` of a pointer-table row; ALIGNED promises 16-byte alignment
    so the unmasked tiles vectorize (Note [masked and unmasked tiles])."""
    ptr = tl.load(row_ptr + col).to(tl.pointer_type(DT))
    if ALIGNED:
        ptr = tl.multiple_of(ptr, 16)
    return ptr
