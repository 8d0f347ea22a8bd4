"""A minimal onnxruntime client: needs only the exported model.onnx (numpy, Pillow, onnxruntime).

    python examples/onnx_client.py export/model.onnx image1.png [image2.png ...]

Everything it needs is in the file: the input size in the input's shape, the labels in the
``labels`` metadata. The client only decodes to grayscale and resizes; inversion and scaling are
inside the graph.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import onnxruntime as ort
from PIL import Image


def main(model_path: str, images: list[str]) -> None:
    session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    labels = json.loads(session.get_modelmeta().custom_metadata_map["labels"])
    size = session.get_inputs()[0].shape[-1]
    batch = np.stack([np.asarray(Image.open(p).convert("L").resize((size, size), Image.Resampling.LANCZOS), dtype=np.float32) for p in images])[:, None]
    probabilities = session.run(["probabilities"], {"pixels": batch})[0]
    for path, p in zip(images, probabilities, strict=True):
        best = int(p.argmax())
        print(f"{path}\t{labels[best]}\t{p[best]:.4f}")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2:])
