"""Issue #15 (uniform API): every registered method's config survives ``to_dict`` → JSON → ``from_dict``, on its own
class and through ``PruningConfig.from_dict`` (which dispatches on ``"method"``); mismatches are refused clearly."""

from __future__ import annotations

import json

import pytest

import lightning_prune as lp
from lightning_prune.methods.base import PruningConfig, method_config_class

NON_DEFAULT = {
    "l0": dict(target_sparsity=0.4, structures=("heads", "ffn"), gate_lr=0.3, keep_units={"heads": 1}),
    "l0-architecture": dict(structures=("heads", "ffn"), target_architecture={"heads": 2, "ffn": 8}),
    "ste": dict(target_sparsity=0.6, structures=("ffn",), warmup_steps=7),
    "gradual": dict(target_sparsity=0.45, structures=("heads", "ffn"), warmup_steps=9, gate_lr=0.05, init_score=0.4),
    "polarization": dict(target_sparsity=0.3, decision="target"),
    "atp": dict(target_sparsity=0.5),
    "compresso": dict(target_sparsity=0.5),
    "pat": dict(target_hidden_size=48),
}


def _configs():
    for key in lp.methods.available_methods():
        cls = method_config_class(key)
        if key != "pat":
            yield f"{key}-default", cls()
        yield key, cls(**NON_DEFAULT[key])
    yield "l0-architecture", lp.L0Config(**NON_DEFAULT["l0-architecture"])


CONFIGS = dict(_configs())


@pytest.mark.parametrize("name", list(CONFIGS))
def test_to_dict_json_from_dict_round_trip(name):
    config = CONFIGS[name]
    values = json.loads(json.dumps(config.to_dict()))
    assert type(config).from_dict(values) == config
    rebuilt = PruningConfig.from_dict(values)
    assert type(rebuilt) is type(config) and rebuilt == config
    assert rebuilt.to_dict() == config.to_dict()


def test_from_dict_refuses_a_mismatch_and_a_missing_method():
    values = lp.STEConfig().to_dict()
    with pytest.raises(lp.PruningConfigError, match=r"describes a 'ste' config \(STEConfig\), not a L0Config"):
        lp.L0Config.from_dict(values)
    values.pop("method")
    with pytest.raises(lp.PruningConfigError, match="no 'method' key"):
        PruningConfig.from_dict(values)
    assert lp.STEConfig.from_dict(values) == lp.STEConfig()
    with pytest.raises(lp.PruningConfigError, match="Unknown pruning method 'nope'"):
        PruningConfig.from_dict({**values, "method": "nope"})
