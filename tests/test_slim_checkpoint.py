"""slim-checkpoint: inference keys only; --fp16 halves the weights and keeps a tensor that several state-dict names
share (dynamic-network-architectures' decoder holds the encoder) stored once."""

from __future__ import annotations

import pytest
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet

from nnunetv2_mamba.cli import main
from nnunetv2_mamba.commands.slim_checkpoint import KEPT, half_weights


@pytest.fixture
def checkpoint(tmp_path):
    network = PlainConvUNet(1, 3, [8, 16, 32], torch.nn.Conv2d, 3, [1, 2, 2], 2, 3, [2, 2], True,
                            torch.nn.InstanceNorm2d)
    state = network.state_dict()
    assert any(k.startswith("decoder.encoder.") for k in state)  # the encoder's tensors under two names each
    path = tmp_path / "checkpoint_final.pth"
    torch.save({"network_weights": state, "trainer_name": "nnUNetTrainer", "init_args": {},
                "inference_allowed_mirroring_axes": (0, 1), "current_epoch": 2,
                "optimizer_state": {"momentum": [torch.ones(10000)]}, "logging": {}}, path)
    return path


def test_fp16_is_half_the_slim_file_and_keeps_shared_tensors_shared(checkpoint, tmp_path):
    main(["slim-checkpoint", str(checkpoint), "-o", str(tmp_path / "slim.pth")])
    main(["slim-checkpoint", str(checkpoint), "--fp16", "-o", str(tmp_path / "fp16.pth")])
    slim, fp16 = (torch.load(tmp_path / f"{name}.pth", weights_only=False) for name in ("slim", "fp16"))
    assert set(slim) == set(fp16) == set(KEPT)
    ratio = (tmp_path / "fp16.pth").stat().st_size / (tmp_path / "slim.pth").stat().st_size
    assert 0.45 < ratio < 0.6, ratio
    weights = fp16["network_weights"]
    encoder = weights["encoder.stages.0.0.convs.0.conv.weight"]
    assert encoder.dtype == torch.float16
    assert encoder.untyped_storage().data_ptr() == weights["decoder.encoder.stages.0.0.convs.0.conv.weight"] \
        .untyped_storage().data_ptr()
    for name, value in slim["network_weights"].items():
        assert torch.equal(weights[name], value.half() if value.is_floating_point() else value), name


def test_half_weights_converts_each_shared_tensor_once_and_leaves_integers():
    shared, counter = torch.randn(4, 3), torch.tensor(7)
    halved = half_weights({"a": shared, "b": shared, "view": shared[1:], "n": counter})
    assert halved["a"] is halved["b"] and halved["a"].dtype == torch.float16
    assert torch.equal(halved["view"], shared[1:].half()) and halved["n"] is counter
