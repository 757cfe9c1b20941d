"""The equivalence check that makes an export unable to lie.

The compact model must compute what the gated model computes in eval mode, as the user runs it: through its peft
wrapper when there is one (tuners that change the wrapper's forward rather than the weights, such as prompt
learning, are refused at attach, see :mod:`lightning_prune.peft_tuners`). Both run on the same random inputs; the
largest absolute difference of their outputs must stay within ``rtol`` times the largest absolute output.
Tolerances: ``rtol`` (default 1e-4) for fp32; 2e-2 for bf16 and 5e-3 for fp16, whose rounding differs between a
masked and a sliced matmul.

In fp32 the masked and the sliced model round differently, and deep models with large activations (real LLMs:
SmolLM2-135M reaches 0.4–2.4 × 1e-4 of the logit scale) can exceed ``rtol`` with an exact export. When an fp32
check fails, it is repeated in float64 on the same exported weights (both models upcast in place, exactly
restored afterwards): arithmetic noise vanishes, while a wrong slice or fold still shows at full size. The
report says which precision passed (``ExportReport.check_dtype``).

Causal LMs are also checked the way users run them: the compact model decodes greedily **with its KV cache**
(``generate``), and the logits of every decoding step must match the gated model's logits on the same tokens
computed without a cache. A forward pass alone cannot see an attention layer that ignores the cache.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from lightning_prune.adapters.base import ModelAdapter
from lightning_prune.errors import ExportMismatchError
from lightning_prune.peft_tuners import unwrap_model

log = logging.getLogger("lightning_prune")

HALF_PRECISION_RTOL = {torch.bfloat16: 2e-2, torch.float16: 5e-3}

#: Tokens decoded with the cache by the generation check (each one reads every earlier position from the cache).
GENERATION_CHECK_TOKENS = 4


def is_causal_lm(model: nn.Module) -> bool:
    """Whether ``model`` generates text with a KV cache (a ``*ForCausalLM`` / ``*LMHeadModel``)."""
    from transformers import GenerationMixin

    can_generate = getattr(model, "can_generate", None)
    return isinstance(model, GenerationMixin) and callable(can_generate) and bool(can_generate())


def max_positions(model: nn.Module) -> int | None:
    """The model's position limit (``max_position_embeddings`` / ``n_positions``), if its config has one."""
    config = getattr(unwrap_model(model), "config", None)
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


@contextlib.contextmanager
def eval_mode(*models: nn.Module) -> Iterator[None]:
    """Every module of ``models`` in eval mode, then each given back its own mode (a peft wrapper in training mode
    around a model in eval mode stays so: ``wrapper.train(True)`` would switch the model's dropout on)."""
    modes = [(module, module.training) for model in models for module in model.modules()]
    for model in models:
        model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def _dtype(model: nn.Module) -> torch.dtype:
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


@dataclass(frozen=True)
class ExportCheck:
    """The comparisons of an export: ``compact`` against the ``gated`` model it came from, within ``rtol`` of the
    outputs' scale (at least the half-precision tolerance of ``gated``'s dtype), on random inputs of ``adapter``.

    :meth:`outputs` compares one forward pass; :meth:`generation` compares cached greedy decoding (causal LMs).
    Each raises :class:`ExportMismatchError` on a difference.
    """

    adapter: ModelAdapter
    gated: nn.Module
    compact: nn.Module
    rtol: float = 1e-4

    @torch.no_grad()
    def outputs(self, batch_size: int = 2, seq_len: int = 16, seed: int = 0) -> tuple[float, float]:
        """``(max_abs_diff, reference_scale)`` of the two models' outputs on the same inputs (``seq_len`` is
        shortened for models with fewer positions)."""
        adapter, gated, compact = self.adapter, self.gated, self.compact
        generator = torch.Generator().manual_seed(seed)
        device = next(gated.parameters()).device
        limit = max_positions(gated)
        if limit is not None:
            seq_len = min(seq_len, limit)
        dtype = _dtype(compact)  # floating inputs (images, features) follow the weights, also in the float64 re-check
        inputs = {
            k: v.to(device, dtype) if v.is_floating_point() else v.to(device)
            for k, v in adapter.example_inputs(batch_size, seq_len, generator).items()
        }
        with eval_mode(gated, compact):
            reference = adapter.outputs(gated, inputs).float()
            output = adapter.outputs(compact, inputs).float()
        if reference.shape != output.shape:
            raise ExportMismatchError(
                f"The compact model's output has shape {tuple(output.shape)}, the gated model's "
                f"{tuple(reference.shape)}."
            )
        return self._compare(reference, output, "on the same inputs")

    @torch.no_grad()
    def generation(
        self, batch_size: int = 2, seq_len: int = 8, new_tokens: int = GENERATION_CHECK_TOKENS, seed: int = 1
    ) -> float | None:
        """Greedy decoding with the compact model's KV cache against the gated model without a cache.

        The compact model generates ``new_tokens`` greedily from random prompts (``generate`` with
        ``use_cache=True``, the path users take); the gated model then scores the generated sequences in one
        uncached forward. The logits of each decoding step must agree within ``rtol`` of their scale. Comparing
        logits rather than tokens keeps the check exact where two tokens tie.

        Returns:
            The largest absolute logit difference, or ``None`` when ``compact`` is not a causal LM.
        """
        adapter, gated, compact = self.adapter, self.gated, self.compact
        if not (is_causal_lm(compact) and is_causal_lm(unwrap_model(gated))):
            return None
        from transformers import GenerationConfig

        generator = torch.Generator().manual_seed(seed)
        device = next(gated.parameters()).device
        limit = max_positions(gated)
        if limit is not None:  # prompt + generated tokens must fit the position table
            if limit < 2:
                return None
            new_tokens = min(new_tokens, limit - 1)
            seq_len = max(1, min(seq_len, limit - new_tokens))
        prompt = {k: v.to(device) for k, v in adapter.example_inputs(batch_size, seq_len, generator).items()}
        # A fresh config: the model's own generation config (sampling, stop tokens) must not shorten the run.
        config = GenerationConfig(
            do_sample=False,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            use_cache=True,
            pad_token_id=0,
            output_logits=True,
            return_dict_in_generate=True,
        )
        with eval_mode(gated, compact):
            out = compact.generate(
                input_ids=prompt["input_ids"],
                attention_mask=prompt.get("attention_mask"),
                generation_config=config,
            )
            cached = torch.stack(out.logits, dim=1).float()  # (batch, new_tokens, vocab)
            tokens = out.sequences
            reference = gated(input_ids=tokens, attention_mask=torch.ones_like(tokens), use_cache=False).logits
            reference = reference[:, seq_len - 1 : tokens.shape[1] - 1].float()
        where = f"when it generates {new_tokens} tokens with its KV cache"
        return self._compare(reference, cached, where)[0]

    def _compare(self, reference: torch.Tensor, output: torch.Tensor, where: str) -> tuple[float, float]:
        """``(max |reference - output|, max |reference|)``; raises when the difference exceeds the tolerance times
        the scale. ``where``: how the outputs were computed."""
        rtol = max(self.rtol, HALF_PRECISION_RTOL.get(_dtype(self.gated), 0.0))
        diff = float((reference - output).abs().max())
        scale = float(reference.abs().max().clamp_min(1e-12))
        if not (diff == diff) or diff > rtol * scale:  # NaN-safe
            raise ExportMismatchError(
                f"The compact model does not compute what the gated model computed {where}: max |gated - compact| = "
                f"{diff:.3e} > {rtol:g} x {scale:.3e}. Nothing was returned or saved. This is a bug in the adapter "
                f"({self.adapter.name}); please report it with your model config."
            )
        return diff, scale


def _tensors(*models: nn.Module) -> Iterator[torch.Tensor]:
    """Every floating-point parameter and buffer (persistent or not) of ``models``, each once."""
    seen: set[int] = set()
    for model in models:
        for module in model.modules():
            for table in (module._parameters, module._buffers):
                for tensor in table.values():
                    if tensor is not None and tensor.is_floating_point() and id(tensor) not in seen:
                        seen.add(id(tensor))
                        yield tensor


def _float64_fits(*models: nn.Module) -> bool:
    """Whether float64 copies of ``models`` fit in the free memory of their device (with a 25% margin)."""
    needed = sum(t.numel() * (8 - t.element_size()) for t in _tensors(*models))
    device = next((t.device for t in _tensors(*models)), torch.device("cpu"))
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
    else:
        try:
            import os

            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):  # not Linux: no cheap reading, do not risk it
            return False
    return needed * 1.25 < free


@contextlib.contextmanager
def _upcast_to_float64(*models: nn.Module) -> Iterator[None]:
    """Run ``models`` in float64, then give every tensor back its own dtype (fp32/bf16/fp16 → fp64 → back is
    exact; parameters keep their identity, so optimizers still hold them)."""
    dtypes = {}
    try:
        for tensor in _tensors(*models):
            dtypes[id(tensor)] = tensor.dtype
            tensor.data = tensor.data.to(torch.float64)
        yield
    finally:
        for tensor in _tensors(*models):
            if id(tensor) in dtypes:
                tensor.data = tensor.data.to(dtypes[id(tensor)])


def verify_export(
    adapter: ModelAdapter, gated: nn.Module, compact: nn.Module, rtol: float = 1e-4
) -> tuple[float, float, float | None, str]:
    """The export check: outputs, then cached generation for causal LMs; repeated in float64 when it fails.

    The float64 re-check runs the same exported weights (bf16 stays bf16-valued) with the tolerance of the
    model's own dtype: the arithmetic noise of fp32/bf16 through many layers is gone, while a wrong slice or fold
    shows at full size. It is skipped (the first verdict stands) when float64 copies would not fit in memory.

    Returns:
        ``(max_abs_diff, reference_scale, generation_max_abs_diff, check_dtype)`` of the check that passed.

    Raises:
        ExportMismatchError: the models differ (in float64 too).
    """
    dtype = _dtype(gated)
    rtol = max(rtol, HALF_PRECISION_RTOL.get(dtype, 0.0))
    check = ExportCheck(adapter, gated, compact, rtol)
    try:
        diff, scale = check.outputs()
        return diff, scale, check.generation(), str(dtype).replace("torch.", "")
    except ExportMismatchError as mismatch:
        hint = (
            "If the difference is rounding of a deep model, raise `export_rtol` in the config (e.g. 1e-3 for fp32); "
            "the check runs before anything is returned or saved."
        )
        if not _float64_fits(gated, compact):
            raise ExportMismatchError(
                f"{mismatch} The float64 re-check that separates rounding from real differences was skipped: float64 "
                f"copies of both models do not fit in free memory. {hint}"
            ) from mismatch
        log.info("lightning-prune: the %s export check failed (%s); repeating it in float64", dtype, mismatch)
        try:
            with _upcast_to_float64(gated, compact):
                diff, scale = check.outputs()
                generation = check.generation()
        except ExportMismatchError as again:
            raise ExportMismatchError(f"{again} (in float64; in {dtype} first: {mismatch})") from mismatch
        except (RuntimeError, MemoryError) as error:
            raise ExportMismatchError(
                f"{mismatch} The float64 re-check could not run ({type(error).__name__}: {error}). {hint}"
            ) from mismatch
        return diff, scale, generation, "float64"
