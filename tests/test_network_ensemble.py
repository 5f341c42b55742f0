"""NetworkEnsemble: the log of the mean softmax of its members, one member on request, deep supervision switched
for all."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers.tiny_net import TinyNet

from nnunetv2_mamba.nets.network_ensemble import NetworkEnsemble, ensemble_log_probabilities


def test_ensemble_output_is_the_log_of_the_mean_softmax():
    ensemble = NetworkEnsemble({"cnn": TinyNet(), "vit": TinyNet(), "mamba": TinyNet()}).eval()
    x = torch.randn(2, 1, 8, 8)
    logits = [m(x)[0].double() for m in ensemble.members.values()]
    mean_probabilities = torch.stack([F.softmax(y, 1) for y in logits]).mean(0)
    output = ensemble(x)
    assert torch.allclose(output.double(), mean_probabilities.log(), atol=1e-6)
    assert torch.allclose(output.softmax(1).double(), mean_probabilities, atol=1e-6)
    assert torch.allclose(ensemble_log_probabilities(logits).double(), mean_probabilities.log(), atol=1e-6)
    ensemble.inference_output = "vit"
    assert torch.equal(ensemble(x), ensemble.members["vit"](x)[0])
    assert isinstance(ensemble.train()(x), dict) and set(ensemble(x)) == {"cnn", "vit", "mamba"}
    with pytest.raises(ValueError, match="not one of"):
        ensemble.inference_output = "unet"


def test_ensemble_switches_deep_supervision_of_every_member():
    ensemble = NetworkEnsemble({"a": TinyNet(), "b": TinyNet()})
    ensemble.deep_supervision = False
    assert not any(m.deep_supervision for m in ensemble.members.values()) and not ensemble.deep_supervision
    assert all(isinstance(y, torch.Tensor) for y in ensemble(torch.randn(1, 1, 4, 4)).values())
