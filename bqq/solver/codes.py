"""BQQ codes under construction: p stacks of a batch of same-shape groups, on either backend."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from bqq_kernels.reference import rebuild_groups

Array = np.ndarray | torch.Tensor

# float64 temporaries (the rebuild, α fits, the refit) are formed a slice of the batch at a time, so that
# their memory is bounded by this rather than proportional to the number of groups.
TRANSIENT_BYTES = 1 << 30


def chunks(count: int, item_bytes: int) -> Iterator[slice]:
    """Slices of ``range(count)`` whose items of ``item_bytes`` each stay within ``TRANSIENT_BYTES``."""
    size = max(1, TRANSIENT_BYTES // max(int(item_bytes), 1))
    for lo in range(0, count, size):
        yield slice(lo, min(lo + size, count))


@dataclass
class GroupCodes:
    """p stacks of G same-shape groups (``BQQMatrix``'s fields, unpacked): numpy arrays on the CPU
    backend, torch tensors on a device.

    Attributes:
        ys: (G, p, m, l) uint8 {0,1}; zs: (G, p, l, n) uint8 {0,1};
        scales: (G, p, 3) float32 rows (r, s, t); offset: (G,) float32 u.
    """

    ys: Array
    zs: Array
    scales: Array
    offset: Array

    @property
    def stacks(self) -> int:
        return self.ys.shape[1]

    def dequantize(self) -> Array:
        """(G, m, n) float64 reconstructions from the stored (float32) scalars, in the codes' array type."""
        if isinstance(self.ys, torch.Tensor):
            return _rebuild(self.ys, self.zs, self.scales, self.offset)
        arrays = (torch.from_numpy(np.asarray(a)) for a in (self.ys, self.zs, self.scales, self.offset))
        return _rebuild(*arrays).numpy()

    def group(self, g: int) -> GroupCodes:
        """Group ``g`` alone (G = 1), sharing memory."""
        return self.part(g, 1)

    def part(self, first: int, count: int) -> GroupCodes:
        """Groups ``first`` to ``first + count - 1`` (fewer at the end), sharing memory."""
        rows = slice(first, first + count)
        return GroupCodes(self.ys[rows], self.zs[rows], self.scales[rows], self.offset[rows])

    def numpy(self) -> GroupCodes:
        """The codes as numpy arrays on the host."""
        return GroupCodes(*(a.cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
                            for a in (self.ys, self.zs, self.scales, self.offset)))

    @classmethod
    def stack(cls, parts: list[GroupCodes]) -> GroupCodes:
        """The groups of ``parts`` (one array type, same p and shapes) as one batch."""
        cat = torch.cat if isinstance(parts[0].ys, torch.Tensor) else np.concatenate
        return cls(*(cat([getattr(part, f) for part in parts]) for f in ("ys", "zs", "scales", "offset")))


def _rebuild(ys: torch.Tensor, zs: torch.Tensor, scales: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """:func:`rebuild_groups` a slice of the batch at a time (bounded float64 temporaries)."""
    nbatch, _, m, l = ys.shape
    n = zs.shape[3]
    out = torch.empty(nbatch, m, n, dtype=torch.float64, device=ys.device)
    for c in chunks(nbatch, 32 * m * n + 4 * l * (m + n)):
        out[c] = rebuild_groups(ys[c], zs[c], scales[c], offset[c])
    return out
