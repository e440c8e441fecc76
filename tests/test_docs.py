"""The docs' Python examples run as written."""

import re
from pathlib import Path

import imageio.v3 as iio
import numpy as np

DOCS = Path(__file__).parent.parent / "docs"


def python_blocks(name):
    return re.findall(r"```python\n(.*?)```", (DOCS / name).read_text(), re.S)


def test_models_md_examples_run():
    for block in python_blocks("models.md")[:1]:  # the second needs original checkpoints
        exec(compile(block, "docs/models.md", "exec"), {})


def test_pipeline_md_prediction_example_runs(reference_pipeline_factory, tmp_path, monkeypatch):
    _, _, pipe = reference_pipeline_factory("pipeline_traj_ada")
    monkeypatch.chdir(tmp_path)
    pipe.save_pretrained("extdm-kth")
    iio.imwrite("clip.mp4", np.random.default_rng(0).integers(0, 255, (6, 48, 48, 3), dtype=np.uint8), fps=10)
    scope = {}
    exec(compile(python_blocks("pipeline.md")[0], "docs/pipeline.md", "exec"), scope)
    assert scope["out"].frames.shape == (1, 40, 32, 32, 3)
    assert iio.imread("prediction.mp4").shape[0] == 40  # (the container reports no frame count)
