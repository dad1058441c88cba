"""A study in the data's time, end to end, on user data from a non-reversible Ornstein-Uhlenbeck
process sampled exactly (``[data] interval``): the fitted mobility, the model's correlation
functions and the responses against the analytic ones (see tests/test_mobility.py for the formulas).

A one-component mixture is the OU's exact family, so the remaining errors are sampling errors of
20 x 2,000 snapshots and the model's finite run; the tolerances are a few of those.  Last, the
indirect correction of the mobility on a nonlinear flow whose mobility and score are known.
"""
import json

import jax
import numpy as np
import pytest
from scipy.linalg import expm

from test_mobility import A, BBT, S, ou
from test_study import run_cli

H = 0.1
SPEC = f"""
[study]
name = "ou"
seed = 1

[data]
path = "ou.npy"
interval = {H}
heldout_fraction = 0.2

[partition]
cells = 300

[mixture]
components = 1

[sampler]
chains = 2
warmup = 200
draws = 200

[score]
max_draws = 200

[interpolant]
hidden = [32, 32]
steps = 800

[ensemble]
members = 8
particles = 100
steps = 4000
burn_in = 500

[langevin]
particles = 400
dt = 0.01
steps = 20000
burn_in = 500
thin = 10
"""


@pytest.fixture(scope="module")
def ou_study(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ou")
    np.save(folder / "ou.npy", 3.0 + ou(11, members=20, n=2000, h=H))  # an offset: physical units are kept
    (folder / "ou.toml").write_text(SPEC)
    proc = run_cli("run", "ou.toml", "--out", "out", "--quiet", cwd=folder)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return folder / "out"


def test_a_rerun_reports_the_langevin_seconds_of_the_runs_it_reads_back(ou_study):
    # 400 particles: the rate is measured on a pilot of 100 first; a rerun of the study reads both runs back and
    # reports their recorded seconds together, as the first run counted them (not the full run's alone).  In place:
    # a rerun reads every stage back and writes the same results, only the timings and cached stages change
    proc = run_cli("run", "ou.toml", "--out", "out", "--quiet", cwd=ou_study.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((ou_study / "metrics.json").read_text())
    assert "langevin" in metrics["cached_stages"]
    walls = []
    for entry in (ou_study / ".stages").glob("langevin-*.npz"):
        with np.load(entry, allow_pickle=False) as f:
            walls.append(float(f["wall_time"]))
    assert len(walls) >= 2  # the pilot and the full run, each kept
    assert metrics["timings"]["langevin"] == pytest.approx(sum(walls), rel=1e-12)


def test_mobility_is_minus_a_s_and_its_band_holds_it(ou_study):
    dyn = json.loads((ou_study / "metrics.json").read_text())["dynamics"]
    assert dyn["available"] and dyn["interval"] == H
    exact = -A @ S
    phi, lower, upper = (np.asarray(dyn[k]) for k in ("mobility", "mobility_lower", "mobility_upper"))
    assert np.abs(phi - exact).max() < 0.15 * np.abs(exact).max()
    assert np.all((lower - 0.05 <= exact) & (exact <= upper + 0.05))
    # linear dynamics: the rate needs no correction (only the model's finite-run noise)
    assert 0.85 < dyn["mobility_time_scale"] < 1.15
    sigma2 = phi + phi.T  # the model's noise covariance 2 sym(Phi) is the OU's B B^T
    np.testing.assert_allclose(sigma2, BBT, atol=0.2 * np.abs(BBT).max())


def test_model_correlation_functions_and_decorrelation_times_match_the_data(ou_study):
    dyn = json.loads((ou_study / "metrics.json").read_text())["dynamics"]
    assert dyn["correlation_relative_error"] < 0.1
    assert all(0.85 < r < 1.15 for r in dyn["decorrelation_time_ratio"])
    arrays = np.load(ou_study / "responses.npz")
    lags = arrays["lags"]
    sd = np.sqrt(np.diag(S))
    exact = np.stack([expm(A * t) @ S for t in lags]) / np.outer(sd, sd)
    assert np.abs(arrays["model_correlation"] - exact).max() < 0.1
    assert lags[-1] >= 5 * max(dyn["decorrelation_time_data"]) - H  # five decorrelation times
    paths = np.load(ou_study / "rom_paths.npy")
    assert paths.ndim == 3 and paths.shape[2] == 2 and paths.shape[0] >= len(lags)
    assert abs(paths.mean() - 3.0) < 0.2  # physical units


def test_posterior_ensemble_runs_in_the_data_time_with_a_mobility_each(ou_study):
    # each member: its draw's score, its own fitted mobility, snapshots one interval apart; the band
    # of the members' correlation functions holds the analytic ones (a few members, so a margin of
    # their Monte Carlo error), and the decorrelation times' band holds the data's
    dyn = json.loads((ou_study / "metrics.json").read_text())["dynamics"]
    ens = dyn["ensemble"]
    assert ens["members"] == 8 and ens["band"] == 0.9
    arrays = np.load(ou_study / "responses.npz")
    lags = arrays["lags"]
    sd = np.sqrt(np.diag(S))
    exact = np.stack([expm(A * t) @ S for t in lags]) / np.outer(sd, sd)
    lower, upper = arrays["model_correlation_lower"], arrays["model_correlation_upper"]
    assert lower.shape == upper.shape == (len(lags), 2, 2)
    assert np.all(lower <= arrays["model_correlation_median"]) and np.all(arrays["model_correlation_median"] <= upper)
    assert np.mean((lower - 0.03 <= exact) & (exact <= upper + 0.03)) > 0.9
    assert 0.7 < ens["correlation_band_holds_data"] <= 1.0
    taus = arrays["ensemble_decorrelation_time"]
    # the exact decorrelation times as metrics.series defines them (ACF summed to its first zero at
    # the data's interval); the data's own estimate is off by up to ~10% here (sampling noise), the band
    # is about the true system
    rho = np.stack([np.diag(expm(A * t) @ S) for t in H * np.arange(400)]) / sd**2
    first_zero = np.argmax(rho <= 0, axis=0)
    exact_tau = np.array([H * (rho[:k, i].sum() - 0.5) for i, k in enumerate(np.where(first_zero, first_zero, 400))])
    assert taus.shape == (8, 2)
    assert np.all((np.asarray(ens["decorrelation_time_lower"]) <= exact_tau * 1.03)
                  & (exact_tau <= np.asarray(ens["decorrelation_time_upper"]) * 1.03))
    member_phi = arrays["ensemble_mobility"]  # physical units: Phi scales as std_i / std_j
    assert member_phi.shape == (8, 2, 2)
    assert np.all(np.abs(member_phi - np.asarray(dyn["mobility"])) < 0.3 * np.abs(dyn["mobility"]).max())
    block = json.loads((ou_study / "metrics.json").read_text())["ensemble"]
    assert block["mobility"] == "fitted, one per member" and abs(block["dt"] * block["thin"] - H) < 1e-9
    assert (ou_study / "figures" / "ensemble_acf.png").is_file()


def test_responses_match_the_analytic_impulse_response_with_their_band(ou_study):
    arrays = np.load(ou_study / "responses.npz")
    lags = arrays["lags"]
    exact = np.stack([expm(A * t) for t in lags])
    assert arrays["mean"].shape == (len(lags), 2, 2)
    assert np.abs(arrays["mean"] - exact).max() < 0.1
    inside = (arrays["lower"] - 0.02 <= exact) & (exact <= arrays["upper"] + 0.02)
    assert inside.mean() > 0.8
    steps = np.stack([np.linalg.solve(A, expm(A * t) - np.eye(2)) for t in lags])
    assert np.abs(arrays["step_mean"] - steps).max() < 0.15
    assert np.abs(arrays["second_mean"]).max() < 0.3  # centred Gaussian: no linear response of x_i^2 ...
    for name in ("correlations.png", "responses.png"):
        assert (ou_study / "figures" / name).is_file()


def test_result_api_gives_responses_and_correlations(ou_study):
    from kgmm_bayes import load_result

    result = load_result(ou_study)
    arrays = np.load(ou_study / "responses.npz")
    impulse = result.responses()
    np.testing.assert_array_equal(impulse["mean"].values, arrays["mean"])
    assert impulse["mean"].dims == ("lag", "variable", "perturbed")
    np.testing.assert_array_equal(result.responses("step")["upper"].values, arrays["step_upper"])
    corr = result.correlations()
    np.testing.assert_array_equal(corr["model"].values, arrays["model_correlation"])
    np.testing.assert_array_equal(corr["model_lower"].values, arrays["model_correlation_lower"])
    np.testing.assert_array_equal(corr["lag"].values, arrays["lags"])
    with pytest.raises(Exception, match="kind must be"):
        result.responses("bogus")
    # the training trajectories as the study's lagged statistics saw them, from the data file
    series = result.data.train_series()
    assert series.shape == (16, 2000, 2)  # 20 members, the last 20% held out
    np.testing.assert_array_equal(series[3], np.load(ou_study.parent / "ou.npy")[3])


def test_without_an_interval_time_scales_are_reported_unavailable(tmp_path):
    from kgmm_bayes.spec import SpecError, load_spec, uses_mobility

    (tmp_path / "ou.npy").write_bytes(b"")
    (tmp_path / "no_time.toml").write_text(SPEC.replace(f"interval = {H}\n", ""))
    assert not uses_mobility(load_spec(tmp_path / "no_time.toml"))
    (tmp_path / "fitted.toml").write_text(SPEC.replace(f"interval = {H}\n", "").replace(
        "[langevin]\n", '[langevin]\nmobility = "fitted"\n'))
    with pytest.raises(SpecError, match="needs the data's time"):
        load_spec(tmp_path / "fitted.toml")
    (tmp_path / "system.toml").write_text('[data]\nsystem = "reduced_1d"\ninterval = 1.0\n')
    with pytest.raises(SpecError, match="set by the built-in system"):
        load_spec(tmp_path / "system.toml")


def test_an_interval_longer_than_the_correlation_identifies_no_mobility():
    """AR(1) coordinates with lag-one correlations 0.6, -0.1 and -0.4 (64,000 snapshots: the sample
    correlation's standard error is 0.004): only the first is resolved at this interval."""
    from kgmm_bayes.study.dynamics import unresolved_coordinates

    rng = np.random.default_rng(0)
    members, n, phi = 16, 4000, np.array([0.6, -0.1, -0.4])
    noise = rng.normal(size=(members, n, 3)) * np.sqrt(1 - phi**2)
    x = np.empty((members, n, 3))
    x[:, 0] = rng.normal(size=(members, 3))
    for t in range(1, n):
        x[:, t] = phi * x[:, t - 1] + noise[:, t]
    assert unresolved_coordinates(x, 0.5) == [1, 2]
    assert unresolved_coordinates(x[..., :1], 0.5) == []


def test_indirect_correction_removes_the_estimators_bias_on_a_nonlinear_flow():
    # dX = -(I + J) grad U dt + sqrt(2) dW, U a double well in x: the true mobility is I + J exactly and
    # the score is known, so the only error left in E_data (the matrix-log estimator at interval 0.1) is
    # its bias for nonlinear dynamics plus sampling error; the corrected mobility must lose the bias
    import jax.numpy as jnp

    from kgmm_bayes.spec import LangevinSection
    from kgmm_bayes.study.dynamics import indirect_correction, point_dynamics

    true_phi = np.array([[1.0, 1.0], [-1.0, 1.0]])

    def grad_u(s):
        x, y = s[..., 0], s[..., 1]
        return np.stack([4 * x * (x**2 - 1) + 0.5 * (y + 0.5 * x), y + 0.5 * x], axis=-1)

    rng = np.random.default_rng(0)
    dt, thin, members, n = 0.002, 50, 100, 400
    state, series = rng.normal(size=(members, 2)), np.empty((members, n, 2))
    for k in range(-2000, n * thin):
        state = state - grad_u(state) @ true_phi.T * dt + np.sqrt(2 * dt) * rng.normal(size=state.shape)
        if k >= 0 and (k + 1) % thin == 0:
            series[:, (k + 1) // thin - 1] = state

    def score(params, x):
        x0, y0 = x[..., 0], x[..., 1]
        return -jnp.stack([4 * x0 * (x0**2 - 1) + 0.5 * (y0 + 0.5 * x0), y0 + 0.5 * x0], axis=-1)

    raw = point_dynamics(series, thin * dt, score, None)
    groups = np.stack([point_dynamics(g, thin * dt, score, None).phi for g in np.split(series, 10)])
    se = groups.std(axis=0, ddof=1) / np.sqrt(10)  # the data estimate's sampling error
    assert np.abs(raw.phi - true_phi).max() > 0.2  # the bias at this interval: diagonal ~30% low
    fixed = indirect_correction(raw, jax.random.key(0), series, score, None, LangevinSection(dt=dt, box=10.0),
                                series.reshape(-1, 2)[::200])
    # 4 standard errors of the data's estimate, plus 0.03 for the model's Euler step (chosen by rom_schedule
    # from the stiffness, not the data's 0.002) and the 20,000 one-interval runs' own noise
    assert np.all(np.abs(fixed.phi - true_phi) < 4 * se + 0.03), (fixed.phi, se)
    assert min(fixed.correction_residuals) < 0.5 * fixed.correction_residuals[0]
    np.testing.assert_allclose(fixed.phi, raw.phi @ fixed.correction, rtol=1e-10, atol=1e-12)


def test_rate_factor_is_exact_for_a_rescaled_clock_at_a_coarse_interval():
    # model: AR(1) snapshots of an OU with time scale 2 at interval 1; data: time scale 1 (exact ACF).
    # The model on the clock c t matches for c = 2 exactly; the ratio of the two decorrelation-time
    # estimates at this coarse interval would give 1.886 instead (the estimate is not proportional)
    from scipy.signal import lfilter

    from kgmm_bayes.metrics.series import integrated_time
    from kgmm_bayes.study.dynamics import Dynamics, time_scale_factor

    phi = np.exp(-0.5)
    noise = np.random.default_rng(3).normal(size=(200, 2200, 1))
    paths = lfilter([np.sqrt(1 - phi**2)], [1, -phi], noise, axis=1)[:, 200:]
    data_tau = np.array([integrated_time(np.exp(-np.arange(50.0)), 1.0)])
    empty = np.zeros((1, 2, 1, 1))
    dyn = Dynamics(interval=1.0, phi=np.eye(1), phi_draws=np.eye(1)[None], lags=np.arange(2.0), impulse=empty,
                   second=empty, data_correlation=np.ones((2, 1, 1)), data_tau=data_tau)
    # the ACF estimate's own noise: 4e5 snapshots, a few lags: about 1% on c
    assert time_scale_factor(paths, dyn) == pytest.approx(2.0, rel=0.03)


@pytest.mark.parametrize("interval", [0.3, 0.6])
@pytest.mark.parametrize("c0", [0.8, 1.25, 1.5])
def test_rescaled_clock_recovers_the_clock_of_an_oscillating_correlation(interval, c0):
    # rho(t) = exp(-t) cos(1.2 t) sampled 8x finer than the data (as the pilot run samples); the data's is
    # rho(c0 t) at the data's interval: c0 comes back to the bisection's precision (exact functions)
    from kgmm_bayes.metrics.series import integrated_time
    from kgmm_bayes.study.dynamics import rescaled_clock

    fine = interval / 8 * np.arange(3200)
    t = interval * np.arange(400)
    target = integrated_time(np.exp(-c0 * t) * np.cos(1.2 * c0 * t), interval)
    assert rescaled_clock(np.exp(-fine) * np.cos(1.2 * fine), target, interval, interval / 8) == pytest.approx(c0, rel=0.005)


def test_rom_schedule_makes_the_snapshots_it_is_asked_for():
    """In the data's time a stiffer model takes more steps per interval; by default it keeps the spec's step count
    (fewer snapshots), and with ``snapshots`` it makes exactly that many, one interval apart, whatever its step."""
    import jax.numpy as jnp

    from kgmm_bayes.spec import LangevinSection
    from kgmm_bayes.study.dynamics import rom_schedule

    lg = LangevinSection(dt=0.01, steps=4000)
    drift = lambda params, x: -params * x  # noqa: E731  (Jacobian eigenvalue params)
    points = np.linspace(-2.0, 2.0, 5)[:, None]
    interval, phi = 0.5, np.eye(1)
    soft = rom_schedule(lg, interval, phi, drift, jnp.float32(1.0), points)
    stiff = rom_schedule(lg, interval, 4.0 * phi, drift, jnp.float32(1.0), points)  # the mobility scales it 4x
    for dt, thin, steps, _ in (soft, stiff):
        assert dt * thin == pytest.approx(interval, rel=1e-12)
    assert stiff[1] == 4 * soft[1] == 200 and soft[2] == stiff[2] == 4000  # the spec's count: 80 against 20 rows
    for phi_ in (phi, 4.0 * phi):
        dt, thin, steps, _ = rom_schedule(lg, interval, phi_, drift, jnp.float32(1.0), points, snapshots=80)
        assert steps == 80 * thin
    # min_rows still wins where it asks for more
    assert rom_schedule(lg, interval, phi, drift, jnp.float32(1.0), points, min_rows=100, snapshots=80)[2] == 100 * 50
