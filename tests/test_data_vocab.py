"""charlm.data.vocab: the sorted characters of a corpus and the smallest id dtype that holds them."""

from __future__ import annotations

import numpy as np

from charlm.data.vocab import Vocab, id_dtype


def test_id_dtype_is_smallest_that_fits():
    assert id_dtype(65) == np.uint8 and id_dtype(256) == np.uint8
    assert id_dtype(257) == np.uint16 and id_dtype(65536) == np.uint16
    assert id_dtype(65537) == np.uint32
    big = Vocab(chr(0x4E00 + i) for i in range(300))
    assert big.dtype == np.uint16
