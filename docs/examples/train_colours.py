"""Train a tiny classifier of three colours on images it makes itself, and write what the tutorial serves.

    python train_colours.py                      # colours.keras, labels.txt, sample.png, held_out.zip
    python train_colours.py --epochs 12 --out colours_v2.keras --seed 2
"""

import argparse
import io
import zipfile

import keras
import numpy as np
from PIL import Image

COLOURS = {"red": (200, 40, 40), "green": (40, 170, 70), "blue": (50, 70, 210)}


def images(count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """`count` noisy 64x64 squares of the colours in turn, as uint8 RGB, and their class ids."""
    labels = np.arange(count) % len(COLOURS)
    base = np.array(list(COLOURS.values()), np.float32)[labels][:, None, None, :]
    pixels = np.clip(base + rng.normal(0, 45, (count, 64, 64, 3)), 0, 255).astype(np.uint8)
    return pixels, labels


parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=4)
parser.add_argument("--out", default="colours.keras")
parser.add_argument("--seed", type=int, default=1)
args = parser.parse_args()
rng = np.random.default_rng(args.seed)
keras.utils.set_random_seed(args.seed)

x, y = images(600, rng)
model = keras.Sequential([
    keras.Input((64, 64, 3)),
    keras.layers.Conv2D(8, 3, activation="relu"),
    keras.layers.GlobalAveragePooling2D(),
    keras.layers.Dense(len(COLOURS), activation="softmax"),
])
model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
model.fit(x / 255.0, y, epochs=args.epochs, verbose=2)  # the service scales pixels by 1/255 too (the default)
model.save(args.out)

with open("labels.txt", "w") as labels:  # line i is class i
    labels.write("\n".join(COLOURS) + "\n")
held_x, held_y = images(90, np.random.default_rng(99))  # never trained on: for `imageclf evaluate`
with zipfile.ZipFile("held_out.zip", "w") as archive:  # ImageFolder layout: <class>/<file>
    for i, (pixels, label) in enumerate(zip(held_x, held_y)):
        png = io.BytesIO()
        Image.fromarray(pixels).save(png, "PNG")
        archive.writestr(f"{list(COLOURS)[label]}/{i}.png", png.getvalue())
Image.fromarray(held_x[0]).save("sample.png")
print(f"wrote {args.out}, labels.txt, held_out.zip, sample.png")
