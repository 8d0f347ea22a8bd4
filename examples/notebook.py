# %% [markdown]
# # metactl from Python: meta-train, evaluate, adapt, export, predict
#
# Runs as a script (`python examples/notebook.py`) or cell by cell in Jupyter / VS Code. It writes
# into `notebook-demo/` in the working folder and takes well under a minute on a laptop CPU: a short
# run on the built-in `glyphs`, then a model for five shapes drawn below.

# %%
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageDraw

import metactl

work = Path("notebook-demo")

# %% Meta-train a few steps on the built-in glyphs (a real run uses the defaults: 100 steps, a few minutes)
run = metactl.meta_train(data="glyphs", steps=12, meta_batch=4, width=32, eval_every=0, eval_episodes=20, out=work / "run", force=True)
print(f"meta-trained {run.steps} steps in {run.seconds:.1f} s -> {run.path}")
print("validation accuracy after k inner steps:", [round(c["mean"], 3) for c in run.validation])

# %% Evaluate on glyph classes never seen in meta-training
curves = metactl.evaluate(run, episodes=20)
print("held-out accuracy after k inner steps:", [round(a, 3) for a in curves.runs[0].mean])


# %% A labeled folder of your own: one subfolder per label (here: five shapes, drawn with a little jitter)
def draw(shape: str, rng: np.random.Generator) -> Image.Image:
    img = Image.new("L", (28, 28), 255)
    pen = ImageDraw.Draw(img)
    x, y = rng.integers(-2, 3, size=2)
    box = (6 + x, 6 + y, 21 + x, 21 + y)
    if shape == "circle":
        pen.ellipse(box, outline=0, width=2)
    elif shape == "square":
        pen.rectangle(box, outline=0, width=2)
    elif shape == "triangle":
        pen.polygon([(13 + x, 5 + y), (22 + x, 21 + y), (4 + x, 21 + y)], outline=0, width=2)
    elif shape == "cross":
        pen.line((box[0], box[1], box[2], box[3]), fill=0, width=2)
        pen.line((box[0], box[3], box[2], box[1]), fill=0, width=2)
    else:  # bar
        pen.line((4 + x, 14 + y, 23 + x, 14 + y), fill=0, width=3)
    return img


rng = np.random.default_rng(0)
shapes = ["bar", "circle", "cross", "square", "triangle"]
for folder, count in (("shots", 3), ("queries", 5)):
    for shape in shapes:
        (work / folder / shape).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            draw(shape, rng).save(work / folder / shape / f"{i}.png")

# %% Adapt the run to the shots with its learned per-layer learning rates; measure on the queries
adapted = metactl.adapt(work / "shots", run=run, query=work / "queries", out=work / "adapted", force=True)
print(f"labels {adapted.labels}; query accuracy {adapted.metrics['query_accuracy']:.2f}")

# %% Export to ONNX (checked against torch), with an int8 copy and the model card README.md
exported = metactl.export(adapted, quantize="int8", out=work / "export", force=True)
print(f"onnxruntime vs torch max abs diff {exported.parity:.1e}; int8 agrees on {exported.agreement:.0%}")
print(exported.card.read_text(encoding="utf-8").split("\n---\n")[0])

# %% Serve it: onnxruntime alone, no torch and no metactl needed
session = ort.InferenceSession(str(exported.onnx), providers=["CPUExecutionProvider"])
labels = json.loads(session.get_modelmeta().custom_metadata_map["labels"])
files = sorted((work / "queries").glob("*/*.png"))
pixels = np.stack([np.asarray(Image.open(f).convert("L"), dtype=np.float32) for f in files])[:, None]
predicted = [labels[i] for i in session.run(["probabilities"], {"pixels": pixels})[0].argmax(-1)]
accuracy = np.mean([p == f.parent.name for p, f in zip(predicted, files, strict=True)])
print(f"onnxruntime on {len(files)} query images: accuracy {accuracy:.2f}")
