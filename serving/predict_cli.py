"""``maskrcnn-tfx predict``: detections for images from a TF Serving endpoint (TF Serving or the local server).

    maskrcnn-tfx predict a.jpg b.png --endpoint http://127.0.0.1:8501 --coco-results results.json \\
        --overlay-dir overlays/
    maskrcnn-tfx predict a.jpg --endpoint 127.0.0.1:8500 --grpc --version-label stable

prints each image's detections, and optionally writes COCO results JSON (boxes, scores, masks as RLE) and an
overlay PNG per image. Images the server refuses (e.g. bytes that are not an image) are reported by file
name; the others are still written. Exit status: 0 all answered, 1 some refused or the server unreachable,
2 bad arguments.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Dict, List, Optional, Tuple

from maskrcnn_tfx import signature


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="JPEG or PNG files")
    parser.add_argument("--endpoint", required=True, metavar="URL",
                        help="REST: http://HOST:8501 (TF Serving's REST port); with --grpc: HOST:8500")
    parser.add_argument("--grpc", action="store_true", help="use the gRPC PredictionService instead of REST")
    parser.add_argument("--model-name", default="maskrcnn", help="the served model's name (default maskrcnn)")
    version = parser.add_mutually_exclusive_group()
    version.add_argument("--model-version", type=int, metavar="N", help="a version number (default: the latest)")
    version.add_argument("--version-label", metavar="LABEL", help="a version label of the server's config")
    parser.add_argument("--signature-name", default=signature.SERVING_SIGNATURE,
                        help=f"default {signature.SERVING_SIGNATURE}")
    parser.add_argument("--label-map", metavar="FILE",
                        help="label_map.json for class names (default: from the model's metadata, which the "
                             "local server has; for TF Serving pass the model's assets/label_map.json)")
    parser.add_argument("--score-threshold", type=float, default=0.5, metavar="S",
                        help="keep detections scoring at least S (default 0.5)")
    parser.add_argument("--batch-size", type=int, default=4, metavar="N", help="images per request (default 4)")
    parser.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                        help="per request (default 60)")
    parser.add_argument("--retries", type=int, default=4, metavar="N",
                        help="retries, with exponential backoff, while the server is unreachable or "
                             "unavailable (default 4; bad requests are never retried)")
    parser.add_argument("--coco-results", metavar="FILE", help="write COCO results JSON (masks as RLE) here")
    parser.add_argument("--coco-annotations", metavar="FILE",
                        help="COCO JSON whose images' file_name gives each image's image_id in --coco-results "
                             "(default: the file name's number, e.g. 000000000139.jpg -> 139, else its position)")
    parser.add_argument("--overlay-dir", metavar="DIR", help="write IMAGE_NAME.overlay.png per image here")
    parser.add_argument("--json", action="store_true", help="print the detections as JSON lines")


def _image_ids(paths: List[str], annotations: Optional[str]) -> List[int]:
    by_name: Dict[str, int] = {}
    if annotations:
        with open(annotations, encoding="utf-8") as f:
            by_name = {os.path.basename(i["file_name"]): int(i["id"]) for i in json.load(f)["images"]}
    ids = []
    for position, path in enumerate(paths, 1):
        name = os.path.basename(path)
        if by_name:
            if name not in by_name:
                raise ValueError(f"{path}: no image named {name!r} in {annotations}")
            ids.append(by_name[name])
        else:
            stem = os.path.splitext(name)[0]
            ids.append(int(stem) if stem.isdigit() else position)
    return ids


def _validate(args) -> str:
    if args.batch_size < 1:
        return f"--batch-size must be >= 1 (got {args.batch_size})"
    if args.timeout <= 0:
        return f"--timeout must be > 0 (got {args.timeout})"
    if args.retries < 0:
        return f"--retries must be >= 0 (got {args.retries})"
    if not 0 <= args.score_threshold <= 1:
        return f"--score-threshold must be in [0, 1] (got {args.score_threshold})"
    for path in args.images:
        if not os.path.isfile(path):
            return f"{path}: no such file"
    return ""


def main(args: argparse.Namespace) -> int:
    problem = _validate(args)
    if problem:
        print(f"predict: error: {problem}", file=sys.stderr)
        return 2
    from maskrcnn_tfx.label_map import LabelMap, LabelMapError  # pylint: disable=import-outside-toplevel
    from maskrcnn_tfx.serving import client as client_lib  # pylint: disable=import-outside-toplevel
    from maskrcnn_tfx.serving import detections as detections_lib  # pylint: disable=import-outside-toplevel

    try:
        image_ids = _image_ids(args.images, args.coco_annotations)
        label_map = LabelMap.load(args.label_map) if args.label_map else None
        client = client_lib.connect(
            args.endpoint, use_grpc=args.grpc, model_name=args.model_name, version=args.model_version,
            version_label=args.version_label, signature_name=args.signature_name, timeout=args.timeout,
            retry=client_lib.RetryPolicy(max_attempts=args.retries + 1), label_map=label_map)
    except (ValueError, OSError, KeyError, LabelMapError) as e:
        print(f"predict: error: {e}", file=sys.stderr)
        return 2

    answered: List[Tuple[int, str, bytes, detections_lib.ImageDetections]] = []
    refused: List[str] = []
    unreachable = None
    with client:
        for start in range(0, len(args.images), args.batch_size):
            paths = args.images[start:start + args.batch_size]
            encoded = []
            for path in paths:
                with open(path, "rb") as f:
                    encoded.append(f.read())
            try:
                results = client.detect(encoded, score_threshold=args.score_threshold, batch_size=len(encoded))
            except client_lib.PredictionError as e:
                if e.status in (400, 404, 413, "INVALID_ARGUMENT", "NOT_FOUND", "RESOURCE_EXHAUSTED"):
                    print(f"predict: the server refused {', '.join(paths)}: {e}", file=sys.stderr)
                    refused += paths
                    if e.status in (404, "NOT_FOUND"):
                        break  # no such model or version: every other request would fail the same way
                    continue
                unreachable = e
                break
            for path, image_bytes, image, image_id in zip(paths, encoded, results,
                                                          image_ids[start:start + len(paths)]):
                answered.append((image_id, path, image_bytes, image))
                _print_image(path, image, as_json=args.json)

    if args.coco_results:
        detections_lib.write_coco_results(args.coco_results, [(i, image) for i, _, _, image in answered])
        print(f"COCO results of {len(answered)} images: {args.coco_results}")
    if args.overlay_dir:
        for _, path, image_bytes, image in answered:
            name = os.path.splitext(os.path.basename(path))[0] + ".overlay.png"
            detections_lib.write_overlay_png(os.path.join(args.overlay_dir, name), image_bytes, image)
        print(f"{len(answered)} overlay images: {args.overlay_dir}")
    if unreachable is not None:
        print(f"predict: error: {unreachable}", file=sys.stderr)
        return 1
    return 1 if refused else 0


def _print_image(path: str, image, *, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"image": path, "height": image.height, "width": image.width, "detections": [
            {"class_id": d.class_id, "class_name": d.class_name, "score": round(d.score, 4),
             "box_pixels": [round(v, 1) for v in d.box_pixels], "mask_pixels": int(d.mask.sum())}
            for d in image.detections]}))
        return
    print(f"{path}: {len(image)} detections ({image.width}x{image.height})")
    for d in image.detections:
        x0, y0, x1, y1 = d.box_pixels
        name = d.class_name or f"class {d.class_id}"
        print(f"  {name:<12} {d.score:.3f}  box [{x0:.0f}, {y0:.0f}, {x1:.0f}, {y1:.0f}]  "
              f"mask {int(d.mask.sum())} px")
