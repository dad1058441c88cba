"""Data streamed from disk in blocks (kgmm_bayes.data.stream): the cell statistics equal the
in-memory ones exactly (float64) whatever the storage (memory-mapped .npy, zarr with its own
chunking, netCDF, a folder of .npy pieces); a dask.distributed LocalCluster of two workers gives the
same floats as this process, and so does a whole study; bad input deep in the data ends with one
line naming where, before any expensive stage, and leaves earlier outputs untouched."""
import json
import os
import subprocess
import sys
import warnings

import jax
import numpy as np
import pytest
import xarray as xr

import kgmm_bayes.data.stream as stream
import kgmm_bayes.partition as partition
from kgmm_bayes import InputError, load_result, run_study
from kgmm_bayes.data.zscore import ZScore
from kgmm_bayes.metrics.density import BinnedDensity, _exact_kde, kde_mesh, linear_bins, relative_entropy
from kgmm_bayes.spec import spec_from_dict
from test_cli_errors import make_previous_output, snapshot  # an earlier study's folder and its exact bytes

pytestmark = pytest.mark.filterwarnings("ignore:Consolidated metadata:UserWarning")
SMALL_BLOCK = 7_000  # blocks that cross members and pieces


def trajectory(members=6, n=20_000, d=3, seed=0):
    """A non-Gaussian AR(1) trajectory (members, n, d) in physical units (offsets and scales)."""
    rng = np.random.default_rng(seed)
    x = np.empty((members, n, d))
    x[:, 0] = rng.standard_normal((members, d))
    noise = rng.standard_normal((members, n, d))
    for t in range(1, n):
        x[:, t] = 0.9 * x[:, t - 1] + 0.3 * noise[:, t] - 0.05 * x[:, t - 1] ** 3
    return 10.0 + x * np.array([1.0, 3.0, 0.5])[:d]


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stores")
    x = trajectory()
    np.save(folder / "x.npy", x)
    xr.Dataset({"u": (("member", "time", "dim"), x)}).chunk({"member": 2, "time": 3_333}).to_zarr(folder / "x.zarr")
    xr.Dataset({"u": (("member", "time", "dim"), x)}).to_netcdf(folder / "x.nc", engine="h5netcdf")
    (folder / "pieces").mkdir()
    for i, lo in enumerate(range(0, x.shape[1], 4_321)):
        np.save(folder / "pieces" / f"p{i:04d}.npy", x[:, lo:lo + 4_321])
    return folder, x


def _passes(source, fraction, client=None, fit_snapshots=5_000):
    train, heldout = stream.split_segments(source.shape, fraction)
    found = stream.scan(source, train, heldout, fit_snapshots, client)
    zscore = ZScore(found.train.mean, found.train.std())
    fine = partition.fit_fine(jax.random.key(0), zscore.forward(found.fit_sample), 300, 1)
    return found, zscore, fine, stream.cell_pass(source, train, heldout, found, zscore, fine.predict,
                                                 fine.n_clusters, client)


@pytest.mark.parametrize("fraction", [0.2, 0.5])  # members held out (6 x 0.2 -> 1) / time held out (< 5 members)
def test_streamed_cell_statistics_equal_the_in_memory_ones_exactly(stores, monkeypatch, fraction):
    monkeypatch.setattr(stream, "BLOCK", SMALL_BLOCK)
    monkeypatch.setattr(stream, "GROUP", 3)
    folder, x = stores
    if fraction == 0.5:  # fewer than 5 members: the held-out part is the end of each member
        x = x[:3]
        np.save(folder / "three.npy", x)
        xr.Dataset({"u": (("member", "time", "dim"), x)}).chunk({"time": 5_000}).to_zarr(folder / "three.zarr")
        (folder / "three").mkdir()
        for i, lo in enumerate(range(0, x.shape[1], 6_543)):
            np.save(folder / "three" / f"p{i:04d}.npy", x[:, lo:lo + 6_543])
    from kgmm_bayes.data.trajectory import split_members

    train, heldout = split_members(x, fraction)
    results = {}
    paths = ["three.npy", "three.zarr", "three"] if fraction == 0.5 else ["x.npy", "x.zarr", "x.nc", "pieces"]
    for name in paths:
        source = stream.open_source(folder / name)
        assert source.shape == x.shape
        found, zscore, fine, passed = _passes(source, fraction)
        z = zscore.forward(train)
        in_memory = partition.cell_statistics(z, fine.predict(z), fine.n_clusters)
        for a, b in zip(in_memory, passed[:3]):
            assert np.array_equal(a, b)  # float64, bit for bit
        assert found.train.n == len(train) and found.heldout.n == len(heldout)
        np.testing.assert_allclose(found.train.mean, train.mean(axis=0), rtol=1e-13)
        np.testing.assert_allclose(found.train.std(), train.std(axis=0), rtol=1e-12)
        np.testing.assert_array_equal(found.fit_sample, train[partition.fit_positions(len(train), 5_000)])
        results[name] = (found.digest, passed)
    digests = {d for d, _ in results.values()}
    assert len(digests) == 1  # the data's digest does not depend on how they are stored


def test_in_memory_partition_is_the_blocked_statistics_of_the_fitted_tree(monkeypatch):
    monkeypatch.setattr(stream, "BLOCK", SMALL_BLOCK)
    monkeypatch.setattr(stream, "GROUP", 3)
    z = ZScore.fit(trajectory(members=2, n=15_000).reshape(-1, 3)).forward(trajectory(members=2, n=15_000)
                                                                        .reshape(-1, 3))
    part = partition.fit_partition(jax.random.key(3), z, 200, 4)
    fine_key, coarse_key = jax.random.split(jax.random.key(3))
    fine = partition.fit_fine(fine_key, z, 200, 4)
    counts, sums, second = partition.cell_statistics(z, fine.predict(z), fine.n_clusters)
    keep = counts > 0
    np.testing.assert_array_equal(part.counts, counts[keep])
    np.testing.assert_array_equal(part.points, sums[keep] / counts[keep, None])
    # exact identities: counts add to N, the cells' means and second moments add to the data's
    assert part.counts.sum() == len(z)
    np.testing.assert_allclose((part.counts[:, None] * part.points).sum(0), z.sum(0), atol=1e-8)
    second_total = (part.counts[:, None, None] * (part.cell_covariances
                                                  + part.points[:, :, None] * part.points[:, None, :])).sum(0)
    np.testing.assert_allclose(second_total, z.T @ z, rtol=1e-12)


@pytest.fixture(scope="module")
def cluster():
    from dask.distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as c:
        yield c


def test_passes_on_a_local_cluster_give_the_same_floats_as_this_process(stores, cluster, monkeypatch):
    from dask.distributed import Client

    monkeypatch.setattr(stream, "BLOCK", SMALL_BLOCK)
    monkeypatch.setattr(stream, "GROUP", 3)
    folder, _ = stores
    source = stream.open_source(folder / "x.zarr")
    here = _passes(source, 0.2)
    with Client(cluster, set_as_default=False) as client:
        there = _passes(source, 0.2, client)
    assert here[0].digest == there[0].digest
    for a, b in zip(here[0].train + here[0].heldout, there[0].train + there[0].heldout):
        assert np.array_equal(a, b)
    assert np.array_equal(here[0].fit_sample, there[0].fit_sample)
    for a, b in zip(here[3][:3], there[3][:3]):
        assert np.array_equal(a, b)
    for a, b in zip(here[3].train_marginals + here[3].heldout_marginals,
                    there[3].train_marginals + there[3].heldout_marginals):
        assert np.array_equal(a.counts, b.counts) and a.lo == b.lo and a.step == b.step


TINY = {
    "study": {"name": "streamed", "seed": 0},
    "data": {"path": "", "interval": 0.1, "streaming": "always"},
    "partition": {"cells": 200},
    "mixture": {"components": 3},
    "sampler": {"chains": 2, "warmup": 60, "draws": 60},
    "score": {"max_draws": 60},
    "interpolant": {"hidden": [8, 8], "steps": 60},
    "langevin": {"particles": 50, "steps": 400, "burn_in": 40, "thin": 10},
}


def _tiny(path, **data):
    spec = json.loads(json.dumps(TINY))
    spec["data"].update(path=str(path), **data)
    return spec_from_dict(spec)


def _numbers(metrics):
    """metrics.json without what measures the machine (wall times) or names the scheduler."""
    skip = ("timings", "wall_time", "per_second", "scheduler", "cached", "jax_work")

    def walk(v, path=""):
        if isinstance(v, dict):
            return {k: walk(w, f"{path}/{k}") for k, w in v.items() if not any(s in k for s in skip)}
        return v
    return walk(metrics)


@pytest.fixture(scope="module")
def streamed_study(stores, tmp_path_factory):
    folder, _ = stores
    out = tmp_path_factory.mktemp("streamed") / "study"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a study this small reports r_hat
        result = run_study(_tiny(folder / "x.zarr"), out_dir=str(out))
    return out, result


def test_a_streamed_study_reads_every_snapshot_and_loads_back(stores, streamed_study):
    folder, x = stores
    out, result = streamed_study
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["data"]["train_snapshots"] == 5 * x.shape[1]  # all of them, not the in-memory sample
    assert metrics["data"]["streamed"]["scheduler"] == "this process"
    assert {"data_pass_1", "data_pass_2"} <= set(metrics["timings"])
    loaded = load_result(str(out))  # a loaded streamed study reads the same in-memory sample again
    np.testing.assert_array_equal(loaded.data.train, result.data.train)


@pytest.mark.slow  # about 45 s: the whole study again; the passes alone are checked on a cluster in the default suite
def test_a_streamed_study_on_a_local_cluster_gives_the_same_numbers(stores, streamed_study, cluster, tmp_path):
    folder, _ = stores
    out, _ = streamed_study
    metrics = json.loads((out / "metrics.json").read_text())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        run_study(_tiny(folder / "x.zarr", scheduler=cluster.scheduler_address), out_dir=str(tmp_path / "c"))
    there = json.loads((tmp_path / "c" / "metrics.json").read_text())
    assert there["data"]["streamed"]["scheduler"] == cluster.scheduler_address
    assert _numbers(there) == _numbers(metrics)
    for name in ("rom_samples.npy", "partition.npz"):
        a, b = np.load(out / name), np.load(tmp_path / "c" / name)
        for k in (a.files if hasattr(a, "files") else [None]):
            assert np.array_equal(a if k is None else a[k], b if k is None else b[k])


def test_bad_input_in_chunk_731_of_1000_is_named_before_any_stage(tmp_path):
    out = tmp_path / "prev"  # an earlier study's folder, replaced only by a run that succeeds (--force)
    make_previous_output(out)
    before = snapshot(out)
    x = trajectory(members=1, n=20_000, d=3)[0]
    pieces = tmp_path / "pieces"
    pieces.mkdir()
    for i in range(1000):
        np.save(pieces / f"p{i:04d}.npy", x[20 * i:20 * (i + 1)])
    bad = x[20 * 730:20 * 731].copy()
    bad[7, 1] = np.nan
    np.save(pieces / "p0730.npy", bad)
    spec_path = tmp_path / "s.toml"
    spec_path.write_text(f'[data]\npath = "{pieces}"\n[mixture]\ncomponents = 3\n')
    proc = subprocess.run([sys.executable, "-m", "kgmm_bayes.cli", "run", str(spec_path), "--out", str(out),
                           "--force", "--quiet"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "piece 731 of 1000 ('p0730.npy')" in lines[0] and "snapshot 7 " in lines[0]
    assert "NaN" in lines[0]
    assert snapshot(out) == before and not os.path.exists(str(out) + ".partial")
    # a piece of the wrong dimension: named from the headers alone
    np.save(pieces / "p0730.npy", np.zeros((20, 4)))
    with pytest.raises(InputError, match=r"data chunk 731 of 1000 .*p0730\.npy.* dimension 4, expected 1 of "
                                         r"dimension 3"):
        stream.open_source(pieces)


def test_binned_marginals_match_the_exact_kde_and_relative_entropy():
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.standard_normal(30_000), 4 + 0.5 * rng.standard_normal(10_000)])
    n = x.size
    h = x.std(ddof=1) * n ** (-0.2)
    lo, step, points = kde_mesh(x.min() - 8 * h, x.max() + 8 * h, h, stream.STREAM_MESH_STEP)
    binned = BinnedDensity(lo, step, points, linear_bins(x, lo, step, points), n, h, x.min(), x.max())
    grid = np.linspace(x.min() - 2, x.max() + 2, 1001)
    exact = _exact_kde(x, grid, h)  # the sum of all 40,000 kernels
    assert np.max(np.abs(binned.pdf(grid) - exact)) < 1e-5 * exact.max()
    assert np.all(binned.pdf(np.array([x.min() - 9 * h, x.max() + 9 * h])) == 0)  # off the mesh: none
    model = rng.standard_normal(5_000)
    assert abs(relative_entropy(binned, model) - relative_entropy(x, model)) < 1e-4


def test_one_and_two_dimensional_stores_read_as_one_member(tmp_path):
    x = trajectory(members=1, n=3_000, d=2)[0]
    xr.Dataset({"u": (("time", "dim"), x)}).to_netcdf(tmp_path / "x2.nc", engine="h5netcdf")
    xr.Dataset({"u": (("time",), x[:, 0])}).chunk({"time": 700}).to_zarr(tmp_path / "x1.zarr")
    for name, expected in (("x2.nc", x), ("x1.zarr", x[:, :1])):
        source = stream.open_source(tmp_path / name)
        assert source.shape == (1, *expected.shape)
        np.testing.assert_array_equal(source.read(0, 1, 100, 2_100)[0], expected[100:2_100])
        source.close()
    assert not stream.wants_streaming(tmp_path / "x2.nc", "auto")  # small: in memory, as before
    assert stream.wants_streaming(tmp_path / "x2.nc", "always")


def test_streaming_is_chosen_by_size_and_kind(tmp_path, monkeypatch, stores):
    folder, _ = stores
    np.save(tmp_path / "small.npy", np.zeros((100, 2)))
    assert not stream.wants_streaming(tmp_path / "small.npy", "auto")
    assert stream.wants_streaming(tmp_path / "small.npy", "always")
    assert stream.wants_streaming(folder / "x.zarr", "auto") and stream.wants_streaming(folder / "pieces", "auto")
    assert not stream.wants_streaming(folder / "x.zarr", "never")
    monkeypatch.setattr(stream, "STREAM_ABOVE", 99)
    assert stream.wants_streaming(tmp_path / "small.npy", "auto")
    spec = _tiny(folder / "x.npy")
    spec = spec._replace(partition=spec.partition._replace(coreset=False))
    with pytest.raises(InputError, match="coreset = false needs every snapshot in memory"):
        run_study(spec, out_dir=str(tmp_path / "never"))
    assert not os.path.exists(tmp_path / "never")
    # where a study runs is not what it computes: the scheduler is in neither stage keys nor the folder's identity
    there = _tiny(folder / "x.npy", scheduler="tcp://elsewhere:8786")
    here = _tiny(folder / "x.npy")
    assert there.section_json("data") == here.section_json("data") and there.identity() == here.identity()
