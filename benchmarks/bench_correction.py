"""The score-matching correction's fit (``correction.fit_correction``): the old way and the new way, same run, same
inputs.

For one study (a spec file or a shipped study's name; its data at its seed), the correction of a real mixture
score: the maximum-likelihood ``K``-component mixture of the study's z-scored snapshots (compiled EM,
``em.fit_mixtures``), standing in for the posterior-mean score a study corrects (the fit's cost does not depend on
which score it corrects, only on the snapshots and the ladder of bump counts the cross-validation climbs).

1. The bumps at one chunk of snapshots (``score_matching.STEIN_CHUNK`` x ``--bumps``, ``--repeats`` times, after
   one untimed call each): the expression written out, a fresh array per step (the old way, until December 2026),
   against the same steps in place (``score_matching._bumps``, now).  Check: the same bits.
2. The whole fit, its ladder climbed as far as the data support, the score's program compiled before: the old
   moments (each chunk's bumps written out, its Gram product a new array), the old cross-validation (each ridge's
   pass forming every block's fitting moments again), the old ridged Gram matrices (the identity times the ridge
   added) against the new (the chunks' bumps and Gram products in arrays made once per basis).  Check: the same
   bump counts and ridges tried and kept; decreases, coefficients and their spread within 1e-6 of their largest
   (the solves' rounding, times the ridged Gram matrices' condition numbers, up to about 1e6).  Row 2b: the same
   fit with its cross-validation's and coefficients' solves by scipy's Cholesky factor of the ridged Gram
   matrices (old column) against numpy's LU, which the fit keeps (no faster in the whole fit on this machine's
   two BLAS thread pools: 23.75 s against 22.20 s on Lorenz-63, K = 4, in one run).
3. The posterior-mean score at the training snapshots as a study asks for it with a correction and the
   interpolant drift: every snapshot for the correction, the corrected snapshots of the two interpolants the
   model's check trains (``stages.CORRECTED_SNAPSHOTS``) and the held-out snapshots of the interpolant's error;
   each computed where asked (old) against ``stages.SnapshotScores`` (new: each snapshot once), the mixture
   repeated as ``--draws`` posterior draws (a study's score has up to ``[score] max_draws``).  Check: the same
   scores to 1e-12 of the largest (the same bits where the program is the same; the held-out snapshots are
   computed by a program of another chunk size the old way).
4. The Stein gap's block moments (``score_matching._block_moments``) at every bump count of its ladder that the
   study's cells allow (``score_matching.STEIN_LADDER``, bumps placed on the cells as ``stein_gap`` places them),
   on the snapshots ``stein_gap`` uses: bumps below ``exp(-BUMP_FLOOR)`` kept, subnormal numbers included (old,
   until December 2026), against raised to it (new).  Check: the same moments to 1e-12 of the largest.

Each row: seconds the old way, the new way, their ratio, and the check; a failed check exits with status 1.

    python benchmarks/bench_correction.py lorenz63
"""
from __future__ import annotations

import argparse

import kgmm_bayes  # noqa: F401
import numpy as np
import scipy.linalg

from kgmm_bayes.bayes import correction, score_matching
from kgmm_bayes.bayes.em import fit_mixtures
from kgmm_bayes.bayes.score import posterior_mean_score
from kgmm_bayes.study import stages

from bench_posterior_overheads import _check, _timed, print_table
from bench_reproducibility import spec_with, study_partition


def written_out_bumps(x, centres, centre_sq, width: float):
    """The old ``_bumps``: the expression written out, each step a new ``(n, J)`` array (every bump kept)."""
    sq = np.maximum(np.sum(x ** 2, axis=-1)[:, None] + centre_sq[None] - 2.0 * x @ centres.T, 0.0)
    return np.exp(-sq / (2 * width * width))


def unfloored_bumps(x, centres, centre_sq, width: float, buffers=None):
    """``_bumps`` before its floor: the same steps in place, bumps below ``exp(-BUMP_FLOOR)`` kept (subnormal
    numbers among them)."""
    n = len(x)
    sq = np.add(np.sum(x ** 2, axis=-1)[:, None], centre_sq[None], out=None if buffers is None else buffers[0][:n])
    sq -= np.matmul(2.0 * x, centres.T, out=None if buffers is None else buffers[1][:n])
    np.maximum(sq, 0.0, out=sq)
    np.negative(sq, out=sq)
    sq /= 2 * width * width
    return np.exp(sq, out=sq)


def same_above_floor(old, new) -> bool:
    """``new`` is ``old`` bit for bit where ``old`` is at least ``exp(-BUMP_FLOOR)``, and that floor (to the rounding
    of the clipped exponent) where ``old`` is below it, as ``_bumps`` now makes them."""
    floor = np.exp(-score_matching.BUMP_FLOOR)
    above = old >= floor
    return bool(np.array_equal(old[above], new[above]) and np.allclose(new[~above], floor, rtol=1e-12, atol=0))


def per_ridge_cross_validated(b, gram, ridges):
    """The old cross-validation: one pass over the blocks per ridge, each forming the blocks' fitting moments."""
    return np.stack([_one_ridge(b, gram, ridge) for ridge in ridges])


def _one_ridge(b, gram, ridge: float):
    blocks = len(b)
    b_sum, gram_sum = b.sum(axis=0), gram.sum(axis=0)
    changes = np.empty(blocks)
    for a in range(blocks):
        out = [c for c in (a - 1, a, a + 1) if 0 <= c < blocks]
        kept = blocks - len(out)
        fold = (gram_sum - gram[out].sum(axis=0)) / kept
        theta = -np.linalg.solve(identity_ridged(fold, ridge), (b_sum - b[out].sum(axis=0)) / kept)
        changes[a] = 2.0 * np.sum(theta * b[a]) + np.sum(theta * (gram[a] @ theta))
    return changes


def identity_ridged(gram, ridge: float):
    """The old ridged Gram matrix: ``ridge tr(gram) / J`` times the identity added (``correction._ridged`` raises
    the diagonal of a copy)."""
    return gram + ridge * np.trace(gram) / len(gram) * np.eye(len(gram))


def fresh_block_moments(z, s, centres, width: float, blocks: int):
    """The old ``_block_moments``: each chunk's bumps written out (:func:`written_out_bumps`) and its Gram product a
    new array."""
    n_basis, d = len(centres), z.shape[1]
    step = len(z) // blocks
    b = np.zeros((blocks, n_basis, d))
    gram = np.zeros((blocks, n_basis, n_basis))
    centre_sq = np.sum(centres ** 2, axis=-1)
    for a in range(blocks):
        for i in range(a * step, (a + 1) * step, score_matching.STEIN_CHUNK):
            x = z[i:min(i + score_matching.STEIN_CHUNK, (a + 1) * step)]
            g = written_out_bumps(x, centres, centre_sq, width)
            b[a] += g.T @ s[i:i + len(x)] - (g.T @ x - g.sum(axis=0)[:, None] * centres) / (width * width)
            gram[a] += g.T @ g
    return b / step, gram / step


_OLD = {"_block_moments": fresh_block_moments, "_cross_validated": per_ridge_cross_validated,
        "_ridged": identity_ridged}  # the correction module's helpers as they were


def cholesky_solve(gram, b, ridge: float):
    """``correction._solve`` by scipy's Cholesky factor of the ridged Gram matrix (row 2b's other way)."""
    factor = scipy.linalg.cho_factor(correction._ridged(gram, ridge), lower=True, check_finite=False)
    return -scipy.linalg.cho_solve(factor, b, check_finite=False)


class _OldWay:
    """The old moments, cross-validation and ridged Gram matrices (or ``helpers``, by name) swapped into
    ``correction`` for the ``with`` block."""

    def __init__(self, helpers=None):
        self.helpers = _OLD if helpers is None else helpers

    def __enter__(self):
        self.saved = {name: getattr(correction, name) for name in self.helpers}
        for name, fn in self.helpers.items():
            setattr(correction, name, fn)

    def __exit__(self, *exc):
        for name, fn in self.saved.items():
            setattr(correction, name, fn)


def _same(a: correction.ScoreCorrection, b: correction.ScoreCorrection, rtol: float = 1e-6) -> bool:
    def close(x, y):
        if x is None or y is None:  # no spread where not applied
            return x is None and y is None
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        return x.shape == y.shape and bool(np.all(np.abs(x - y) <= rtol * max(np.max(np.abs(y), initial=0), 1e-300)))

    tried = [r[:2] for r in a.ladder] == [r[:2] for r in b.ladder]
    return (tried and a.width == b.width and a.ridge == b.ridge and a.applied == b.applied
            and np.array_equal(a.centres, b.centres)
            and close([r[2:] for r in a.ladder], [r[2:] for r in b.ladder])
            and all(close(getattr(a, f), getattr(b, f)) for f in ("theta", "spread")))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("spec", nargs="?", default="lorenz63", help="spec file or shipped study name")
    parser.add_argument("--members", type=int, default=None, help="smaller data (built-in systems)")
    parser.add_argument("--components", type=int, default=None, help="the mixture's K (default: the spec's)")
    parser.add_argument("--bumps", type=int, default=2000, help="bumps in row 1's chunk")
    parser.add_argument("--repeats", type=int, default=20, help="times row 1 computes the bumps")
    parser.add_argument("--draws", type=int, default=1000, help="draws of row 3's posterior-mean score")
    parser.add_argument("--ladder", default=None,
                        help="bump counts the fit may climb, comma-separated (default: correction.CORRECTION_LADDER)")
    args = parser.parse_args(argv)
    spec = spec_with(args.spec, {"data": {"members": args.members}})
    _, z, part = study_partition(spec)
    z = np.asarray(z, np.float64)
    k = args.components or spec.mixture.components
    fit = fit_mixtures(z[None], k, seed=0)
    draw = (fit.weights, fit.means, np.linalg.cholesky(fit.covariances))
    score = lambda x: posterior_mean_score(*draw, x)  # noqa: E731
    ladder = (tuple(int(n) for n in args.ladder.split(",")) if args.ladder else correction.CORRECTION_LADDER)
    rows = []

    score(z[:score_matching.STEIN_CHUNK])  # untimed: the score's program compiled before either way runs

    # 1. the bumps at one chunk (each way once untimed first: the rows time the steady state, not the first
    # allocations)
    rng = np.random.default_rng(0)
    x = z[:score_matching.STEIN_CHUNK]
    centres = z[rng.choice(len(z), size=min(args.bumps, len(z)), replace=False)]
    centre_sq = np.sum(centres ** 2, axis=-1)
    width = 0.3
    written_out_bumps(x, centres, centre_sq, width)
    score_matching._bumps(x, centres, centre_sq, width)
    old_s, old = _timed(lambda: [written_out_bumps(x, centres, centre_sq, width) for _ in range(args.repeats)])
    new_s, new = _timed(lambda: [score_matching._bumps(x, centres, centre_sq, width) for _ in range(args.repeats)])
    same = same_above_floor(old[0], new[0])
    rows.append((f"bumps at {len(x):,} snapshots x {len(centres):,} bumps, {args.repeats} times", old_s, new_s,
                 _check(same, "the same bits (those below the floor at it)" if same
                        else f"largest difference {np.max(np.abs(old[0] - new[0])):.1e}")))

    # 2. the whole fit
    with _OldWay():
        old_s, old = _timed(lambda: correction.fit_correction(z, score, seed=0, ladder=ladder))
    new_s, new = _timed(lambda: correction.fit_correction(z, score, seed=0, ladder=ladder))
    tried = "none" if new is None else f"{', '.join(str(n) for n in sorted({r[0] for r in new.ladder}))} bumps"
    same = (old is None and new is None) or (old is not None and new is not None and _same(old, new))
    rows.append((f"fit_correction on {len(z):,} snapshots (tried: {tried})", old_s, new_s,
                 _check(same, "the same correction (to 1e-6)" if same else "the corrections differ")))
    with _OldWay({"_solve": cholesky_solve}):
        cho_s, cho = _timed(lambda: correction.fit_correction(z, score, seed=0, ladder=ladder))
    lu_s, lu = _timed(lambda: correction.fit_correction(z, score, seed=0, ladder=ladder))
    same = (lu is None and cho is None) or (lu is not None and cho is not None and _same(cho, lu))
    rows.append(("2b. the same fit, its solves by scipy's Cholesky (old column) against numpy's LU (kept)", cho_s,
                 lu_s, _check(same, "the same correction (to 1e-6)" if same else "the corrections differ")))

    # 3. the posterior-mean score at the snapshots a study asks for
    held = stages.heldout_indices(len(z))
    snaps = stages.interpolant_snapshot_rows(len(z), stages.CORRECTED_SNAPSHOTS)

    draws = tuple(np.repeat(a, args.draws, axis=0) for a in draw)  # the one draw (leading axis 1), as many times as asked

    def drawn(x):
        return posterior_mean_score(*draws, x)

    def asked_each_time():
        return [drawn(z), drawn(z[snaps]), drawn(z[snaps]), drawn(z[held])]

    def asked_once():
        scores = stages.SnapshotScores(draws, z)
        return [scores[np.arange(len(z))], scores[snaps], scores[snaps], scores[held]]

    asked_each_time()  # untimed: every chunk size's program compiled before either way runs
    old_s, old = _timed(asked_each_time)
    new_s, new = _timed(asked_once)
    largest = max(np.max(np.abs(o)) for o in old)
    worst = max(np.max(np.abs(o - n)) for o, n in zip(old, new)) / largest
    rows.append((f"posterior-mean score of {args.draws} draws: {len(z):,} snapshots, {len(snaps):,} twice, "
                 f"{len(held):,} held out",
                 old_s, new_s, _check(worst <= 1e-12, f"the same scores (largest difference {worst:.1e} of the "
                                                      "largest)" if worst <= 1e-12 else "the scores differ")))

    # 4. the Stein gap's block moments at its ladder's bump counts, every bump kept against the floor's
    gap_z = z  # as stein_gap takes them
    if len(gap_z) > score_matching.STEIN_MAX_SNAPSHOTS:
        gap_z = z[np.linspace(0, len(z) - 1, score_matching.STEIN_MAX_SNAPSHOTS).astype(np.int64)]
    gap_z = gap_z[:len(gap_z) // score_matching.STEIN_BLOCKS * score_matching.STEIN_BLOCKS]
    gap_s = np.asarray(score(gap_z), np.float64)
    sizes = sorted({min(n, len(part.points) // 4) for n in score_matching.STEIN_LADDER})
    bases = [score_matching._bump_basis(part.points, part.counts, n, seed=0) for n in sizes]

    def moments():
        return [score_matching._block_moments(gap_z, gap_s, c, w, score_matching.STEIN_BLOCKS) for c, w in bases]

    moments()  # untimed: first allocations
    saved = score_matching._bumps
    score_matching._bumps = unfloored_bumps
    try:
        old_s, old = _timed(moments)
    finally:
        score_matching._bumps = saved
    new_s, new = _timed(moments)
    worst = max(np.max(np.abs(o - n)) / np.max(np.abs(o)) for os_, ns_ in zip(old, new) for o, n in zip(os_, ns_))
    rows.append((f"Stein gap's block moments, {', '.join(map(str, sizes))} bumps on {len(part.points):,} cells, "
                 f"{len(gap_z):,} snapshots", old_s, new_s,
                 _check(worst <= 1e-12, f"the same moments (largest difference {worst:.1e} of the largest)")))

    print_table(f"study {spec.study.name}: {len(z):,} snapshots, d = {z.shape[1]}, the score of a K = {k} EM "
                "mixture", rows)


if __name__ == "__main__":
    main()
