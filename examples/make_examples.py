"""Writes the example inputs used by the README's curl commands (and the test that runs them):
two scikit-learn digits as a user would photograph them (black ink on white, 96x96 PNG), and
the same two as a JSON batch of model-ready 28x28 arrays."""

import json
import os

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

from modelspec import IMAGE_PREPROCESSING
from modelspec.image import resize_batch

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLES = {"digit-3.png": 3, "digit-7.png": 7}

digits = load_digits()
for filename, index in EXAMPLES.items():
    ink = digits.images[index] / 16.0
    picture = Image.fromarray(((1.0 - ink) * 255).astype(np.uint8)).resize((96, 96), Image.Resampling.BILINEAR)
    picture.save(os.path.join(HERE, filename))

rows = resize_batch(digits.images[list(EXAMPLES.values())] / 16.0, IMAGE_PREPROCESSING["size"])
with open(os.path.join(HERE, "digits.json"), "w") as f:
    json.dump({"images": np.round(rows[:, 0], 4).tolist(), "model": "cnn", "top_k": 3}, f)
with open(os.path.join(HERE, "reviews.json"), "w", encoding="utf-8") as f:
    json.dump({"texts": ["质量很好，物流也快，非常满意", "太差了，用了一天就坏了，不推荐"]}, f, ensure_ascii=False)
