"""Command-line interface: ``kgmm-bayes run``, ``compare``, ``calibrate``, ``score`` and ``list``.

Bad input (spec, data, arguments) ends with a one-line ``kgmm-bayes: error:``
message and exit status 2, before any JAX tracing; an existing output folder
is left as it was.
"""
from __future__ import annotations

import argparse
import os
import sys

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, as argparse does, without the usage block
        self.exit(2, f"kgmm-bayes: error: {message}\n")


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="kgmm-bayes", description="Bayesian KGMM reduced-order models.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = sub.add_parser("run", help="run a study from a TOML spec (default: the reduced 1D model)")
    run.add_argument("spec", nargs="?", default=None,
                     help="study spec (TOML) or a shipped study's name (see 'list'); omit for the default study")
    run.add_argument("--out", default=None, help="output folder (default: kgmm-runs/<study name>)")
    run.add_argument("--seed", type=int, default=None, help="seed (default: the spec's [study] seed)")
    run.add_argument("--force", action="store_true", help="replace an output folder holding another study")
    run.add_argument("--quiet", action="store_true", help="no progress display")
    run.add_argument("--strict", action="store_true",
                     help="exit with status 3 when the run reports a numerical fault (divergences, r_hat > 1.01, "
                          "Langevin particles escaping or non-finite, an unstable time step); outputs are still written")
    compare = sub.add_parser("compare", help="the Bayesian estimator against classic KGMM, DSM and scikit-learn")
    compare.add_argument("spec", help="study spec (TOML) or shipped study name; its [baselines] section configures "
                                      "the baselines")
    compare.add_argument("--out", default=None, help="output folder (default: kgmm-runs/<study name>-compare)")
    compare.add_argument("--seed", type=int, default=None, help="seed (default: the spec's [study] seed)")
    compare.add_argument("--force", action="store_true", help="replace an output folder holding another comparison")
    compare.add_argument("--model-runs", type=int, default=None, metavar="N",
                         help="run every estimator's model N times from different starts and noise and report the "
                              "mean relative entropy with its standard error (default: the spec's [baselines] "
                              "model_runs, 1)")
    compare.add_argument("--long-reference", type=int, default=None, metavar="F",
                         help="score every model against an independent run of the built-in system with F times the "
                              "training data's members instead of the study's reference set, whose own sampling "
                              "noise can be as large as the models' differences (default: the spec's [baselines] "
                              "long_reference, 0: the reference set)")
    compare.add_argument("--run-length", type=int, default=None, metavar="L",
                         help="run every estimator's model L times the spec's [langevin] steps (the Bayesian study's "
                              "own run too): a run's own sampling noise falls as it lengthens, and at the spec's "
                              "length it can be larger than close models' differences (default: 1)")
    compare.add_argument("--quiet", action="store_true", help="no progress display")
    calib = sub.add_parser("calibrate", help="coverage of the credible bands against data size and seed "
                                             "(systems with an analytic score)")
    calib.add_argument("specs", nargs="+", help="study specs (TOML) or shipped study names, of built-in systems "
                                                "with an analytic score")
    calib.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000],
                       help="training snapshots N (default: 1000 10000 100000)")
    calib.add_argument("--seeds", type=int, default=3, help="independent data sets per size (default: 3)")
    calib.add_argument("--seed", type=int, default=None, help="first seed (default: the first spec's [study] seed)")
    calib.add_argument("--out", default="kgmm-runs/calibration", help="output folder (default: kgmm-runs/calibration)")
    calib.add_argument("--force", action="store_true", help="replace an output folder holding another calibration")
    calib.add_argument("--quiet", action="store_true", help="no progress display")
    sub.add_parser("list", help="the studies shipped with the package (run them by name)")
    score = sub.add_parser("score", help="posterior score of a fitted study at points")
    score.add_argument("study_dir", help="output folder of 'kgmm-bayes run'")
    score.add_argument("points", help=".npy file of points (n, d), physical units")
    score.add_argument("--out", required=True, help="output .npz with arrays mean, lower, upper")
    score.add_argument("--band", type=float, default=0.9, help="credible mass of [lower, upper]")
    return parser


def _run(args) -> int:
    from .spec import load_spec
    from .study.run import run_study

    spec = load_spec(args.spec)
    result = run_study(spec, out_dir=args.out, seed=args.seed, progress=not args.quiet, force=args.force)
    m = result.metrics
    rel_ent = m["relative_entropy"]["mean"]
    rel_text = "n/a (no reduced-order model samples)" if rel_ent is None else f"{rel_ent:.4g}"
    work, compiled = m.get("jax_work", {}).get("posterior"), ""
    if work is not None:  # JAX's compile spans also cover loading a program from the compilation cache
        how = "compiling" if not work["cache_hits"] else f"compiling, or loading {work['cache_hits']} programs from the cache"
        compiled = f" ({work['compiling']:.1f} s of it {how}; {work['tracing']:.1f} s tracing)"
    print(f"study {m['study']}: relative entropy (mean over marginals) {rel_text}; "
          f"posterior {m['timings']['posterior']:.1f} s{compiled}; total {m['timings']['total']:.1f} s")
    for fault in m["faults"]:
        print(f"warning: {fault}")
    print(f"outputs: {result.out_dir}")
    if args.strict and m["faults"]:
        print(f"kgmm-bayes: error: --strict: {len(m['faults'])} numerical fault(s): {'; '.join(m['faults'])}",
              file=sys.stderr)
        return 3
    return 0


def _compare(args) -> int:
    from .errors import InputError
    from .spec import MAX_LONG_REFERENCE, MAX_MODEL_RUNS, MAX_RUN_LENGTH, load_spec
    from .study.compare import compare_study
    from .study.compare_tables import compiling_text, over_runs_text

    if args.model_runs is not None and not 1 <= args.model_runs <= MAX_MODEL_RUNS:
        raise InputError(f"--model-runs must be between 1 and {MAX_MODEL_RUNS}, got {args.model_runs}")
    if args.long_reference is not None and not 0 <= args.long_reference <= MAX_LONG_REFERENCE:
        raise InputError(f"--long-reference must be between 0 and {MAX_LONG_REFERENCE}, got {args.long_reference}")
    if args.run_length is not None and not 1 <= args.run_length <= MAX_RUN_LENGTH:
        raise InputError(f"--run-length must be between 1 and {MAX_RUN_LENGTH}, got {args.run_length}")
    overrides = {name: value for name, value in (("model_runs", args.model_runs),
                                                 ("long_reference", args.long_reference)) if value is not None}
    spec = load_spec(args.spec, {"baselines": overrides} if overrides else None)
    if args.run_length not in (None, 1):  # the spec's own steps, then L times them (its checks run again)
        spec = load_spec(args.spec, {"baselines": overrides,
                                     "langevin": {"steps": args.run_length * spec.langevin.steps}})
    result = compare_study(spec, out_dir=args.out, seed=args.seed, progress=not args.quiet, force=args.force)
    for row in result.rows:
        runs = row.info.get("model_runs")
        over = f", over {runs['runs']} model runs {over_runs_text(row)}" if runs else ""
        compiled = compiling_text(row, " s")
        print(f"{row.estimator:>9}: wall {row.wall_s:7.1f} s{compiled}, relative entropy (mean) "
              f"{row.relative_entropy_mean:.4g}" + over)
    print(f"outputs: {result.out_dir} (comparison.md, comparison.csv, figures/comparison.png)")
    return 0


def _calibrate(args) -> int:
    from .spec import load_spec
    from .study.calibrate import calibrate

    specs = [load_spec(path) for path in args.specs]
    result = calibrate(specs, sizes=args.sizes, seeds=args.seeds, out_dir=args.out, progress=not args.quiet,
                       force=args.force, first_seed=args.seed)
    with open(os.path.join(result.out_dir, "calibration.md")) as fh:
        print(fh.read(), end="")
    print(f"outputs: {result.out_dir} (calibration.md, calibration.csv, figures/calibration.png)")
    return 0


def _list(args) -> int:
    from .spec import load_spec, shipped_studies

    studies = shipped_studies()
    width = max((len(name) for name in studies), default=0)
    for name, path in studies.items():
        spec = load_spec(path)
        source = spec.data.system or spec.data.path
        print(f"{name:<{width}}  system {source}, K = {spec.mixture.components or 'from the data'}, "
              f"{spec.sampler.chains} chains x ({spec.sampler.warmup} + {spec.sampler.draws})")
    print(f"run one with: kgmm-bayes run <name>   (specs in {os.path.dirname(next(iter(studies.values()), ''))})")
    return 0


def _score(args) -> int:
    from .study.load import score_to_file

    n = score_to_file(args.study_dir, args.points, args.out, band=args.band)
    print(f"wrote {args.out}: mean, lower, upper ({int(args.band * 100)}% band), std, predictive for {n} points")
    return 0


def _one_line_warning(message, category, filename, lineno, line=None):
    return f"kgmm-bayes: warning: {' '.join(str(message).split())}\n"


def _error(err: BaseException) -> str:
    """One line for a failure the user can meet: the message, the file it concerns, and the note of an
    output folder that kept completed stages."""
    if isinstance(err, OSError):
        text = err.strerror or str(err)
        if err.filename is not None:
            text += f": {err.filename!r}"
    elif isinstance(err, MemoryError):
        text = "out of memory: use fewer snapshots, cells, draws or particles"
    elif isinstance(err, RecursionError):
        text = "input nested too deeply"
    else:
        text = str(err)
    note = getattr(err, "kgmm_note", None)
    text = " ".join(text.split()) + (f" ({note})" if note else "")
    return f"kgmm-bayes: error: {text}"


def main(argv=None) -> int:
    args = _build_parser().parse_args(argv)
    import warnings

    from .errors import InputError

    previous_format = warnings.formatwarning
    warnings.formatwarning = _one_line_warning  # each warning one line on the console
    try:
        if args.command != "list":
            from .compilation_cache import enable

            enable()  # compiled programs kept on disk: a later run of the same shapes loads them
        return {"run": _run, "score": _score, "compare": _compare, "calibrate": _calibrate,
                "list": _list}[args.command](args)
    except (InputError, OSError, MemoryError, RecursionError) as err:
        print(_error(err), file=sys.stderr)
        return 2
    except FloatingPointError as err:
        print(_error(err), file=sys.stderr)
        return 3
    except KeyboardInterrupt as err:
        note = getattr(err, "kgmm_note", None)
        print("kgmm-bayes: interrupted" + (f" ({note})" if note else ""), file=sys.stderr)
        return 130
    finally:
        warnings.formatwarning = previous_format


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
