"""Grouping chains into modes (``stacking.chain_modes``): every pair's every column, the old way, against the new way,
where a pair whose most separated column alone has rank r_hat at or above ``SAME_MODE_R_HAT`` is two modes without
the other columns (``stacking._witness_r_hats``, all pairs at once).  The same run, the same chains; both must give
the same modes and the same r_hat within each.

Chains are either a saved posterior's probes (``--posterior`` a study's ``posterior.nc``) or made up with the shape
of Kuramoto-Sivashinsky D = 4's (150 draws, 72 probe columns): ``--chains`` chains, each its own Gaussian at its own
offset (a Laplace posterior at distinct optima), and the same number in four modes of equal chains (NUTS chains that
agree).  Each row: seconds the old way, the new way, their ratio, the modes, and the check; a failed check exits with
status 1.

    python benchmarks/bench_chain_modes.py --chains 64
    python benchmarks/bench_chain_modes.py --posterior kgmm-runs/ks_d4/posterior.nc
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from kgmm_bayes.bayes import stacking


def every_pair(values) -> tuple:
    """The modes and their r_hats by every pair's every column (chain_modes before the one-column test)."""
    modes = sorted(stacking.linked_groups(values.shape[0], lambda i, j: stacking._max_r_hat(values, (i, j))
                                          < stacking.SAME_MODE_R_HAT))
    return modes, [stacking._max_r_hat(values, m) for m in modes]


def new_way(probes) -> tuple:
    found = stacking.chain_modes(probes)
    order = sorted(range(len(found.modes)), key=lambda k: found.modes[k])
    return [found.modes[k] for k in order], [found.mode_r_hat[k] for k in order]


def made_up(chains: int, modes: int | None, seed: int = 0):
    import arviz as az

    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 0.5, size=(chains if modes is None else modes, 72))
    which = np.arange(chains) if modes is None else np.arange(chains) % modes
    x = centres[which][:, None, :] + rng.normal(size=(chains, 150, 72))
    return az.convert_to_dataset({"probe": x})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chains", type=int, default=64)
    parser.add_argument("--posterior", help="a study's posterior.nc: its probes instead of made-up chains")
    args = parser.parse_args(argv)
    if args.posterior:
        import arviz as az

        from kgmm_bayes.bayes.diagnostics import PROBE_VARS

        cases = [(args.posterior, az.from_netcdf(args.posterior).posterior[PROBE_VARS])]
    else:
        cases = [(f"{args.chains} chains, each its own mode", made_up(args.chains, None)),
                 (f"{args.chains} chains in 4 modes", made_up(args.chains, 4))]
    print("| chains | every column s | one column first s | ratio | modes | check |")
    print("|---|---|---|---|---|---|")
    failed = False
    for name, probes in cases:
        values = stacking._probe_array(probes)
        start = time.perf_counter()
        old = every_pair(values)
        old_s = time.perf_counter() - start
        start = time.perf_counter()
        new = new_way(probes)
        new_s = time.perf_counter() - start
        same = old[0] == new[0] and np.array_equal(np.asarray(old[1]), np.asarray(new[1]), equal_nan=True)
        failed |= not same
        print(f"| {name} | {old_s:.2f} | {new_s:.2f} | {old_s / new_s:.1f} | {len(new[0])} | "
              f"{'same modes and r_hats' if same else 'DIFFERENT'} |")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
