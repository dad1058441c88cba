"""Every benchmark script runs, with tiny arguments, and prints its table (so none can rot)."""
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).parents[1] / "benchmarks"
CASES = {
    "bench_gradient.py": ["--repeats", "2", "--cases", "500,3,2"],
    "bench_sampler.py": ["--case", "four_well", "--snapshots", "400", "--components", "2", "--iterations", "40",
                         "--baseline-iterations", "40"],
    "bench_dynamics.py": ["--snapshots", "4000", "--members", "20", "--starts", "500", "--settings",
                          '[partition]\\ncells = 100\\n[mixture]\\ncomponents = 3\\ncoarsening = "off"\\n'
                          '[sampler]\\nwarmup = 30\\ndraws = 30\\n[interpolant]\\nsteps = 50\\n'
                          '[ensemble]\\nmembers = 2\\nparticles = 20\\nsteps = 200\\nthin = 10\\nmax_lag = 5\\n'
                          '[langevin]\\nparticles = 50\\nsteps = 2000\\nburn_in = 0'],
    "bench_interpolant.py": ["reduced_1d", "300:50:8", "--settings",
                             '[data]\\nmembers = 4\\nsteps = 20000\\n[partition]\\ncells = 60\\n[mixture]\\n'
                             'components = 3\\ncoarsening = "off"\\n[sampler]\\nwarmup = 30\\ndraws = 30\\n'
                             '[interpolant]\\nsteps = 50\\n[langevin]\\nparticles = 20\\nsteps = 200\\nburn_in = 0\\n'
                             'thin = 10', "--simulate"],
    "bench_floor.py": ["reduced_1d", "--factor", "2", "--runs", "2", "--length", "2", "--settings",
                       '[data]\\nmembers = 4\\nsteps = 20000\\n[partition]\\ncells = 60\\n[mixture]\\ncomponents = 3\\n'
                       'coarsening = "off"\\n[sampler]\\nwarmup = 30\\ndraws = 30\\n[interpolant]\\nsteps = 50\\n'
                       '[langevin]\\nparticles = 20\\nsteps = 200\\nburn_in = 500\\nthin = 10'],
    "bench_geometry.py": ["reduced_1d", "--starts", "2", "--rows", "2", "--settings",
                          '[data]\\nmembers = 4\\nsteps = 20000\\n[partition]\\ncells = 60\\n[mixture]\\ncomponents = 3\\n'
                          'coarsening = "off"\\n[sampler]\\nwarmup = 30\\ndraws = 30\\nmap_steps = 50\\n'
                          '[interpolant]\\nsteps = 50\\n[langevin]\\nparticles = 20\\nsteps = 200\\nburn_in = 0\\n'
                          'thin = 10'],
    "bench_mixture_fits.py": ["reduced_1d", "--seeds", "1", "--draws", "8", "--resamples", "1", "--settings",
                              '[data]\\nmembers = 4\\nsteps = 20000\\n[partition]\\ncells = 60\\n[mixture]\\n'
                              'components = 3\\ncoarsening = "off"\\n[sampler]\\nwarmup = 30\\ndraws = 30\\n'
                              '[interpolant]\\nsteps = 50\\n[langevin]\\nparticles = 20\\nsteps = 200\\n'
                              'burn_in = 0\\nthin = 10'],
    "bench_posterior_overheads.py": ["reduced_1d", "--members", "4", "--cells", "60", "--components", "3", "--draws",
                                     "4", "--points", "2000", "--cell-draws", "8", "--starts", "4", "--adam", "20"],
    "bench_coreset.py": ["--members", "4", "--cells", "100", "--iterations", "40"],
    "bench_correction.py": ["reduced_1d", "--members", "4", "--components", "2", "--bumps", "50", "--ladder", "50,100"],
    "bench_chain_modes.py": ["--chains", "6"],
    "bench_ensemble.py": ["--members", "1,2", "--particles", "8", "--steps", "20", "--repeats", "1"],
    "bench_reproducibility.py": ["reduced_1d", "--keys", "0", "1", "--members", "4", "--cells", "60",
                                 "--components", "3", "--warmup", "30", "--draws", "30", "--coarsening", "off",
                                 "--target-accept", "0.7"],
    "bench_scale.py": ["--sizes", "6000", "--per-member", "1000", "--data-dir", ".", "--settings",
                       '[partition]\\ncells = 100\\n[sampler]\\nwarmup = 30\\ndraws = 30\\n[interpolant]\\nsteps = 50\\n'
                       '[langevin]\\nparticles = 20\\nsteps = 200\\nburn_in = 0\\nthin = 10'],
    "bench_first_posterior.py": ["four_well_2d", "--settings",
                                 '[data]\\nmembers = 4\\nsteps = 20000\\n[partition]\\ncells = 100\\n[mixture]\\n'
                                 'components = 3\\n[sampler]\\nwarmup = 40\\ndraws = 40\\nmap_starts = 2\\nmap_steps = 50'],
    "bench_warm_start.py": ["four_well_2d", "--keys", "2", "--warm-warmup", "20", "--settings",
                            '[data]\\nmembers = 4\\nsteps = 20000\\n[partition]\\ncells = 100\\n[mixture]\\n'
                            'components = 3\\n[sampler]\\nwarmup = 40\\ndraws = 40\\nmap_starts = 2\\nmap_steps = 50'],
    "bench_map_from.py": ["four_well_2d", "--zetas", "0.6", "0.13", "--settings",
                          '[data]\\nmembers = 4\\nsteps = 20000\\n[partition]\\ncells = 100\\n[mixture]\\n'
                          'components = 3\\n[sampler]\\nchains = 2\\nchain_starts = "distinct"\\nmap_starts = 2\\n'
                          'map_steps = 50'],
    "bench_polish.py": ["four_well_2d", "--settings",
                        '[data]\\nmembers = 4\\nsteps = 20000\\n[partition]\\ncells = 100\\n[mixture]\\n'
                        'components = 3\\n[sampler]\\nchains = 2\\nchain_starts = "distinct"\\nmap_starts = 2\\n'
                        'map_steps = 50'],
    "bench_user_calibration.py": ["--sizes", "2000", "--members", "10", "--points", "200", "--settings",
                                  '[partition]\\ncells = 100\\n[mixture]\\ncomponents = 3\\ncoarsening = "off"\\n'
                                  '[sampler]\\nwarmup = 30\\ndraws = 30\\n[interpolant]\\nsteps = 50\\n'
                                  '[langevin]\\nparticles = 20\\nsteps = 200\\nburn_in = 0\\nthin = 10'],
}


def test_every_benchmark_is_listed():
    assert sorted(p.name for p in BENCH.glob("bench_*.py")) == sorted(CASES)


SLOW = ("bench_dynamics.py", "bench_sampler.py", "bench_geometry.py", "bench_user_calibration.py", "bench_scale.py",
        "bench_interpolant.py", "bench_floor.py", "bench_coreset.py", "bench_mixture_fits.py",
        "bench_reproducibility.py", "bench_posterior_overheads.py", "bench_warm_start.py",
        "bench_first_posterior.py", "bench_map_from.py", "bench_polish.py")  # about 20-60 s each: `-m slow`


@pytest.mark.parametrize("script", [pytest.param(s, marks=pytest.mark.slow) if s in SLOW else s for s in sorted(CASES)])
def test_benchmark_prints_table(script, tmp_path):
    assert_prints_tables([sys.executable, str(BENCH / script), *CASES[script]], tmp_path)


def test_gradient_layouts_print_table(tmp_path):
    """bench_gradient.py's other table: the likelihood's two layouts."""
    assert_prints_tables([sys.executable, str(BENCH / "bench_gradient.py"), "--layouts", "--layout-cases", "200,3,2",
                          "--repeats", "6"], tmp_path)


def assert_prints_tables(command, cwd):
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    tables, previous = [], False  # runs of consecutive table lines
    for line in proc.stdout.splitlines():
        row = line.startswith("|")
        if row and previous:
            tables[-1].append(line)
        elif row:
            tables.append([line])
        previous = row
    assert tables
    for table in tables:
        assert len(table) >= 3  # header, separator, at least one row
        assert all(line.count("|") == table[0].count("|") for line in table)
