"""Platt calibration: finite on separable data, monotone, JSON round trip, refuses one-class data."""

from __future__ import annotations

import numpy as np
import pytest

from distill.calibration import PlattCalibration, fit_platt
from fusionlog.errors import ArtifactError, ConfigError


def test_fit_moves_the_cut_to_where_sources_separate():
    rng = np.random.default_rng(0)
    p = np.r_[rng.uniform(0.01, 0.04, 12), rng.uniform(0.05, 0.2, 12)]  # all "normal" at 0.5, yet separable
    y = np.r_[np.zeros(12), np.ones(12)]
    cal = fit_platt(p, y)
    assert 0 < cal.a < 20 and np.isfinite(cal.b) and cal.n == 24 and cal.fit_on == "source"
    out = [cal.apply(v) for v in p]
    assert np.mean([o >= 0.5 for o in out[12:]]) > 0.7 and np.mean([o < 0.5 for o in out[:12]]) > 0.7
    assert all(a <= b for a, b in zip(sorted(out), [cal.apply(v) for v in sorted(p)], strict=True))
    assert 0.0 < cal.apply(1e-12) < cal.apply(0.5) < cal.apply(0.9) <= 1.0


def test_round_trip_and_errors(tmp_path):
    cal = PlattCalibration(1.7, -0.3, 10)
    cal.save(tmp_path / "c.json")
    assert PlattCalibration.load(tmp_path / "c.json") == cal
    (tmp_path / "bad.json").write_text('{"method": "isotonic"}')
    with pytest.raises(ArtifactError):
        PlattCalibration.load(tmp_path / "bad.json")
    with pytest.raises(ConfigError):
        fit_platt(np.array([0.2, 0.3]), np.array([1, 1]))
