"""Trajectory loading, validation, splitting and the z-score transform (kgmm_bayes.data).

Fast: NumPy / xarray only, no JAX computations.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

from kgmm_bayes.data import InputError, ZScore, load_trajectory, split_members, validate_snapshots

xr = pytest.importorskip("xarray")
pytest.importorskip("h5netcdf")

RNG = np.random.default_rng(20240611)


def _array(shape):
    # values of mixed sign and magnitude, not representable with few digits
    return RNG.normal(size=shape) * np.array([1.0, 1e-3, 250.0])[: shape[-1]] + 0.1234567891234567


def _write(path, arr, fmt):
    path = os.fspath(path)
    if fmt == "npy":
        np.save(path, arr)
    elif fmt == "csv":
        np.savetxt(path, arr, delimiter=",", fmt="%.17g")
    elif fmt == "csv-header":
        names = ",".join(f"x{i}" for i in range(arr.shape[-1]))
        np.savetxt(path, arr, delimiter=",", fmt="%.17g", header=names, comments="")
    elif fmt == "nc":
        dims = ("time", "coord") if arr.ndim == 2 else ("member", "time", "coord")
        xr.Dataset({"x": (dims, arr)}).to_netcdf(path, engine="h5netcdf")
    else:  # pragma: no cover
        raise AssertionError(fmt)
    return path


# --------------------------------------------------------------------------- round trips

ROUND_TRIPS = [(fmt, shape) for fmt in ("npy", "csv", "csv-header", "nc")
               for shape in ((40, 3), (25, 1), (3, 17, 2))
               if not (fmt.startswith("csv") and len(shape) == 3)]  # a CSV holds one trajectory (n, d)


@pytest.mark.parametrize("fmt, shape", ROUND_TRIPS, ids=[f"{f}-{'x'.join(map(str, s))}" for f, s in ROUND_TRIPS])
def test_round_trip(tmp_path, fmt, shape):
    arr = _array(shape)
    suffix = ".csv" if fmt.startswith("csv") else "." + fmt
    path = _write(tmp_path / f"traj{suffix}", arr, fmt)
    out = load_trajectory(path)
    assert out.dtype == np.float64
    assert out.shape == shape
    np.testing.assert_allclose(out, arr, rtol=1e-15, atol=0)


def test_round_trip_pathlib_and_float32_int(tmp_path):
    a32 = _array((30, 2)).astype(np.float32)
    np.save(tmp_path / "f32.npy", a32)
    out = load_trajectory(tmp_path / "f32.npy")  # a pathlib.Path works too
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, a32.astype(np.float64))
    ints = np.arange(12, dtype=np.int32).reshape(6, 2)
    np.save(tmp_path / "ints.npy", ints)
    out = load_trajectory(tmp_path / "ints.npy")
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, ints)


def test_csv_comments_and_blank_lines(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("# a comment\nx,y\n\n1.5, -2\n# another\n3e-3,4\n\n")
    np.testing.assert_array_equal(load_trajectory(path), [[1.5, -2.0], [3e-3, 4.0]])


def test_csv_with_byte_order_mark_keeps_first_row(tmp_path):
    arr = _array((5, 2))
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbf" + "\n".join(",".join(repr(float(v)) for v in row) for row in arr).encode() + b"\n")
    out = load_trajectory(path)
    assert out.shape == arr.shape
    np.testing.assert_allclose(out, arr, rtol=1e-15)


def test_netcdf_two_variables_select(tmp_path):
    x, y = _array((20, 2)), _array((4, 20, 3))
    path = tmp_path / "two.nc"
    xr.Dataset({"x": (("t", "c"), x), "y": (("m", "t", "d"), y)}).to_netcdf(path, engine="h5netcdf")
    np.testing.assert_allclose(load_trajectory(path, variable="y"), y, rtol=1e-15, atol=0)
    np.testing.assert_allclose(load_trajectory(path, variable="x"), x, rtol=1e-15, atol=0)
    with pytest.raises(InputError, match="no variable 'z'"):
        load_trajectory(path, variable="z")


def test_validate_snapshots_shapes():
    one = validate_snapshots(np.linspace(0, 1, 7))
    assert one.shape == (1, 7, 1) and one.dtype == np.float64
    two = validate_snapshots(_array((9, 2)))
    assert two.shape == (1, 9, 2)
    three = _array((3, 5, 2))
    np.testing.assert_array_equal(validate_snapshots(three), three)


# --------------------------------------------------------------------------- ZScore

def test_zscore_fit_matches_numpy():
    arr = _array((4, 50, 3))
    zs = ZScore.fit(arr)
    flat = arr.reshape(-1, 3)
    np.testing.assert_allclose(zs.mean, flat.mean(axis=0), rtol=1e-14)
    np.testing.assert_allclose(zs.std, flat.std(axis=0), rtol=1e-14)
    z = zs.forward(flat)
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(z.std(axis=0), 1.0, rtol=1e-12)


def test_zscore_forward_inverse_identity():
    x = _array((200, 3))
    zs = ZScore(mean=np.array([3.0, -1e-3, 40.0]), std=np.array([0.7, 2e-3, 310.0]))
    np.testing.assert_allclose(zs.inverse(zs.forward(x)), x, rtol=1e-12, atol=1e-12 * np.abs(x).max())
    z = RNG.normal(size=(200, 3))
    np.testing.assert_allclose(zs.forward(zs.inverse(z)), z, rtol=1e-12, atol=1e-12)


def test_zscore_score_conversions_are_inverse():
    zs = ZScore(mean=np.array([1.0, -2.0]), std=np.array([0.25, 8.0]))
    s = RNG.normal(size=(50, 2))
    np.testing.assert_allclose(zs.score_to_physical(zs.score_to_zscored(s)), s, rtol=1e-12, atol=0)
    np.testing.assert_allclose(zs.score_to_zscored(zs.score_to_physical(s)), s, rtol=1e-12, atol=0)
    # the direction matters: z-scored scores are std times the physical ones
    np.testing.assert_allclose(zs.score_to_zscored(s), s * zs.std, rtol=1e-15)


def test_zscore_gaussian_score_identity():
    """s~(z) = std * s(mean + std z), checked on N(m, v) whose z-scored law is N((m-mean)/std, v/std^2)."""
    m = np.array([2.0, -30.0, 0.5])
    v = np.array([0.3, 400.0, 1e-2])
    zs = ZScore(mean=np.array([1.5, -20.0, 0.0]), std=np.array([0.9, 25.0, 0.2]))

    def score_phys(x):
        return -(x - m) / v

    m_z, v_z = (m - zs.mean) / zs.std, v / zs.std**2

    def score_z(z):
        return -(z - m_z) / v_z

    z = RNG.normal(size=(100, 3)) * 2.0
    np.testing.assert_allclose(zs.score_to_zscored(score_phys(zs.inverse(z))), score_z(z), rtol=1e-12, atol=1e-12)
    x = zs.inverse(z)
    np.testing.assert_allclose(zs.score_to_physical(score_z(zs.forward(x))), score_phys(x), rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- split_members

@pytest.mark.parametrize("members", [5, 10, 12])
def test_split_holds_out_last_members(members):
    arr = _array((members, 7, 2))
    train, held = split_members(arr, 0.2)
    n_out = int(round(members * 0.2))
    np.testing.assert_array_equal(train, arr[: members - n_out].reshape(-1, 2))
    np.testing.assert_array_equal(held, arr[members - n_out:].reshape(-1, 2))
    assert len(train) + len(held) == members * 7


def test_split_one_member_holds_out_last_times():
    arr = _array((1, 100, 3))
    train, held = split_members(arr, 0.2)
    np.testing.assert_array_equal(train, arr[0, :80])
    np.testing.assert_array_equal(held, arr[0, 80:])


def test_split_few_members_splits_in_time():
    arr = _array((3, 10, 1))
    train, held = split_members(arr, 0.2)
    np.testing.assert_array_equal(train, arr[:, :8].reshape(-1, 1))
    np.testing.assert_array_equal(held, arr[:, 8:].reshape(-1, 1))


@pytest.mark.parametrize("shape", [(1, 50, 2), (10, 5, 2)])
def test_split_fraction_zero_gives_none(shape):
    arr = _array(shape)
    train, held = split_members(arr, 0.0)
    assert held is None
    np.testing.assert_array_equal(train, arr.reshape(-1, 2))


# --------------------------------------------------------------------------- bad inputs

class _Canary:
    """Unpickling this creates a folder: proof that a loader ran pickle."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def _arr_case(arr):
    return lambda tmp_path: (lambda: validate_snapshots(arr, name="data", min_snapshots=2), None)


def _file_case(name, make, **load_kwargs):
    def setup(tmp_path):
        path = tmp_path / name
        make(path)
        return (lambda: validate_snapshots(load_trajectory(path, **load_kwargs))), name
    return setup


def _nan():
    a = _array((20, 2))
    a[3, 1] = np.nan
    return a


def _inf(sign):
    a = _array((20, 2))
    a[7, 0] = sign * np.inf
    return a


def _constant():
    a = _array((20, 3))
    a[:, 1] = 4.25
    return a


def _write_object_npy(path):
    arr = np.empty(2, dtype=object)
    arr[0], arr[1] = _Canary(os.fspath(path) + ".unpickled"), 1.0
    np.save(path, arr, allow_pickle=True)


def _write_two_var_nc(path):
    xr.Dataset({"a": (("t", "c"), _array((5, 2))), "b": (("t", "c"), _array((5, 2)))}).to_netcdf(
        path, engine="h5netcdf")


BAD_INPUTS = [
    ("nan", _arr_case(_nan()), ["nan"]),
    ("plus-inf", _arr_case(_inf(+1)), ["infinite"]),
    ("minus-inf", _arr_case(_inf(-1)), ["infinite"]),
    ("empty-2d", _arr_case(np.zeros((0, 3))), ["empty"]),
    ("empty-1d", _arr_case(np.array([])), ["empty"]),
    ("rank-4", _arr_case(np.ones((2, 3, 4, 5))), ["shape"]),
    ("constant-coordinate", _arr_case(_constant()), ["constant", "[1]"]),
    ("single-snapshot", _arr_case(np.array([[1.0, 2.0]])), ["1 snapshots", "at least 2"]),
    ("huge-values", _arr_case(_array((20, 2)) * 1e200), ["too large"]),
    ("not-numeric", _arr_case([["a", "b"], ["c", "d"]]), ["numeric"]),
    ("missing-file", _file_case("nothere.npy", lambda p: None), ["does not exist"]),
    ("folder", _file_case("dir.npy", lambda p: p.mkdir()), ["folder"]),
    ("txt-suffix", _file_case("traj.txt", lambda p: p.write_text("1,2\n3,4\n")), ["unsupported", ".txt"]),
    ("ragged-csv", _file_case("r.csv", lambda p: p.write_text("1,2\n3,4\n5,6,7\n")), ["ragged", "line 3"]),
    ("text-in-csv-column", _file_case("t.csv", lambda p: p.write_text("a,b\n1,2\n3,oops\n4,5\n")),
     ["non-numeric", "line 3", "oops"]),
    ("csv-only-header", _file_case("h.csv", lambda p: p.write_text("x,y\n")), ["no numeric rows"]),
    ("csv-empty", _file_case("e.csv", lambda p: p.write_bytes(b"")), ["no numeric rows"]),
    ("csv-binary", _file_case("b.csv", lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00\x81\xc3(")),
     ["not a text csv"]),
    ("npy-object-pickle", _file_case("o.npy", _write_object_npy), ["pickle"]),
    ("npy-strings", _file_case("s.npy", lambda p: np.save(p, np.array([["1", "2"], ["3", "4"]]))),
     ["non-numeric"]),
    ("npy-complex", _file_case("c.npy", lambda p: np.save(p, np.ones((4, 2)) * (1 + 2j))), ["non-numeric"]),
    ("npy-garbage", _file_case("g.npy", lambda p: p.write_bytes(b"this is not numpy\n" * 4)), ["could not be read"]),
    ("npy-truncated", _file_case("tr.npy", lambda p: (np.save(p, _array((10, 2))),
                                                       p.write_bytes(p.read_bytes()[:-8]))), ["could not be read"]),
    ("npy-zero-bytes", _file_case("z.npy", lambda p: p.write_bytes(b"")), ["could not be read"]),
    ("csv-mixed-first-row", _file_case("mixed.csv", lambda p: p.write_text("1.0,abc\n2,3\n4,5\n")),
     ["non-numeric", "line 1"]),
    ("nc-corrupt", _file_case("bad.nc", lambda p: p.write_bytes(b"CDF\x01" + bytes(range(256)) * 4)), ["netcdf"]),
    ("nc-truncated", _file_case("cut.nc", lambda p: (_write(p, _array((400, 3)), "nc"),
                                                      p.write_bytes(p.read_bytes()[:-2000]))), ["netcdf"]),
    ("nc-two-variables", _file_case("two.nc", _write_two_var_nc), ["variable", "'a'", "'b'"]),
    ("nc-missing-variable", _file_case("one.nc", lambda p: _write(p, _array((5, 2)), "nc"), variable="nope"),
     ["no variable", "nope"]),
]


@pytest.mark.parametrize("case_id, setup, expected", [
    c if hasattr(c, "marks") else pytest.param(*c, id=c[0]) for c in BAD_INPUTS])
def test_bad_input_raises_one_line_input_error(tmp_path, case_id, setup, expected):
    call, filename = setup(tmp_path)
    with pytest.raises(InputError) as info:
        call()
    assert isinstance(info.value, ValueError)  # InputError is a ValueError
    message = str(info.value)
    assert message and "\n" not in message and message == message.strip()
    for part in expected:
        assert part.lower() in message.lower(), (part, message)
    if filename is not None:
        assert filename in message  # file errors name the file


def test_object_npy_is_never_unpickled(tmp_path):
    path = tmp_path / "o.npy"
    _write_object_npy(path)
    marker = tmp_path / "o.npy.unpickled"
    # sanity: the canary does fire when the file is unpickled
    np.load(path, allow_pickle=True)
    assert marker.is_dir()
    marker.rmdir()
    with pytest.raises(InputError):
        load_trajectory(path)
    assert not marker.exists()


# --------------------------------------------------------------------------- property-based

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

_CSV_TOKENS = st.sampled_from(["1", "-2.5", "3e2", "0", "1e400", "nan", "inf", "-inf", "x", "", " ", "1.0.0",
                               "7,", ",", "#c", "0x10", "1_000", "\t4", "--1", "e5"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.lists(_CSV_TOKENS, min_size=1, max_size=4).map(",".join), min_size=0, max_size=8))
def test_csv_loader_either_loads_finite_data_or_names_the_problem(tmp_path, rows):
    """Whatever a CSV holds, loading plus validation gives a finite (n, d) array or one InputError
    line naming the file; never another exception."""
    path = tmp_path / "prop.csv"
    path.write_text("\n".join(rows) + "\n")
    try:
        arr = validate_snapshots(load_trajectory(path))
    except InputError as err:
        message = str(err)
        assert message and "\n" not in message
        assert "prop.csv" in message or message.startswith("data ")
    else:
        assert arr.ndim == 3 and arr.shape[1] >= 2 and np.all(np.isfinite(arr))


_FINITE = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False, width=64)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(arr=hnp.arrays(np.float64, st.tuples(st.integers(2, 30), st.integers(1, 4)), elements=_FINITE),
       fmt=st.sampled_from(["npy", "csv", "csv-header"]))
def test_loaders_round_trip_any_finite_array(tmp_path, arr, fmt):
    path = _write(tmp_path / f"rt.{fmt.split('-')[0]}", arr, fmt)
    np.testing.assert_array_equal(load_trajectory(path), arr)
