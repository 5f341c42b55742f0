"""Weak-Mamba-UNet (Wang et al. 2024): a CNN, a transformer and a Mamba U-Net learn from scribbles together, each from
the scribbles (partial cross-entropy) and from a pseudo label mixed from all three (Dice); see
:mod:`nnunetv2_mamba.training.loss.cross_supervision_loss` for the loss.

nnU-Net-native: the three networks are one module (:class:`~nnunetv2_mamba.nets.network_ensemble.NetworkEnsemble`)
built from the plans' configuration, so nnU-Net's optimizers with their poly schedule train all three (one per
network, :mod:`~nnunetv2_mamba.training.member_optimizers`, or the paper's one SGD), checkpoints and ``--c`` hold all
three with the optimizer state, DDP wraps all three, and ``nnUNetv2_predict`` predicts with the ensemble (mean
softmax) or, with ``nnUNet_ensemble_member=<name>``, with one network alone. Validation is against
dense labels where the dataset has them (:class:`~nnunetv2_mamba.training.scribble_trainer.ScribbleTrainerMixin`)
and reports every network and the ensemble.
"""

from __future__ import annotations

import os
import shutil
from copy import deepcopy
from pathlib import Path

import numpy as np
import torch
from nnunetv2.training.loss.dice import get_tp_fp_fn_tn
from nnunetv2.utilities.collate_outputs import collate_outputs
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from nnunetv2.utilities.helpers import dummy_context
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import autocast
from torch import distributed as dist
from torch.nn.parallel import DistributedDataParallel

from nnunetv2_mamba.nets.network_ensemble import ENSEMBLE, NetworkEnsemble, ensemble_log_probabilities, \
    full_resolution
from nnunetv2_mamba.plans.derive import IMPORTED_KWARGS
from nnunetv2_mamba.plans.errors import PlansError
from nnunetv2_mamba.plans.overrides import load_override
from nnunetv2_mamba.plans.translate import TRANSLATIONS
from nnunetv2_mamba.training.loss.cross_supervision_loss import CrossSupervisionLoss, as_list
from nnunetv2_mamba.training.member_optimizers import OptimizerGroup, SchedulerGroup, nnunet_optimizer
from nnunetv2_mamba.training.nnUNetTrainerMamba import nnUNetTrainerMamba, unwrap
from nnunetv2_mamba.training.rampup import sigmoid_rampup
from nnunetv2_mamba.training.scribble_trainer import ScribbleTrainerMixin

MEMBER_ENVIRONMENT_VARIABLE = "nnUNet_ensemble_member"


def member_architecture(configuration_manager: ConfigurationManager, architecture: str | None,
                        arch_kwargs: dict, where: str) -> tuple[str, dict, list[str]]:
    """(class name, arch_kwargs, keys to import) of one member: ``None`` is the configuration's own network, a name
    (``SwinUNet``, ``SegMamba``, ...) is that architecture translated from the configuration as ``nnunetv2_mamba
    plans`` does. ``arch_kwargs`` change the member's options (for a translated one, before the translation)."""
    base = configuration_manager.configuration["architecture"]
    if architecture is None:
        return (base["network_class_name"], {**deepcopy(base["arch_kwargs"]), **deepcopy(arch_kwargs)},
                list(base["_kw_requires_import"]))
    override = load_override(architecture)
    dims = f"{len(configuration_manager.patch_size)}d"
    if dims not in override["configuration_changes"]:
        raise PlansError(f"{where}: {architecture} supports {' and '.join(override['configuration_changes'])} "
                         f"configurations, not {dims}")
    defaults = {**override["architecture"]["arch_kwargs"], **deepcopy(arch_kwargs)}
    kwargs = TRANSLATIONS[architecture](base["arch_kwargs"], defaults, where)
    return override["architecture"]["network_class_name"], kwargs, [k for k in IMPORTED_KWARGS if k in kwargs]


def foreground_counts(logits: torch.Tensor, target: torch.Tensor,
                      ignore_label: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per foreground class: true positives, false positives and false negatives of the argmax of ``logits`` over
    the pixels whose target is not ``ignore_label`` (nnU-Net's online validation counts)."""
    prediction = torch.zeros(logits.shape, device=logits.device, dtype=torch.float16)
    prediction.scatter_(1, logits.argmax(1, keepdim=True), 1)
    mask = None
    if ignore_label is not None:
        mask = (target != ignore_label).float()
        target = torch.where(target == ignore_label, 0, target)
    tp, fp, fn, _ = get_tp_fp_fn_tn(prediction, target, axes=[0, *range(2, logits.ndim)], mask=mask)
    return tuple(x.detach().cpu().numpy()[1:] for x in (tp, fp, fn))


class nnUNetTrainerWeakMamba(ScribbleTrainerMixin, nnUNetTrainerMamba):
    """Weak-Mamba-UNet in nnU-Net (see the module docstring) in the best configuration measured on ACDC's val
    patients; :class:`~nnunetv2_mamba.training.nnUNetTrainerWeakMambaPaper.nnUNetTrainerWeakMambaPaper` is the
    paper's. Options, as class attributes (variants are small subclasses; the paper's value in brackets):

    - ``members``: per dimensionality, the networks by name; ``None`` is the plans' own network (nnU-Net's CNN), other
      values are architectures of ``plans_overrides/``. 2D is the paper's trio; 3D (our extension, not in the paper)
      pairs the CNN with SegMamba and UMambaBot2, the 3D Mamba networks of this package.
    - ``member_arch_kwargs``: per member name, arch_kwargs changed on top of the plans (e.g. smaller token networks).
    - ``pce_weight``, ``pseudo_label_weight``: weights of the two loss terms [1 and 1].
    - ``pseudo_label_rampup``: share of the epochs over which the pseudo-label weight rises along a sigmoid,
      exp(-5 (1 - t)^2) [0: from the start; the anchor's code computes a ramp-up but never applies it]. Untrained
      networks' pseudo labels otherwise pull the CNN down early on.
    - ``pseudo_label_components``: ``"scribbled"`` keeps of every class of the pseudo label only its connected
      components that hold a scribble of that class, ``"largest"`` its largest component per sample [None: whole].
      Scribble-trained networks put foreground far from the structures; the mixed pseudo label would teach it.
    - ``pseudo_label_loss``: ``"dice_ce"``, nnU-Net's Dice plus cross-entropy, or ``"dice"`` ["dice"]: Dice alone
      hardly penalises the small false blobs that the cleaned pseudo label marks as background.
    - ``pseudo_label_margin``: pixels on each side of the pseudo label's class boundaries that it leaves unsupervised
      [0], where the pseudo label is least reliable.
    - ``pseudo_label_keeps_scribbles``: the pseudo label's scribbled pixels take their scribbled class before the
      component rule [False; not kept by us either].
    - ``member_optimizers``: per member name, ``(optimizer, initial learning rate)`` with ``"sgd"`` (nnU-Net's) or
      ``"adamw"`` (nnU-Net's ``nnUNetTrainerAdam``), each with its own poly schedule; members not named keep nnU-Net's
      SGD at ``initial_lr`` [empty: one SGD for all three]. The 2D token networks learn slowly with SGD (Swin and
      VMamba are trained with AdamW); the 3D members, not measured, keep SGD.
    - ``validate_networks_separately``: the final validation also predicts with each network alone
      (``validation_<name>/`` beside nnU-Net's ``validation/``, which holds the ensemble).

    :mod:`~nnunetv2_mamba.training.loss.cross_supervision_loss` implements the pseudo-label options; the measured effect
    of each is in ``documentation/scribble_supervision.md``.
    """

    members: dict[int, dict[str, str | None]] = {
        2: {"cnn": None, "vit": "SwinUNet", "mamba": "MambaUNet"},
        3: {"cnn": None, "segmamba": "SegMamba", "umamba": "UMambaBot2"},
    }
    member_arch_kwargs: dict[str, dict] = {}
    pce_weight = 1.0
    pseudo_label_weight = 1.0
    pseudo_label_rampup = 0.5
    pseudo_label_components: str | None = "scribbled"
    pseudo_label_loss = "dice_ce"
    pseudo_label_margin = 1
    pseudo_label_keeps_scribbles = False
    member_optimizers: dict[str, tuple[str, float]] = {"vit": ("adamw", 1e-3), "mamba": ("adamw", 1e-3)}
    validate_networks_separately = True
    gradient_clip = 12.0  # per network, as nnU-Net clips its one network

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        if self.label_manager.has_regions:
            raise ValueError(f"{type(self).__name__} needs class labels (its pseudo label is an argmax over "
                             f"classes); dataset.json declares regions")
        self.member_names = list(self.members_of(self.configuration_manager))
        if self.is_ddp and device.type == "cpu":
            # nnU-Net moves every DDP run to CUDA; a gloo group on CPU (our tests) stays where it was asked to run
            self.device, self.grad_scaler = device, None
        history = self.logger.local_logger.my_fantastic_logging  # nnU-Net's logger accepts only keys it knows
        for name in self.member_names:
            history.setdefault(f"mean_fg_dice_{name}", [])
            history.setdefault(f"dice_per_class_or_region_{name}", [])

    @classmethod
    def members_of(cls, configuration_manager: ConfigurationManager) -> dict[str, str | None]:
        """The members for the configuration's dimensionality, by name."""
        dims = len(configuration_manager.patch_size)
        if dims not in cls.members:
            raise ValueError(f"{cls.__name__} has no networks for {dims}D configurations (members: "
                             f"{ {d: list(m) for d, m in cls.members.items()} })")
        return cls.members[dims]

    @classmethod
    def build_network_architecture(cls, plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> NetworkEnsemble:
        """The members, each built as nnU-Net builds a network from plans. A class method (nnU-Net declares a static
        one; both its trainer and ``nnUNetv2_predict`` call it the same way) so that variants can change the
        members. The inference output comes from the environment variable ``nnUNet_ensemble_member``
        (``ensemble``, the default, or a member name)."""
        members = {}
        for name, architecture in cls.members_of(configuration_manager).items():
            where = f"member {name!r} of {cls.__name__} (plans {plans_manager.plans_name!r})"
            class_name, kwargs, imports = member_architecture(configuration_manager, architecture,
                                                              cls.member_arch_kwargs.get(name, {}), where)
            members[name] = get_network_from_plans(class_name, kwargs, imports, num_input_channels,
                                                   num_output_channels, allow_init=True,
                                                   deep_supervision=enable_deep_supervision)
        output = os.environ.get(MEMBER_ENVIRONMENT_VARIABLE) or ENSEMBLE
        if output not in (ENSEMBLE, *members):
            raise ValueError(f"{MEMBER_ENVIRONMENT_VARIABLE}={output!r} is not one of {[ENSEMBLE, *members]}")
        return NetworkEnsemble(members, output)

    def initialize(self) -> None:
        """nnU-Net wraps the network as ``DDP(network, device_ids=[rank])``, which only CUDA modules accept; for a
        gloo group on CPU (tests) the network is wrapped without device ids, and batch size and loss are set up for
        DDP as nnU-Net does."""
        if not (self.is_ddp and self.device.type == "cpu"):
            return super().initialize()
        self.is_ddp = False
        try:
            super().initialize()
        finally:
            self.is_ddp = True
        self._set_batch_size_and_oversample()
        self.loss = self._build_loss()
        self.network = DistributedDataParallel(self.network)

    def _build_loss(self) -> CrossSupervisionLoss:
        return CrossSupervisionLoss(self.label_manager.ignore_label, self.pce_weight, self.pseudo_label_weight,
                                    batch_dice=self.configuration_manager.batch_dice, ddp=self.is_ddp,
                                    components=self.pseudo_label_components,
                                    pseudo_label_loss=self.pseudo_label_loss, margin=self.pseudo_label_margin,
                                    keep_scribbles=self.pseudo_label_keeps_scribbles)

    def configure_optimizers(self) -> tuple:
        if not self.member_optimizers:  # the paper's: one SGD for all networks
            return super().configure_optimizers()
        members = unwrap(self.network).members
        known = {name for by_name in self.members.values() for name in by_name}
        unknown = set(self.member_optimizers) - known
        if unknown:
            raise ValueError(f"{type(self).__name__}.member_optimizers names {sorted(unknown)}, which are not among "
                             f"its networks {sorted(known)}")
        settings = {name: self.member_optimizers.get(name, ("sgd", self.initial_lr)) for name in members}
        optimizer = OptimizerGroup({name: nnunet_optimizer(kind, members[name].parameters(), lr, self.weight_decay)
                                    for name, (kind, lr) in settings.items()})
        return optimizer, SchedulerGroup(optimizer, {name: lr for name, (_, lr) in settings.items()}, self.num_epochs)

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        self.loss.pseudo_label_scale = sigmoid_rampup(self.current_epoch, self.pseudo_label_rampup * self.num_epochs)
        if self.pseudo_label_rampup:
            weight = self.pseudo_label_weight * self.loss.pseudo_label_scale
            self.print_to_log_file(f"Pseudo-label weight: {weight:.4f}")
        if isinstance(self.optimizer, OptimizerGroup):  # nnU-Net logged the first network's only
            rates = {name: optimizer.param_groups[0]["lr"] for name, optimizer in self.optimizer.optimizers.items()}
            self.print_to_log_file("Learning rates: " + ", ".join(f"{n} {r:.6f}" for n, r in rates.items()))

    def train_step(self, batch: dict) -> dict:
        data = batch["data"].to(self.device, non_blocking=True)
        target = [t.to(self.device, non_blocking=True) for t in as_list(batch["target"])]
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context():
            losses = self.loss(self.network(data), target)
            total = sum(losses.values())
        if self.grad_scaler is not None:
            self.grad_scaler.scale(total).backward()
            self.grad_scaler.unscale_(self.optimizer)
            self._clip_gradients()
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            total.backward()
            self._clip_gradients()
            self.optimizer.step()
        return {"loss": total.detach().cpu().numpy(),
                **{f"loss_{name}": loss.detach().cpu().numpy() for name, loss in losses.items()}}

    def _clip_gradients(self) -> None:
        for member in unwrap(self.network).members.values():
            torch.nn.utils.clip_grad_norm_(member.parameters(), self.gradient_clip)

    def on_train_epoch_end(self, train_outputs: list[dict]) -> None:
        super().on_train_epoch_end(train_outputs)
        outputs = collate_outputs(train_outputs)
        self.print_to_log_file("train_loss per network (this rank): " + ", ".join(
            f"{name} {np.mean(outputs[f'loss_{name}']):.4f}" for name in self.member_names))

    def validation_step(self, batch: dict) -> dict:
        """Loss and online-validation counts of every network and of the ensemble (the ensemble's under nnU-Net's
        keys, so that checkpoint selection follows the ensemble)."""
        data = batch["data"].to(self.device, non_blocking=True)
        target = [t.to(self.device, non_blocking=True) for t in as_list(batch["target"])]
        members = unwrap(self.network).members
        with autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context():
            outputs = {name: member(data) for name, member in members.items()}
            loss = sum(self.loss(outputs, target).values())
        logits = {name: full_resolution(output) for name, output in outputs.items()}
        logits[ENSEMBLE] = ensemble_log_probabilities(list(logits.values()))
        result = {"loss": loss.detach().cpu().numpy()}
        for name, x in logits.items():
            suffix = "" if name == ENSEMBLE else f"_{name}"
            counts = foreground_counts(x, target[0], self.label_manager.ignore_label)
            result.update({f"{kind}_hard{suffix}": c for kind, c in zip(("tp", "fp", "fn"), counts)})
        return result

    def on_validation_epoch_end(self, val_outputs: list[dict]) -> None:
        super().on_validation_epoch_end(val_outputs)  # the ensemble: nnU-Net's mean_fg_dice, EMA and checkpointing
        outputs = collate_outputs(val_outputs)
        for name in self.member_names:
            tp, fp, fn = (self._sum_over_ranks(np.sum(outputs[f"{kind}_hard_{name}"], 0))
                          for kind in ("tp", "fp", "fn"))
            dice = [2 * t / (2 * t + f + n) if (2 * t + f + n) > 0 else float("nan") for t, f, n in zip(tp, fp, fn)]
            self.logger.log(f"dice_per_class_or_region_{name}", dice, self.current_epoch)
            self.logger.log(f"mean_fg_dice_{name}", float(np.nanmean(dice)), self.current_epoch)

    def _sum_over_ranks(self, array: np.ndarray) -> np.ndarray:
        if not self.is_ddp:
            return array
        gathered = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, array)
        return np.sum(gathered, 0)

    def on_epoch_end(self) -> None:
        epoch = self.current_epoch
        self.print_to_log_file("Validation Dice per network (mean over classes): " + ", ".join(
            f"{name} {self.logger.get_value(f'mean_fg_dice_{name}', step=epoch):.4f}" for name in self.member_names)
            + f", ensemble {self.logger.get_value('mean_fg_dice', step=epoch):.4f}")
        super().on_epoch_end()
        if self.local_rank == 0:
            self.plot_networks_progress()

    def plot_networks_progress(self) -> None:
        """``progress_networks.png`` beside nnU-Net's ``progress.png`` (which shows the ensemble): the online
        validation Dice of every network and of the ensemble per epoch."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        history = self.logger.local_logger.my_fantastic_logging
        epochs = len(history["mean_fg_dice"])
        with plt.style.context("default"):  # nnU-Net's progress plot leaves seaborn's huge fonts behind
            fig, ax = plt.subplots(figsize=(10, 6))
            for name in [*self.member_names, ENSEMBLE]:
                key = "mean_fg_dice" if name == ENSEMBLE else f"mean_fg_dice_{name}"
                ax.plot(range(epochs), history[key][:epochs], label=name, linewidth=3 if name == ENSEMBLE else 1.5)
            ax.set(xlabel="epoch", ylabel="online validation Dice (mean over classes)", ylim=(0, 1))
            ax.legend()
            fig.tight_layout()
            fig.savefig(Path(self.output_folder) / "progress_networks.png")
            plt.close(fig)

    def perform_actual_validation(self, save_probabilities: bool = False) -> dict | None:
        """nnU-Net's final validation with the ensemble into ``validation/`` (what nnU-Net's tools read), before it,
        with ``validate_networks_separately``, with every network alone into ``validation_<name>/``; with
        ``--npz`` each saves its probabilities, which ``nnunetv2_mamba ensemble-weights`` reads. Returns the
        ensemble's dense-label metrics on rank 0 (None elsewhere or without dense labels)."""
        network = unwrap(self.network)
        chosen, results = network.inference_output, {}
        validation = Path(self.output_folder) / "validation"
        try:
            for name in self.member_names if self.validate_networks_separately else []:
                network.inference_output = name
                self.print_to_log_file(f"Final validation of network {name!r} alone")
                results[name] = super().perform_actual_validation(save_probabilities)
                if self.local_rank == 0:
                    target = validation.with_name(f"validation_{name}")
                    shutil.rmtree(target, ignore_errors=True)
                    validation.rename(target)
                if self.is_ddp:
                    dist.barrier()
            network.inference_output = ENSEMBLE
            self.print_to_log_file("Final validation of the ensemble (mean softmax of the networks)")
            results[ENSEMBLE] = super().perform_actual_validation(save_probabilities)
        finally:
            network.inference_output = chosen
        if self.local_rank == 0 and results[ENSEMBLE] is not None:
            self.print_to_log_file("Validation Dice against the dense labels per network: " + ", ".join(
                f"{name} {metrics['foreground_mean']['Dice']:.4f}" for name, metrics in results.items()))
        return results[ENSEMBLE]
