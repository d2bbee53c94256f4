"""Registering into a real Dassl install, simulated with a stand-in ``dassl`` package."""
import sys
import types

import pytest
from yacs.config import CfgNode

from vmfcoop.engine.dassl_bridge import extend_dassl_cfg, register_into_dassl
from vmfcoop.engine.registry import Registry


@pytest.fixture
def fake_dassl(monkeypatch):
    trainers, datasets = Registry("TRAINER"), Registry("DATASET")
    modules = {
        "dassl": types.ModuleType("dassl"),
        "dassl.engine": types.ModuleType("dassl.engine"),
        "dassl.data": types.ModuleType("dassl.data"),
        "dassl.data.datasets": types.ModuleType("dassl.data.datasets"),
    }
    modules["dassl.engine"].TRAINER_REGISTRY = trainers
    modules["dassl.data.datasets"].DATASET_REGISTRY = datasets
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    return trainers, datasets


def test_without_dassl_nothing_happens(monkeypatch):
    monkeypatch.setitem(sys.modules, "dassl", None)  # makes the import fail
    assert register_into_dassl() is None


def test_registers_every_trainer_and_dataset_once(fake_dassl):
    trainers, datasets = fake_dassl

    class CoOp:  # Dassl's own entry with a clashing name wins and is kept
        pass

    trainers.register(CoOp)
    added = register_into_dassl()
    assert "VMFCoOp" in trainers.registered_names() and "BTMRI" in datasets.registered_names()
    assert trainers.get("CoOp") is CoOp and "CoOp" not in added
    assert register_into_dassl() == []  # idempotent


def test_dassl_config_gains_the_project_keys_without_losing_its_own():
    cfg = CfgNode({"OPTIM": CfgNode({"LR": 0.5, "MAX_EPOCH": 3}), "TRAINER": CfgNode({"NAME": "X"})})
    extend_dassl_cfg(cfg)
    assert cfg.OPTIM.LR == 0.5 and cfg.TRAINER.NAME == "X"
    assert cfg.TRAINER.VMFCOOP.LAMBDA_ANC == 2.0 and cfg.MODEL.BACKBONE.NAME == "BiomedCLIP" and "CACHE" in cfg
