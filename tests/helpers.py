"""Helpers shared by test files (pytest puts this folder on sys.path)."""

import numpy as np


def assert_same(a, b, where=""):
    """Equal vector-env outputs: nested tuples/dicts, object arrays element by element, other arrays
    with their dtype, plain values with ==."""
    if isinstance(a, tuple):
        assert isinstance(b, tuple) and len(a) == len(b), where
        for k, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{k}]")
    elif isinstance(a, dict):
        assert set(a) == set(b), f"{where}: keys {sorted(a)} != {sorted(b)}"
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, np.ndarray) and a.dtype == object:
        assert isinstance(b, np.ndarray) and b.dtype == object and a.shape == b.shape, where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, np.ndarray):
        np.testing.assert_array_equal(a, b, err_msg=where)
        assert a.dtype == b.dtype, f"{where}: {a.dtype} != {b.dtype}"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"
