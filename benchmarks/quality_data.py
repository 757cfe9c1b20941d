"""A real, offline text-classification task for the quality benchmark: which library wrote this docstring?

The demo task (:mod:`lightning_prune.demo.data`) is too easy for MiniLM-L6 (dense and pruned both reach 100%),
so pruning methods cannot be told apart on it. This one is made from real English written by people: the first
sentence of the docstrings of functions and classes in eight installed libraries (numpy, scipy, torch,
matplotlib, scikit-learn, networkx, sympy, transformers), read from their source files with :mod:`ast` (nothing
is imported, nothing is downloaded). The label is the library. It is hard because the libraries overlap
(numpy / scipy / torch / sympy all talk about arrays, matrices and functions) and because sentences that name a
library (``numpy``, ``np.``, ``NetworkX`` ...) are dropped, so the model must learn each library's vocabulary and
style rather than read its name.

Train and test come from **different source files** (a file's split is a hash of its path), the counterpart of
the demo's held-out templates: test sentences describe modules the model never saw in training. Sentences found
in more than one library or in both splits are dropped. Reading stops as soon as every class has its quota, in a
fixed hash order of the files, so a run parses only a few hundred files (seconds) and is deterministic for given
library versions (:func:`source_versions` records them).
"""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

#: label -> importable package whose source files are read (the label order is the class index).
LIBRARIES: dict[str, str] = {
    "numpy": "numpy",
    "scipy": "scipy",
    "torch": "torch",
    "matplotlib": "matplotlib",
    "scikit-learn": "sklearn",
    "networkx": "networkx",
    "sympy": "sympy",
    "transformers": "transformers",
}
LABELS = tuple(LIBRARIES)

#: The 16-class variant (``quality.py --task docstring-library-16``): another task of the same kind, to check that
#: a finding on the 8-class task is not a property of those eight libraries. The eight added ones overlap more
#: (lightning / torchmetrics / peft / transformers all describe training; pytest / setuptools / pip all describe
#: packaging and tooling).
LIBRARIES_16: dict[str, str] = {
    **LIBRARIES,
    "lightning": "lightning",
    "peft": "peft",
    "pydantic": "pydantic",
    "torchmetrics": "torchmetrics",
    "wandb": "wandb",
    "pytest": "_pytest",
    "setuptools": "setuptools",
    "pip": "pip",
}

# A sentence naming a library is a give-away: drop it (word-boundary match, case-insensitive).
_GIVEAWAY = re.compile(
    r"\b(numpy|np|scipy|torch|pytorch|matplotlib|mpl|plt|pyplot|sklearn|scikit|networkx|nx|sympy|transformers?|"
    r"hugging ?face|hf|pandas|jax|tensorflow|tf|keras)\b",
    re.IGNORECASE,
)
# The added libraries' names, dropped in the 16-class task only (the 8-class data stay as they were).
_GIVEAWAY_16 = re.compile(
    r"\b(lightning|pl|peft|lora|pydantic|torchmetrics|metrics?|wandb|w&b|weights (and|&) biases|pytest|setuptools|"
    r"pip|pypi)\b",
    re.IGNORECASE,
)
_TEST_EVERY = 4  # one source file in four goes to the test split


@dataclass(frozen=True)
class DocstringTask:
    """One task of the kind: its libraries (label -> package; the order is the class index) and, besides
    ``_GIVEAWAY``, the names its sentences must not contain."""

    libraries: dict[str, str]
    extra_giveaway: re.Pattern | None = None


#: The tasks by name (``quality.py --task``).
TASKS: dict[str, DocstringTask] = {
    "docstring-library": DocstringTask(LIBRARIES),
    "docstring-library-16": DocstringTask(LIBRARIES_16, _GIVEAWAY_16),
}


@dataclass
class Example:
    text: str
    label: int


def _first_sentence(doc: str, extra_giveaway: re.Pattern | None = None) -> str | None:
    """The first sentence of a docstring's first paragraph, whitespace-normalised; ``None`` if it is not prose."""
    paragraph = " ".join(doc.strip().split("\n\n")[0].split())
    sentence = re.split(r"(?<=[.!?])\s", paragraph)[0]
    words = sentence.split()
    if not 4 <= len(words) <= 40 or not sentence[:1].isalpha() or _GIVEAWAY.search(sentence):
        return None
    if extra_giveaway is not None and extra_giveaway.search(sentence):
        return None
    letters = sum(c.isalpha() or c == " " for c in sentence)
    if letters < 0.85 * len(sentence):  # mostly code, shapes or formulas: not prose
        return None
    return sentence


def _sentences(path: Path, extra_giveaway: re.Pattern | None = None) -> list[str]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8", errors="ignore"))
    except (SyntaxError, ValueError):
        return []
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            doc = ast.get_docstring(node)
            sentence = _first_sentence(doc, extra_giveaway) if doc else None
            if sentence:
                out.append(sentence)
    return out


def _digest(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def _source_files(package: str) -> list[tuple[str, Path]]:
    """``(path relative to the package, path)`` of the package's non-test source files, in a fixed hash order."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            f"The docstring task reads the source of `{package}`, which is not installed. Install it (it is a "
            "dependency of the benchmark environment) or drop it from `LIBRARIES`."
        )
    root = Path(spec.origin).parent
    files = [(str(f.relative_to(root)), f) for f in root.rglob("*.py")]
    return sorted(((rel, f) for rel, f in files if "test" not in rel.lower()), key=lambda item: _digest(item[0]))


def make_docstring_dataset(
    n_train_per_class: int = 400, n_test_per_class: int = 100, task: str = "docstring-library"
) -> tuple[list[Example], list[Example]]:
    """Balanced train and test sets of (first docstring sentence, library) pairs; deterministic.

    Args:
        n_train_per_class: training sentences per library.
        n_test_per_class: test sentences per library (from source files that give no training sentence).
        task: a key of :data:`TASKS`.

    Raises:
        ValueError: a library has too few usable sentences for the quotas (lower them).
    """
    if task not in TASKS:
        raise ValueError(f"Unknown task {task!r}; known: {', '.join(TASKS)}.")
    libraries, extra_giveaway = TASKS[task].libraries, TASKS[task].extra_giveaway
    found: dict[str, dict[str, list[str]]] = {}
    owners: dict[str, set[str]] = {}  # sentence -> libraries / splits it was seen in
    for label, package in libraries.items():
        split_of: dict[str, dict[str, None]] = {"train": {}, "test": {}}  # ordered sets
        quota = {"train": n_train_per_class, "test": n_test_per_class}
        wanted = {s: int(quota[s] * 1.2) + 10 for s in quota}  # a margin: cross-split duplicates are removed later
        for rel, path in _source_files(package):
            if all(len(split_of[s]) >= wanted[s] for s in split_of):
                break
            split = "test" if _digest(rel) % _TEST_EVERY == 0 else "train"
            if len(split_of[split]) >= wanted[split]:
                continue
            for sentence in _sentences(path, extra_giveaway):
                owners.setdefault(sentence, set()).add(f"{label}/{split}")
                split_of[split][sentence] = None
        found[label] = split_of
    train: list[Example] = []
    test: list[Example] = []
    for index, label in enumerate(libraries):
        for split, quota, out in (("train", n_train_per_class, train), ("test", n_test_per_class, test)):
            unique = [s for s in found[label][split] if len(owners[s]) == 1]
            if len(unique) < quota:
                raise ValueError(
                    f"Only {len(unique)} usable {split} sentences for {label!r} (asked for {quota}); lower "
                    "`n_train_per_class` / `n_test_per_class`."
                )
            out.extend(Example(s, index) for s in unique[:quota])
    train.sort(key=lambda e: _digest(e.text))  # a fixed shuffle
    test.sort(key=lambda e: _digest(e.text))
    return train, test


def source_versions(task: str = "docstring-library") -> dict[str, str]:
    """Installed versions of the libraries the sentences come from (the dataset depends on them)."""
    out = {}
    for label in TASKS[task].libraries:
        try:
            out[label] = importlib.metadata.version(label)
        except importlib.metadata.PackageNotFoundError:
            out[label] = "?"
    return out
