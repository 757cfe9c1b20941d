"""A saved export that verifies itself: a fingerprint of every file and a stored probe.

``save_compact`` writes two files next to the model:

* ``lightning_prune_probe.tensors`` (safetensors format): a small input (token ids and attention mask, seeded) and
  the outputs the compact model computed on it before it was saved (logits, or the last hidden state of a backbone);
* ``lightning_prune_manifest.json``: the sha256 and size of every file the export wrote (weights, shards and their
  index, config, generation config, the per-layer modeling file, the report and the probe).

``load_compact(path)`` (``verify=True``) checks the fingerprints before loading, so a weights file that was
truncated, removed or edited, a tensor taken out, or a config value changed (``rms_norm_eps``, a head count) is
refused with :class:`~lightning_prune.errors.CorruptExportError` instead of loading with "newly initialized"
weights or computing something else. After loading it runs the probe and compares the outputs (tolerance of the
loaded model's dtype), which also catches a loading path that computes differently (an edit with a rewritten
manifest, a transformers version that reads the config differently). transformers ignores both files, so
``from_pretrained`` of the directory works as before.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from torch import nn

from lightning_prune.adapters.base import output_tensor
from lightning_prune.errors import CorruptExportError

MANIFEST_FILENAME = "lightning_prune_manifest.json"
#: safetensors format, but not a ``*.safetensors`` name: serving tools that load every ``*.safetensors`` file of a
#: directory without an index (vLLM does) would take the probe's tensors for weights.
PROBE_FILENAME = "lightning_prune_probe.tensors"
MANIFEST_FORMAT = 1

#: Probe size: one sequence (sequence classification without a pad token accepts no larger batch) of 8 tokens.
PROBE_SEQ_LEN = 8
#: Tolerance of the probe, relative to the largest absolute expected output, by the loaded model's dtype. Wider than
#: the export check's: the directory may be loaded on another device (TF32 matmuls, other kernels).
PROBE_RTOL = {torch.float32: 1e-3, torch.float64: 1e-6, torch.bfloat16: 3e-2, torch.float16: 1e-2}

_VERIFY_HINT = (
    "Re-export the model (Pruner.save_compact), or pass verify=False to load_compact to load it anyway (its outputs "
    "are then unchecked)."
)


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes (streamed: no copy of a large shard in memory)."""
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _vocab_size(model: nn.Module) -> int | None:
    config = getattr(model, "config", None)
    value = getattr(config, "vocab_size", None)
    return value if isinstance(value, int) and value > 0 else None


#: Probe keys of traced (plain PyTorch) models: positional inputs ``input_0``, ``input_1``, ...
POSITIONAL_PREFIX = "input_"


@torch.no_grad()
def _run(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    training = model.training
    model.eval()
    try:
        moved = {k: v.to(device) for k, v in inputs.items()}
        if moved and all(k.startswith(POSITIONAL_PREFIX) for k in moved):  # a traced CNN/MLP: positional inputs
            return output_tensor(model(*(moved[f"{POSITIONAL_PREFIX}{i}"] for i in range(len(moved))))).float().cpu()
        return output_tensor(model(**moved)).float().cpu()
    finally:
        model.train(training)


def _traced_probe_inputs(record: dict, seed: int) -> dict[str, torch.Tensor]:
    """Inputs of the shapes and dtypes the model was traced with (batch 1): normal floats, small integers."""
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for i, (shape, dtype_name) in enumerate(zip(record["inputs"], record["dtypes"])):
        dtype = getattr(torch, dtype_name.split(".")[-1])
        shape = [1, *shape[1:]] if shape else shape
        if dtype.is_floating_point:
            out[f"{POSITIONAL_PREFIX}{i}"] = torch.randn(shape, generator=generator).to(dtype)
        else:
            out[f"{POSITIONAL_PREFIX}{i}"] = torch.randint(0, 2, shape, generator=generator).to(dtype)
    return out


def probe_inputs(model: nn.Module, seed: int = 0) -> dict[str, torch.Tensor] | None:
    """The probe's inputs for ``model``: token ids and attention mask for a transformer, inputs of the traced shapes
    for a plain PyTorch model exported by the dependency_graph adapter (``None`` when neither applies)."""
    from lightning_prune.export.history import HISTORY_ATTRIBUTE

    record = getattr(model, HISTORY_ATTRIBUTE, None)
    if record is not None:
        return _traced_probe_inputs(record, seed)
    vocab = _vocab_size(model)
    if vocab is None:
        return None
    from lightning_prune.export.verify import max_positions

    seq_len = min(PROBE_SEQ_LEN, max_positions(model) or PROBE_SEQ_LEN)
    ids = torch.randint(0, vocab, (1, seq_len), generator=torch.Generator().manual_seed(seed))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def write_probe(model: nn.Module, directory: Path) -> bool:
    """Run ``model`` on :func:`probe_inputs` and store inputs and outputs in ``directory``; ``False`` if it has none."""
    from safetensors.torch import save_file

    inputs = probe_inputs(model)
    if inputs is None:
        return False
    save_file({**inputs, "expected": _run(model, inputs).contiguous()}, str(directory / PROBE_FILENAME))
    return True


def write_manifest(directory: Path) -> None:
    """Fingerprint every file in ``directory`` (written by the export) into the manifest."""
    files = {
        f.name: {"sha256": file_digest(f), "bytes": f.stat().st_size}
        for f in sorted(directory.iterdir())
        if f.is_file() and f.name != MANIFEST_FILENAME
    }
    manifest = {"format": MANIFEST_FORMAT, "writer": "lightning_prune.save_compact", "files": files}
    (directory / MANIFEST_FILENAME).write_text(json.dumps(manifest, indent=2))


def _weight_file(name: str) -> bool:
    return name.endswith(".safetensors") or name.endswith(".safetensors.index.json") or name.endswith(".bin")


def verify_files(directory: Path) -> None:
    """Check every fingerprint of the manifest in ``directory``.

    Raises:
        CorruptExportError: no manifest, a recorded file missing, of another size or content, or a weights file
            that the export did not write.
    """
    manifest_path = directory / MANIFEST_FILENAME
    if not manifest_path.is_file():
        raise CorruptExportError(
            f"{str(directory)!r} has no {MANIFEST_FILENAME}: it was not written by save_compact (or was written by an "
            f"older lightning-prune, before exports recorded fingerprints), so nothing says what it must compute. "
            f"{_VERIFY_HINT}"
        )
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
    except (ValueError, KeyError, TypeError) as error:
        raise CorruptExportError(f"{manifest_path} is not a readable manifest ({error}). {_VERIFY_HINT}") from error
    for name, record in files.items():
        path = directory / name
        if not path.is_file():
            raise CorruptExportError(
                f"{str(directory)!r} lacks `{name}`, which save_compact wrote: the export is incomplete. {_VERIFY_HINT}"
            )
        size = path.stat().st_size
        if size != record["bytes"]:
            raise CorruptExportError(
                f"`{name}` in {str(directory)!r} has {size} bytes, save_compact wrote {record['bytes']}: it was "
                f"truncated or changed after the export. {_VERIFY_HINT}"
            )
        digest = file_digest(path)
        if digest != record["sha256"]:
            raise CorruptExportError(
                f"`{name}` in {str(directory)!r} was changed after the export (sha256 {digest[:12]}…, save_compact "
                f"wrote {record['sha256'][:12]}…). {_VERIFY_HINT}"
            )
    extra = sorted(f.name for f in directory.iterdir() if _weight_file(f.name) and f.name not in files)
    if extra:
        raise CorruptExportError(
            f"{str(directory)!r} holds weights files save_compact did not write: {extra}. {_VERIFY_HINT}"
        )


def check_probe(model: nn.Module, directory: Path) -> float | None:
    """Run the loaded ``model`` on the stored probe; return the largest absolute difference (``None``: no probe).

    Raises:
        CorruptExportError: the outputs differ from those stored at save time beyond the tolerance of the model's
            dtype (:data:`PROBE_RTOL`).
    """
    path = directory / PROBE_FILENAME
    if not path.is_file():
        return None
    from safetensors.torch import load_file

    stored = load_file(str(path))
    expected = stored.pop("expected")
    output = _run(model, stored)
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    rtol = PROBE_RTOL.get(dtype, 1e-3)
    scale = float(expected.abs().max().clamp_min(1e-12))
    if output.shape != expected.shape:
        raise CorruptExportError(
            f"The model loaded from {str(directory)!r} outputs shape {tuple(output.shape)} on the stored probe, "
            f"the exported model {tuple(expected.shape)}. {_VERIFY_HINT}"
        )
    diff = float((output - expected).abs().max())
    if not diff <= rtol * scale:  # NaN-safe
        raise CorruptExportError(
            f"The model loaded from {str(directory)!r} does not compute what the exported model computed on the "
            f"stored probe: max |loaded - exported| = {diff:.3e} > {rtol:g} x {scale:.3e}. The directory (or the way "
            f"it is loaded) changed after the export. {_VERIFY_HINT}"
        )
    return diff
