"""Dependency ranges: an environment outside them fails at import with the fix (issue #17)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lightning_prune.dependencies import check_dependency_versions, core_requirements, version_problems
from lightning_prune.errors import DependencyVersionError


def test_the_installed_environment_is_supported():
    assert core_requirements(), "lightning-prune's metadata lists no dependencies: is the package installed?"
    assert version_problems() == []
    names = {r.split(">")[0].split("<")[0].split("=")[0].split("[")[0] for r in core_requirements()}
    assert {"torch", "transformers", "lightning", "peft"} <= names


def test_a_version_outside_the_range_names_the_package_the_range_and_the_fix():
    with pytest.raises(DependencyVersionError) as info:
        check_dependency_versions(["transformers>=5.0,<5.1", "torch>=2.4", "surely-not-installed-pkg>=1"])
    message = str(info.value)
    assert "transformers<5.1,>=5.0 is needed" in message and "is installed" in message
    assert "surely-not-installed-pkg>=1 is needed, it is not installed" in message
    assert 'pip install "transformers<5.1,>=5.0" "surely-not-installed-pkg>=1"' in message
    assert "torch" not in message.split("is needed")[0].split(";")[-1]  # torch is in range: not listed
    assert "constraints.txt" in message and "LIGHTNING_PRUNE_SKIP_VERSION_CHECK" in message


def test_the_escape_hatch_turns_the_error_into_a_warning(monkeypatch):
    monkeypatch.setenv("LIGHTNING_PRUNE_SKIP_VERSION_CHECK", "1")
    with pytest.warns(UserWarning, match="transformers"):
        check_dependency_versions(["transformers<1"])


def test_the_pyproject_ranges_have_upper_bounds_on_releases_known_to_break():
    requirements = {r.split(">")[0].split("<")[0]: r for r in core_requirements()}
    assert "<6" in requirements["transformers"]  # v6 removes the 5.x cache/kwarg aliases the exports rely on
    assert "<3" in requirements["torch"] and "<3" in requirements["lightning"]


def test_import_fails_clearly_when_a_dependency_is_out_of_range(tmp_path):
    """A fake ``transformers`` distribution of version 4.0 shadows the real one: importing lightning_prune stops."""
    dist = tmp_path / "transformers-4.0.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: transformers\nVersion: 4.0.0\n")
    code = f"import sys; sys.path.insert(0, {str(tmp_path)!r}); import lightning_prune"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode != 0
    assert "DependencyVersionError" in run.stderr and "transformers" in run.stderr
    assert "4.0.0 is installed" in run.stderr
