"""The coarsened posterior's plug-in rule (kgmm_bayes.bayes.coarsening) against known answers.

The error terms come from maximum-likelihood fits on blocks of the snapshots, so they are checked
on data whose answer is analytic: a Gaussian fitted by a Gaussian (no bias; independent snapshots,
no inflation), an AR(1) series (variance inflation (1 + phi^2) / (1 - phi^2) = 24.6 for the variance
parameter, (1 + phi) / (1 - phi) = 49 for the mean, at phi = 0.96), and a two-Gaussian mixture fitted
by one Gaussian (the squared bias of its score and log density against the exact mixture's).  The
inflation is a ratio of two across-block variances with (blocks - 1) x 2 = 14 degrees of freedom
each at 8 blocks: under independence it exceeds 5.3 with probability < 0.001 (F(14, 14)), and a true
inflation of 24.6 or more is estimated below 24.6 x 0.19 = 4.7 with probability < 0.001.
"""
import math

import numpy as np
import pytest

from kgmm_bayes.bayes.coarsening import (KEEP_STANDARD, alpha_from_zeta, choose_zeta, error_terms,
                                         needs_variance, posterior_score_variance, zeta_from_alpha,
                                         zeta_without_variance)

POINTS = np.linspace(-2.0, 2.0, 41)[:, None]
COUNTS = np.exp(-0.5 * POINTS[:, 0] ** 2)
W = COUNTS / COUNTS.sum()
N = 20_000


def ar1(rng, phi, n):
    x = np.empty(n)
    x[0] = rng.normal()
    noise = rng.normal(size=n) * math.sqrt(1.0 - phi**2)
    for t in range(1, n):
        x[t] = phi * x[t - 1] + noise[t]
    return x[:, None]


@pytest.mark.parametrize("seed", [0, 1])
def test_well_specified_independent_snapshots_no_bias_and_no_inflation(seed):
    x = np.random.default_rng(seed).normal(size=(N, 1))
    terms = error_terms(x, 1, POINTS, COUNTS, seed=seed, blocks=8)
    assert terms["reference"] == 0  # BIC prefers no richer mixture: no measurable bias
    for name in ("score", "log density"):
        inflation, bias2 = terms[name]
        assert bias2 == 0.0 and 1.0 <= inflation < 5.3


def test_richer_references_stop_where_bic_prefers_the_smaller(monkeypatch):
    """The references are a ladder: 2K is fitted on every contiguous block, 4K only where BIC preferred 2K to K.
    Gaussian snapshots fitted by one Gaussian: BIC prefers 1 to 2 components, so no 4-component fit is made and
    there is no bias; a two-Gaussian mixture: 2 beats 1, and 4 is tried too."""
    from kgmm_bayes.bayes import coarsening

    asked, fit = [], coarsening._fit_scores

    def recording(blocks, k, points, seed, padded=0):
        asked.extend([k] * len(blocks))
        return fit(blocks, k, points, seed, padded)

    monkeypatch.setattr(coarsening, "_fit_scores", recording)
    x = np.random.default_rng(0).normal(size=(N, 1))
    terms = error_terms(x, 1, POINTS, COUNTS, seed=0)
    assert terms["reference"] == 0 and terms["score"][1] == terms["log density"][1] == 0.0
    assert sorted(asked) == [1] * 2 * coarsening.BLOCKS + [2] * coarsening.BLOCKS
    asked.clear()
    rng = np.random.default_rng(4)
    x = (np.where(rng.random(N) < 0.5, -1.5, 1.5) + 0.5 * rng.normal(size=N))[:, None]
    terms = error_terms(x, 1, POINTS, COUNTS, seed=0)
    assert terms["reference"] >= 2
    assert sorted(asked) == [1] * 2 * coarsening.BLOCKS + [2] * coarsening.BLOCKS + [4] * coarsening.BLOCKS


def test_autocorrelated_snapshots_inflate_the_variance():
    x = ar1(np.random.default_rng(3), 0.96, N)
    terms = error_terms(x, 1, POINTS, COUNTS, seed=0, blocks=8)
    for name in ("score", "log density"):
        inflation, bias2 = terms[name]
        assert bias2 == 0.0 and inflation > 4.7, (name, inflation)


@pytest.mark.parametrize("n", [10_000, 100_000])
def test_misspecified_fit_squared_bias_matches_the_exact_one(n):
    rng = np.random.default_rng(4)
    x = np.where(rng.random(n) < 0.5, -1.5, 1.5) + 0.5 * rng.normal(size=n)
    # one Gaussian fitted to the mixture: mean 0, variance 1.5^2 + 0.5^2 = 2.5
    p = POINTS[:, 0]
    fitted_score, fitted_logp = -p / 2.5, -0.5 * p**2 / 2.5 - 0.5 * np.log(2 * np.pi * 2.5)
    dens = [0.5 * np.exp(-0.5 * ((p - m) / 0.5) ** 2) / np.sqrt(2 * np.pi * 0.25) for m in (-1.5, 1.5)]
    exact_score = sum(d * -(p - m) / 0.25 for d, m in zip(dens, (-1.5, 1.5))) / sum(dens)
    exact_logp = np.log(sum(dens))
    terms = error_terms(x[:, None], 1, POINTS, COUNTS, seed=0)
    assert terms["reference"] >= 2
    assert terms["score"][1] == pytest.approx(float(np.sum(W * (fitted_score - exact_score) ** 2)), rel=0.1)
    assert terms["log density"][1] == pytest.approx(float(np.sum(W * (fitted_logp - exact_logp) ** 2)), rel=0.1)


def test_zeta_makes_the_posterior_variance_equal_the_error():
    rng = np.random.default_rng(5)
    x = np.where(rng.random(N) < 0.5, -1.5, 1.5)[:, None] + 0.5 * rng.normal(size=(N, 1))
    terms = error_terms(x, 1, POINTS, COUNTS, seed=0)
    draws = 1e-2 * rng.normal(size=(4000, len(POINTS), 1))
    v = posterior_score_variance(draws, COUNTS)
    assert v == pytest.approx(1e-4, rel=0.05)
    wide_logp = 1e3 * rng.normal(size=(4000, len(POINTS)))  # the log density's band asks for no coarsening
    choice = choose_zeta(draws, wide_logp, POINTS, COUNTS, x, 1, seed=0)
    inflation, bias2 = terms["score"]
    assert choice.limited_by == "score"
    assert choice.zeta == pytest.approx(v / (v * inflation + bias2), rel=1e-12)
    assert choice.alpha == pytest.approx(choice.zeta * N / (1 - choice.zeta), rel=1e-12)
    narrow_logp = 1e-3 * rng.normal(size=(4000, len(POINTS)))
    choice = choose_zeta(1e3 * draws, narrow_logp, POINTS, COUNTS, x, 1, seed=0)
    v_logp = posterior_score_variance(narrow_logp[..., None], COUNTS)
    inflation, bias2 = terms["log density"]
    assert choice.limited_by == "log density"
    assert choice.zeta == pytest.approx(v_logp / (v_logp * inflation + bias2), rel=1e-12)


def test_the_standard_posterior_is_kept_when_it_is_as_wide_as_the_error():
    x = np.random.default_rng(6).normal(size=(N, 1))  # no bias, no inflation: zeta = 1 / R with R ~ 1
    rng = np.random.default_rng(7)
    choice = choose_zeta(rng.normal(size=(400, len(POINTS), 1)), rng.normal(size=(400, len(POINTS))), POINTS,
                         COUNTS, x, 1, seed=0)
    terms = error_terms(x, 1, POINTS, COUNTS, seed=0)
    expected = min(1.0 / terms["score"][0], 1.0 / terms["log density"][0])
    assert choice.zeta == (1.0 if expected > KEEP_STANDARD else pytest.approx(expected, rel=1e-12))
    assert (choice.alpha == math.inf) == (choice.zeta == 1.0)


def test_without_a_bias_zeta_is_known_before_any_posterior_is_sampled():
    """AR(1) snapshots fitted by a Gaussian: inflation, no bias.  zeta = 1 / R then does not depend on
    the posterior's variance, so the study samples only the coarsened posterior: the zeta chosen before
    sampling equals choose_zeta's for draws of any width, and the variance reported from draws sampled
    at zeta is zeta times theirs (the standard posterior's)."""
    x = ar1(np.random.default_rng(9), 0.96, N)
    terms = error_terms(x, 1, POINTS, COUNTS, seed=0)
    assert terms["score"][1] == 0.0 and terms["log density"][1] == 0.0 and terms["score"][0] > 5
    assert not needs_variance(terms) and needs_variance(terms, use_gap=True)
    zeta = zeta_without_variance(terms)
    assert zeta == min(1.0 / terms["score"][0], 1.0 / terms["log density"][0]) < KEEP_STANDARD
    rng = np.random.default_rng(10)
    for width in (1e-3, 1.0, 1e3):
        draws, logps = width * rng.normal(size=(400, len(POINTS), 1)), width * rng.normal(size=(400, len(POINTS)))
        choice = choose_zeta(draws, logps, POINTS, COUNTS, x, 1, seed=0, terms=terms, tempered=zeta)
        assert choice.zeta == zeta
        assert choice.posterior_variance == pytest.approx(zeta * posterior_score_variance(draws, COUNTS), rel=1e-12)
        assert choice.variance_from == "kept posterior x zeta"
    biased = dict(terms, score=(terms["score"][0], 0.1))
    assert needs_variance(biased)


def test_alpha_and_zeta_are_inverse():
    for n in (10, 1000, 10**6):
        for alpha in (1.0, 500.0, 1e5):
            assert alpha_from_zeta(zeta_from_alpha(alpha, n), n) == pytest.approx(alpha, rel=1e-9)
    assert zeta_from_alpha(math.inf, 100) == 1.0 and alpha_from_zeta(1.0, 100) == math.inf


def test_too_few_snapshots_per_block_give_no_evidence_not_an_error():
    x = np.random.default_rng(8).normal(size=(60, 1))  # blocks of 15 snapshots for K = 10 components
    terms = error_terms(x, 10, POINTS, COUNTS, seed=0)
    assert terms == {"reference": 0, "score": (1.0, 0.0), "log density": (1.0, 0.0)}


def test_the_coarsening_does_not_follow_the_nuts_key(monkeypatch):
    """The same data sampled with other NUTS keys get the same error terms, so the same zeta: the
    scikit-learn fits behind them take one fixed seed, not the key's bits."""
    import jax

    from kgmm_bayes.partition import fit_partition
    from kgmm_bayes.spec import spec_from_dict
    from kgmm_bayes.study import stages

    seeds = []

    class Stop(Exception):
        pass

    def recording(*args, seed, **kwargs):
        seeds.append(seed)
        raise Stop

    monkeypatch.setattr(stages, "error_terms", recording)
    x = ar1(np.random.default_rng(3), 0.5, 2000)
    part = fit_partition(jax.random.key(0), x, 40, 2)
    spec = spec_from_dict({"data": {"path": "unused.npy"}, "mixture": {"components": 2}})
    for key in range(3):
        with pytest.raises(Stop):
            stages.sample_posterior(spec, jax.random.key(key), part, x)
    assert seeds == [stages.COARSENING_SEED] * 3


def _fake_posterior(shift, laplace=False):
    """Two chains of two draws of a 2-component mixture in 2D, means shifted by ``shift``; ``laplace``: marked as
    a Laplace posterior (``laplace_posterior``'s stats), with its MAP searches' optima."""
    from kgmm_bayes.bayes.sampler import PosteriorSamples

    means = np.broadcast_to(np.array([[-0.5 + shift, 0.0], [0.5 + shift, 0.0]]), (2, 2, 2, 2)).copy()
    chol = np.broadcast_to(0.8 * np.eye(2), (2, 2, 2, 2, 2)).copy()
    weights = np.full((2, 2, 2), 0.5)
    stats = {name: np.zeros((2, 2)) for name in ("diverging", "num_steps", "tree_depth", "accept_prob", "energy",
                                                 "potential_energy")}
    if laplace:
        stats["laplace"] = np.asarray(True)
        stats["map_optima"] = np.arange(12.0).reshape(3, 4) + shift  # its MAP searches' optima (searches, P)
        stats["laplace_newton_decrement"] = np.array([1e-6, 3e-5])
    return PosteriorSamples(weights, means, chol, {"weights": weights, "means": means, "cov_chol": chol}, stats, 0.0)


@pytest.mark.parametrize("bias", [0.0, 0.1])
def test_a_second_posterior_keeps_its_own_mean_s_error_field_on_the_first_one_s_bumps(monkeypatch, bias):
    """When the bumps ask for more coarsening, the posterior kept is the second one: the band's local bias is that
    posterior mean's error field, measured on the bumps placed for the first (sample_posterior's ``kept``).
    Without a bias the first posterior is sampled at 1 / R, with one at zeta = 1 (the standard posterior); the
    second starts where the first ended either way."""
    import jax

    from kgmm_bayes.bayes.coarsening import Coarsening
    from kgmm_bayes.bayes.score import posterior_mean_score, thin_draws
    from kgmm_bayes.bayes.score_matching import field_from_stats, stein_gap
    from kgmm_bayes.partition import fit_partition
    from kgmm_bayes.spec import spec_from_dict
    from kgmm_bayes.study import stages

    x = np.random.default_rng(21).normal(size=(8000, 2))
    part = fit_partition(jax.random.key(0), x, 400, 2)

    fake = _fake_posterior
    runs = [fake(0.3), fake(0.0)]
    first_run, warm_starts = runs[0], []

    def fake_run(*args, **kwargs):
        warm_starts.append(kwargs.get("warm"))
        return runs.pop(0)

    monkeypatch.setattr(stages, "run_nuts", fake_run)
    # autocorrelation inflation R = 2: the first posterior is sampled at zeta = 1 / R = 0.5 (with a bias: the
    # standard posterior, zeta = 1), the second at 0.25
    first_zeta = 0.5 if bias == 0.0 else 1.0
    monkeypatch.setattr(stages, "error_terms", lambda *args, **kwargs: {"reference": 0, "score": (2.0, bias),
                                                                         "log density": (2.0, bias)})
    monkeypatch.setattr(stages, "choose_zeta", lambda *args, **kwargs: Coarsening(method="auto", zeta=0.25, alpha=8e3))
    factors = []  # the draws' spread times R zeta is the posterior mean's sampling variance: R / R, then R x 0.25

    def recorded(*args, **kwargs):
        factors.append(kwargs["spread_factor"])
        return stein_gap(*args, **kwargs)
    monkeypatch.setattr(stages, "stein_gap", recorded)
    spec = spec_from_dict({"data": {"path": "unused.npy"}, "mixture": {"components": 2}})
    post, choice = stages.sample_posterior(spec, jax.random.key(0), part, x)
    assert runs == [] and choice.zeta == 0.25  # both posteriors were sampled; the second is kept
    # the second starts at the first's draws, its metric the first's spread times first_zeta / 0.25
    assert warm_starts[0] is None and warm_starts[1][0] is first_run and warm_starts[1][1] == first_zeta / 0.25
    assert factors == [2.0 * first_zeta, 0.5]
    # the first posterior's draws (sampled at first_zeta) are kept with the second to drive the model
    drive, zeta = stages.model_draws(post, "the kept posterior's draws", spec.score.max_draws)
    assert zeta == first_zeta
    weights = post.sample_stats["model_chain_weights"] if bool(post.sample_stats["model_stacked"]) else None
    for a, b in zip(drive, thin_draws(fake(0.3), spec.score.max_draws, chain_weights=weights)):
        np.testing.assert_array_equal(a, b)
    assert stages.model_draws(fake(0.0), "the kept posterior's draws", 10) == ("the kept posterior's draws", None)

    field = field_from_stats(post.sample_stats)
    first = stein_gap(x, lambda z: posterior_mean_score(*thin_draws(fake(0.3), stages.GAP_DRAWS), z), part.points,
                      part.counts, seed=stages.COARSENING_SEED)
    second = stein_gap(x, lambda z: posterior_mean_score(*thin_draws(fake(0.0), stages.GAP_DRAWS), z), part.points,
                       part.counts, seed=stages.COARSENING_SEED, ladder=(len(first.field.centres),))
    np.testing.assert_array_equal(field.centres, first.field.centres)
    np.testing.assert_allclose(field.coefficients, second.field.coefficients, rtol=1e-12, atol=1e-12)
    assert not np.allclose(field.coefficients, first.field.coefficients)


def test_the_model_s_draws_follow_the_first_posterior_s_stacking_weights():
    """The first posterior's chains are weighed by their own stacking weights when they settled in several modes
    (a chain of weight 0 gives no draw), and thinned to [score] max_draws when the study asks for them."""
    from kgmm_bayes.study import stages

    chains, draws, k, d = 3, 40, 2, 1
    means = np.arange(chains * draws * k * d, dtype=np.float64).reshape(chains, draws, k, d)
    stats = {"model_weights": np.full((chains, draws, k), 0.5), "model_means": means,
             "model_cov_chol": np.ones((chains, draws, k, d, d)), "model_zeta": np.asarray(1.0),
             "model_chain_weights": np.array([0.5, 0.0, 0.5]), "model_stacked": np.asarray(True),
             "model_max_r_hat": np.asarray(1.0)}

    class Post:
        sample_stats = stats

    (w, m, L), zeta = stages.model_draws(Post, None, 30)
    assert zeta == 1.0 and w.shape == (30, k) and m.shape == (30, k, d) and L.shape == (30, k, d, d)
    chain_of = m[:, 0, 0] // (draws * k * d)
    assert set(chain_of) == {0, 2} and np.sum(chain_of == 0) == np.sum(chain_of == 2) == 15
    stats["model_stacked"] = np.asarray(False)  # equal weights: 10 draws from each chain
    (_, m, _), _ = stages.model_draws(Post, None, 30)
    assert np.bincount((m[:, 0, 0] // (draws * k * d)).astype(int)).tolist() == [10, 10, 10]


def test_error_terms_fit_each_k_at_once_as_one_block_at_a_time(monkeypatch):
    """The maximum-likelihood fits of one K run at once (em.fit_mixtures, the blocks split over the devices): each
    block's fit is the same computation as alone, so the terms are those of the blocks fitted one at a time (float64,
    to rounding), the richer references and BIC's choice among them included (a two-Gaussian mixture fitted by one);
    and each fit is the one asked for: K on the contiguous and the scattered blocks, then every reference on the
    contiguous ones."""
    from kgmm_bayes.bayes import coarsening

    rng = np.random.default_rng(4)
    x = (np.where(rng.random(N) < 0.5, -1.5, 1.5) + 0.5 * rng.normal(size=N))[:, None]
    at_once = error_terms(x, 1, POINTS, COUNTS, seed=0)
    asked, fit = [], coarsening._fit_scores

    def one_at_a_time(blocks, k, points, seed, padded=0):
        asked.extend((float(block[0, 0]), len(block), k) for block in blocks)
        return [fit(block[None], k, points, seed, padded)[0] for block in blocks]

    monkeypatch.setattr(coarsening, "_fit_scores", one_at_a_time)
    alone = error_terms(x, 1, POINTS, COUNTS, seed=0)
    assert at_once["reference"] == alone["reference"] >= 2 and at_once["score"][1] > 0
    for name in ("score", "log density"):
        np.testing.assert_allclose(at_once[name], alone[name], rtol=1e-12, atol=0)
    step = N // coarsening.BLOCKS
    contiguous = [(float(x[j * step, 0]), step, 1) for j in range(coarsening.BLOCKS)]
    assert sorted(asked) == sorted(contiguous + [(f, n, kr) for f, n, _ in contiguous for kr in (2, 4)]
                                   + [a for a in asked if a[2] == 1 and a not in contiguous])
    assert sum(1 for a in asked if a[2] == 1) == 2 * coarsening.BLOCKS
    # the fits are evaluated with K padded by components of weight 0 (one compiled program): the same mixture
    plain, padded = fit(x[None, :2000], 2, POINTS, 0)[0], fit(x[None, :2000], 2, POINTS, 0, padded=4)[0]
    for a, b in zip(plain, padded):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def _sampled_with_fakes(monkeypatch, part, x, sampler: dict, laplace_for, nuts_post, chosen: float):
    """``stages.sample_posterior`` with ``[sampler]`` settings ``sampler`` on fake posteriors: ``laplace_for(map_from)``
    is ``laplace_posterior``'s, ``nuts_post`` ``run_nuts``'; no bias and autocorrelation inflation R = 2 (the first
    posterior at zeta = 1 / R = 0.5), ``chosen`` the zeta chosen.  Returns ``(spec, post, choice, calls)``, calls as
    ``(way, counts / the cells' counts, warm, map_from, known)``."""
    import jax

    from kgmm_bayes.bayes.coarsening import Coarsening
    from kgmm_bayes.spec import spec_from_dict
    from kgmm_bayes.study import stages

    calls = []

    def fake_laplace(key, points, counts, *args, map_from=None, **kwargs):
        calls.append(("laplace", np.asarray(counts) / part.counts, None, map_from, kwargs.get("known")))
        return laplace_for(map_from)

    def fake_run(key, points, counts, *args, **kwargs):
        calls.append(("nuts", np.asarray(counts) / part.counts, kwargs.get("warm"), kwargs.get("map_from"),
                      kwargs.get("known")))
        return nuts_post

    monkeypatch.setattr(stages, "laplace_posterior", fake_laplace)
    monkeypatch.setattr(stages, "run_nuts", fake_run)
    monkeypatch.setattr(stages, "error_terms", lambda *args, **kwargs: {"reference": 0, "score": (2.0, 0.0),
                                                                         "log density": (2.0, 0.0)})
    monkeypatch.setattr(stages, "choose_zeta", lambda *args, **kwargs: Coarsening(
        method="auto", zeta=chosen, alpha=8e3, variance_from="kept posterior x zeta"))
    spec = spec_from_dict({"data": {"path": "unused.npy"}, "mixture": {"components": 2}, "sampler": sampler})
    post, choice = stages.sample_posterior(spec, jax.random.key(0), part, x)
    return spec, post, choice, calls


@pytest.mark.parametrize("second", [True, False])
def test_a_laplace_first_posterior_gives_zeta_s_variance_and_nuts_samples_the_posterior_kept(monkeypatch, second):
    """``[sampler] first_posterior = "laplace"``: the Laplace approximation (at 1 / R) gives the score variance and
    the gap, and NUTS samples only the posterior kept: at the chosen zeta (from its own MAP searches, no warm start:
    the Laplace draws are no chains), the Laplace draws then driving the model; or, where no more coarsening is
    asked for, at the first zeta itself, whose draws then drive the model, its error field its own."""
    import jax

    from kgmm_bayes.bayes.score import posterior_mean_score, thin_draws
    from kgmm_bayes.bayes.score_matching import field_from_stats, stein_gap
    from kgmm_bayes.partition import fit_partition
    from kgmm_bayes.study import stages

    x = np.random.default_rng(21).normal(size=(8000, 2))
    part = fit_partition(jax.random.key(0), x, 400, 2)

    laplace_post, nuts_post = _fake_posterior(0.3, laplace=True), _fake_posterior(0.0)
    chosen = 0.25 if second else 0.5
    spec, post, choice, calls = _sampled_with_fakes(monkeypatch, part, x, {"first_posterior": "laplace"},
                                                    lambda map_from: laplace_post, nuts_post, chosen)
    assert [c[0] for c in calls] == ["laplace", "nuts"]  # NUTS once: the posterior kept
    np.testing.assert_allclose(calls[0][1], 0.5)
    np.testing.assert_allclose(calls[1][1], chosen)
    assert calls[1][2] is None  # no warm start from Laplace draws
    assert calls[1][3] is laplace_post.sample_stats["map_optima"]  # its MAP searches polish the Laplace's optima
    assert "map_optima" not in post.sample_stats  # not kept with the posterior
    assert choice.zeta == chosen and choice.variance_from == "Laplace approximation x its zeta"
    assert str(post.sample_stats["first_posterior"]) == "laplace"
    drive, zeta = stages.model_draws(post, "the kept posterior's draws", spec.score.max_draws)
    field = field_from_stats(post.sample_stats)
    own = stein_gap(x, lambda z: posterior_mean_score(*thin_draws(nuts_post, stages.GAP_DRAWS), z), part.points,
                    part.counts, seed=stages.COARSENING_SEED, ladder=(len(field.centres),))
    np.testing.assert_allclose(field.coefficients, own.field.coefficients,
                               rtol=1e-12, atol=1e-12)  # the kept (NUTS) posterior mean's field, either way
    if second:  # the Laplace draws (at 0.5) drive the model
        assert zeta == 0.5
        for a, b in zip(drive, thin_draws(laplace_post, spec.score.max_draws, chain_weights=(
                post.sample_stats["model_chain_weights"] if bool(post.sample_stats["model_stacked"]) else None))):
            np.testing.assert_array_equal(a, b)
    else:  # NUTS at the first zeta is the only posterior kept: its own draws drive the model
        assert zeta is None and drive == "the kept posterior's draws"


@pytest.mark.parametrize("first, second", [("laplace", True), ("laplace", False), ("nuts", True)])
def test_a_laplace_kept_posterior_runs_no_nuts_after_the_first_posterior(monkeypatch, first, second):
    """``[sampler] kept_posterior = "laplace"``: the posterior kept is the Laplace approximation at its own zeta,
    centred on the first posterior's MAP optima polished there (``map_from``); with a Laplace first posterior and no
    more coarsening asked for, that first posterior is the one kept (nothing sampled twice), and no NUTS runs at
    all; a NUTS first posterior is still sampled by NUTS.  A Laplace first posterior's Hessians at its refined optima
    go to the kept one's searches with its counts (``known``), and are kept by neither posterior."""
    import jax

    from kgmm_bayes.partition import fit_partition

    x = np.random.default_rng(22).normal(size=(8000, 2))
    part = fit_partition(jax.random.key(0), x, 400, 2)
    first_post, kept_post = _fake_posterior(0.3, laplace=True), _fake_posterior(0.1, laplace=True)
    nuts_post = _fake_posterior(0.0)
    nuts_post.sample_stats["map_optima"] = np.ones((3, 4))
    first_post.sample_stats.update(map_hessians=np.ones((2, 4, 4)), map_hessian_rows=np.array([0, 2]))
    chosen = 0.25 if second else 0.5
    spec, post, choice, calls = _sampled_with_fakes(
        monkeypatch, part, x, {"first_posterior": first, "kept_posterior": "laplace"},
        lambda map_from: first_post if map_from is None else kept_post, nuts_post, chosen)
    assert choice.zeta == chosen
    if not second:  # the Laplace first posterior at the zeta kept is the posterior kept
        assert [c[0] for c in calls] == ["laplace"]
        np.testing.assert_array_equal(post.means, first_post.means)
        return
    assert [c[0] for c in calls] == [first, "laplace"]
    np.testing.assert_allclose(calls[0][1], 0.5, rtol=1e-12)
    np.testing.assert_allclose(calls[1][1], chosen, rtol=1e-12)
    opened = first_post if first == "laplace" else nuts_post
    assert calls[1][3] is opened.sample_stats["map_optima"]  # the first posterior's optima, polished at chosen
    if first == "laplace":  # with the Hessians at its refined optima, at its counts
        known = calls[1][4]
        assert known.hessians is first_post.sample_stats["map_hessians"]
        assert known.rows is first_post.sample_stats["map_hessian_rows"]
        np.testing.assert_allclose(known.counts, 0.5 * part.counts, rtol=1e-12)
    else:
        assert calls[1][4] is None
    np.testing.assert_array_equal(post.means, kept_post.means)
    assert "map_optima" not in post.sample_stats
    assert not {"map_hessians", "map_hessian_rows"} & set(post.sample_stats)
    assert float(post.sample_stats["model_zeta"]) == 0.5  # the first posterior's draws drive the model
    np.testing.assert_array_equal(post.sample_stats["model_means"], opened.means)
