"""The torchvision side of ``benchmarks/inference_latency.py``, run as a subprocess under an interpreter with
torch and torchvision (they are not in the project's virtualenv).

Protocol: JSON lines. The parent starts it as ``python _torchvision_peer.py CONFIG_JSON``; the peer builds
the models, warms them up and prints ``{"ready": ..., "versions": ...}``. Then for each line
``{"model": NAME, "image": INDEX}`` on stdin it decodes that JPEG (torchvision.io, libjpeg-turbo, as
TensorFlow's decoder), scales it to [0, 1], runs the model and prints ``{"seconds": ..., "detections": N}``
(the time covers decoding, the model's own resize/normalization, the network, NMS and mask pasting). An
empty line or ``{"quit": true}`` ends it. Everything else it prints goes to stderr.

The models are random-init (``weights=None, weights_backbone=None``: nothing is downloaded) with
``min_size = max_size = input size``, ``box_detections_per_img`` and ``box_score_thresh=0.0`` so every image
yields exactly that many detections, like the TensorFlow model it is compared with.
"""
import json
import sys
import time


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def main() -> None:
    config = json.loads(sys.argv[1])
    import torch  # pylint: disable=import-outside-toplevel
    import torchvision  # pylint: disable=import-outside-toplevel
    from torchvision.io import decode_jpeg  # pylint: disable=import-outside-toplevel
    from torchvision.models import detection  # pylint: disable=import-outside-toplevel

    torch.set_num_threads(config["threads"])
    torch.set_num_interop_threads(1)
    torch.manual_seed(0)
    images = []
    for path in config["images"]:
        with open(path, "rb") as f:
            images.append(torch.frombuffer(bytearray(f.read()), dtype=torch.uint8))
    models = {}
    for name in config["models"]:
        builder = getattr(detection, name)
        models[name] = builder(weights=None, weights_backbone=None, num_classes=config["num_classes"],
                               min_size=config["input_size"], max_size=config["input_size"],
                               box_detections_per_img=config["max_detections"], box_score_thresh=0.0).eval()

    def run(name, index):
        start = time.perf_counter()
        with torch.inference_mode():
            image = decode_jpeg(images[index]).float().div_(255.0)
            output = models[name]([image])[0]
        seconds = time.perf_counter() - start
        return seconds, int(output["boxes"].shape[0]), list(output["masks"].shape)

    for name in models:
        for i in range(config.get("warmup", 2)):
            run(name, i % len(images))
    print(json.dumps({"ready": True, "versions": {"torch": torch.__version__,
                                                  "torchvision": torchvision.__version__},
                      "threads": torch.get_num_threads(),
                      "mkldnn": bool(torch.backends.mkldnn.is_available())}), flush=True)
    for line in sys.stdin:
        line = line.strip()
        if not line:
            break
        request = json.loads(line)
        if request.get("quit"):
            break
        seconds, detections, mask_shape = run(request["model"], request["image"])
        print(json.dumps({"seconds": seconds, "detections": detections, "mask_shape": mask_shape}), flush=True)


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # pylint: disable=broad-except
        log(f"torchvision peer failed: {type(e).__name__}: {e}")
        print(json.dumps({"error": f"{type(e).__name__}: {e}"}), flush=True)
        sys.exit(1)
