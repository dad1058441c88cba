"""The likelihood coreset of merged cells (kgmm_bayes.bayes.coreset) and the sampler's use of it."""
import jax
import numpy as np
import pytest

import kgmm_bayes  # noqa: F401
from kgmm_bayes.bayes import coreset
from kgmm_bayes.bayes.coreset import Coreset, choose_cells, ladder, loglik_gaps, merge_cells
from kgmm_bayes.partition import fit_partition


def _cells(d=2, n=6000, cells=300, seed=0):
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.normal(-1.0, 0.6, (n // 2, d)), rng.normal(1.2, 0.4, (n - n // 2, d))])
    part = fit_partition(jax.random.key(seed), x, num_cells=cells, num_components=2)
    return x, part, Coreset(part.points, part.counts, part.cell_covariances)


def _random_mixtures(draws, k, d, seed=1):
    rng = np.random.default_rng(seed)
    weights = rng.dirichlet(np.ones(k), draws)
    means = rng.normal(0.0, 1.0, (draws, k, d))
    a = rng.normal(0.0, 0.3, (draws, k, d, d))
    cov = a @ np.swapaxes(a, -1, -2) + 0.2 * np.eye(d)
    return weights, means, np.linalg.cholesky(cov)


def test_merged_cells_keep_the_data_moments_exactly():
    x, _, fine = _cells()
    merged = merge_cells(*fine, 40, seed=0)
    assert len(merged.points) <= 40 and np.all(merged.counts > 0)
    for cells in (fine, merged):  # count, first and second moments of all snapshots, from the cells
        assert cells.counts.sum() == len(x)
        np.testing.assert_allclose((cells.counts[:, None] * cells.points).sum(0), x.sum(0), rtol=1e-10, atol=1e-9)
        second = (cells.counts[:, None, None] * (cells.covariances + cells.points[:, :, None] * cells.points[:, None, :]))
        np.testing.assert_allclose(second.sum(0), x.T @ x, rtol=1e-10)
    assert np.all(np.linalg.eigvalsh(merged.covariances) > -1e-12)  # covariances stay positive semidefinite
    same = merge_cells(*fine, len(fine.points), seed=0)  # as many cells or more: the cells themselves
    for a, b in zip(same, fine):
        np.testing.assert_array_equal(a, b)


def test_the_merged_likelihood_is_a_lower_bound_and_exact_for_one_gaussian():
    _, _, fine = _cells()
    merged = merge_cells(*fine, 30, seed=0)
    w, m, c = _random_mixtures(20, 3, 2)
    gaps = loglik_gaps(fine, merged, w, m, c)
    assert gaps.shape == (20,) and np.all(gaps >= -1e-8)  # Jensen: merging can only lower the bound
    assert gaps.max() > 1e-3
    np.testing.assert_allclose(loglik_gaps(fine, fine, w, m, c), 0.0, atol=1e-9)
    # one component: its log density is linear in the features, so a merged cell's is exact
    w1, m1, c1 = _random_mixtures(10, 1, 2)
    np.testing.assert_allclose(loglik_gaps(fine, merged, w1, m1, c1), 0.0, atol=1e-7)


def test_ladder_and_choice_stop_at_the_first_size_over_the_bound():
    assert ladder(2000, 10) == [1414, 1000, 707, 500, 354, 250, 177, 125]
    assert ladder(100, 10) == []
    _, _, fine = _cells()
    draws = _random_mixtures(32, 2, 2)
    chosen, table = choose_cells(fine, 2, draws, seed=0, gap_sd=0.0)  # nothing merged passes a zero bound
    assert chosen is fine and table[0] == (len(fine.points), 0.0) and len(table) == 2 and table[1][1] > 0
    chosen, table = choose_cells(fine, 2, draws, seed=0, gap_sd=np.inf)  # everything passes: the coarsest
    assert len(chosen.points) == table[-1][0] and len(table) == 1 + len(ladder(len(fine.points), 2))
    sds = [sd for _, sd in table]
    bound = 0.5 * (sds[2] + sds[3])
    chosen, table = choose_cells(fine, 2, draws, seed=0, gap_sd=bound)
    assert len(chosen.points) == table[2][0] and table[-1][1] > bound and len(table) == 4


def _run(cells_setting, precision="float64"):
    from kgmm_bayes.bayes.sampler import SamplerConfig, build_prior, initial_values, run_nuts

    _, part, _ = _cells(d=1, n=20000, cells=400)
    prior = build_prior(part, 5.0, 0.25, 1.0, 2.0)
    config = SamplerConfig(chains=2, warmup=200, draws=200, map_starts=4, map_steps=200,
                           likelihood_cells=cells_setting, likelihood_precision=precision)
    return part, run_nuts(jax.random.key(3), part.points, part.counts, prior, initial_values(part), config,
                          point_covariances=part.cell_covariances)


def test_the_sampler_samples_a_merge_that_moves_its_posterior_by_less_than_the_bound():
    part, post = _run("auto")
    stats = post.sample_stats
    merged = int(stats["likelihood_cells"])
    assert merged < len(part.points) and stats["likelihood_gap"].shape == post.weights.shape[:2]
    assert np.std(stats["likelihood_gap"]) <= 2 * coreset.GAP_SD
    ladder_sizes = stats["likelihood_ladder"]
    assert ladder_sizes[0, 0] == len(part.points) and merged in ladder_sizes[:, 0]
    # every size kept passed the pilot's bound; the next one tried (if any) failed it
    kept = list(ladder_sizes[:, 0]).index(merged)
    assert np.all(ladder_sizes[:kept + 1, 1] <= coreset.GAP_SD)
    assert np.all(stats["likelihood_gap"] >= -1e-8)  # the merged likelihood is a lower bound of the cells'


def test_a_merge_whose_draws_break_the_bound_is_sampled_again_on_the_cells(monkeypatch):
    """The pilot is only a Laplace picture: if the draws' gap sd exceeds twice the bound, the sampler
    samples the partition's cells and says so (here a merge into 10 cells is forced on the pilot)."""
    monkeypatch.setattr(coreset, "choose_cells",
                        lambda fine, k, draws, seed: (merge_cells(*fine, 10, seed), [(len(fine.points), 0.0)]))
    part, post = _run("auto")
    stats = post.sample_stats
    assert "likelihood_cells" not in stats and "likelihood_gap" not in stats  # the cells themselves
    assert stats["likelihood_ladder"][0, 0] == len(part.points)  # what the pilot tried is kept
    rejected_cells, rejected_sd = stats["likelihood_rejected"]
    assert rejected_cells == 10 and rejected_sd > 2 * coreset.GAP_SD


def test_the_likelihood_in_float32_where_its_gap_keeps_the_bound(monkeypatch):
    """"auto" precision: the float32 likelihood (here of the merged cells) is sampled where its gap to the cells'
    float64 likelihood keeps sd <= GAP_SD over the pilot's Laplace draws, and checked again on the draws; a gap
    made wider than the bound on the pilot keeps float64 (and says by how much), on the draws only, samples the
    cells again in float64.  (This sampler is below FLOAT32_MIN_WORK, where "auto" keeps float64.)"""
    from kgmm_bayes.bayes import sampler

    part, post = _run("auto", "auto")
    assert str(post.sample_stats["likelihood_precision"]) == "float64"
    assert "likelihood_precision_gap" not in post.sample_stats
    monkeypatch.setattr(sampler, "FLOAT32_MIN_WORK", 0.0)
    part, post = _run("auto", "auto")
    stats = post.sample_stats
    assert str(stats["likelihood_precision"]) == "float32"
    assert 0 < float(stats["likelihood_precision_gap"]) <= coreset.GAP_SD
    assert np.std(stats["likelihood_gap"]) <= 2 * coreset.GAP_SD
    # float32 noise: the gap is no longer a lower bound to the last digit, but to a few thousandths of a nat
    assert np.all(stats["likelihood_gap"] >= -1e-2)
    gaps = coreset.loglik_gaps

    def widened(fine, merged, weights, means, cov_chol, dtype=np.float64, pilot_only=True):
        out = gaps(fine, merged, weights, means, cov_chol, dtype=dtype)
        noisy = dtype == np.float32 and (len(weights) == coreset.PILOT_DRAWS) == pilot_only
        return out + (np.random.default_rng(0).normal(0.0, 1.0, out.shape) if noisy else 0.0)

    monkeypatch.setattr(coreset, "loglik_gaps", widened)
    part, post = _run("auto", "auto")
    stats = post.sample_stats
    assert str(stats["likelihood_precision"]) == "float64" and float(stats["likelihood_precision_gap"]) > 0.5
    assert "likelihood_rejected" not in stats and int(stats["likelihood_cells"]) < len(part.points)
    monkeypatch.setattr(coreset, "loglik_gaps", lambda *a, dtype=np.float64: widened(*a, dtype=dtype,
                                                                                     pilot_only=False))
    part, post = _run("auto", "auto")
    stats = post.sample_stats
    assert str(stats["likelihood_precision"]) == "float64" and "likelihood_cells" not in stats
    rejected_cells, rejected_sd = stats["likelihood_rejected"]
    assert rejected_sd > 2 * coreset.GAP_SD


def test_a_number_of_likelihood_cells_is_used_as_given():
    part, post = _run(50)
    assert int(post.sample_stats["likelihood_cells"]) <= 50 and "likelihood_ladder" not in post.sample_stats
    part, post = _run(len(part.points))  # as many as the partition's cells: the cells, nothing merged
    assert "likelihood_cells" not in post.sample_stats


def _rounds(warmup, draws):
    """A small posterior with twice as many chains as CPU devices (two rounds of parallel chains) and a
    function of the key and config that samples it; skipped without several CPU devices."""
    from kgmm_bayes.bayes.sampler import SamplerConfig, build_prior, initial_values, run_nuts

    devices = jax.local_device_count()
    if jax.default_backend() != "cpu" or devices < 2:
        pytest.skip("rounds of parallel chains need several CPU devices")
    _, part, _ = _cells(d=1, n=4000, cells=200)
    prior = build_prior(part, 5.0, 0.25, 1.0, 2.0)
    config = SamplerConfig(chains=2 * devices, warmup=warmup, draws=draws, map_starts=2, map_steps=50)
    return config, lambda key, cfg: run_nuts(jax.random.key(key), part.points, part.counts, prior,
                                             initial_values(part), cfg)


def _count_compilations(monkeypatch) -> list:
    """A list that gets, for every round of parallel chains, how many programs it compiled."""
    from kgmm_bayes.bayes import sampler

    compiled = []
    original = sampler._ReusedPmap.__call__

    def counting(self, chain_fn):
        before = len(self._compiled)
        out = original(self, chain_fn)
        compiled.append(len(self._compiled) - before)
        return out

    monkeypatch.setattr(sampler._ReusedPmap, "__call__", counting)
    return compiled


def test_rounds_of_parallel_chains_reuse_one_compiled_program_and_give_numpyros_draws(monkeypatch):
    """Twice as many chains as CPU devices run in two rounds; the second reuses the first's pmap.  The draws
    are those of numpyro's own 'parallel' method (a fresh pmap per round), bit for bit."""
    from kgmm_bayes.bayes import sampler

    config, sample = _rounds(60, 40)
    compiled = _count_compilations(monkeypatch)
    reused = sample(4, config)
    assert compiled == [1, 0]  # the second round compiled nothing
    monkeypatch.setattr(sampler._ReusedPmap, "__call__", lambda self, chain_fn: jax.pmap(chain_fn))
    fresh = sample(4, config)
    for name in ("weights", "means", "cov_chol"):
        np.testing.assert_array_equal(getattr(reused, name), getattr(fresh, name))


@pytest.mark.parametrize("value, message", [("fine", "must be \"auto\" or a positive integer"),
                                            (0, "must be \"auto\" or a positive integer"),
                                            (True, "must be \"auto\" or a positive integer"),
                                            (5, "must be >= the mixture's components")])
def test_likelihood_cells_in_a_spec(value, message):
    from kgmm_bayes.spec import SpecError, spec_from_dict

    assert spec_from_dict({"data": {"system": "reduced_1d"}}).sampler.likelihood_cells == "auto"
    assert spec_from_dict({"data": {"system": "reduced_1d"}, "sampler": {"likelihood_cells": 300}}
                          ).sampler.likelihood_cells == 300
    with pytest.raises(SpecError, match=message.replace("(", r"\(")):
        spec_from_dict({"data": {"system": "reduced_1d"}, "sampler": {"likelihood_cells": value}})


def test_metrics_and_report_say_which_likelihood_was_sampled():
    from kgmm_bayes.study.report import likelihood_lines
    from kgmm_bayes.study.stages import likelihood_coreset

    gaps = np.array([[0.1, 0.3], [0.2, 0.4]])
    merged = likelihood_coreset({"likelihood_cells": np.asarray(707), "likelihood_gap": gaps,
                                 "likelihood_ladder": np.array([[2000, 0.0], [1414, 0.006], [1000, 0.11]])}, 2000)
    assert merged == {"likelihood_cells": 707, "likelihood_merged": True, "likelihood_precision": "float64",
                      "likelihood_gap_sd": pytest.approx(np.std(gaps), rel=1e-12),
                      "likelihood_ladder": [[2000, 0.0], [1414, 0.006], [1000, 0.11]]}
    (line,) = likelihood_lines(merged)
    assert "707 merged cells" in line and f"sd {np.std(gaps):.3f} nats" in line
    cells = likelihood_coreset({}, 2000)  # the cells themselves, nothing tried: nothing to say
    assert cells == {"likelihood_cells": 2000, "likelihood_merged": False, "likelihood_precision": "float64"}
    assert likelihood_lines(cells) == []
    kept = likelihood_coreset({"likelihood_ladder": np.array([[2000, 0.0], [1414, 0.25]])}, 2000)
    (line,) = likelihood_lines(kept)  # a merge tried and refused
    assert "partition's 2000 cells" in line and "1414" in line and "sd 0.25 nats" in line
    rejected = likelihood_coreset({"likelihood_rejected": np.array([10, 0.5])}, 2000)
    assert rejected == {"likelihood_cells": 2000, "likelihood_merged": False, "likelihood_precision": "float64",
                        "likelihood_rejected": {"cells": 10, "gap_sd": 0.5}}
    (line,) = likelihood_lines(rejected)
    assert "10 cells was rejected" in line and "gap sd 0.5 nats" in line and "in float64" in line
    # the cells in float32 (its gap to float64 over the draws), merged cells in float32, float32 refused
    single = likelihood_coreset({"likelihood_cells": np.asarray(2000), "likelihood_gap": gaps,
                                 "likelihood_precision": np.asarray("float32"),
                                 "likelihood_precision_gap": np.asarray(0.04)}, 2000)
    assert single["likelihood_precision_gap_sd"] == pytest.approx(0.04) and not single["likelihood_merged"]
    (line,) = likelihood_lines(single)
    assert "the partition's 2000 cells in float32" in line and "(in float64)" in line
    both = likelihood_coreset({"likelihood_cells": np.asarray(707), "likelihood_gap": gaps,
                               "likelihood_precision": np.asarray("float32")}, 2000)
    (line,) = likelihood_lines(both)
    assert "707 merged cells" in line and "in float32" in line
    refused = likelihood_coreset({"likelihood_precision": np.asarray("float64"),
                                  "likelihood_precision_gap": np.asarray(0.3)}, 2000)
    (line,) = likelihood_lines(refused)
    assert "float32 was not used" in line and "sd 0.3 nats" in line


def test_rounds_with_a_progress_bar_reuse_the_program_report_every_iteration_and_match_the_quiet_draws(
        monkeypatch):
    """With a progress display (the CLI's default) the chains report their iterations from inside the
    compiled program to the round's bar, so the second round still reuses the first's pmap; the draws are
    the quiet run's."""
    import contextlib

    from kgmm_bayes import progress
    from kgmm_bayes.bayes import sampler

    config, sample = _rounds(30, 20)
    seen = []

    class Counter:
        def __init__(self, initial):
            self.n = initial

        def update(self, k):
            self.n += k

    @contextlib.contextmanager
    def recording_bar(label, total, enabled, initial=0):
        if not enabled:
            yield
            return
        counter = Counter(initial)
        progress._active.append(counter)
        try:
            yield
        finally:
            progress._active.remove(counter)
            seen.append((label, total, counter.n))

    monkeypatch.setattr(sampler, "bar", recording_bar)
    monkeypatch.setattr(sampler, "TICKING_MIN_WORK", 0.0)  # this small sampler counts its iterations too
    compiled = _count_compilations(monkeypatch)
    shown = sample(5, config._replace(progress=True))
    devices = config.chains // 2
    assert compiled == [1, 0]
    labels = [f"NUTS chains 1-{devices} of {config.chains}", f"NUTS chains {devices + 1}-{config.chains} of {config.chains}"]
    assert seen == [(labels[0], 50, 50), (labels[1], 50, 50)]
    quiet = sample(5, config)
    for name in ("weights", "means", "cov_chol"):
        np.testing.assert_array_equal(getattr(shown, name), getattr(quiet, name))
    # below TICKING_MIN_WORK the chains hold no host callback (so the persistent cache can keep them): the bars
    # open and close by rounds, with no tick from inside, and the draws are the same
    monkeypatch.undo()
    monkeypatch.setattr(sampler, "bar", recording_bar)
    seen.clear()
    by_rounds = sample(5, config._replace(progress=True))
    assert seen == [(labels[0], 50, 0), (labels[1], 50, 0)]
    np.testing.assert_array_equal(by_rounds.weights, quiet.weights)


def test_the_default_study_s_chains_come_from_the_compilation_cache_with_the_display_on():
    """The default study's sampler is below TICKING_MIN_WORK even on all its cells, unmerged (rows x quadratic
    features x components x chain iterations), so its chains hold no host callback; Lorenz-63's is above."""
    from kgmm_bayes.bayes.sampler import TICKING_MIN_WORK
    from kgmm_bayes.spec import load_spec

    def work(name):
        spec = load_spec(name)
        d = {"reduced_1d": 1, "lorenz63": 3}[spec.data.system]
        features = 1 + d + d * (d + 1) // 2
        return spec.partition.cells * features * spec.mixture.components * spec.sampler.chains * (
            spec.sampler.warmup + spec.sampler.draws)

    assert work(None) < TICKING_MIN_WORK < work("lorenz63")


@pytest.mark.slow  # 53 s; vectorised chains are the default only on one accelerator
def test_vectorized_chains_with_a_progress_bar_give_the_quiet_draws(monkeypatch):
    """Vectorised chains (the default on one GPU) carry one iteration count per chain: the progress report
    takes their common value; the draws are the quiet run's."""
    from kgmm_bayes.bayes import sampler
    from kgmm_bayes.bayes.sampler import SamplerConfig, build_prior, initial_values, run_nuts

    monkeypatch.setattr(sampler, "TICKING_MIN_WORK", 0.0)  # counted from inside, although small

    _, part, _ = _cells(d=1, n=4000, cells=200)
    prior = build_prior(part, 5.0, 0.25, 1.0, 2.0)
    config = SamplerConfig(chains=2, warmup=20, draws=10, map_starts=2, map_steps=50, chain_method="vectorized")
    posts = [run_nuts(jax.random.key(6), part.points, part.counts, prior, initial_values(part),
                      config._replace(progress=progress)) for progress in (True, False)]
    np.testing.assert_array_equal(posts[0].weights, posts[1].weights)
    assert posts[0].weights.shape[:2] == (2, 10)
