"""Sweep files for tests."""

import yaml


def write_sweep(path, grid=None, **base):
    spec = {
        "description": "tiny grid for tests",
        "base": {
            "dataset": "pneumoniamnist",
            "technique": "laplace",
            "model": "small-cnn",
            "epochs": 2,
            "max_images": 40,
            "batch_size": 20,
            **base,
        },
        "grid": grid or {"noise_scale": [0, 2], "seed": [0, 1]},
    }
    path.write_text(yaml.safe_dump(spec))
    return path
