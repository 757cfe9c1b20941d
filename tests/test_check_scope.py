"""Issue #14, class 1: the export check covers what the user will run.

Three tables:

1. head class × structure × shape: every head class a family's adapter accepts exports (the compact model
   computes what the gated model computes, on the check's inputs and on fresh ones), saves, and loads back with
   ``load_compact`` and with plain transformers (``AutoModelFor*``; ``trust_remote_code=True`` for per-layer
   shapes);
2. the head classes transformers 5 offers that an adapter does not export are refused at attach, naming the class
   and the supported ones;
3. peft tuner types: supported ones merge exactly (the compact model computes what the **peft wrapper** computes),
   the others are refused at attach with the reason and what to do.
"""

from __future__ import annotations

import pytest
import torch
import transformers
from conftest import randomize_gates, tiny_causal_lm, tiny_config, tiny_phi3
from test_bert_adapter import tiny_encoder
from test_gpt2_adapter import tiny_gpt2

import lightning_prune as lp
from lightning_prune.export.report import count_parameters

PREFIX = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2", "qwen3": "Qwen3"}
LLAMA_KINDS = ("Model", "ForCausalLM", "ForSequenceClassification", "ForTokenClassification", "ForQuestionAnswering")
AUTO = {
    "Model": "AutoModel",
    "ForCausalLM": "AutoModelForCausalLM",
    "LMHeadModel": "AutoModelForCausalLM",
    "ForSequenceClassification": "AutoModelForSequenceClassification",
    "ForTokenClassification": "AutoModelForTokenClassification",
    "ForQuestionAnswering": "AutoModelForQuestionAnswering",
}
STRUCTURES = {"heads": ("heads",), "ffn": ("ffn",), "hidden": ("hidden",), "blocks": ("attn_block", "mlp_block")}


def _llama_family(family: str, kind: str) -> torch.nn.Module:
    torch.manual_seed(0)
    config = tiny_config(family, num_labels=3, pad_token_id=0)
    return getattr(transformers, f"{PREFIX[family]}{kind}")(config).float().eval()


def _build(cls_name: str) -> torch.nn.Module:
    if cls_name.startswith("Phi3"):
        return tiny_phi3(cls_name, num_labels=3)
    for family, prefix in PREFIX.items():
        if cls_name.startswith(prefix) and cls_name[len(prefix) :] in LLAMA_KINDS:
            return _llama_family(family, cls_name[len(prefix) :])
    if cls_name.startswith("GPT2"):
        return tiny_gpt2(cls_name)
    if cls_name.endswith("LMHeadModel"):  # BertLMHeadModel: no `add_pooling_layer`
        return transformers.BertLMHeadModel(tiny_encoder("BertModel").config)
    return tiny_encoder(cls_name)


# -- 1. every head class an adapter accepts exports -------------------------------------------------------------
HEAD_ROWS = [(f"Llama{kind}", s, shape) for kind in LLAMA_KINDS for s in STRUCTURES for shape in ("uniform", "layer")]
HEAD_ROWS += [
    (f"{PREFIX[f]}{kind}", "heads+ffn+hidden", shape)
    for f in ("mistral", "qwen2", "qwen3")
    for kind in LLAMA_KINDS
    for shape in ("uniform", "layer")
]
PHI3_KINDS = ("Model", "ForCausalLM", "ForSequenceClassification", "ForTokenClassification")  # no QA head
HEAD_ROWS += [(f"Phi3{kind}", s, shape) for kind in PHI3_KINDS for s in STRUCTURES for shape in ("uniform", "layer")]
HEAD_ROWS += [
    (cls, "heads+ffn+hidden", shape)
    for cls in (
        "GPT2Model",
        "GPT2LMHeadModel",
        "GPT2ForSequenceClassification",
        "BertModel",
        "BertForSequenceClassification",
        "RobertaModel",
        "RobertaForSequenceClassification",
    )
    for shape in ("uniform", "layer")
]


def _structures(name: str) -> tuple[str, ...]:
    return STRUCTURES.get(name) or tuple(name.split("+"))


def _kind(cls_name: str) -> str:
    return next(k for k in sorted(AUTO, key=len, reverse=True) if cls_name.endswith(k))


def _run(adapter, model: torch.nn.Module, seed: int) -> torch.Tensor:
    inputs = adapter.example_inputs(2, 7, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return adapter.outputs(model.eval(), inputs)


def set_gates(pruner: lp.Pruner, per_layer: bool) -> None:
    """Deterministic masks that prune something in every row and keep something: row ``r`` prunes ``max(1, u // 4)``
    units (``(r + 1)`` times that with ``per_layer``, so that layers differ), chosen at a seeded random."""
    pruner.config.match_target = False
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for gate in pruner.gates.values():
            scores = gate.log_alpha
            rows, units = scores.shape
            scores.fill_(20.0)  # P(kept) = 1: no phantom units in the learned counts
            for r in range(rows):
                pruned = min(units - 1, max(1, units // 4) * ((r + 1) if per_layer else 1))
                scores[r, torch.randperm(units, generator=gen)[:pruned]] = -20.0


@pytest.mark.parametrize("cls_name,structures,shape", HEAD_ROWS, ids=["-".join(r) for r in HEAD_ROWS])
def test_every_accepted_head_class_exports(tmp_path, cls_name, structures, shape):
    model = _build(cls_name)
    config = lp.L0Config(structures=_structures(structures), target_sparsity=0.1, uniform=shape == "uniform")
    pruner = lp.attach(model, config)
    set_gates(pruner, per_layer=shape == "layer")
    compact = pruner.export()
    report = pruner.last_report
    assert report.max_abs_diff <= pruner.config.export_rtol * report.reference_scale
    assert count_parameters(compact) == report.params_after < report.params_before
    pruner.phase = "frozen"  # the deterministic masks the export folded
    gated, small = _run(pruner.adapter, model, seed=5), _run(pruner.adapter, compact, seed=5)
    assert torch.allclose(gated, small, atol=1e-5 * float(gated.abs().max()))
    assert type(compact).__name__ == (cls_name if report.uniform else f"Pruned{cls_name}")
    if shape == "layer" and structures != "hidden":  # layers keep different counts: no standard config holds them
        assert not report.uniform

    path = pruner.save_compact(tmp_path / "compact", compact=compact)
    reloaded = lp.load_compact(path)
    assert type(reloaded) is type(compact)
    assert torch.equal(_run(pruner.adapter, reloaded, seed=5), small)
    auto = getattr(transformers, AUTO[_kind(cls_name)])
    plain = auto.from_pretrained(path, trust_remote_code=not report.uniform)
    assert torch.equal(_run(pruner.adapter, plain, seed=5), small)


def test_per_layer_sequence_classification_loads_without_a_prompt(tmp_path, monkeypatch):
    """The per-layer classes whose parent builds the backbone with ``AutoModel.from_config`` must not ask whether to
    run the directory's custom code (it prompted on stdin, then failed)."""
    monkeypatch.setattr("builtins.input", lambda *a: pytest.fail(f"prompted: {a}"))
    model = _llama_family("qwen2", "ForSequenceClassification")
    pruner = lp.attach(model, lp.L0Config(structures=("heads", "ffn"), target_sparsity=0.1, uniform=False))
    set_gates(pruner, per_layer=True)
    compact = pruner.export()
    assert type(compact).__name__ == "PrunedQwen2ForSequenceClassification"
    reloaded = lp.load_compact(pruner.save_compact(tmp_path / "c", compact=compact))
    assert type(reloaded.model).__name__ == "PrunedQwen2Model"


# -- 2. every other head class is refused at attach -----------------------------------------------------------------
GPT2_SUPPORTED = "GPT2LMHeadModel, GPT2ForSequenceClassification, GPT2Model"
REFUSED = [
    ("GPT2DoubleHeadsModel", rf"supports {GPT2_SUPPORTED}, not GPT2DoubleHeadsModel"),
    ("GPT2ForTokenClassification", rf"supports {GPT2_SUPPORTED}, not GPT2ForTokenClassification"),
    ("GPT2ForQuestionAnswering", rf"supports {GPT2_SUPPORTED}, not GPT2ForQuestionAnswering"),
]
REFUSED += [
    (cls, rf"The BERT adapter supports \*Model and \*ForSequenceClassification, not {cls}\.")
    for cls in (
        "BertForMaskedLM",
        "BertForTokenClassification",
        "BertForQuestionAnswering",
        "BertForMultipleChoice",
        "BertForPreTraining",
        "BertForNextSentencePrediction",
        "BertLMHeadModel",
        "RobertaForCausalLM",
        "RobertaForMaskedLM",
        "RobertaForTokenClassification",
        "RobertaForQuestionAnswering",
        "RobertaForMultipleChoice",
    )
]


@pytest.mark.parametrize("cls_name,message", REFUSED, ids=[r[0] for r in REFUSED])
def test_other_head_classes_are_refused_at_attach(cls_name, message):
    model = _build(cls_name)
    with pytest.raises(lp.UnsupportedModelError, match=message):
        lp.attach(model, lp.L0Config(structures=("heads",), target_sparsity=0.1))
    assert not hasattr(model, "pruning_gates")


def test_unknown_class_with_a_llama_config_is_refused_at_attach():
    class Wrapper(torch.nn.Module):  # a custom head around a Llama backbone: the export could not rebuild it
        def __init__(self):
            super().__init__()
            self.model = transformers.LlamaModel(tiny_config("llama"))
            self.config = self.model.config
            self.head = torch.nn.Linear(64, 2)

    supported = ", ".join(f"Llama{kind}" for kind in ("ForCausalLM", "ForSequenceClassification"))
    with pytest.raises(
        lp.UnsupportedModelError,
        match=rf"The llama adapter supports {supported}, LlamaForTokenClassification, LlamaForQuestionAnswering, "
        r"LlamaModel \(model_type='llama'\), not Wrapper\.",
    ):
        lp.attach(Wrapper(), lp.L0Config(structures=("heads",), target_sparsity=0.1))


# -- 3. peft tuner types ------------------------------------------------------------------------------------------
ATTN = ["q_proj", "k_proj", "v_proj", "o_proj"]
ALL = [*ATTN, "gate_proj", "up_proj", "down_proj"]


def _tuner_config(name: str):
    import peft

    return {
        "lora": lambda: peft.LoraConfig(r=4, target_modules=ALL),
        "lora_rslora": lambda: peft.LoraConfig(r=4, target_modules=ALL, use_rslora=True),
        "lora_dora": lambda: peft.LoraConfig(r=4, target_modules=ALL, use_dora=True),
        "lora_bias": lambda: peft.LoraConfig(r=4, target_modules=["q_proj", "k_proj", "v_proj"], lora_bias=True),
        "adalora": lambda: peft.AdaLoraConfig(r=4, target_modules=ALL, total_step=10),
        "ia3": lambda: peft.IA3Config(
            target_modules=["k_proj", "v_proj", "down_proj"], feedforward_modules=["down_proj"]
        ),
        "loha": lambda: peft.LoHaConfig(r=4, target_modules=ALL),
        "lokr": lambda: peft.LoKrConfig(r=4, target_modules=ALL),
        "vera": lambda: peft.VeraConfig(r=4, target_modules=["q_proj", "v_proj"]),
        "oft": lambda: peft.OFTConfig(r=0, oft_block_size=8, target_modules=["q_proj", "v_proj"]),
        "prefix_tuning": lambda: peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4),
        "prompt_tuning": lambda: peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4),
        "p_tuning": lambda: peft.PromptEncoderConfig(
            task_type="CAUSAL_LM", num_virtual_tokens=4, encoder_hidden_size=16
        ),
        "hra": lambda: peft.HRAConfig(r=2, target_modules=["q_proj"]),
        "ln_tuning": lambda: peft.LNTuningConfig(target_modules=["input_layernorm"]),
        "lora_bias_no_base_bias": lambda: peft.LoraConfig(r=4, target_modules=ATTN, lora_bias=True),
    }[name]()


def _peft_model(tuner: str, family: str = "llama", disable: bool = False):
    import peft

    model = peft.get_peft_model(tiny_causal_lm(family), _tuner_config(tuner))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # every trainable tuner tensor moves off its init, so the tuner changes the function
        for _, p in model.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    if disable:
        model.base_model.disable_adapter_layers()
    return model


# (tuner, family, adapters disabled): qwen2 has q/k/v biases, which lora_bias trains
SUPPORTED_TUNERS = [
    ("lora", "llama", False),
    ("lora_rslora", "llama", False),
    ("lora_dora", "llama", False),
    ("lora_bias", "qwen2", False),
    ("adalora", "llama", False),
    ("ia3", "llama", False),
    ("loha", "llama", False),
    ("lokr", "llama", False),
    ("vera", "llama", False),
    ("oft", "llama", False),
    ("lora", "llama", True),  # disabled adapters: the forward (and so the export) is the base model
]


@pytest.mark.parametrize(
    "tuner,family,disable", SUPPORTED_TUNERS, ids=[f"{t}-{f}{'-disabled' if d else ''}" for t, f, d in SUPPORTED_TUNERS]
)
def test_supported_tuners_merge_exactly(tmp_path, tuner, family, disable):
    wrapper = _peft_model(tuner, family, disable)
    pruner = lp.attach(wrapper, lp.L0Config(structures=("heads", "ffn"), target_sparsity=0.1))
    randomize_gates(pruner, seed=4)
    compact = pruner.export()
    report = pruner.last_report
    assert report.max_abs_diff <= pruner.config.export_rtol * report.reference_scale
    assert report.generation_max_abs_diff is not None  # the cached-generation check ran through the wrapper
    assert count_parameters(compact) == report.params_after
    assert not any(
        "lora" in n or "ia3" in n or "hada" in n or "lokr" in n or "oft" in n for n, _ in compact.named_parameters()
    )
    pruner.phase = "frozen"
    ids = torch.randint(0, 128, (2, 9), generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        user, small = wrapper.eval()(input_ids=ids).logits, compact(input_ids=ids).logits
    assert torch.allclose(user, small, atol=1e-5 * float(user.abs().max()))
    reloaded = lp.load_compact(pruner.save_compact(tmp_path / "c", compact=compact))
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=ids).logits, small)


REFUSED_TUNERS = [
    (
        t,
        rf"peft {t.upper()} \(adapter 'default'\) changes the PeftModel's forward \(virtual tokens or extra past key "
        rf"values in front of every input\), not the weights: a compact model cannot carry it, and an export would "
        rf"silently drop it\. Prune with a weight tuner \(LoRA, IA3, \.\.\.\) or none, export, then apply "
        rf"{t.upper()} to the compact model\.",
    )
    for t in ("prefix_tuning", "prompt_tuning", "p_tuning")
]
REFUSED_TUNERS += [
    (
        t,
        rf"peft tuner '{t}' \(`base_model\.model\.model\.layers\.0\.[a-z_.]+`: peft\.tuners\.{t}\.layer\.\w+\) is not "
        r"supported by the export: its merge into the compact model is not verified\. Supported tuners: \['lora', "
        r"'adalora', 'ia3', 'loha', 'lokr', 'vera', 'oft'\]\. Prune with LoRA",
    )
    for t in ("hra", "ln_tuning")
]
REFUSED_TUNERS += [
    (
        "lora_bias_no_base_bias",
        r"LoRA adapter 'default' has lora_bias=True on `base_model\.model\.model\.layers\.0\.self_attn\.q_proj`, whose "
        r"base layer has no bias: the bias it learns has no place in the compact model \(peft cannot merge it "
        r"either\)\. Use lora_bias=False, or target only layers with a bias\.",
    ),
]


@pytest.mark.parametrize("tuner,message", REFUSED_TUNERS, ids=[r[0] for r in REFUSED_TUNERS])
def test_other_tuners_are_refused_at_attach(tuner, message):
    wrapper = _peft_model(tuner)
    with pytest.raises(lp.UnsupportedModelError, match=message):
        lp.attach(wrapper, lp.L0Config(structures=("heads",), target_sparsity=0.1))
    assert not hasattr(wrapper, "pruning_gates")


def test_the_check_runs_the_peft_wrapper(monkeypatch):
    """A wrapper whose forward differs from its base model's fails the check (it used to compare the base only)."""
    wrapper = _peft_model("lora")
    pruner = lp.attach(wrapper, lp.L0Config(structures=("heads",), target_sparsity=0.1))
    randomize_gates(pruner, seed=4)
    forward = wrapper.forward

    def shifted(*args, **kwargs):
        out = forward(*args, **kwargs)
        out.logits = out.logits + 1.0
        return out

    monkeypatch.setattr(wrapper, "forward", shifted)
    with pytest.raises(lp.ExportMismatchError, match=r"does not compute what the gated model computed on the same"):
        pruner.export()


def test_the_check_gives_every_module_its_own_mode_back():
    """A peft wrapper in training mode around a model in eval mode: the check runs both in eval and then restores
    each module's own mode (``wrapper.train(True)`` would have switched the model's dropout on)."""
    wrapper = _peft_model("lora")
    wrapper.train()
    wrapper.get_base_model().eval()
    modes = {name: m.training for name, m in wrapper.named_modules() if "pruning_gates" not in name}
    pruner = lp.attach(wrapper, lp.L0Config(structures=("heads",), target_sparsity=0.1))
    randomize_gates(pruner, seed=4)
    pruner.export()
    assert {name: m.training for name, m in wrapper.named_modules() if "pruning_gates" not in name} == modes
