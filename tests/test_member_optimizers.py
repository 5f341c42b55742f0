"""One optimizer per network of nnUNetTrainerWeakMamba: its own poly schedule, gradient scaling, refusals, and a
checkpoint round trip that resumes bit-exactly."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from helpers.scribble_nnunet import make_trainer, scribble_batch

from nnunetv2_mamba.training.member_optimizers import nnunet_optimizer
from nnunetv2_mamba.training.variants.scribble import nnUNetTrainerWeakMamba_smoke, nnUNetTrainerWeakMambaPaper_smoke


class WeakMambaAdamW(nnUNetTrainerWeakMamba_smoke):
    """The token networks with nnU-Net's AdamW, the CNN with its SGD."""

    member_optimizers = {"vit": ("adamw", 1e-3), "mamba": ("adamw", 2e-3)}


def optimizer_tensors(state: object) -> list[torch.Tensor]:
    """Every tensor of a (nested) optimizer state dict, in a fixed order."""
    if isinstance(state, torch.Tensor):
        return [state]
    if isinstance(state, dict):
        return [t for key in sorted(state, key=str) for t in optimizer_tensors(state[key])]
    if isinstance(state, (list, tuple)):
        return [t for item in state for t in optimizer_tensors(item)]
    return []


@pytest.mark.parametrize("trainer_class", [nnUNetTrainerWeakMambaPaper_smoke, WeakMambaAdamW])
def test_checkpoint_round_trip_resumes_exactly(nnunet_paths, tmp_path, trainer_class):
    trainer = make_trainer(trainer_class, nnunet_paths)
    trainer.initialize()
    trainer.lr_scheduler.step(1)
    assert trainer.optimizer.param_groups[0]["lr"] < trainer.initial_lr
    torch.manual_seed(1)
    trainer.train_step(scribble_batch(trainer, seed=1))
    path = tmp_path / "checkpoint.pth"
    trainer.save_checkpoint(str(path))
    assert {k.split(".")[1] for k in torch.load(path, weights_only=False)["network_weights"]} == \
        {"cnn", "vit", "mamba"}

    resumed = make_trainer(trainer_class, nnunet_paths)
    resumed.load_checkpoint(str(path))
    for (name, a), b in zip(trainer.network.state_dict().items(), resumed.network.state_dict().values()):
        assert torch.equal(a, b), name
    saved, loaded = (optimizer_tensors(t.optimizer.state_dict()) for t in (trainer, resumed))
    assert len(saved) >= len(list(trainer.network.parameters()))  # a momentum or moment per parameter at least
    assert len(saved) == len(loaded) and all(torch.equal(a, b) for a, b in zip(saved, loaded))
    batch = scribble_batch(trainer, seed=2)
    for t in (trainer, resumed):
        torch.manual_seed(2)
        t.train_step(batch)
    assert all(torch.equal(a, b) for a, b in zip(trainer.network.parameters(), resumed.network.parameters()))


def test_member_optimizers_give_each_network_its_own_optimizer_and_poly_schedule(nnunet_paths):
    trainer = make_trainer(WeakMambaAdamW, nnunet_paths)
    trainer.initialize()
    optimizers = trainer.optimizer.optimizers
    assert {name: type(o).__name__ for name, o in optimizers.items()} == {"cnn": "SGD", "vit": "AdamW",
                                                                          "mamba": "AdamW"}
    assert optimizers["cnn"].defaults["momentum"] == 0.99 and optimizers["vit"].defaults["amsgrad"]
    for name, member in trainer.network.members.items():
        held = [p for group in optimizers[name].param_groups for p in group["params"]]
        assert [id(p) for p in held] == [id(p) for p in member.parameters()], name
    trainer.lr_scheduler.step(1)  # nnU-Net's poly schedule: initial * (1 - epoch / epochs) ** 0.9, over 2 epochs
    assert [optimizers[n].param_groups[0]["lr"] for n in ("cnn", "vit", "mamba")] == \
        pytest.approx([r * 0.5 ** 0.9 for r in (trainer.initial_lr, 1e-3, 2e-3)])
    before = {name: [p.detach().clone() for p in m.parameters()] for name, m in trainer.network.members.items()}
    trainer.train_step(scribble_batch(trainer, seed=3))
    for name, member in trainer.network.members.items():
        assert any(not torch.equal(a, b) for a, b in zip(before[name], member.parameters())), name
    assert set(optimizers["vit"].state[next(trainer.network.members["vit"].parameters())]) >= \
        {"exp_avg", "exp_avg_sq", "max_exp_avg_sq"}


def test_gradient_scaling_unscales_and_steps_every_optimizer_of_the_group(nnunet_paths):
    """The AMP path (nnU-Net's on CUDA), here with a CPU GradScaler: the same step as without scaling."""
    scaled, plain = (make_trainer(WeakMambaAdamW, nnunet_paths) for _ in range(2))
    for t in (scaled, plain):
        t.initialize()
    plain.network.load_state_dict(scaled.network.state_dict())
    scaled.grad_scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    batch = scribble_batch(scaled, seed=4)
    for t in (scaled, plain):
        torch.manual_seed(4)
        t.train_step(batch)
    for (name, a), b in zip(scaled.network.named_parameters(), plain.network.parameters()):
        assert torch.allclose(a, b, atol=1e-6), name
    assert all(scaled.optimizer.optimizers[name].state for name in ("cnn", "vit", "mamba"))


def test_member_optimizers_refuse_unknown_networks_optimizers_and_checkpoints(nnunet_paths, tmp_path):
    class Unknown(nnUNetTrainerWeakMamba_smoke):
        member_optimizers = {"transformer": ("adamw", 1e-3)}

    with pytest.raises(ValueError, match="'transformer'.*not among its networks"):
        make_trainer(Unknown, nnunet_paths).initialize()
    with pytest.raises(ValueError, match="'adam'"):
        nnunet_optimizer("adam", [nn.Parameter(torch.zeros(1))], 1e-3, 0.0)
    single = make_trainer(nnUNetTrainerWeakMambaPaper_smoke, nnunet_paths)
    single.initialize()
    single.save_checkpoint(str(tmp_path / "sgd.pth"))
    with pytest.raises(ValueError, match="one optimizer for all networks.*cannot resume"):
        make_trainer(WeakMambaAdamW, nnunet_paths).load_checkpoint(str(tmp_path / "sgd.pth"))
