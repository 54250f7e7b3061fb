"""Row-wise integer storage of low-frequency rows (compression kinds "int8" and "int4").

Each row x is stored as b-bit integers q = round((x − bias) / scale), clamped to
[0, 2^b − 1], with its own scale = (max x − min x) / (2^b − 1) and bias = min x, both fp16
(4 bytes a row, the layout of FBGEMM's fused row-wise int8 / int4 tables); int4 packs two
values a byte (low nibble first), so the dim must be even. The value read back is
q · scale + bias, computed in fp32 from the fp16 scale and bias.

Training (CompressedEmbeddings) keeps fp32 raw rows and reads them through `fake_quantize`:
the forward value is exactly what the served buffers give back, the gradient passes
straight through to the raw row. Serving (ServedEmbeddings) stores `pack`'s two buffers
per field and reads rows with `unpack`.
"""

from __future__ import annotations

import torch

ROW_BITS = {"int8": 8, "int4": 4}
QPARAM_BYTES = 4  # fp16 scale + fp16 bias per row


def row_bytes(kind: str, dim: int) -> int:
    """Bytes one row of `dim` values takes when stored as `kind`."""
    return dim * ROW_BITS[kind] // 8 + QPARAM_BYTES


def _qparams(x: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    lo, hi = x.min(dim=1).values, x.max(dim=1).values
    scale = ((hi - lo) / (2**bits - 1)).to(torch.float16)
    return scale, lo.to(torch.float16)


def _levels(x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor, bits: int) -> torch.Tensor:
    s = scale.float().unsqueeze(1)
    # a constant row (scale 0) stores level 0: its value is the bias
    q = torch.where(s > 0, (x - bias.float().unsqueeze(1)) / torch.where(s > 0, s, torch.ones_like(s)), torch.zeros_like(x))
    return q.round().clamp(0, 2**bits - 1)


def _value(q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return q * scale.float().unsqueeze(1) + bias.float().unsqueeze(1)


def fake_quantize(x: torch.Tensor, kind: str) -> torch.Tensor:
    """Rows x [n, X] with the values the stored form gives back; gradient straight through."""
    bits = ROW_BITS[kind]
    with torch.no_grad():
        scale, bias = _qparams(x, bits)
        stored = _value(_levels(x, scale, bias, bits), scale, bias)
    return x + (stored - x).detach()


@torch.no_grad()
def pack(x: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 [n, X·b/8] integers, fp16 [n, 2] scale and bias) of rows x [n, X]."""
    bits = ROW_BITS[kind]
    scale, bias = _qparams(x, bits)
    q = _levels(x, scale, bias, bits).to(torch.uint8)
    if bits == 4:
        q = q[:, 0::2] | (q[:, 1::2] << 4)
    return q, torch.stack([scale, bias], dim=1)


def unpack(q: torch.Tensor, qparams: torch.Tensor, kind: str) -> torch.Tensor:
    """fp32 rows [n, X] from `pack`'s buffers (rows already gathered)."""
    if ROW_BITS[kind] == 4:
        q = torch.stack([q & 0xF, q >> 4], dim=2).flatten(1)
    return _value(q.float(), qparams[:, 0], qparams[:, 1])
