"""MetricsWriter: JSON lines + TensorBoard, without importing PyTorch through tensorboardX."""

import json
import subprocess
import sys

import pytest

from kdjax.train.metrics import MetricsWriter

PROBE = """
import sys
from kdjax.train.metrics import MetricsWriter
w = MetricsWriter(sys.argv[1])
w.write(3, {"loss": 0.5})
w.close()
print("torch" in sys.modules)
"""


def test_writes_json_lines_and_tensorboard(tmp_path):
    w = MetricsWriter(tmp_path)
    w.write(1, {"loss": 1.25, "lr": 1e-3})
    w.close()
    line = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert line == {"step": 1, "loss": 1.25, "lr": 1e-3}
    if w._tb is not None:
        assert any((tmp_path / "tensorboard").iterdir())


def test_tensorboard_does_not_import_torch(tmp_path):
    pytest.importorskip("tensorboardX")
    out = subprocess.run([sys.executable, "-c", PROBE, str(tmp_path)], capture_output=True,
                         text=True, timeout=120, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"
    assert any((tmp_path / "tensorboard").iterdir())


def test_torch_still_importable_afterwards():
    from kdjax.train.metrics import summary_writer_class

    summary_writer_class()
    if "torch" in sys.modules:
        assert sys.modules["torch"] is not None
    else:
        try:
            import torch  # noqa: F401
        except ImportError:
            pytest.skip("torch not installed")
        assert sys.modules["torch"] is not None
