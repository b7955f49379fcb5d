"""The HTML report renders in real headless Chromium with its plots visible.

Needs Debian's ``chromium`` (CI installs it in .ci/run); without it the test
skips locally and fails in CI.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from kvpilot.api.parse import InferenceService, parse_inference_service
from kvpilot.sim.fleet import simulate
from kvpilot.sim.report import write_report
from kvpilot.sim.scaler import KvpilotScaler
from kvpilot.sim.trace import Request

WIDTH, HEIGHT = 1100, 2600


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("CI"):
        pytest.fail("chromium is missing (.ci/run installs Debian's chromium)")
    pytest.skip("chromium is not installed (apt-get install chromium)")


def _screenshot(page: Path, out: Path, profile: Path, height: int = HEIGHT) -> None:
    subprocess.run(
        [
            _chromium(), "--headless", "--no-sandbox", "--disable-gpu",
            "--hide-scrollbars", f"--user-data-dir={profile}",
            f"--window-size={WIDTH},{height}", f"--screenshot={out}", page.as_uri(),
        ],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip


def _colored_rows(png: Path) -> list[int]:
    """Rows of the screenshot that hold saturated (plot-coloured, not text) pixels."""
    import matplotlib.image as mpimg
    import numpy as np

    img = np.asarray(mpimg.imread(png))[..., :3]
    spread = img.max(axis=2) - img.min(axis=2)
    colored = spread > 0.25
    counts = colored.sum(axis=1)
    return [int(y) for y in np.nonzero(counts > 30)[0]]


def _bands(rows: list[int], gap: int = 40) -> int:
    bands, last = 0, None
    for y in rows:
        if last is None or y - last > gap:
            bands += 1
        last = y
    return bands


def _service() -> InferenceService:
    return parse_inference_service(
        {
            "metadata": {"name": "llama", "namespace": "default", "uid": "u"},
            "spec": {
                "model": {"source": "hf://meta-llama/Llama-3.1-8B-Instruct", "maxModelLen": 4096},
                "placement": {"gpuTypes": ["H100-80GB"]},
                "scaling": {"minReplicas": 1, "maxReplicas": 4},
            },
        }
    )


def test_report_plots_are_visible_in_chromium(tmp_path: Path) -> None:
    svc = _service()
    reqs = [Request(i * 0.1, 3000, 200) for i in range(1500)]
    result = simulate(reqs, service=svc, scaler=KvpilotScaler(svc), cold_start_s=20.0)
    summary = write_report(result, tmp_path / "report")
    page = tmp_path / "report" / "report.html"
    assert json.loads((tmp_path / "report" / "result.json").read_text()) == json.loads(
        json.dumps(summary)
    )
    html = page.read_text()
    assert html.count("data:image/png;base64,") == 4
    assert 'src="http' not in html  # self-contained

    shot = tmp_path / "shot.png"
    _screenshot(page, shot, tmp_path / "chromium-profile")
    rows = _colored_rows(shot)
    # Four plots, each a band of coloured lines, stacked down the page.
    assert _bands(rows) >= 4, f"expected 4 plot bands, found {_bands(rows)}"

    # The same page without its images shows no such bands: the plots are what is seen.
    bare = tmp_path / "bare.html"
    bare.write_text(html.replace("data:image/png;base64,", "data:image/png;base64,x"))
    bare_shot = tmp_path / "bare.png"
    _screenshot(bare, bare_shot, tmp_path / "chromium-profile")
    assert _bands(_colored_rows(bare_shot)) == 0


def test_comparison_report_shows_its_table_and_six_plots_in_chromium(tmp_path: Path) -> None:
    from kvpilot.sim.baselines import run_comparison
    from kvpilot.sim.oracle import Slo

    svc = _service()
    # Long prompts: a quiet start, then a burst that fills the KV cache and queues.
    reqs = [Request(i * 2.0, 3000, 200) for i in range(20)]
    reqs += [Request(40 + i * 0.1, 3000, 200) for i in range(300)]
    cmp_ = run_comparison(reqs, service=svc, slo=Slo(ttft_s=5.0), cold_start_s=30.0)
    write_report(cmp_.results["kvpilot"], tmp_path / "report", ttft_slo_s=5.0, comparison=cmp_)
    page = tmp_path / "report" / "report.html"
    html = page.read_text()
    assert html.count("data:image/png;base64,") == 6
    assert "Policies compared" in html and html.count("<tr><td>") >= 9  # 8 policies, oracle

    shot = tmp_path / "shot.png"
    _screenshot(page, shot, tmp_path / "chromium-profile", height=4400)
    bands = _bands(_colored_rows(shot))
    assert bands >= 6, f"expected 6 plot bands, found {bands}"
