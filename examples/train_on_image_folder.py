"""Train one expert on your own images and sample it, class by class.

    python examples/train_on_image_folder.py --folder my_images --out runs/mine --steps 1000

``my_images`` holds one sub-folder per class (``my_images/cats/*.png``, ``my_images/dogs/*.jpg``);
images are center-cropped to squares and resized to ``--resolution``.
"""

import argparse
import json
from pathlib import Path

import hetdiff

parser = argparse.ArgumentParser()
parser.add_argument("--folder", required=True, help="ROOT/<class>/*.png|jpg|jpeg")
parser.add_argument("--out", default="runs/imagefolder")
parser.add_argument("--resolution", type=int, default=16)
parser.add_argument("--steps", type=int, default=1000)
parser.add_argument("--objective", choices=["flow", "ddpm"], default="flow")
args = parser.parse_args()

checkpoint = hetdiff.train_expert(
    f"imagefolder:{args.folder}",
    args.out,
    {"objective": args.objective, "steps": args.steps, "batch_size": 32, "progress": False},
    resolution=args.resolution,
)
expert = hetdiff.load_expert(checkpoint)
classes = [name.split("/")[-1] for name in expert.spec.class_names]
print(f"{expert.spec.objective} expert, {expert.spec.steps} steps, classes {classes}")

losses = [row["loss"] for row in hetdiff.read_log(args.out)]
print(f"training loss {losses[0]:.3f} -> {losses[-1]:.3f}")
grids = {}
for name in classes:  # 8 images of each class, guided toward it
    images = hetdiff.sample(expert, n=8, steps=20, classes=name, cfg=2.0)
    grids[name] = str(hetdiff.save_images(images, Path(args.out) / f"samples-{name}.png"))
print(
    json.dumps(
        {"checkpoint": str(checkpoint), "classes": classes, "losses": losses, "grids": grids}
    )
)
