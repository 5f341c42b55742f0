"""nnUNetTrainerWeakMamba: foreground counts, the three networks built from plans, its method options and schedule
variants, label checks at train start, the final validation of each network, and DDP on a 2-process gloo group
(CPU)."""

from __future__ import annotations

import math
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from helpers.scribble_nnunet import load_plans, make_trainer, scribble_batch
from helpers.tiny_net import TinyNet
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunetv2_mamba.data.scribble_dataset import ScribbleDatasetError
from nnunetv2_mamba.nets.network_ensemble import NetworkEnsemble
from nnunetv2_mamba.training.dense_validation import DenseValidationMixin
from nnunetv2_mamba.training.loss.cross_supervision_loss import CrossSupervisionLoss, resize_labels
from nnunetv2_mamba.training.nnUNetTrainerWeakMamba import (MEMBER_ENVIRONMENT_VARIABLE, foreground_counts,
                                                            nnUNetTrainerWeakMamba)
from nnunetv2_mamba.training.nnUNetTrainerWeakMambaPaper import nnUNetTrainerWeakMambaPaper
from nnunetv2_mamba.training.variants.scribble import nnUNetTrainerScribbleBaseline_smoke, nnUNetTrainerWeakMamba_smoke


def test_foreground_counts_skip_background_and_ignored_pixels():
    logits = torch.zeros(1, 3, 1, 4)
    logits[0, [0, 1, 2, 1], 0, [0, 1, 2, 3]] = 5  # predicts 0, 1, 2, 1
    tp, fp, fn = foreground_counts(logits, torch.tensor([[[[0, 2, 2, IGNORE]]]]), IGNORE)
    assert list(tp) == [0, 1] and list(fp) == [1, 0] and list(fn) == [0, 1]


IGNORE = 3  # three classes 0, 1, 2 in the crafted examples


def test_network_from_plans_holds_the_three_networks_and_the_member_choice(nnunet_paths, monkeypatch):
    plans, dataset_json = load_plans(nnunet_paths)
    manager = PlansManager(plans)
    build = nnUNetTrainerWeakMamba_smoke.build_network_architecture
    network = build(manager, manager.get_configuration("2d"), 1, 4, True)
    assert list(network.members) == ["cnn", "vit", "mamba"] and network.inference_output == "ensemble"
    assert [type(m).__name__ for m in network.members.values()] == ["PlainConvUNet", "SwinUNet", "MambaUNet"]
    outputs = network(torch.randn(2, 1, 64, 64))
    assert [tuple(o.shape[2:]) for o in outputs["vit"]] == [(64, 64), (16, 16), (8, 8)]
    monkeypatch.setenv(MEMBER_ENVIRONMENT_VARIABLE, "mamba")
    assert build(manager, manager.get_configuration("2d"), 1, 4, False).inference_output == "mamba"
    monkeypatch.setenv(MEMBER_ENVIRONMENT_VARIABLE, "unet")
    with pytest.raises(ValueError, match=MEMBER_ENVIRONMENT_VARIABLE):
        build(manager, manager.get_configuration("2d"), 1, 4, False)


def test_three_dimensional_trio_trains_a_step():
    """Our 3D extension: the plans' CNN, SegMamba and UMambaBot2 from a small 3D configuration."""
    strides = [[1, 1, 1], [2, 2, 2], [2, 2, 2]]
    configuration = {"patch_size": [16, 16, 16], "architecture": {
        "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": {"n_stages": 3, "features_per_stage": [8, 16, 32], "conv_op": "torch.nn.modules.conv.Conv3d",
                        "kernel_sizes": [[3, 3, 3]] * 3, "strides": strides, "n_conv_per_stage": [1, 1, 1],
                        "n_conv_per_stage_decoder": [1, 1], "conv_bias": True,
                        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                        "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None,
                        "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}},
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}}
    manager = PlansManager({"plans_name": "tiny3d", "configurations": {"3d_fullres": configuration}})
    network = nnUNetTrainerWeakMamba_smoke.build_network_architecture(
        manager, manager.get_configuration("3d_fullres"), 1, 3, True)
    assert [type(m).__name__ for m in network.members.values()] == ["PlainConvUNet", "SegMamba", "UMambaBot2"]
    scribbles = torch.randint(0, IGNORE + 1, (1, 1, 16, 16, 16))
    losses = CrossSupervisionLoss(IGNORE)(network(torch.randn(1, 1, 16, 16, 16)),
                                          [scribbles, resize_labels(scribbles, (8, 8, 8))])
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    assert all(p.grad is not None for p in network.parameters() if p.requires_grad)


def test_scribble_trainers_refuse_dense_datasets(nnunet_paths):
    plans, dataset_json = load_plans(nnunet_paths)
    dense = {**dataset_json, "labels": {k: v for k, v in dataset_json["labels"].items() if k != "ignore"}}
    for cls in (nnUNetTrainerWeakMamba_smoke, nnUNetTrainerScribbleBaseline_smoke):
        with pytest.raises(ScribbleDatasetError, match="ignore"):
            cls(plans, "2d", 0, dense, torch.device("cpu"))


METHOD_OPTIONS = ("members", "pce_weight", "pseudo_label_weight", "pseudo_label_rampup", "pseudo_label_components",
                  "pseudo_label_loss", "pseudo_label_margin", "pseudo_label_keeps_scribbles", "member_optimizers")


def test_the_default_is_the_measured_recipe_and_the_paper_variant_the_papers():
    default = {k: getattr(nnUNetTrainerWeakMamba, k) for k in METHOD_OPTIONS}
    paper = {k: getattr(nnUNetTrainerWeakMambaPaper, k) for k in METHOD_OPTIONS}
    changed = {k: (default[k], paper[k]) for k in METHOD_OPTIONS if default[k] != paper[k]}
    assert changed == {"pseudo_label_rampup": (0.5, 0.0), "pseudo_label_components": ("scribbled", None),
                       "pseudo_label_loss": ("dice_ce", "dice"), "pseudo_label_margin": (1, 0),
                       "member_optimizers": ({"vit": ("adamw", 1e-3), "mamba": ("adamw", 1e-3)}, {})}
    assert paper["pce_weight"] == paper["pseudo_label_weight"] == 1.0


def test_schedule_variants_set_no_method_option():
    from nnunetv2_mamba.training.variants import scribble as scribble_schedules

    variants = [v for v in vars(scribble_schedules).values()
                if isinstance(v, type) and issubclass(v, nnUNetTrainerWeakMamba) and "_" in v.__name__]
    assert {v.__name__.rsplit("_", 1)[1] for v in variants} == {"smoke", "demo", "cpu", "paper"}
    assert len(variants) == 8  # four schedules of both configurations
    for variant in variants:
        configuration = nnUNetTrainerWeakMambaPaper if issubclass(variant, nnUNetTrainerWeakMambaPaper) \
            else nnUNetTrainerWeakMamba
        assert variant.__name__.startswith(configuration.__name__ + "_")
        assert [k for k in METHOD_OPTIONS if any(k in vars(c) for c in variant.__mro__[:variant.__mro__.index(
            configuration)])] == [], variant.__name__


def test_label_values_outside_the_classes_stop_training_at_its_start_naming_the_case(nnunet_paths):
    trainer = make_trainer(nnUNetTrainerScribbleBaseline_smoke, nnunet_paths)
    trainer.check_scribble_values()  # the synthetic scribbles are valid
    tr_keys, _ = trainer.do_split()
    stock = trainer.dataset_class or type(trainer.get_tr_and_val_datasets()[0])

    class WithAStrayValue(stock):
        def load_case(self, identifier):
            data, seg, previous, properties = super().load_case(identifier)
            if identifier == tr_keys[1]:
                seg = np.array(seg[:])
                seg[0, 0, 0] = 7
            return data, seg, previous, properties

    trainer.dataset_class = WithAStrayValue
    with pytest.raises(ValueError, match=rf"1 training case\(s\) .* 0..3 and the ignore label 4 .*: {tr_keys[1]} \[7\]"
                       r".*check-scribbles"):
        trainer.check_scribble_values()


def test_final_validation_predicts_with_each_network_then_the_ensemble(nnunet_paths, monkeypatch):
    """The orchestration, with nnU-Net's prediction replaced by a record of what the network would output."""
    trainer = make_trainer(nnUNetTrainerWeakMamba_smoke, nnunet_paths)
    trainer.validate_networks_separately = True
    trainer.network = NetworkEnsemble({name: TinyNet() for name in ("cnn", "vit", "mamba")}, "vit")

    def validate(self, save_probabilities=False):
        output = self.network.inference_output
        folder = Path(self.output_folder) / "validation"
        folder.mkdir()
        (folder / "output.txt").write_text(f"{output} {save_probabilities}")
        return {"foreground_mean": {"Dice": len(output)}}

    monkeypatch.setattr(DenseValidationMixin, "perform_actual_validation", validate)
    assert trainer.perform_actual_validation(True) == {"foreground_mean": {"Dice": len("ensemble")}}
    fold = Path(trainer.output_folder)
    for name in ("cnn", "vit", "mamba"):  # --npz: every network's probabilities, for ensemble-weights
        assert (fold / f"validation_{name}" / "output.txt").read_text() == f"{name} True"
    assert (fold / "validation" / "output.txt").read_text() == "ensemble True"
    assert trainer.network.inference_output == "vit"  # the choice from the environment is restored


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world_size: int, port: int, env: dict[str, str], result_file: str) -> None:
    import os

    import torch.distributed as dist

    os.environ.update({k: env[k] for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")})
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        trainer = make_trainer(nnUNetTrainerWeakMamba_smoke, env)  # the default configuration
        trainer.initialize()
        assert trainer.is_ddp and trainer.device.type == "cpu" and trainer.batch_size == 1
        assert isinstance(trainer.network, torch.nn.parallel.DistributedDataParallel)
        assert set(trainer.optimizer.optimizers) == {"cnn", "vit", "mamba"}  # one optimizer per network
        initial = torch.cat([p.detach().flatten() for p in trainer.network.parameters()])
        trainer.on_train_epoch_start()  # sets the ramped-up pseudo-label weight and logs each network's rate
        for step in range(2):  # a second step would fail if DDP missed a parameter in the first
            trainer.train_step(scribble_batch(trainer, seed=10 * step + rank, batch_size=1))  # data differ per rank
        final = torch.cat([p.detach().flatten() for p in trainer.network.parameters()])
        gathered = [torch.zeros_like(final) for _ in range(world_size)]
        dist.all_gather(gathered, final)

        # online validation: each rank counts its own batch, the logged Dice of every network sums both ranks'
        outputs = [trainer.validation_step(scribble_batch(trainer, seed=100 + rank, batch_size=1))]
        trainer.on_validation_epoch_end(outputs)
        local = {k: np.sum([o[k] for o in outputs], 0) for k in outputs[0] if k.startswith(("tp_", "fp_", "fn_"))}
        counts = [None] * world_size
        dist.all_gather_object(counts, local)
        logged = {name: trainer.logger.get_value(f"mean_fg_dice_{name}", step=0) for name in trainer.member_names}
        logged["ensemble"] = trainer.logger.get_value("mean_fg_dice", step=0)
        expected = {}
        for name in [*trainer.member_names, "ensemble"]:
            suffix = "" if name == "ensemble" else f"_{name}"
            tp, fp, fn = (sum(c[f"{kind}_hard{suffix}"] for c in counts) for kind in ("tp", "fp", "fn"))
            expected[name] = float(np.nanmean([2 * t / (2 * t + f + n) if 2 * t + f + n else np.nan
                                               for t, f, n in zip(tp, fp, fn)]))
        everyone = [None] * world_size
        dist.all_gather_object(everyone, logged)

        trainer.save_checkpoint(f"{result_file}.rank{rank}.pth")  # only rank 0 writes
        metrics = trainer.perform_actual_validation()  # each rank predicts its share of the val cases
        if rank == 0:
            validation = Path(trainer.output_folder) / "validation"
            torch.save({"identical": all(torch.equal(gathered[0], g) for g in gathered[1:]),
                        "changed": not torch.equal(initial, final),
                        "online Dice summed over ranks": all(
                            math.isclose(logged[k], expected[k], abs_tol=1e-6) for k in expected),
                        "online Dice the same on every rank": all(e == logged for e in everyone),
                        "validated cases": sorted(p.name for p in validation.glob("*.nii.gz")),
                        "val keys": sorted(f"{k}.nii.gz" for k in trainer.do_split()[1]),
                        "dense metrics": metrics is not None and "foreground_mean" in metrics}, result_file)
        else:
            assert metrics is None
    finally:
        dist.destroy_process_group()


def test_ddp_trains_validates_and_evaluates_the_default_configuration_on_a_gloo_group(nnunet_paths, tmp_path,
                                                                                      monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")  # for the two workers: no spinning threads on a shared CPU
    result = tmp_path / "result.pt"
    mp.spawn(_ddp_worker, args=(2, _free_port(), nnunet_paths, str(result)), nprocs=2, join=True)
    outcome = torch.load(result)
    assert outcome.pop("validated cases") == outcome.pop("val keys")  # both ranks' shares, nothing twice
    assert outcome == {"identical": True, "changed": True, "online Dice summed over ranks": True,
                       "online Dice the same on every rank": True, "dense metrics": True}
    assert (tmp_path / "result.pt.rank0.pth").is_file() and not (tmp_path / "result.pt.rank1.pth").exists()
