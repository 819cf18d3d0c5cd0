"""Command line: classify images, folders, zips and videos against a running service.

    python -m imageclf.client classify photo.jpg                    # one image: POST /predict
    python -m imageclf.client classify holiday/ extra.zip --csv     # a job of many images, with a progress bar
    python -m imageclf.client classify clip.mp4 --fps 2             # a video job: progress bar, then the label timeline
    python -m imageclf.client evaluate photos.zip --model plants --versions 1,2   # figures on a labelled set

classify's exit status: 0 when everything was classified, 1 when anything failed (a file, a
job, the service), 2 for a usage error such as a path that does not exist. evaluate's: 0 when
the evaluation ran, whatever the accuracy, 1 when it could not run or a version's accuracy is
under --min-accuracy (a gate for CI pipelines), 2 for a usage error. Ctrl-C cancels the running job.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from imageclf.client import Client, ServiceError, collect_files, is_video


def main(argv: list[str] | None = None) -> int:
    return run_command(_parser().parse_args(argv))


def run_command(args: argparse.Namespace) -> int:
    """Run `classify` or `evaluate` with their parsed arguments (also `imageclf classify|evaluate`)."""
    if args.command == "evaluate":
        return _evaluate(args)
    if args.source is not None:
        return _classify_source(args)
    if not args.paths:
        print("error: give image files, folders, zips or videos, or --source", file=sys.stderr)
        return 2
    try:
        files = collect_files(args.paths)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not files:
        print("error: no image, zip or video found in the given folders", file=sys.stderr)
        return 2
    videos = [f for f in files if is_video(f)]
    images = [f for f in files if not is_video(f)]
    outputs: list[dict[str, Any]] = []
    with Client(args.url, args.api_key) as client:
        try:
            if len(images) == 1 and images[0].suffix.lower() != ".zip":
                outputs.append(_predict(client, images[0], args.top, args.model))
            elif images:
                outputs.append(_job(client, images, args, "images"))
            for video in videos:
                outputs.append(_job(client, [video], args, video.name))
        except ServiceError as exc:
            print(f"error: {exc.message if exc.status == 0 else exc}", file=sys.stderr)
            _emit(outputs, args)
            return 1
        except KeyboardInterrupt:
            return 130
    _emit(outputs, args)
    return 0 if all(_succeeded(o) for o in outputs) else 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m imageclf.client", description=__doc__.split("\n\n")[0])
    add_commands(parser.add_subparsers(dest="command", required=True))
    return parser


def add_commands(commands: argparse._SubParsersAction, **options: Any) -> None:
    """The `classify` and `evaluate` commands, on `python -m imageclf.client` or `imageclf` (`options` go to each
    command's parser: an epilog, a formatter)."""
    classify = commands.add_parser("classify", help="classify images, folders, zips and videos", **options)
    classify.add_argument("paths", nargs="*", help="image files, folders of images, zips of images, videos")
    classify.add_argument("--source", help="instead of uploading: a folder the service's decoders read "
                                           "(under its JOB_SOURCE_ROOTS), or s3://bucket/prefix")
    _service_options(classify)
    classify.add_argument("--top", type=int, default=5, help="labels per image (default 5)")
    sampling = classify.add_mutually_exclusive_group()
    sampling.add_argument("--fps", type=float, help="video frames sampled per second (default 1)")
    sampling.add_argument("--every-n-frames", type=int, help="sample every n-th video frame instead")
    classify.add_argument("--max-frames", type=int, help="sample at most this many video frames")
    _output_options(classify, "print the service's JSON answers", "print one CSV row per image or frame")
    evaluate = commands.add_parser("evaluate", help="a model's figures on labelled images (ImageFolder zips, or "
                                                    "images with a file,label CSV)", **options)
    evaluate.add_argument("paths", nargs="+", help="zips in ImageFolder layout (<class>/<file>), images, folders")
    _service_options(evaluate)
    evaluate.add_argument("--versions", help="versions to evaluate and compare, e.g. 1,2 (default: the default)")
    evaluate.add_argument("--labels", type=Path, help="a CSV with the columns file,label instead of class folders")
    evaluate.add_argument("--min-accuracy", type=float, help="exit 1 when a version's accuracy is below this")
    _output_options(evaluate, "print the evaluation's JSON result", "print one CSV row per image and version")


def _output_options(parser: argparse.ArgumentParser, json_help: str, csv_help: str) -> None:
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help=json_help)
    output.add_argument("--csv", action="store_true", help=csv_help)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _service_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=os.environ.get("IMAGECLF_URL", "http://127.0.0.1:5000"),
                        help="the service (default: $IMAGECLF_URL or http://127.0.0.1:5000)")
    parser.add_argument("--api-key", default=os.environ.get("IMAGECLF_API_KEY"),
                        help="API key when the service has API_KEYS set (default: $IMAGECLF_API_KEY)")
    parser.add_argument("--model", help="which served model (GET /models; default: the service's default)")


def _evaluate(args: argparse.Namespace) -> int:
    """Run an evaluation job with a progress bar, then print its figures (or its JSON, or its CSV rows)."""
    try:
        files = collect_files(args.paths)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.labels is not None and not args.labels.exists():
        print(f"error: {args.labels}: no such file", file=sys.stderr)
        return 2
    with Client(args.url, args.api_key) as client:
        try:
            job = client.evaluate(files, versions=args.versions, labels=args.labels, model=args.model)
            try:
                body = _follow(client, job, "evaluating", "img", args.no_progress)
            except KeyboardInterrupt:
                return 130
            if body["status"] != "SUCCESS":
                print(f"error: the evaluation {body['status']}: {body.get('error', '')}", file=sys.stderr)
                return 1
            if args.csv:
                sys.stdout.write(client.evaluation_csv(job["id"]))
        except (ServiceError, ValueError) as exc:
            print(f"error: {exc.message if isinstance(exc, ServiceError) else exc}", file=sys.stderr)
            return 1
    result = body["result"]
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
    elif not args.csv:
        _print_evaluation(result)
    low = [v for v, figures in result["versions"].items()
           if args.min_accuracy is not None and (figures["accuracy"] or 0.0) < args.min_accuracy]
    if low:
        print(f"accuracy below {args.min_accuracy:g} for version(s) {', '.join(low)}", file=sys.stderr)
        return 1
    return 0


def _print_evaluation(result: dict[str, Any], worst: int = 5) -> None:
    """Accuracy per version, each version's worst classes by F1, and where versions disagree."""
    print(f"{'version':>8} {'images':>7} {'accuracy':>9} {'top-5':>7} {'ECE':>7}")
    for version, figures in result["versions"].items():
        print(f"{version:>8} {figures['images']:>7} {_share(figures['accuracy']):>9} "
              f"{_share(figures['top5_accuracy']):>7} {_number(figures['expected_calibration_error']):>7}")
    for version, figures in result["versions"].items():
        classes = [(name, c) for name, c in figures["per_class"].items() if c["support"]]
        classes.sort(key=lambda item: (item[1]["f1"] if item[1]["f1"] is not None else -1.0, item[0]))
        print(f"version {version}, worst classes:")
        for name, c in classes[:worst]:
            print(f"  {name:<24} F1 {_number(c['f1'])}  precision {_number(c['precision'])}  "
                  f"recall {_number(c['recall'])}  ({c['support']} images)")
    for pair, compared in result.get("agreement", {}).items():
        first, second = pair.split("-")
        counts = compared["disagreement_counts"]
        print(f"versions {first} and {second}: top-1 agreement {_share(compared['top1_agreement'])}; disagree on "
              f"{sum(counts.values())}: {counts['first_right']} where {first} was right, "
              f"{counts['second_right']} where {second} was, {counts['neither_right']} neither")
    if result.get("failed"):
        print(f"{result['failed_count']} image(s) could not be classified, e.g. {result['failed'][0]['name']}: "
              f"{result['failed'][0]['error']}")


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _predict(client: Client, path: Path, top: int, model: str | None) -> dict[str, Any]:
    try:
        body = client.predict(path, top=top, model=model)
    except ServiceError as exc:
        if exc.status in (0, 401, 503):  # the service, not the file, is the problem
            raise
        return {"source": str(path), "kind": "image", "status": "FAILURE", "error": exc.message}
    return {"source": str(path), "kind": "image", "status": "SUCCESS", "model": body["model"],
            "model_version": body.get("model_version"), "predictions": body["predictions"]}


def _classify_source(args: argparse.Namespace) -> int:
    """`classify --source`: one job on what the service reads in place."""
    if args.paths:
        print("error: give either paths to upload or --source, not both", file=sys.stderr)
        return 2
    with Client(args.url, args.api_key) as client:
        try:
            job = client.submit_source(args.source, top=args.top, model=args.model)
            output = {"source": args.source, **_follow(client, job, args.source[-30:], "img", args.no_progress)}
        except ServiceError as exc:
            print(f"error: {exc.message if exc.status == 0 else exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 130
    _emit([output], args)
    return 0 if _succeeded(output) else 1


def _job(client: Client, files: list[Path], args: argparse.Namespace, label: str) -> dict[str, Any]:
    job = client.submit(files, top=args.top, fps=args.fps, every_n_frames=args.every_n_frames,
                        max_frames=args.max_frames, model=args.model)
    body = _follow(client, job, label[:30], "frame" if job["kind"] == "video" else "img", args.no_progress)
    return {"source": ", ".join(map(str, files)) if len(files) < 4 else f"{len(files)} files", **body}


def _follow(client: Client, job: dict[str, Any], desc: str, unit: str, quiet: bool) -> dict[str, Any]:
    """Wait for a job with a progress bar on stderr; Ctrl-C cancels it (and is raised again)."""
    bar = tqdm(total=job["total"], desc=desc, unit=unit, disable=quiet, file=sys.stderr)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    try:
        return client.wait(job["id"], on_progress=progress)
    except KeyboardInterrupt:
        client.cancel(job["id"])
        print(f"\ncancelled job {job['id']}", file=sys.stderr)
        raise
    finally:
        bar.close()


def _succeeded(output: dict[str, Any]) -> bool:
    if output["status"] != "SUCCESS":
        return False
    return output.get("kind") != "images" or output["result"]["failed"] == 0


def _rows(output: dict[str, Any]) -> list[dict[str, Any]]:
    """One flat row per image or frame: source, name, t, frame, label, class_id, probability, error."""
    def top1(predictions: list[dict[str, Any]]) -> dict[str, Any]:
        best = predictions[0] if predictions else {}
        return {"label": best.get("label"), "class_id": best.get("class_id"), "probability": best.get("probability")}

    source = output["source"]
    if output.get("kind") == "image":
        return [{"source": source, "name": Path(source).name, **top1(output.get("predictions", [])),
                 "error": output.get("error")}]
    result = output.get("result") or {}
    if output.get("kind") == "images":
        return [{"source": source, "name": item["name"], **top1(item.get("predictions", [])),
                 "error": item.get("error")} for item in result.get("items", [])]
    rows = [{"source": source, "t": f["t"], "frame": f["frame"], **top1(f["predictions"])}
            for f in result.get("frames", [])]
    return rows or [{"source": source, "error": output.get("error")}]


def _emit(outputs: list[dict[str, Any]], args: argparse.Namespace) -> None:
    if args.json:
        json.dump(outputs, sys.stdout, indent=2)
        print()
        return
    if args.csv:
        fields = ["source", "name", "t", "frame", "label", "class_id", "probability", "error"]
        writer = csv.DictWriter(sys.stdout, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        for output in outputs:
            writer.writerows(_rows(output))
        return
    for output in outputs:
        _print_text(output)


def _print_text(output: dict[str, Any]) -> None:
    result = output.get("result") or {}
    if output.get("kind") == "video" and result.get("summary"):
        summary = result["summary"]
        print(f"{output['source']}: {summary['label']} ({summary['share']:.0%} of {summary['frames']} frames)")
        for seg in summary["segments"]:
            frames = f"{seg['frames']} frame" + ("s" if seg["frames"] != 1 else "")
            print(f"  {seg['start']:8.2f} - {seg['end']:8.2f} s  {seg['label']}  ({frames})")
        return
    if output["status"] != "SUCCESS" and output.get("kind") != "image":
        print(f"{output['source']}: {output['status']}: {output.get('error', '')}")
        return
    for row in _rows(output):
        if row.get("error"):
            print(f"{row['name']}\tFAILED: {row['error']}")
        else:
            print(f"{row['name']}\t{row['label']}\t{row['probability']:.4f}")


if __name__ == "__main__":
    sys.exit(main())
