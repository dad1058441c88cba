r"""End-to-end wall time and peak memory of a study as the data grow: streamed against in memory.

The data: a 3D overdamped Langevin system the package does not ship,

.. math::

    dX = -\nabla U(X)\,dt + \sqrt 2\,dW, \qquad
    U = (x^2 - 1)^2 + \tfrac12 (y + \tfrac12 x)^2 + \tfrac12 (z - \tfrac12 y)^2 + \tfrac1{10} z^4,

simulated in NumPy (Euler-Maruyama, dt = 0.01, a snapshot every 10 steps: ``[data] interval =
0.1``), members of 10,000 snapshots each, written once to ``--data-dir`` as ``.npy`` (and as a zarr
store with ``--format zarr``, chunks of 10 members x 10,000 snapshots, 2.4 MB).

Each study is the same user-data spec (``[mixture] components = 8``, every other setting the
default) run by ``kgmm-bayes run`` in its own process, once streamed (``[data] streaming =
"always"``) and once in memory (``"never"``, the baseline, where it fits: ``--in-memory-max``).
Peak memory is the process's maximum resident set (``getrusage``); the table gives the stages'
times from ``metrics.json`` and the ratios against the in-memory run of the same size.

    python benchmarks/bench_scale.py --sizes 1e6 1e7
    python benchmarks/bench_scale.py --sizes 1e8 --format zarr --in-memory-max 0
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

PER_MEMBER = 10_000
DT, THIN = 0.01, 10


def grad_u(x):
    g = np.empty_like(x)
    a, b, c = x[:, 0], x[:, 1], x[:, 2]
    dy = b + 0.5 * a
    dz = c - 0.5 * b
    g[:, 0] = 4 * a * (a * a - 1) + 0.5 * dy
    g[:, 1] = dy - 0.5 * dz
    g[:, 2] = dz + 0.4 * c ** 3
    return g


def simulate_members(rng, members):
    """``(members, PER_MEMBER, 3)`` stationary snapshots (a burn-in of 2,000 steps first)."""
    x = rng.standard_normal((members, 3))
    out = np.empty((members, PER_MEMBER, 3))
    noise_scale = np.sqrt(2 * DT)
    for step in range(2_000 + PER_MEMBER * THIN):
        x = x - DT * grad_u(x) + noise_scale * rng.standard_normal((members, 3))
        if step >= 2_000 and (step - 2_000) % THIN == THIN - 1:
            out[:, (step - 2_000) // THIN] = x
    return out


def ensure_data(folder, n, fmt, batch=500):
    """The trajectory of ``n`` snapshots (``n / PER_MEMBER`` members) as ``.npy``, and as zarr if asked;
    written member batch by member batch (bounded memory), reused when present."""
    members = max(1, int(n) // PER_MEMBER)
    os.makedirs(folder, exist_ok=True)
    npy = os.path.join(folder, f"traj_{members}x{PER_MEMBER}.npy")
    if not os.path.exists(npy):
        start = time.perf_counter()
        tmp = npy + ".tmp.npy"
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float64, shape=(members, PER_MEMBER, 3))
        rng = np.random.default_rng(members)
        for lo in range(0, members, batch):
            out[lo:lo + batch] = simulate_members(rng, min(batch, members - lo))
        out.flush()
        del out
        os.replace(tmp, npy)
        print(f"# wrote {npy} ({members} members) in {time.perf_counter() - start:.0f} s", flush=True)
    if fmt == "npy":
        return npy
    import xarray as xr

    store = npy[:-4] + ".zarr"
    if not os.path.exists(store):
        start = time.perf_counter()
        arr = np.load(npy, mmap_mode="r")
        ds = xr.Dataset({"x": (("member", "time", "coordinate"), arr)}).chunk({"member": 10, "time": PER_MEMBER})
        ds.to_zarr(store + ".tmp", mode="w")
        os.replace(store + ".tmp", store)
        print(f"# wrote {store} in {time.perf_counter() - start:.0f} s", flush=True)
    return store


SPEC = """[study]
name = "scale"
[data]
path = "{path}"
interval = 0.1
streaming = "{streaming}"
[mixture]
components = 8
{settings}"""

MEASURE = ("import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; "
           "print('PEAK_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, 'RC', rc)")


def run_study(work, path, streaming, settings=""):
    """``(wall s, peak GB, metrics)`` of ``kgmm-bayes run`` in a fresh process."""
    spec = os.path.join(work, f"scale_{streaming}.toml")
    with open(spec, "w") as fh:
        fh.write(SPEC.format(path=path, streaming=streaming, settings=settings.replace("\\n", "\n")))
    out = os.path.join(work, f"out_{streaming}")
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(out + ".partial", ignore_errors=True)
    cli = os.path.join(os.path.dirname(sys.executable), "kgmm-bayes")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", MEASURE, cli, "run", spec, "--out", out, "--quiet"],
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    tail = proc.stdout.strip().splitlines()[-1].split()
    if tail[-1] != "0":
        raise SystemExit(f"study failed ({streaming}): {proc.stderr[-2000:]}")
    with open(os.path.join(out, "metrics.json")) as fh:
        metrics = json.load(fh)
    return wall, int(tail[1]) / 2**20, metrics


def main(argv=None):
    global PER_MEMBER
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", type=float, default=[1e6, 1e7])
    parser.add_argument("--format", choices=["npy", "zarr"], default="npy", help="the streamed run's store")
    parser.add_argument("--in-memory-max", type=float, default=1e7, help="largest size run in memory (baseline)")
    parser.add_argument("--per-member", type=int, default=PER_MEMBER, help="snapshots per member")
    parser.add_argument("--settings", default="", help="more spec sections (TOML, \\n for newlines)")
    parser.add_argument("--data-dir", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "kgmm-bench-scale"))
    args = parser.parse_args(argv)
    PER_MEMBER = args.per_member
    rows = []
    for n in args.sizes:
        path = ensure_data(args.data_dir, n, args.format)
        work = os.path.join(args.data_dir, f"work_{int(n)}")
        os.makedirs(work, exist_ok=True)
        runs = {"streamed": run_study(work, path, "always", args.settings)}
        if n <= args.in_memory_max:
            npy = path if path.endswith(".npy") else path[:-5] + ".npy"
            runs["in memory"] = run_study(work, npy, "never", args.settings)
        for mode, (wall, peak, m) in runs.items():
            t = m["timings"]
            base = runs.get("in memory")
            rows.append([f"{m['data']['train_snapshots'] + m['data']['reference_snapshots']:.0e}", mode,
                         args.format if mode == "streamed" else "npy",
                         f"{wall:.0f}", f"{peak:.2f}",
                         f"{t.get('data_pass_1', 0) + t.get('data_pass_2', 0):.0f}", f"{t['partition']:.0f}",
                         f"{t['posterior']:.0f}", f"{t['total']:.0f}",
                         f"{m['relative_entropy']['mean']:.5f}",
                         f"{wall / base[0]:.2f}" if base else "-", f"{peak / base[1]:.2f}" if base else "-"])
            print("# " + " | ".join(rows[-1]), flush=True)
    header = ["snapshots", "path", "store", "wall s", "peak GB", "data passes s", "partition s", "posterior s",
              "study total s", "rel. entropy", "wall / in memory", "memory / in memory"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
