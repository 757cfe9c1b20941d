"""Supported dependency versions, checked when lightning-prune is imported.

``pip`` enforces the ranges of ``pyproject.toml`` at install time, but an environment can drift afterwards
(``pip install -U transformers``, ``--no-deps`` installs, conda). A transformers release that renames an
argument can make an export generate wrong text rather than fail (issue #17: the KV cache moved from
``past_key_values=`` to ``cache=``), so an import outside the supported ranges stops with the fix instead.

The ranges are read from the installed package's own metadata (the ``dependencies`` of ``pyproject.toml``),
so they have one home. ``constraints.txt`` at the repository root pins the exact set CI tested.
Set ``LIGHTNING_PRUNE_SKIP_VERSION_CHECK=1`` to turn the error into a warning (at your own risk).
"""

from __future__ import annotations

import os
import warnings
from importlib import metadata

from lightning_prune.errors import DependencyVersionError

DISTRIBUTION = "lightning-prune"
SKIP_VARIABLE = "LIGHTNING_PRUNE_SKIP_VERSION_CHECK"


def core_requirements() -> list[str]:
    """The core requirement strings of the installed distribution (no extras); ``[]`` when run from a source
    tree that was never installed (no metadata to read)."""
    try:
        requirements = metadata.requires(DISTRIBUTION) or []
    except metadata.PackageNotFoundError:
        return []
    return [r for r in requirements if "extra ==" not in r]


def version_problems(requirements: list[str] | None = None) -> list[tuple[str, str | None]]:
    """``(requirement, installed version or None)`` for each requirement the environment does not satisfy."""
    from packaging.requirements import Requirement

    problems = []
    for text in core_requirements() if requirements is None else requirements:
        requirement = Requirement(text)
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        try:
            installed: str | None = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            installed = None
        if installed is None or not requirement.specifier.contains(installed, prereleases=True):
            requirement.marker = None
            problems.append((str(requirement), installed))
    return problems


def check_dependency_versions(requirements: list[str] | None = None) -> None:
    """Raise :class:`DependencyVersionError` naming every dependency outside its supported range.

    Raises:
        DependencyVersionError: unless ``LIGHTNING_PRUNE_SKIP_VERSION_CHECK=1`` (then a warning).
    """
    problems = version_problems(requirements)
    if not problems:
        return
    found = "; ".join(
        f"{req} is needed, {'it is not installed' if got is None else f'{got} is installed'}" for req, got in problems
    )
    pins = " ".join(f'"{req}"' for req, _ in problems)
    message = (
        f"lightning-prune cannot run with these dependency versions: {found}. Install a supported set with "
        f"`pip install {pins}` (or the exact versions CI tested: `pip install -c constraints.txt -e .` in the "
        f"repository). Set {SKIP_VARIABLE}=1 to import anyway at your own risk."
    )
    if os.environ.get(SKIP_VARIABLE, "") not in ("", "0"):
        warnings.warn(message, stacklevel=2)
        return
    raise DependencyVersionError(message)
