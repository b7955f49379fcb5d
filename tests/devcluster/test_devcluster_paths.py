"""The dev cluster links packaged binaries by their real path, never through its own
bin directory (which the Makefile puts first on PATH)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from e2e.devcluster import _system_which


def test_a_link_in_the_own_bin_directory_is_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    own, system = tmp_path / "own", tmp_path / "usr-bin"
    own.mkdir()
    system.mkdir()
    real = system / "etcd"
    real.write_text("#!/bin/sh\n")
    real.chmod(0o755)
    (own / "etcd").symlink_to(own / "etcd")  # what an earlier run could leave behind
    monkeypatch.setenv("PATH", os.pathsep.join([str(own), str(system)]))
    assert _system_which("etcd", own) == real.resolve()
    assert _system_which("prometheus", own) is None
