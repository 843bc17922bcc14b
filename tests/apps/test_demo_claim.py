"""SAM's headline claim on the default demo settings: one full default run (slow)."""

import pytest

from keras_sam.apps.demo import DemoSettings, run_demo


@pytest.mark.slow
def test_sam_beats_the_base_optimizer_by_10_points_on_the_default_demo(tmp_path):
    base, sam = run_demo(DemoSettings(verbose=0), seeds=[0], out=tmp_path)
    # Measured on seed 0: 0.720 vs 0.473 clean test accuracy, eigenvalue 2.75 vs 16.91.
    assert sam["test_accuracy"] - base["test_accuracy"] >= 0.10
    assert sam["sharpness"] < base["sharpness"]
