"""Offline text for the LLM quality benchmark: a *domain* corpus and a *general* one, written by people.

* **Domain: Python's standard-library documentation.** One document per stdlib source file: its module docstring
  and the docstring of every class and function, rendered like ``pydoc`` (``def name(args)`` then the text). The
  files are parsed with :mod:`ast` (nothing is imported); every CPython installation carries them. A document goes
  to the **test** split when the hash of its name falls in one of ``TEST_EVERY`` buckets, so test documents describe
  modules the model never saw in training. Tests (``test/``, ``idlelib/``...) and vendored code are skipped.
* **General: the license texts under ``/usr/share/common-licenses``** (Debian's ``base-files``: GPL, LGPL, Apache,
  MPL, GFDL, Artistic, BSD, CC0), English legal prose outside the domain, used only for evaluation: what the
  fine-tuned, pruned model keeps outside the domain (the ATP / D-Pruner setting). Duplicates (``GPL`` is a link to
  ``GPL-3``) are read once. Where that folder is missing, Python's own ``LICENSE`` file and the Language Reference
  (``pydoc_data.topics``) are the fallback, and :func:`general_documents` says so in its ``source``.

Token windows are cut by :func:`token_windows` from the documents joined by EOS, in a fixed order, so every model
sees the same windows; the training batches are pre-built once (:func:`training_batches`) with a seeded shuffle.
"""

from __future__ import annotations

import ast
import hashlib
import os
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import torch

TEST_EVERY = 8  # one stdlib file in eight is a test document
SKIP_DIRS = {
    "test",
    "tests",
    "idlelib",
    "lib2to3",
    "turtledemo",
    "ensurepip",
    "__phello__",
    "site-packages",
    "pydoc_data",
    "distutils",
    "tkinter",
    "config-3.11-x86_64-linux-gnu",
}
LICENSES = Path("/usr/share/common-licenses")


@dataclass(frozen=True)
class Document:
    name: str
    text: str


def _bucket(name: str) -> int:
    return int(hashlib.sha1(name.encode()).hexdigest(), 16) % TEST_EVERY


def is_test(name: str) -> bool:
    """The deterministic split: a document is held out when its name hashes to bucket 0."""
    return _bucket(name) == 0


def _signature(node: ast.FunctionDef | ast.AsyncFunctionDef) -> str:
    try:
        return ast.unparse(node.args)
    except Exception:  # noqa: BLE001 - a signature is decoration; never fail the corpus on it
        return "..."


def render_docstrings(source: str, name: str) -> str:
    """pydoc-like text of one module: its docstring, then ``class``/``def`` headers with their docstrings."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return ""
    parts = []
    doc = ast.get_docstring(tree)
    if doc:
        parts.append(f"Module {name}\n\n{doc}")

    def visit(body, prefix: str) -> None:
        for node in body:
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                doc = ast.get_docstring(node)
                if doc:
                    parts.append(f"class {prefix}{node.name}\n    {doc}")
                visit(node.body, f"{prefix}{node.name}.")
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if node.name.startswith("_") and node.name != "__init__":
                    continue
                doc = ast.get_docstring(node)
                if doc:
                    parts.append(f"def {prefix}{node.name}({_signature(node)})\n    {doc}")

    visit(tree.body, "")
    return "\n\n".join(parts)


def domain_documents(stdlib: Path | None = None, min_chars: int = 200) -> list[Document]:
    """Python stdlib documentation, one document per source file, sorted by module name."""
    root = Path(stdlib or sysconfig.get_paths()["stdlib"])
    docs = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if set(rel.parts[:-1]) & SKIP_DIRS or rel.parts[0] in SKIP_DIRS:
            continue
        name = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
        text = render_docstrings(path.read_text(encoding="utf-8", errors="ignore"), name)
        if len(text) >= min_chars:
            docs.append(Document(name, text))
    return docs


def general_documents(licenses: Path = LICENSES) -> tuple[list[Document], str]:
    """English prose outside the domain (see the module docstring) and a word on where it came from."""
    docs, seen = [], set()
    if licenses.is_dir():
        for path in sorted(licenses.iterdir()):
            real = os.path.realpath(path)
            if real in seen or not path.is_file():
                continue
            seen.add(real)
            text = path.read_text(encoding="utf-8", errors="ignore")
            if text.strip() in {d.text.strip() for d in docs}:
                continue
            docs.append(Document(path.name, text))
    if docs:
        return docs, str(licenses)
    fallback = Path(sysconfig.get_paths()["stdlib"]) / "LICENSE.txt"
    if fallback.is_file():
        docs.append(Document("LICENSE.txt", fallback.read_text(encoding="utf-8", errors="ignore")))
    from pydoc_data.topics import topics

    docs += [Document(f"topic:{k}", topics[k]) for k in sorted(topics)]
    return docs, "fallback: CPython LICENSE.txt + pydoc_data.topics"


def split(docs: list[Document]) -> tuple[list[Document], list[Document]]:
    """(train, test) by the hash of each document's name; the order inside each is a fixed hash order."""
    ordered = sorted(docs, key=lambda d: hashlib.sha1(d.name.encode()).hexdigest())
    return [d for d in ordered if not is_test(d.name)], [d for d in ordered if is_test(d.name)]


def token_windows(docs: list[Document], tokenizer, seq_len: int, n: int, stride: int | None = None) -> torch.Tensor:
    """``(n, seq_len)`` token ids: the documents joined by EOS, cut into consecutive windows.

    Windows are taken every ``stride`` windows (default 1: consecutive), so a small ``n`` can still be spread over
    many documents. Raises ``ValueError`` when the text holds fewer than ``n`` windows.
    """
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    stride = max(1, stride or 1)
    need = n * stride * seq_len
    ids: list[int] = []
    for doc in docs:
        ids += tokenizer(doc.text, add_special_tokens=False).input_ids + eos
        if len(ids) >= need:
            break
    available = len(ids) // seq_len
    if available < n:
        raise ValueError(f"the text holds {available} windows of {seq_len} tokens, fewer than the {n} asked for")
    stride = min(stride, available // n)
    windows = torch.tensor(ids[: available * seq_len]).view(available, seq_len)
    return windows[::stride][:n].clone()


def training_batches(windows: torch.Tensor, batch_size: int, steps: int, seed: int) -> list[torch.Tensor]:
    """The list of ``steps`` batches every row trains on: a seeded permutation of ``windows`` (cycled if short)."""
    gen = torch.Generator().manual_seed(seed)
    order: list[int] = []
    while len(order) < steps * batch_size:
        order += torch.randperm(len(windows), generator=gen).tolist()
    return [windows[order[i * batch_size : (i + 1) * batch_size]] for i in range(steps)]
