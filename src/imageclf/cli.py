"""The `imageclf` command: the service's launchers, the client and the benchmarks under one name.

    imageclf run                       # what `make run` does: Redis (embedded when REDIS_URL is unset),
                                       # model workers, decoders, Flower, the HTTP API and the gRPC service
    imageclf worker                    # only the workers (one per GPU) and decoders: a host without the API
    imageclf add-model model.keras --name plants --labels labels.txt
    imageclf classify photo.jpg        # against a running service (IMAGECLF_URL, IMAGECLF_API_KEY)
    imageclf evaluate photos.zip --model plants --versions 1,2
    imageclf benchmark [NAME] [...]    # the end-to-end benchmark, or another one by name
    imageclf version

`pip install imageclf` is the client alone (classify, evaluate, version and every --help); `run`, `worker`,
`add-model` and the benchmarks need the service: `pip install 'imageclf[worker]'` (the API and decoders
alone: `imageclf[service]`).
"""

from __future__ import annotations

import argparse
import functools
import importlib
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

from imageclf import __version__

#: `imageclf benchmark NAME` → its module (each has its own --help).
BENCHMARKS = {
    "service": "benchmarks.service", "pipeline": "benchmarks.pipeline", "jobs": "benchmarks.jobs",
    "evaluation": "benchmarks.evaluation", "cache": "benchmarks.cache",
    "quotas": "benchmarks.quotas", "tracing": "benchmarks.tracing",
    "rollout": "benchmarks.rollout", "shadow": "benchmarks.shadow",
    "scaling": "benchmarks.scaling",
}
_CLIENT_VARIABLES = """environment:
  IMAGECLF_URL      the service (default http://127.0.0.1:5000); --url overrides it
  IMAGECLF_API_KEY  the API key to send, when the service has API_KEYS; --api-key overrides it"""


def settings_epilog(names: set[str] | None = None) -> str:
    """The environment variables (all, or `names`) with their defaults, from imageclf/settings.py's own comments."""
    from imageclf.settings_reference import settings_reference

    rows = [s for s in settings_reference() if names is None or s.name in names]
    lines = ["environment (every variable imageclf.settings reads; the documentation's Configuration page says more):"
             if names is None else "environment:"]
    for setting in rows:
        default = f" [default: {setting.default}]" if setting.default else ""
        summary = setting.description.split(". ")[0].rstrip(".")
        lines.append(f"  {setting.name}{default}\n" + textwrap.fill(summary, 100, initial_indent=" " * 6,
                                                                  subsequent_indent=" " * 6))
    return "\n".join(lines)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """`imageclf add-model`'s options: defined here, where nothing of the service is imported, so that --help
    works in a client-only install (imageclf.launch.add_model imports the model code)."""
    from imageclf import settings

    parser.add_argument("path", type=Path, help="a .keras, .h5 or .onnx file, or a SavedModel folder")
    parser.add_argument("--name", required=True, help="the model's name (MODELS=..., ?model=...)")
    parser.add_argument("--labels", type=Path, help="class names, one per line (line i is class_id i); "
                                                    "required for a new model")
    parser.add_argument("--repository", type=Path, default=Path(settings.MODEL_REPOSITORY),
                        help=f"the model repository (default: MODEL_REPOSITORY, {settings.MODEL_REPOSITORY})")
    parser.add_argument("--sample", type=Path, help="an image to classify as a check (default: a grey image)")
    parser.add_argument("--preprocess", choices=("scale", "caffe", "tf", "torch"),
                        help="scale (x*scale, then (x-mean)/std; default), or a family preset")
    parser.add_argument("--scale", help="pixel multiplier, one number or three (default 1/255)")
    parser.add_argument("--mean", help="subtracted after scaling, one number or three (default 0)")
    parser.add_argument("--std", help="divided by after that, one number or three (default 1)")
    parser.add_argument("--channels", choices=("RGB", "BGR"))
    parser.add_argument("--layout", choices=("NHWC", "NCHW"), help="NCHW for ONNX exported from PyTorch")
    parser.add_argument("--input-size", help="HEIGHT,WIDTH, when the model's input leaves it open")
    parser.add_argument("--resize", choices=("squash", "center_crop"))
    parser.add_argument("--output", choices=("softmax", "logits", "sigmoid"))


def _parser() -> argparse.ArgumentParser:
    from imageclf.client.cli import add_commands

    parser = argparse.ArgumentParser(prog="imageclf", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1], formatter_class=_Formatter)
    parser.add_argument("--version", action="version", version=f"imageclf {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("run", help="start the whole service on this machine (what `make run` does)",
                        description=_wrapped("Start Redis (embedded when REDIS_URL is unset), the model workers "
                                             "(one per GPU), the decoders, Flower, the HTTP API and the gRPC "
                                             "service; stop them all on Ctrl-C or SIGTERM."),
                        epilog=settings_epilog(), formatter_class=_Formatter)
    worker = commands.add_parser(
        "worker", help="start only the model workers and decoders (a host without the API)",
        description=_wrapped("Start one model worker per GPU in CUDA_VISIBLE_DEVICES (or one on the CPU) for every "
                             "model in MODELS, and the decoders, restarting any that exits; the broker is REDIS_URL."),
        epilog=settings_epilog(), formatter_class=_Formatter)
    worker.add_argument("--decoders-only", action="store_true",
                        help="start only the decoders (DECODER_CONCURRENCY processes): a host that adds cores to "
                             "decode jobs' images and frames")
    add_model = commands.add_parser(
        "add-model", help="add a trained model to the model repository as its next version",
        description=_wrapped("Check that a model file loads and classifies, then add it to the model repository as the "
                    "next version (the workers serve it within MODEL_POLL_S)."),
        epilog=settings_epilog({"MODEL_REPOSITORY", "MAX_IMAGE_PIXELS", "BACKEND"}), formatter_class=_Formatter)
    add_model_arguments(add_model)
    add_commands(commands, epilog=_CLIENT_VARIABLES, formatter_class=_Formatter)
    benchmark = commands.add_parser(
        "benchmark", help="run a benchmark (`imageclf benchmark NAME --help` for its options)",
        description="Run one of the benchmarks of a checkout (from its top folder); its figures go where its "
                    "--out says (benchmarks/results/; the documentation's Benchmarks pages say what each measures).",
        epilog="benchmarks: " + ", ".join(f"{name} ({module})" for name, module in BENCHMARKS.items()),
        formatter_class=_Formatter)
    benchmark.add_argument("name", nargs="?", default="service", choices=sorted(BENCHMARKS), metavar="NAME",
                           help="which benchmark (default: service, the end-to-end one)")
    benchmark.add_argument("arguments", nargs=argparse.REMAINDER, help="its own options")
    commands.add_parser("version", help="print the version")
    return parser


def _wrapped(text: str) -> str:
    return textwrap.fill(text, 100)


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the epilogs' own line breaks (the lists of variables)."""


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    run: Callable[[], int]
    if args.command == "version":
        print(f"imageclf {__version__}")
        return 0
    if args.command in ("classify", "evaluate"):
        from imageclf.client.cli import run_command

        return run_command(args)
    try:
        if args.command == "run":
            run = importlib.import_module("imageclf.launch.run").main
        elif args.command == "worker":
            run = functools.partial(importlib.import_module("imageclf.launch.start_workers").main,
                                    decoders_only=args.decoders_only)
        elif args.command == "add-model":
            add = importlib.import_module("imageclf.launch.add_model").add_from_arguments
            return int(add(args))
        else:
            if (Path.cwd() / "benchmarks" / "__init__.py").exists():  # they live in the checkout, not the wheel
                sys.path.insert(0, str(Path.cwd()))
            module = importlib.import_module(BENCHMARKS[args.name])
            sys.argv = [f"imageclf benchmark {args.name}", *args.arguments]
            run = module.main
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] == "benchmarks":
            print("imageclf benchmark runs the benchmarks of a checkout of the repository (they are not part of the "
                  "package): run it from the checkout's top folder", file=sys.stderr)
            return 2
        print(f"imageclf {args.command} needs the service's packages ({exc.name} is not installed): "
              "pip install 'imageclf[worker]'", file=sys.stderr)
        return 2
    return int(run() or 0)
