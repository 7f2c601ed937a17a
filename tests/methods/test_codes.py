"""Integer codes packed as bit planes (bqq.methods.codes), shared by the code-based methods."""

from __future__ import annotations

import numpy as np

from bqq.methods.codes import pack_codes, unpack_codes


def test_packed_codes_round_trip():
    rng = np.random.default_rng(0)
    for bits, count in [(0, 13), (1, 8), (3, 17), (9, 300)]:
        codes = rng.integers(0, 2**bits, size=(4, count))
        packed = pack_codes(codes, bits)
        assert packed.shape == (bits, 4, -(-count // 8))
        assert np.array_equal(unpack_codes(packed, count), codes)
