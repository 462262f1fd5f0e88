"""The scan directions of GroupMamba, defined once.

A GroupMamba layer splits its channels into four groups and scans each group's H x W map
as a 1-D sequence of ``L = H * W`` tokens, every group in its own direction. In the
released group order (:data:`SCAN_DIRECTIONS`):

=============  ===========================================================================
``row``        row-major: left to right along a row, rows top to bottom
               (sequence position ``s`` is pixel ``(s // W, s % W)``).
``col``        column-major: top to bottom along a column, columns left to right
               (position ``s`` is pixel ``(s % H, s // H)``).
``row_rev``    ``row`` read backwards (position ``s`` is row-major position ``L - 1 - s``).
``col_rev``    ``col`` read backwards (position ``s`` is column-major position ``L - 1 - s``).
=============  ===========================================================================

A direction's *code* is the small integer the fused Triton kernels receive instead of the
name (:data:`DIRECTION_CODES`, :func:`direction_codes`): a kernel cannot take strings, and
with one int32 code per group (a tensor it loads by group index) a single launch scans
all groups, each mapping sequence positions to tokens by index arithmetic
(``_token_index`` in :mod:`.selective_scan_triton`: ``code >= 2`` reverses the sequence,
an odd code reads column-major) rather than through flipped or transposed copies. The
code of a direction is its position in :data:`SCAN_DIRECTIONS`: row 0, col 1, row_rev 2,
col_rev 3.

The PyTorch paths reorder tokens with the helpers below: :func:`flatten_in_direction` /
:func:`unflatten_from_direction` for channels-first maps (B, C, H, W) <-> (B, C, L), and
:func:`flatten_channels_last` / :func:`unflatten_channels_last` for channels-last maps
(B, H, W, C) <-> (B, C, L), written through the channels-first pair. They return views
(plus a ``flip`` copy for the reversed directions): values are moved, never computed.
"""
from typing import Iterable, List

import torch

__all__ = ['SCAN_DIRECTIONS', 'DIRECTION_CODES', 'direction_codes', 'check_direction',
           'flatten_in_direction', 'unflatten_from_direction', 'flatten_channels_last',
           'unflatten_channels_last']

# Scan directions of the four groups, in the released order.
SCAN_DIRECTIONS = ('row', 'col', 'row_rev', 'col_rev')

# Direction name -> the code the Triton kernels understand (its index above).
DIRECTION_CODES = {name: code for code, name in enumerate(SCAN_DIRECTIONS)}


def check_direction(direction: str) -> str:
    """``direction`` if it is one of :data:`SCAN_DIRECTIONS`, else a ``ValueError``."""
    if direction not in SCAN_DIRECTIONS:
        raise ValueError(f'Unknown scan direction {direction!r}; '
                         f'expected one of {SCAN_DIRECTIONS}.')
    return direction


def direction_codes(directions: Iterable) -> List[int]:
    """Direction names (``row``, ...) or codes -> the codes of :data:`DIRECTION_CODES`.

    Unknown names and codes outside ``0 .. 3`` raise a ``ValueError``.
    """
    codes = []
    for x in directions:
        if isinstance(x, str):
            codes.append(DIRECTION_CODES[check_direction(x)])
            continue
        code = int(x)
        if not 0 <= code < len(SCAN_DIRECTIONS):
            raise ValueError(f'Unknown scan direction code {x!r}; expected one of '
                             f'{sorted(DIRECTION_CODES.values())} ({DIRECTION_CODES}).')
        codes.append(code)
    return codes


def flatten_in_direction(x: torch.Tensor, direction: str) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, H*W) in the order the scan visits the pixels.

    ``row``: left to right, rows top to bottom; ``col``: top to bottom, columns left to
    right; ``*_rev``: the same sequences backwards.
    """
    seq = x.transpose(2, 3).flatten(2) if direction.startswith('col') else x.flatten(2)
    return seq.flip(-1) if direction.endswith('_rev') else seq


def unflatten_from_direction(seq: torch.Tensor, direction: str, hw) -> torch.Tensor:
    """Inverse of :func:`flatten_in_direction`: (B, C, H*W) -> (B, C, H, W)."""
    H, W = hw
    if direction.endswith('_rev'):
        seq = seq.flip(-1)
    if direction.startswith('col'):
        return seq.unflatten(2, (W, H)).transpose(2, 3)
    return seq.unflatten(2, (H, W))


def flatten_channels_last(x: torch.Tensor, direction: str) -> torch.Tensor:
    """(B, H, W, C) -> (B, C, H*W) in the order ``direction`` visits the pixels."""
    return flatten_in_direction(x.permute(0, 3, 1, 2), direction)


def unflatten_channels_last(seq: torch.Tensor, direction: str, hw) -> torch.Tensor:
    """Inverse of :func:`flatten_channels_last`: (B, C, H*W) -> (B, H, W, C)."""
    return unflatten_from_direction(seq, direction, hw).permute(0, 2, 3, 1)
