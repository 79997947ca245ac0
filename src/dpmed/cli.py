"""The `dpmed` command: `dpmed run` (one experiment), `dpmed bench` (a preset grid),
`dpmed privacy` (the guarantee of a noise setting, calibrated either way).

Bad input ends in one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import signal
import sys
import threading
import types
import typing
from pathlib import Path
from typing import Any

from dpmed import __version__
from dpmed.config import DATASETS, MODELS, OPTIMIZERS, TECHNIQUES, RunConfig, load_yaml
from dpmed.errors import ConfigError, DpmedError
from dpmed.files import check_output_folder
from dpmed.privacy import MECHANISMS
from dpmed.progress import quiet

FLAG_HELP = {
    "dataset": f"dataset: {', '.join(DATASETS)} (default chest-xray)",
    "technique": f"privacy technique: {', '.join(TECHNIQUES)} (default none)",
    "noise_scale": "noise scale on pixels in [0,1]: Laplace b, Gaussian sigma, DP-Pix b per "
    "cell, weighted-laplace b at Laplace's epsilon per image (0 = no noise)",
    "target_epsilon": "calibrate the noise to this epsilon per --unit instead of --noise-scale "
    "(dp-sgd: per training image, never exceeded; tables: per record)",
    "unit": "what one record is: pixel, <m>-pixels (e.g. 16-pixels), image, patient "
    "(default image; tables: record)",
    "delta": "delta of (epsilon, delta)-DP: gaussian needs it (e.g. 1e-5); dp-sgd: 0 means "
    "1/N^1.1; laplace and dppix take 0",
    "noise_multiplier": "dp-sgd: noise std / clipping norm (instead of --target-epsilon)",
    "max_grad_norm": "dp-sgd: per-image gradient clipping norm (default 1.0)",
    "accountant": "dp-sgd: privacy accountant: pld (the only one: dp-accounting's privacy loss "
    "distribution under replace-one adjacency, like every dpmed guarantee)",
    "physical_batch_size": "dp-sgd: images per forward pass (each with its "
    "--augment-multiplicity copies: K times the rows in memory); the logical batch is "
    "--batch-size",
    "grad_sample_mode": "dp-sgd: how Opacus gets per-image gradient norms: hooks, functorch, "
    "ew, ghost (ghost clipping), bk (book-keeping: ghost's norms without its second pass; "
    "ghost and bk not with the adaptive variants or --augment-multiplicity > 1), "
    "or auto (default: the fastest measured for the model that fits, else hooks)",
    "clipping": "dp-sgd: flat (fixed --max-grad-norm) or adaptive (the bound follows a private "
    "quantile of the gradient norms, Andrew et al. 2021; same epsilon)",
    "target_unclipped_quantile": "dp-sgd with --clipping adaptive: share of images left "
    "unclipped (default 0.5)",
    "noise_allocation": "dp-sgd: clip each layer to max-grad-norm/sqrt(layers) and split the "
    "noise between layers: equal, or entropy (shares follow each layer's released gradient "
    "information, updated per epoch; same epsilon)",
    "cell_size": "dppix: side of the square cells averaged before the noise (divides the size)",
    "snapping": "laplace: floating-point-safe snapping mechanism (Mironov 2012) for real releases",
    "weight_floor": "weighted-laplace: budget weight outside the lung prior, in (0, 1] "
    "(default 0.25; 1 = plain Laplace)",
    "clip_after_release": "clip the released images to [0,1] (post-processing, free)",
    "postprocess": "free denoising after the release, comma-separated: pool<k>, blur<sigma>, "
    "median<k>, nlm (e.g. pool2,blur1)",
    "perturb_test": "release the test images with noise too (default true, as the paper)",
    "model": f"model: {', '.join(MODELS)} (default resnet18)",
    "weights": "torchvision ResNet-18 state dict to start from (local file)",
    "image_size": "square image side in pixels (default 64 chest-xray, 28 pneumoniamnist)",
    "epochs": "training epochs (default 10)",
    "batch_size": "batch size (default 64)",
    "lr": "learning rate (default 0.001)",
    "optimizer": f"optimizer: {', '.join(OPTIMIZERS)} (default adam)",
    "weight_decay": "weight decay (default 0)",
    "augment": "small random rotation, scale and shift of training images (default false)",
    "augment_multiplicity": "K differently augmented copies of each training image per step "
    "(needs --augment); dp-sgd averages an image's K gradients before clipping (De et al. "
    "2022): same epsilon, about K times the compute (default 1)",
    "balanced_loss": "weight the loss by inverse class frequency (default false)",
    "ema_decay": "evaluate and keep an exponential moving average of the weights (e.g. 0.99)",
    "threshold": "decision threshold: fixed (0.5), or validation (the best balanced accuracy "
    "on the validation split, chosen after every epoch; free: validation images are not "
    "training images) (default fixed)",
    "val_fraction": "share of train held out for validation, grouped by patient (default 0.1)",
    "max_images": "cap every split at N images, stratified (quick runs)",
    "seed": "seed for the split, the noise release and training (default 0)",
    "data_root": "folder holding the data (default $DPMED_DATA, else the user cache)",
    "device": "auto, cpu or cuda (default auto)",
    "table": "dataset csv: the CSV file, one row per patient",
    "schema": "dataset csv: YAML schema (label, positive value, features with bounds)",
    "strict": "refuse feature bounds read from the data instead of warning (default false)",
    "audit_seed": "a membership-audit run: each training image is in with probability 1/2, "
    "drawn from this public seed (dpmed audit sets it; default: no audit)",
    "canaries": "audit run: this many training images get flipped labels (canaries for the "
    "one-run audit; default 0)",
    "importance_share": "adaptive-laplace: share of epsilon spent on the private feature "
    "importance (default 0.2)",
}
PRIVACY_FLAGS = (
    "noise_scale",
    "target_epsilon",
    "unit",
    "delta",
    "cell_size",
    "snapping",
    "weight_floor",
    "image_size",
    "noise_multiplier",
    "batch_size",
    "epochs",
)


RUN_EXAMPLES = """examples:
  dpmed run --dataset pneumoniamnist --technique laplace --noise-scale 2 \\
      --model small-cnn --epochs 5 --out runs/pmnist-b2
  dpmed run --dataset pneumoniamnist --technique dp-sgd --target-epsilon 4 \\
      --model small-cnn --batch-size 256 --optimizer sgd --lr 0.5 --augment
  dpmed run --config my.yaml --seed 3 --no-balanced-loss    # flags override the YAML
"""


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line (exit code 2)."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _number(kind: type) -> typing.Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if kind is int else 'a number'}, got {text!r}"
            ) from None

    return parse


FLAG_GROUPS = {  # --help shows the settings in these groups
    "data": [
        "dataset",
        "image_size",
        "max_images",
        "val_fraction",
        "seed",
        "data_root",
        "table",
        "schema",
        "strict",
    ],
    "technique and privacy": [
        "technique",
        "noise_scale",
        "target_epsilon",
        "unit",
        "delta",
        "noise_multiplier",
        "max_grad_norm",
        "accountant",
        "physical_batch_size",
        "grad_sample_mode",
        "clipping",
        "target_unclipped_quantile",
        "noise_allocation",
        "cell_size",
        "snapping",
        "weight_floor",
        "clip_after_release",
        "postprocess",
        "perturb_test",
        "importance_share",
    ],
    "model": ["model", "weights"],
    "training": [
        "epochs",
        "batch_size",
        "lr",
        "optimizer",
        "weight_decay",
        "augment",
        "augment_multiplicity",
        "balanced_loss",
        "ema_decay",
        "threshold",
        "device",
    ],
    "audit": ["audit_seed", "canaries"],
}


def _add_config_flags(
    parser: argparse.ArgumentParser, only: typing.Collection[str] | None = None
) -> None:
    """One flag per RunConfig field (or per field in `only`), in FLAG_GROUPS' groups;
    booleans are switches (--augment / --no-augment). Unset flags stay None so the YAML
    file keeps its value (YAML booleans are read by RunConfig)."""
    hints = typing.get_type_hints(RunConfig)
    groups = (
        {name: parser.add_argument_group(f"{name} settings") for name in FLAG_GROUPS}
        if only is None
        else {}
    )
    group_of = {field: name for name, fields in FLAG_GROUPS.items() for field in fields}
    for field in dataclasses.fields(RunConfig):
        if only is not None and field.name not in only:
            continue
        hint = hints[field.name]
        kinds = [k for k in typing.get_args(hint) if k is not type(None)] or [hint]
        kind = kinds[0] if isinstance(hint, types.UnionType) else hint
        target = groups.get(group_of.get(field.name), parser)
        flag = "--" + field.name.replace("_", "-")
        if kind is bool:  # a switch: --augment / --no-augment
            target.add_argument(
                flag,
                dest=field.name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=FLAG_HELP[field.name],
            )
            continue
        target.add_argument(
            flag,
            dest=field.name,
            type=_number(kind) if kind in (int, float) else str,
            default=None,
            metavar={int: "INT", float: "NUMBER"}.get(kind, "TEXT"),
            help=FLAG_HELP[field.name],
        )


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(RunConfig)
        if getattr(args, f.name, None) is not None
    }


def _add_sweep_flags(parser: argparse.ArgumentParser) -> None:
    """How a sweep's runs are executed: jobs, threads, executor, retries, display, noise key."""
    from dpmed.bench.executors import EXECUTORS

    parser.add_argument("--jobs", type=_number(int), help="runs at a time (default: one per core)")
    parser.add_argument(
        "--threads-per-run",
        type=_number(int),
        help="torch threads of each run "
        "(default: cores / jobs; results are bit-identical for equal values)",
    )
    parser.add_argument(
        "--executor", default="local", help=f"{' or '.join(EXECUTORS)} (default local)"
    )
    parser.add_argument(
        "--address", help="Ray cluster address for --executor ray (default: start one)"
    )
    parser.add_argument("--retry-failed", action="store_true", help="run failed runs again")
    parser.add_argument("--quiet", action="store_true", help="log lines instead of a live display")
    _add_noise_key_flag(parser)


def _add_noise_key_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--noise-key",
        type=Path,
        metavar="FILE",
        help="secret key file (>= 16 random bytes, e.g. head -c 32 /dev/urandom > noise.key) "
        "that makes the privacy noise reproducible by whoever holds it; never written to any "
        "output (default $DPMED_NOISE_KEY_FILE, else fresh operating-system entropy)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="dpmed", description="Benchmark differential privacy on medical data.")
    parser.add_argument("--version", action="version", version=f"dpmed {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = commands.add_parser(
        "run",
        help="run one experiment",
        description="Train one model on (noisy) medical "
        "images and write a run folder: config.yaml, metrics.csv, summary.json, best.pt, "
        "learning_curve.png. Flags override --config.",
        epilog=RUN_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("--config", type=Path, help="YAML file of settings (flags win)")
    output = run.add_argument_group("output")
    output.add_argument("--out", type=Path, help="run folder to write (default runs/<name>)")
    output.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    output.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_noise_key_flag(run)
    _add_config_flags(run)

    from dpmed.bench.sweep import preset_names

    bench = commands.add_parser(
        "bench",
        help="run a sweep (a grid of experiments) into a results database",
        description="Run every experiment of a sweep into <out>/results.db. Running it again "
        "resumes: finished runs are skipped, interrupted ones run again. Config flags "
        "override the sweep's base settings.",
    )
    bench.add_argument("sweep", help=f"a preset ({', '.join(preset_names())}) or a sweep YAML file")
    bench.add_argument(
        "--out", type=Path, help="folder for results.db and runs (default runs/<sweep>)"
    )
    _add_sweep_flags(bench)
    _add_config_flags(bench)

    audit = commands.add_parser(
        "audit",
        help="measure what trained models leak: membership inference, empirical epsilon",
        description="For every setting of a finished sweep (or a run folder), train --models "
        "models with its settings on random halves of its training split (sweep runs in "
        "FOLDER/audit: resumable), attack each with the others as references (LOSS, LiRA; "
        "the one-run canary audit of model 0), and write FOLDER/audit/audit.md, audit.json "
        "and figures: attack AUC, TPR at 1% and 0.1% FPR, and an empirical epsilon lower "
        "bound beside the stated epsilon. Exits 1 if a bound exceeds the stated epsilon (a "
        "bug). Example: dpmed bench audit && dpmed audit runs/audit",
    )
    audit.add_argument("folder", type=Path, metavar="FOLDER", help="a sweep or run folder")
    audit.add_argument(
        "--models",
        type=_number(int),
        default=17,
        help="models per setting: each the target of the others (default 17)",
    )
    audit.add_argument(
        "--canaries",
        type=_number(int),
        default=256,
        help="training images given flipped labels, for the one-run audit (default 256; 0: none)",
    )
    audit.add_argument("--data-root", help="where the data is, if not where the sweep found it")
    _add_sweep_flags(audit)

    report = commands.add_parser(
        "report",
        help="write report.md, report.html and results.csv for sweeps or runs",
        description="Summarise sweeps' results databases or run folders: provenance, tables "
        "(Table 1 beside the paper's when the sweep is the paper grid), the privacy guarantee, "
        "learning curves, the privacy-utility frontier. Example: dpmed report runs/a runs/b "
        "--out runs/a-vs-b",
    )
    report.add_argument(
        "folders",
        type=Path,
        nargs="+",
        metavar="FOLDER",
        help="a sweep's output folder (holding results.db) or a run folder (holding "
        "summary.json); several make one comparison (needs --out)",
    )
    report.add_argument(
        "--out", type=Path, help="folder for the report (default: the one FOLDER given)"
    )
    report.add_argument(
        "--tune",
        type=lambda text: [key.strip() for key in text.split(",") if key.strip()],
        default=[],
        metavar="SETTING[,SETTING]",
        help="settings whose values are candidates (e.g. lr,max_grad_norm): add a table with "
        "each seed's best on validation and the epsilon with the tuning included",
    )
    report.add_argument("--quiet", action="store_true", help=argparse.SUPPRESS)

    privacy = commands.add_parser(
        "privacy",
        help="the guarantee of a noise setting, per pixel, image and patient",
        description="Print the privacy guarantee of an input-noise setting at every unit, "
        "from a noise scale (--noise-scale) or calibrated to a target (--target-epsilon "
        "per --unit); or plan DP-SGD with the accountant training uses: the noise multiplier "
        "for a --target-epsilon, or the epsilon of a --noise-multiplier, from --n-train, "
        "--batch-size, --epochs and --delta. Nothing is read or trained. Examples: "
        "dpmed privacy --mechanism laplace --noise-scale 2 --image-size 28; "
        "dpmed privacy --mechanism dp-sgd --n-train 4708 --batch-size 256 --epochs 5 "
        "--target-epsilon 2",
    )
    privacy.add_argument(
        "--mechanism",
        dest="technique",
        required=True,
        help=f"noise mechanism: {', '.join(MECHANISMS)}",
    )
    privacy.add_argument(
        "--images-per-patient",
        type=_number(int),
        metavar="INT",
        help="k, the most images of one patient, for the patient unit (default: unknown, so "
        "no patient guarantee)",
    )
    privacy.add_argument(
        "--n-train",
        type=_number(int),
        metavar="INT",
        help="dp-sgd: the number of training images (or records), N",
    )
    privacy.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _add_config_flags(privacy, only=PRIVACY_FLAGS)
    privacy.set_defaults(quiet=False)
    return parser


def _run(args: argparse.Namespace) -> int:
    from dpmed.run import run_experiment

    values = load_yaml(args.config) if args.config else {}
    config = RunConfig.from_mapping(values | _overrides(args), source=str(args.config or "flags"))
    noise = f"b{config.noise_scale:g}"
    if config.target_epsilon is not None:
        noise = f"eps{config.target_epsilon:g}-{config.resolved_unit}"
    name = f"{config.dataset}-{config.technique}-{noise}-seed{config.seed}"
    out = args.out or Path("runs") / name
    summary = run_experiment(config, out, overwrite=args.overwrite).summary
    test = summary["test"]
    scores = ", ".join(
        f"{key} {'n/a' if test[key] is None else format(test[key], '.3f')}"
        for key in ("roc_auc", "sensitivity", "specificity")
    )
    print(
        f"best epoch {summary['best_epoch']} (on validation): "
        f"test accuracy {100 * test['accuracy']:.2f}%, {scores}"
    )
    print(f"privacy: {summary['privacy']['description']}")
    print(f"wrote {out}/ in {summary['timing']['total_seconds']:.0f} s")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from dpmed.bench.driver import DB_NAME
    from dpmed.bench.store import ResultsStore
    from dpmed.bench.sweep import load_sweep
    from dpmed.report.tables import group_runs, is_paper_grid, markdown, paper_table, summary_table

    sweep = load_sweep(args.sweep)
    runs = sweep.runs(_overrides(args))  # every config is checked before anything is written
    out = args.out or Path("runs") / sweep.name
    counts = _run_planned(args, runs, out, sweep.name, sweep.description)
    store = ResultsStore(out / DB_NAME)
    finished = [r for r in store.finished_runs() if r["id"] in {p.id for p in runs}]
    store.close()
    if finished:
        groups = group_runs(finished)
        print(markdown(paper_table(groups) if is_paper_grid(finished) else summary_table(groups)))
    print(
        ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
        + f"; results in {out / DB_NAME}; next: dpmed report {out}"
    )
    if counts.get("failed"):
        print(
            "some runs failed: their errors are in the database; fix and rerun with --retry-failed",
            file=sys.stderr,
        )
        return 1
    return 0


def _run_planned(
    args: argparse.Namespace, runs: list, out: Path, name: str, description: str
) -> dict[str, int]:
    """Run `runs` into the sweep folder `out` as the sweep flags say; the status counts."""
    from dpmed.bench.driver import DB_NAME, run_sweep, sweep_lock
    from dpmed.bench.executors import check_executor, make_executor
    from dpmed.bench.store import ResultsStore
    from dpmed.provenance import record_sweep

    check_output_folder(out)
    ResultsStore.check(out / DB_NAME)
    jobs = min(os.cpu_count() or 1, len(runs)) if args.jobs is None else args.jobs
    check_executor(args.executor, jobs=jobs, threads=args.threads_per_run)
    with sweep_lock(out):  # taken before any worker starts
        record_sweep(out, name=name, description=description, argv=args.argv)
        executor = make_executor(
            args.executor, jobs=jobs, threads=args.threads_per_run, address=args.address
        )
        print(f"{name}: {len(runs)} runs, {jobs} at a time. {description}".strip())
        return run_sweep(runs, out, executor, jobs=jobs, retry_failed=args.retry_failed)


def _audit(args: argparse.Namespace) -> int:
    from dpmed.audit.build import AUDIT_FOLDER, analyse, plan_audit, write_audit

    if args.canaries < 0:
        raise ConfigError(f"--canaries must be >= 0 (0: no one-run audit), got {args.canaries}")
    settings = plan_audit(
        args.folder, models=args.models, canaries=args.canaries, data_root=args.data_root
    )
    out = args.folder / AUDIT_FOLDER
    runs = [run for setting in settings for run in setting.runs]
    description = f"{len(settings)} setting(s), {args.models} models each"
    counts = _run_planned(args, runs, out, "audit", description)
    if counts.get("failed"):
        print(
            "some audit runs failed: their errors are in the database; fix and rerun with "
            "--retry-failed",
            file=sys.stderr,
        )
        return 1
    results = analyse(settings, out)
    for path in write_audit(results, out):
        print(f"wrote {path}")
    print((out / "audit.md").read_text().split("\n\nThe game")[0])
    exceeded = [r["setting"] for r in results if r["exceeds_theory"]]
    if exceeded:
        print(
            "dpmed audit: an empirical epsilon exceeds the stated epsilon for "
            + "; ".join(exceeded)
            + ": the mechanism or its accounting is wrong; report this as a bug",
            file=sys.stderr,
        )
        return 1
    return 0


def _report(args: argparse.Namespace) -> int:
    from dpmed.report.build import build_report

    for path in build_report(args.folders, args.tune, out=args.out):
        print(f"wrote {path}")
    return 0


def _privacy(args: argparse.Namespace) -> int:
    from dpmed.privacy.accounting import account_setting

    if args.technique == "dp-sgd":
        return _privacy_dpsgd(args)
    if args.image_size is None:
        raise DpmedError("give --image-size, the side of the square images in pixels")
    if args.images_per_patient is not None and args.images_per_patient < 1:
        raise DpmedError(f"images_per_patient must be >= 1, got {args.images_per_patient}")
    config = RunConfig.from_mapping(_overrides(args), source="flags")
    size = config.resolved_image_size
    report = account_setting(config, images_per_patient=args.images_per_patient)
    if args.json:
        print(json.dumps(report.to_dict() | {"image_size": size}, indent=2))
        return 0
    print(
        f"{report.headline.mechanism} on {size}x{size} images: noise scale "
        f"{report.noise_scale:.6g} (noise std {report.noise_std:.4g} per pixel)"
        + (
            f", calibrated to epsilon {config.target_epsilon:g} per {config.resolved_unit}"
            if config.target_epsilon is not None
            else ""
        )
    )
    rows = [("unit", "epsilon", "delta")] + [
        (g.unit, "inf" if g.epsilon is None else f"{g.epsilon:,.6g}", f"{g.delta:g}")
        for g in report.by_unit.values()
    ]
    if report.images_per_patient is None:
        rows.append(("patient", "unknown", "(give --images-per-patient k)"))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    print(f"accounting: {report.headline.accounting}")
    print("assumptions:\n" + "\n".join(f"  - {a}" for a in report.headline.assumptions))
    return 0


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C's KeyboardInterrupt so that it takes the same way out:
    a run removes its staging folder, a sweep stops its workers."""


def _raise_terminated(_signum: int, _frame: Any) -> typing.NoReturn:
    raise Terminated


@contextlib.contextmanager
def _sigterm_as_interrupt() -> typing.Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set signal handlers
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


AFTER_INTERRUPT = {
    "run": "; no run folder was written: run it again",
    "bench": "; finished runs are kept: run the same command again to resume the sweep",
    "audit": "; finished audit runs are kept: run the same command again to resume",
}


def _privacy_dpsgd(args: argparse.Namespace) -> int:
    """DP-SGD planned with plan_dpsgd, the call training makes: the noise multiplier for a
    target epsilon or the epsilon of a noise multiplier, and per patient by group privacy."""
    from dpmed.privacy.dpsgd import dpsgd_plan

    if args.n_train is None or args.n_train < 1:
        raise DpmedError("dp-sgd: give --n-train N, the number of training images (>= 1)")
    config = RunConfig.from_mapping(_overrides(args) | {"model": "small-cnn"}, source="flags")
    plan = dpsgd_plan(
        n_train=args.n_train,
        batch_size=config.batch_size,
        epochs=config.epochs,
        target_epsilon=config.target_epsilon,
        noise_multiplier=config.noise_multiplier,
        delta=config.delta,
        images_per_patient=args.images_per_patient,
    )
    k, epsilon = plan["images_per_patient"], plan["epsilon_per_image"]
    if args.json:
        print(json.dumps(plan, indent=2))
        return 0
    print(
        f"DP-SGD on {args.n_train:,} training images, batch {config.batch_size} (sample rate "
        f"{plan['sample_rate']:.4g}), {config.epochs} epochs = {plan['steps']} steps: noise "
        f"multiplier {plan['noise_multiplier']:.6g}"
        + (f", calibrated to epsilon {config.target_epsilon:g}" if config.target_epsilon else "")
    )
    print(f"epsilon per image {epsilon:.6g} at delta {plan['delta']:.3g} (replace-one PLD)")
    if k:
        print(
            f"epsilon per patient of up to {k} images {plan['epsilon_per_patient']:.6g}, "
            f"delta {plan['delta_per_patient']:.3g}"
        )
    else:
        print("epsilon per patient: unknown (give --images-per-patient k)")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.argv = argv  # the command, for the report's provenance
    if args.quiet:
        quiet()
    try:
        from dpmed.privacy import secret

        secret.use_key_file(getattr(args, "noise_key", None))
        command = {
            "run": _run,
            "bench": _bench,
            "audit": _audit,
            "report": _report,
            "privacy": _privacy,
        }
        with _sigterm_as_interrupt():
            return command[args.command](args)
    except DpmedError as exc:
        print(f"dpmed {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # exit codes as a shell gives: 128 + the signal
        name, code = ("SIGTERM", 143) if isinstance(exc, Terminated) else ("SIGINT", 130)
        after = AFTER_INTERRUPT.get(args.command, "")
        print(f"dpmed {args.command}: stopped by {name}{after}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
