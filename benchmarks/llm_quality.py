"""Domain fine-tune-and-prune of a real LLM (SmolLM2-135M-Instruct) with LoRA: our methods vs LLM baselines.

Domain: Python's standard-library documentation (:mod:`llm_data`; test documents are whole modules held out by a
hash of their name). General: the license texts of ``/usr/share/common-licenses``, never trained on: what the
model keeps outside the domain (the ATP / D-Pruner setting). Every row starts from the pretrained model, trains
LoRA (r=8 on all seven projections) for the **same optimizer steps on the same pre-built batches**, and is then
evaluated as a compact model (LoRA merged):

* ``dense LoRA``: no pruning (the reference);
* ours (:data:`METHODS`): gradual (``GradualConfig``: exact-target selection by learned, Fisher-initialised scores,
  widths free across layers, the whole target at the first pruning step: the library's LoRA schedule), gradual with
  self-distillation from the pretrained model, L0 (CoFi-style hard-concrete gates on KV groups + FFN channels,
  Lagrangian target), STE, polarization, Compresso (+ its collaborative prompt in training and evaluation), ATP
  (decision generator in alternation with LoRA), PAT; all but gradual with ``uniform=True`` where the method has it
  (standard exports); dense warm-up for 10% of the steps, target warm-up over 40% (gradual: none), masks frozen
  from 75% (gradual: from 12%, two steps after the cut at 100 steps);
* ``LLM-Pruner``: first-order Taylor importance per KV group / FFN channel on calibration batches, uniform ratio
  with the first 3 and last 2 layers kept whole, one-shot removal, then LoRA recovery for all the steps;
* ``FLAP``: fluctuation metric, global z-scored comparison (adaptive per-layer widths), bias compensation, LoRA;
* ``Wanda-sp``: ``‖X_j‖·Σ|W_ij|``, uniform ratio, LoRA.

Budgets: the fraction of *prunable parameters* (attention + MLP projections) removed, as lightning-prune counts it.
Per row: domain and general perplexity (same token windows for every model), parameters, prefill latency and
decode tokens/s (greedy, KV cache) of every compact model measured round-robin in one run (medians), the median
training step time vs dense LoRA, and one greedy sample. Writes ``llm_quality.{json,md,png}`` under ``--output``.

    python benchmarks/llm_quality.py --quick   # 50%: dense, l0, gradual(+kd), LLM-Pruner, FLAP, Wanda-sp
                                               # (7.8 min on 2 cores before the two gradual rows, ~2 min each)
    python benchmarks/llm_quality.py           # 30% and 50%, every method and baseline, 100 steps (~1.5 h)
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import statistics
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import llm_baselines as bl
import torch
from _common import interleaved_median, lora, quiet_trainer
from torch import nn

import lightning_prune as lp

# Step times are process CPU seconds (all threads): on a shared machine other jobs stretch wall time (a first quick run
# measured a 18 s median wall step for dense LoRA against 2.0 s alone) but hardly the CPU time a step needs.
STEP_CLOCK = time.process_time
SAMPLE_PROMPT = "What does the Python function functools.lru_cache do?"


@dataclass
class LLMBenchConfig:
    """One run's budget. Every row trains ``steps`` LoRA optimizer steps on the same ``batch_size × seq_len``
    batches."""

    steps: int = 100
    batch_size: int = 4
    seq_len: int = 128
    lr: float = 5e-4  # LoRA learning rate (every row)
    lora_r: int = 8
    seed: int = 0
    sparsities: tuple[float, ...] = (0.3, 0.5)
    methods: tuple[str, ...] = ("l0", "gradual", "gradual+kd", "ste", "polarization", "compresso", "atp", "pat")
    baselines: tuple[str, ...] = ("llm-pruner", "flap", "wanda-sp")
    calib_batches: int = 4  # importance / activation statistics (LLM-Pruner used 10 × 128 tokens); ATP's generator
    eval_windows: int = 32  # per test set, seq_len tokens each
    dense_frac: float = 0.1  # ours: dense LoRA warm-up
    warmup_frac: float = 0.4  # ours: linear target warm-up (of all steps)
    freeze_frac: float = 0.75  # ours: masks frozen from here on (LoRA keeps training)
    gate_lr: float = 0.5  # short runs need fast gates (examples/llm_prune.py); Sheared-LLaMA uses 1.0
    lagrangian_lr: float = 1.0
    skip_first: int = 3  # LLM-Pruner keeps the first and last layers whole (paper: layers 4-30 of 32)
    skip_last: int = 2
    prefill_batch: int = 4
    decode_tokens: int = 32
    latency_repeats: int = 5
    sample_tokens: int = 40
    hidden_size: int = 576  # set from the model's config by run()
    dense: bool = True  # train the dense LoRA row (the ratio columns need it; --no-dense skips it)


@dataclass
class Data:
    train: list[torch.Tensor]  # the batches, in order
    calib: list[torch.Tensor]  # disjoint from train
    domain: torch.Tensor  # (n, seq) held-out domain windows
    general: torch.Tensor  # (n, seq) general windows
    prompt_ids: torch.Tensor  # (1, p) the sample / decode prompt
    decode: Callable[[list[int]], str] = lambda ids: " ".join(map(str, ids))
    eos_id: int | None = None
    compresso_prompt: list[int] | None = None  # the collaborative prompt's token ids
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Row:
    kind: str  # dense | ours | baseline
    name: str
    target: float
    domain_ppl: float = float("nan")
    general_ppl: float = float("nan")
    params: int = 0
    removed: float = float("nan")  # exact fraction of prunable parameters removed
    train_s: float = float("nan")
    step_s: float = float("nan")  # median step CPU time (ours: pruning phase; others: all steps)
    prefill_ms: float = float("nan")
    decode_tps: float = float("nan")
    sample: str = ""
    error: str = ""
    model: nn.Module | None = field(default=None, repr=False)

    def record(self, dense: Row) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "model"}
        out["params_ratio"] = self.params / dense.params if dense.params else float("nan")
        out["step_ratio"] = self.step_s / dense.step_s
        out["prefill_speedup"] = dense.prefill_ms / self.prefill_ms
        out["decode_speedup"] = self.decode_tps / dense.decode_tps
        return out


# -- training -----------------------------------------------------------------------------------------------------
def with_lora(model: nn.Module, cfg: LLMBenchConfig) -> nn.Module:
    return lora(model, cfg.lora_r)


def _batch(ids: torch.Tensor, prompt: list[int] | None) -> dict[str, torch.Tensor]:
    batch = {"input_ids": ids, "labels": ids}
    return lp.CollaborativePrompt(prompt).apply(batch) if prompt else batch


def train_plain(model: nn.Module, data: Data, cfg: LLMBenchConfig) -> list[float]:
    """LoRA on every batch of ``data.train``; returns the step times."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    model.train()
    times = []
    for ids in data.train:
        start = STEP_CLOCK()
        model(**_batch(ids, None)).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(STEP_CLOCK() - start)
    return times


def _phase(step: int, cfg: LLMBenchConfig, dense_frac: float | None = None, freeze_frac: float | None = None) -> str:
    dense_frac = cfg.dense_frac if dense_frac is None else dense_frac
    freeze_frac = cfg.freeze_frac if freeze_frac is None else freeze_frac
    if step < int(dense_frac * cfg.steps):
        return "dense"
    return "prune" if step < max(int(freeze_frac * cfg.steps), 1) else "frozen"


def train_gated(
    model: nn.Module,
    config: lp.PruningConfig,
    data: Data,
    cfg: LLMBenchConfig,
    prompt: list[int] | None = None,
    dense_frac: float | None = None,
    freeze_frac: float | None = None,
    calibrate: bool = False,
) -> tuple[nn.Module, list[float]]:
    """Our methods through the plain-PyTorch API: dense → prune → frozen (the benchmark's phases, or this row's
    ``dense_frac`` / ``freeze_frac``); returns (export, pruning-phase step times). ``calibrate``: the importance
    scores first accumulate over the calibration batches LLM-Pruner's selection uses (forward and backward on the
    pretrained model, no optimizer step), then over the dense phase's training batches."""
    pruner = lp.attach(model, config)
    opt = torch.optim.AdamW(pruner.param_groups(lr=cfg.lr))
    model.train()
    if calibrate:
        pruner.set_phase("dense")
        for ids in data.calib:
            model(**_batch(ids, prompt)).loss.backward()
        opt.zero_grad(set_to_none=True)
    times = []
    for step, ids in enumerate(data.train):
        phase = _phase(step, cfg, dense_frac, freeze_frac)
        if phase != pruner.phase:
            pruner.set_phase(phase)
        start = STEP_CLOCK()
        loss = model(**_batch(ids, prompt)).loss + pruner.penalty()
        loss.backward()
        opt.step()
        pruner.step()
        opt.zero_grad(set_to_none=True)
        if phase == "prune":
            times.append(STEP_CLOCK() - start)
    return pruner.export(), times


def train_with_callback(
    model: nn.Module, config: lp.PruningConfig, data: Data, cfg: LLMBenchConfig
) -> tuple[nn.Module, list[float]]:
    """What a Lightning user runs: their unchanged LightningModule (LoRA model, AdamW at the benchmark's lr) with
    ``PruningCallback(config)`` and no phase arguments (``schedule="auto"`` picks the method's schedule for a peft
    model), on the same batches in the same order; returns (export, step times of the pruning phase)."""
    import lightning as L

    class LoRAModule(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = model.train()

        def training_step(self, batch, batch_idx):
            return self.model(**_batch(batch, None)).loss

        def configure_optimizers(self):
            return torch.optim.AdamW([p for p in self.parameters() if p.requires_grad], lr=cfg.lr)

    times: list[float] = []
    callback = lp.PruningCallback(config, plot=False, log_stats=False, prog_bar=False, seed=cfg.seed)

    class StepClock(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            self.start = STEP_CLOCK()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if callback.phase == "prune":
                times.append(STEP_CLOCK() - self.start)

    trainer = quiet_trainer(len(data.train), [callback, StepClock()])
    trainer.fit(LoRAModule(), torch.utils.data.DataLoader(data.train, batch_size=None, shuffle=False))
    return callback.pruner.export(), times


def train_atp(model: nn.Module, config: lp.PruningConfig, data: Data, cfg: LLMBenchConfig) -> tuple[nn.Module, list]:
    """ATP's alternation: a generator step on a calibration batch, then a LoRA step on the training batch."""
    pruner = lp.attach(model, config)
    atp = lp.ATPController(pruner)
    lora_opt, gen_opt = atp.optimizers(lr=cfg.lr)
    model.train()
    times = []
    for step, ids in enumerate(data.train):
        start = STEP_CLOCK()
        held = data.calib[step % len(data.calib)]
        control = atp.generator_step({"input_ids": held, "labels": held}, gen_opt) is not None
        atp.lora_step({"input_ids": ids, "labels": ids}, lora_opt)
        if control:
            times.append(STEP_CLOCK() - start)
    atp.zero_pruned_lora_()  # a short frozen phase: make slicing the merge exact
    return pruner.export(), times


def _shared(sparsity: float, cfg: LLMBenchConfig) -> dict[str, Any]:
    return dict(
        target_sparsity=sparsity,
        structures=("heads", "ffn"),
        warmup_steps=max(1, int(cfg.warmup_frac * cfg.steps)),
        flops_seq_len=cfg.seq_len,
    )


def _l0(s, cfg):
    return lp.L0Config(
        **_shared(s, cfg), uniform=True, init_log_alpha=2.0, gate_lr=cfg.gate_lr, lagrangian_lr=cfg.lagrangian_lr
    )


def _l0_importance(uniform: bool):
    """Issue #18 study: gates set from the Fisher ranks at the end of the dense warm-up (the first masks are the
    one-shot Taylor selection LLM-Pruner makes), then learned; ``uniform=False`` lets the layers' widths differ."""

    def config(s, cfg):
        return lp.L0Config(
            **_shared(s, cfg),
            uniform=uniform,
            init_from_importance=True,
            gate_lr=cfg.gate_lr,
            lagrangian_lr=cfg.lagrangian_lr,
        )

    return config


def _gradual(uniform: bool, warmup_frac: float | None = None, **fields: Any):
    """:class:`~lightning_prune.GradualConfig`: the exact-target selection by learned (Fisher-initialised) score in
    every training forward; ``warmup_frac`` overrides the benchmark's target warm-up (0: one-shot at the first
    prune step, then the scores keep learning); ``fields``: other config fields (e.g. ``distill_weight``)."""

    def config(s, cfg):
        shared = _shared(s, cfg)
        if warmup_frac is not None:
            shared["warmup_steps"] = int(warmup_frac * cfg.steps)
        return lp.GradualConfig(**shared, uniform=uniform, **fields)

    return config


def _ste(s, cfg):
    return lp.STEConfig(**_shared(s, cfg), uniform=True, lagrangian_lr=cfg.lagrangian_lr)


def _polarization(s, cfg):
    return lp.PolarizationConfig(**_shared(s, cfg), uniform=True, decision="target")


def _compresso(s, cfg):
    return lp.CompressoConfig(**_shared(s, cfg), uniform=True, gate_lr=cfg.gate_lr, lagrangian_lr=cfg.lagrangian_lr)


def _atp(s, cfg):
    shared = _shared(s, cfg)
    del shared["warmup_steps"]
    return lp.ATPConfig(**shared, uniform=True, control_steps=max(1, int(cfg.freeze_frac * cfg.steps)), gate_lr=1e-2)


def _pat(s, cfg):
    """PAT prunes hidden dims only; every prunable projection has one hidden side, so removing a fraction ``s`` of the
    hidden size removes ``s`` of the prunable parameters."""
    return lp.PATConfig(target_hidden_size=round((1 - s) * cfg.hidden_size), total_steps=cfg.steps, hsm_rank=16)


def train_pat(model: nn.Module, config: lp.PruningConfig, data: Data, cfg: LLMBenchConfig):
    """PAT refuses tied embeddings (its embedding HSM folds into the embedding only); untie them as its error
    message says. The untied LM head is a second ``vocab × hidden`` matrix: the row's parameter count includes it."""
    base = model.get_base_model()
    if getattr(base.config, "tie_word_embeddings", False):
        base.lm_head.weight = nn.Parameter(base.lm_head.weight.detach().clone(), requires_grad=False)
        base.config.tie_word_embeddings = False
    return train_gated(model, config, data, cfg)


#: name -> (config at a sparsity, trainer). The trainer returns (compact model, step times to report).
METHODS: dict[str, tuple[Callable, Callable]] = {
    "l0": (_l0, train_gated),
    # GradualConfig as a user gets it on a LoRA model (``schedule="auto"``: phases.GRADUAL_ADAPTER_SCHEDULE, dense 10%,
    # the whole target at the first pruning step, frozen from 12%; widths free across layers); +kd: with
    # self-distillation from the pretrained model (``distill_weight=0.5``). Session 9 measured them as +f12 rows.
    "gradual": (_gradual(uniform=False, warmup_frac=0.0), functools.partial(train_gated, freeze_frac=0.12)),
    "gradual+kd": (
        _gradual(uniform=False, warmup_frac=0.0, distill_weight=0.5),
        functools.partial(train_gated, freeze_frac=0.12),
    ),
    # the rows `gradual` / `gradual+kd` of sessions 7-8: the scores learn (and the mask changes) until 75%
    "gradual+f75": (_gradual(uniform=False, warmup_frac=0.0), train_gated),
    "gradual+kd+f75": (_gradual(uniform=False, warmup_frac=0.0, distill_weight=0.5), train_gated),
    # the same as a Lightning user writes it: GradualConfig(target, structures) in PruningCallback, no phase argument
    "gradual+callback": (
        lambda s, cfg: lp.GradualConfig(target_sparsity=s, structures=("heads", "ffn"), flops_seq_len=cfg.seq_len),
        train_with_callback,
    ),
    # issue #18 study (session 7): +u: the same widths in every layer (a standard config); +wN: the target reached
    # over N% of the steps (default: the benchmark's 40%); +os: cut at 30%, frozen right after
    "gradual+u+w40": (_gradual(uniform=True), train_gated),
    "gradual+u": (_gradual(uniform=True, warmup_frac=0.0), train_gated),
    "gradual+w40": (_gradual(uniform=False), train_gated),
    "gradual+w10": (_gradual(uniform=False, warmup_frac=0.1), train_gated),
    "gradual+w10+kd": (_gradual(uniform=False, warmup_frac=0.1, distill_weight=0.5), train_gated),
    # session 8: +ps: the teacher is the model at the start of the prune phase (the LoRA of the dense phase;
    # distill_teacher="prune_start") instead of the pretrained one; +d30: dense for 30% of the steps
    "gradual+kd+ps": (
        _gradual(uniform=False, warmup_frac=0.0, distill_weight=0.5, distill_teacher="prune_start"),
        train_gated,
    ),
    "gradual+kd+ps+d30": (
        _gradual(uniform=False, warmup_frac=0.0, distill_weight=0.5, distill_teacher="prune_start"),
        functools.partial(train_gated, dense_frac=0.3),
    ),
    # session 9 (frozen from 75%, as +f75): +cal: the Fisher also from LLM-Pruner's calibration batches (fixed across
    # seeds); +d0: from them only
    "gradual+kd+cal": (
        _gradual(uniform=False, warmup_frac=0.0, distill_weight=0.5),
        functools.partial(train_gated, calibrate=True),
    ),
    "gradual+kd+cal+d0": (
        _gradual(uniform=False, warmup_frac=0.0, distill_weight=0.5),
        functools.partial(train_gated, calibrate=True, dense_frac=0.0),
    ),
    "gradual+kd1": (_gradual(uniform=False, warmup_frac=0.0, distill_weight=1.0), train_gated),  # twice the weight
    "gradual+d30": (_gradual(uniform=False, warmup_frac=0.0), functools.partial(train_gated, dense_frac=0.3)),
    "gradual+os": (
        _gradual(uniform=False, warmup_frac=0.0),
        functools.partial(train_gated, dense_frac=0.3, freeze_frac=0.32),
    ),
    "l0+imp+u": (_l0_importance(uniform=True), train_gated),
    "l0+imp": (_l0_importance(uniform=False), train_gated),
    "ste": (_ste, train_gated),
    "polarization": (_polarization, train_gated),
    "compresso": (_compresso, lambda m, c, d, cfg: train_gated(m, c, d, cfg, prompt=d.compresso_prompt)),
    "atp": (_atp, train_atp),
    "pat": (_pat, train_pat),
}


def prune_baseline(model: nn.Module, name: str, sparsity: float, data: Data, cfg: LLMBenchConfig) -> nn.Module:
    """One-shot structured removal on the pretrained model (before LoRA), see :mod:`llm_baselines`."""
    shape = bl.Shape.of(model.config)
    if name == "llm-pruner":
        heads, channels = bl.taylor_scores(model, data.calib)
        plan = bl.uniform_plan(shape, sparsity, cfg.skip_first, cfg.skip_last)
        return bl.slice_llama_(model, bl.keep_lowest_removed(heads, channels, plan))
    stats = bl.activation_stats(model, data.calib)
    if name == "flap":
        heads, channels = bl.flap_scores(model, stats)
        return bl.slice_llama_(model, bl.global_plan(shape, heads, channels, sparsity), stats=stats)
    if name == "wanda-sp":
        heads, channels = bl.wanda_sp_scores(model, stats)
        plan = bl.uniform_plan(shape, sparsity)
        return bl.slice_llama_(model, bl.keep_lowest_removed(heads, channels, plan))
    raise ValueError(f"unknown baseline {name!r}; known: llm-pruner, flap, wanda-sp")


# -- measurements -------------------------------------------------------------------------------------------------
@torch.no_grad()
def perplexity(model: nn.Module, windows: torch.Tensor, prompt: list[int] | None = None, batch: int = 8) -> float:
    model.eval()
    losses = [model(**_batch(b, prompt)).loss * len(b) for b in windows.split(batch)]
    return float(torch.exp(torch.stack(losses).sum() / len(windows)))


@torch.no_grad()
def generate(model: nn.Module, prompt_ids: torch.Tensor, new: int, eos: int | None, fixed: bool = False):
    model.eval()
    kwargs = dict(max_new_tokens=new, do_sample=False, use_cache=True, pad_token_id=eos)
    if fixed:  # exactly `new` tokens: no early stop at EOS, for timing
        kwargs.update(min_new_tokens=new)
    return model.generate(input_ids=prompt_ids, attention_mask=torch.ones_like(prompt_ids), **kwargs)


def measure_speed(rows: list[Row], data: Data, cfg: LLMBenchConfig) -> None:
    """Prefill latency (``prefill_batch × seq_len``) and decode tokens/s of every row's model, round-robin."""
    live = [r for r in rows if r.model is not None]
    ids = data.domain[: cfg.prefill_batch]

    def prefill(model):
        def call():
            with torch.inference_mode():
                model(input_ids=ids, use_cache=False)

        return call

    def decode(model):
        return lambda: generate(model, data.prompt_ids, cfg.decode_tokens, data.eos_id, fixed=True)

    fns = {("p", i): prefill(r.model) for i, r in enumerate(live)}
    fns.update({("d", i): decode(r.model) for i, r in enumerate(live)})
    times = interleaved_median(fns, repeats=cfg.latency_repeats, warmup=1)
    for i, r in enumerate(live):
        r.prefill_ms = times[("p", i)] * 1e3
        r.decode_tps = cfg.decode_tokens / times[("d", i)]


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# -- the run ------------------------------------------------------------------------------------------------------
def jobs(cfg: LLMBenchConfig) -> list[tuple[str, str, float]]:
    out = [("dense", "dense LoRA", 0.0)] if cfg.dense else []
    for s in cfg.sparsities:
        out += [("ours", m, s) for m in cfg.methods]
        out += [("baseline", b, s) for b in cfg.baselines]
    return out


def run_row(
    kind: str,
    name: str,
    sparsity: float,
    model_fn: Callable[[], nn.Module],
    data: Data,
    cfg: LLMBenchConfig,
    dense_prunable: int,
) -> Row:
    row = Row(kind, name, sparsity)
    start = time.perf_counter()
    prompt = None
    try:
        torch.manual_seed(cfg.seed)  # the same LoRA init in every row
        model = model_fn()
        if kind == "ours":
            config_fn, trainer = METHODS[name]
            prompt = data.compresso_prompt if name == "compresso" else None
            compact, times = trainer(with_lora(model, cfg), config_fn(sparsity, cfg), data, cfg)
        else:
            if kind == "baseline":
                model = prune_baseline(model, name, sparsity, data, cfg)
            peft_model = with_lora(model, cfg)
            times = train_plain(peft_model, data, cfg)
            compact = peft_model.merge_and_unload()
        row.train_s = time.perf_counter() - start
        row.step_s = statistics.median(times) if times else float("nan")
        compact.eval()
        row.params = _params(compact)
        row.removed = bl.removed_fraction(compact, dense_prunable)
        row.domain_ppl = perplexity(compact, data.domain, prompt)
        row.general_ppl = perplexity(compact, data.general, prompt)
        out = generate(compact, data.prompt_ids, cfg.sample_tokens, data.eos_id)
        row.sample = data.decode(out[0, data.prompt_ids.shape[1] :].tolist())
        row.model = compact
    except Exception:  # noqa: BLE001 - a failing method is a finding: a table row with its traceback
        row.error = traceback.format_exc()
        row.train_s = time.perf_counter() - start
    return row


def run(model_fn: Callable[[], nn.Module], data: Data, cfg: LLMBenchConfig, log=None) -> list[Row]:
    """Every row trained one after the other (the same batches), then timed side by side."""
    log = log or functools.partial(print, flush=True)  # progress shows even when stdout is a file
    reference = model_fn()
    dense_prunable = bl.prunable_params(reference)
    cfg.hidden_size = reference.config.hidden_size
    del reference
    rows = []
    for kind, name, sparsity in jobs(cfg):
        row = run_row(kind, name, sparsity, model_fn, data, cfg, dense_prunable)
        rows.append(row)
        gc.collect()  # the trained peft model and its optimizer state go; only the compact model stays
        if row.error:
            log(f"  {name} @{sparsity:.0%}: FAILED after {row.train_s:.0f}s: {row.error.strip().splitlines()[-1]}")
        else:
            log(
                f"  {name:<12} @{sparsity:.0%}: domain ppl {row.domain_ppl:.2f}, general {row.general_ppl:.2f}, "
                f"{row.params:,} params (removed {row.removed:.3f} of prunable), step {row.step_s:.2f}s, "
                f"{row.train_s:.0f}s"
            )
    measure_speed(rows, data, cfg)
    if not cfg.dense:  # a placeholder first row: the ratio columns read NaN
        rows.insert(0, Row("dense", "dense LoRA", 0.0, error="not run (--no-dense)"))
    return rows


# -- reporting ----------------------------------------------------------------------------------------------------
def table(rows: list[Row]) -> str:
    dense = rows[0]
    lines = [
        "| row | target | removed | domain ppl | general ppl | parameters | params ratio | prefill (ms) | prefill "
        "speed-up | decode tok/s | decode speed-up | step CPU (s) | step vs LoRA |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        label = row.name if row.kind != "ours" else f"{row.name} (ours)"
        if row.error:
            why = row.error.strip().splitlines()[-1][:140].replace("|", "/")
            lines.append(f"| {label} | {row.target:.0%} | failed: {why} |" + " |" * 10)
            continue
        r = row.record(dense)
        lines.append(
            f"| {label} | {row.target:.0%} | {row.removed:.3f} | {row.domain_ppl:.2f} | {row.general_ppl:.2f} | "
            f"{row.params:,} | {r['params_ratio']:.2f}× | {row.prefill_ms:.0f} | {r['prefill_speedup']:.2f}× | "
            f"{row.decode_tps:.1f} | {r['decode_speedup']:.2f}× | {row.step_s:.2f} | {r['step_ratio']:.2f}× |"
        )
    return "\n".join(lines)


def samples(rows: list[Row], prompt: str) -> str:
    lines = [f"Greedy samples, prompt {prompt!r}:", ""]
    for row in rows:
        if not row.error:
            text = " ".join(row.sample.split())
            lines.append(f"- **{row.name} @{row.target:.0%}**: {text!r}")
    return "\n".join(lines)


def plot(rows: list[Row], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    dense = rows[0]
    ok = [r for r in rows[1:] if not r.error]
    for ax, key, label in (
        (axes[0], "domain_ppl", "domain (held-out stdlib docs)"),
        (axes[1], "general_ppl", "general (license texts)"),
    ):
        if not dense.error:
            ax.axhline(
                getattr(dense, key), color="gray", linestyle="--", label=f"dense LoRA ({dense.params / 1e6:.0f}M)"
            )
        for name in dict.fromkeys(r.name for r in ok):
            sel = sorted((r for r in ok if r.name == name), key=lambda r: r.params)
            kind = sel[0].kind
            ax.plot(
                [r.params / 1e6 for r in sel],
                [getattr(r, key) for r in sel],
                marker="o" if kind == "ours" else "s",
                linestyle="-" if kind == "ours" else "--",
                label=f"{name} ({kind})",
            )
        ax.set_xlabel("parameters (millions)")
        ax.set_ylabel("perplexity")
        ax.set_yscale("log")
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -- the real model and data -------------------------------------------------------------------------------------
def smollm2_data(cfg: LLMBenchConfig, tokenizer) -> Data:
    import llm_data

    train_docs, test_docs = llm_data.split(llm_data.domain_documents())
    general_docs, general_source = llm_data.general_documents()
    n_train = cfg.steps * cfg.batch_size + cfg.calib_batches * cfg.batch_size
    windows = llm_data.token_windows(train_docs, tokenizer, cfg.seq_len, n_train)
    train = llm_data.training_batches(windows[: cfg.steps * cfg.batch_size], cfg.batch_size, cfg.steps, cfg.seed)
    calib = list(windows[cfg.steps * cfg.batch_size :].split(cfg.batch_size))
    domain = llm_data.token_windows(test_docs, tokenizer, cfg.seq_len, cfg.eval_windows, stride=10**6)
    general = llm_data.token_windows(general_docs, tokenizer, cfg.seq_len, cfg.eval_windows, stride=10**6)
    chat = [{"role": "user", "content": SAMPLE_PROMPT}]
    prompt_ids = tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)[
        "input_ids"
    ]
    collaborative = lp.CollaborativePrompt.from_tokenizer(tokenizer).token_ids
    info = dict(
        domain_train_docs=len(train_docs),
        domain_test_docs=len(test_docs),
        domain_test_names=[d.name for d in test_docs],
        general_docs=[d.name for d in general_docs],
        general_source=general_source,
        train_tokens=cfg.steps * cfg.batch_size * cfg.seq_len,
    )
    return Data(
        train,
        calib,
        domain,
        general,
        prompt_ids,
        decode=lambda ids: tokenizer.decode(ids, skip_special_tokens=True),
        eos_id=tokenizer.eos_token_id,
        compresso_prompt=collaborative,
        info=info,
    )


def main(argv: list[str] | None = None) -> list[Row]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="50%% only, l0, gradual(+kd), the baselines, 50 steps")
    parser.add_argument("--output", type=Path, default=Path("outputs/llm_quality"))
    parser.add_argument("--steps", type=int, help="optimizer steps per row (overrides the mode's)")
    parser.add_argument("--sparsities", type=float, nargs="+", help="fractions of prunable parameters removed")
    parser.add_argument("--methods", nargs="*", choices=sorted(METHODS), help="our rows (default: the mode's)")
    parser.add_argument("--baselines", nargs="*", choices=("llm-pruner", "flap", "wanda-sp"))
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0, help="LoRA initialisation and training batch order")
    parser.add_argument("--no-dense", action="store_true", help="skip the dense LoRA row (its figures do not change)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import logging
    import warnings

    import transformers

    from lightning_prune.pretrained import smollm2_path

    logging.getLogger("lightning_prune").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")
    if args.quick:
        cfg = LLMBenchConfig(steps=50, sparsities=(0.5,), methods=("l0", "gradual", "gradual+kd"), eval_windows=24)
    else:
        cfg = LLMBenchConfig()
    if args.steps is not None:
        cfg.steps = args.steps
    if args.sparsities is not None:
        cfg.sparsities = tuple(args.sparsities)
    if args.methods is not None:
        cfg.methods = tuple(args.methods)
    if args.baselines is not None:
        cfg.baselines = tuple(args.baselines)
    cfg.seed = args.seed
    cfg.dense = not args.no_dense
    path = smollm2_path()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    t0 = time.perf_counter()
    data = smollm2_data(cfg, tokenizer)

    def model_fn():
        return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)

    print(
        f"SmolLM2-135M-Instruct, LoRA r={cfg.lora_r}: {cfg.steps} steps of {cfg.batch_size}x{cfg.seq_len} per row "
        f"({data.info['train_tokens']:,} tokens from {data.info['domain_train_docs']} stdlib modules); test: "
        f"{len(data.domain)} windows from {data.info['domain_test_docs']} held-out modules, {len(data.general)} "
        f"from {len(data.info['general_docs'])} license texts; seed {cfg.seed}; {args.threads} threads"
    )
    rows = run(model_fn, data, cfg)
    wall = time.perf_counter() - t0
    args.output.mkdir(parents=True, exist_ok=True)
    dense = rows[0]
    record = {
        "config": asdict(cfg),
        "data": data.info,
        "wall_s": wall,
        "threads": args.threads,
        "rows": [r.record(dense) for r in rows],
    }
    (args.output / "llm_quality.json").write_text(json.dumps(record, indent=2))
    md = table(rows) + "\n\n" + samples(rows, SAMPLE_PROMPT)
    (args.output / "llm_quality.md").write_text(md + "\n")
    plot(rows, args.output / "llm_quality.png", f"SmolLM2-135M, Python stdlib docs, {cfg.steps} LoRA steps per row")
    print(md)
    for row in rows:
        if row.error:
            print(f"\n{row.name} @{row.target:.0%} failed:\n{row.error}")
    print(f"results: {args.output}/llm_quality.{{json,md,png}}; wall {wall / 60:.1f} min")
    return rows


if __name__ == "__main__":
    main()
