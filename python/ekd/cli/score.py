"""``ekd score``: model files or a run's members on any benchmark file (:mod:`ekd.evaluation.score`)."""

from __future__ import annotations

from .common import UsageError, add_debug, device_name


def score(args) -> int:
    from ..evaluation import score
    from ..workflow.score_groups import run_groups

    if args.models and args.run_dir:
        raise UsageError("give model files or --run-dir (not both)")
    if not (args.models or args.run_dir or args.calculator):
        raise UsageError("give model files or --run-dir (or --calculator)")
    if args.groups and not args.run_dir:
        raise UsageError("--groups selects groups of --run-dir; with model files, list the files")
    test = score.load_test(args.test, args.energy_key, args.forces_key, args.energy_unit, args.length_unit)
    window = args.conformer_window
    if args.run_dir:
        names = [g.strip() for g in args.groups.split(",") if g.strip()] if args.groups else None
        groups, run_window, left_out = run_groups(args.run_dir, names, device=args.device)
        window = run_window if window is None else window
        if left_out:
            print(f"left out (members not all trained yet): {', '.join(left_out)}")
    else:
        groups = (
            [score.model_files(args.models, trust_code=args.trust_code, device=args.device or "cpu")]
            if args.models
            else []
        )
    if args.calculator:
        groups.append(score.calculator_group(args.calculator))
    test = score.check_elements(test, groups, skip=args.skip_unknown_elements)
    result = score.score_models(
        test, groups, score.DEFAULT_WINDOW if window is None else window, args.per_molecule, not args.quiet
    )
    print(score.format_result(result, args.per_molecule))
    if args.json:
        print(f"json: {score.write_json(result, args.json)}")
    if args.plot:
        for path in score.plot(result, args.plot):
            print(f"figure: {path}")
    return 0


def add_parsers(sub) -> None:
    sp = sub.add_parser("score", help="score model files or a run's members on any ANI-layout benchmark file")
    sp.add_argument("models", nargs="*", help="exported model files (ekd export), scored as one group")
    sp.add_argument("--run-dir", help="score the members of this run instead (its finished groups)")
    sp.add_argument("--groups", help="with --run-dir: comma-separated groups, e.g. teacher,student_gen1")
    sp.add_argument(
        "--calculator",
        action="append",
        metavar="MODULE:FACTORY[:ARG]",
        help="also score the ASE calculator FACTORY(ARG) of MODULE (repeat: one group, one member each), "
        "e.g. mace.calculators:MACECalculator:model.model",
    )
    sp.add_argument("--test", required=True, help="data file to score on: ANI-layout HDF5, extxyz, ASE database")
    sp.add_argument("--energy-key", help="reference energy key (default: the file's only '*.energy' key)")
    sp.add_argument("--forces-key", help="reference forces key (default: '<level>.forces' of the energy key, if any)")
    sp.add_argument("--energy-unit", help="eV, Hartree or kcal/mol (any case; default: the file's attribute)")
    sp.add_argument("--length-unit", help="Angstrom or Bohr (any case; default: the file's attribute)")
    sp.add_argument(
        "--conformer-window", type=float, help="ΔE: kcal/mol above a molecule's minimum (default: the run's, or 100)"
    )
    sp.add_argument("--per-molecule", action="store_true", help="also a table per molecule")
    sp.add_argument("--skip-unknown-elements", action="store_true", help="leave out molecules a model cannot predict")
    sp.add_argument("--json", help="write the scores to this JSON file")
    sp.add_argument("--plot", help="write parity plots and error bars (PNG) into this directory")
    sp.add_argument(
        "--device",
        type=device_name,
        help="auto, cpu, cuda or cuda:N (default: a run's train.device; model files: cpu)",
    )
    sp.add_argument("--trust-code", action="store_true", help="load model files whose code is not ekd's own")
    sp.add_argument("--quiet", action="store_true", help="no progress bar")
    add_debug(sp)
    sp.set_defaults(func=score)
