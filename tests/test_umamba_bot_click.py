"""UMambaBot2Click: click channels (encoding round trip), the output's dependence on clicks (and its independence of
other samples' clicks), the nnU-Net network contract, the cross-attention branch, autocast."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
from torch import nn

from helpers.autocast_checks import check_bf16_autocast
from helpers.nnunet_plans import acdc_like_configurations, build, deep_supervision_shapes
from nnunetv2_mamba.nets.click_attention import cell_centres
from nnunetv2_mamba.nets.click_channels import (PADDING, Click, click_labels, decode_click_channels,
                                                encode_click_channels)
from nnunetv2_mamba.nets.umamba_bot_click import UMambaBot2Click
from nnunetv2_mamba.plans import derive_plans
from nnunetv2_mamba.ssm.modules import Mamba2
from test_umamba_bot import CASES, tiny

CLICK_KWARGS = dict(click_mlp_dim=32, headdim=8)


def tiny_net(conv_op=nn.Conv2d, strides=([1, 1], [2, 2], [2, 2]), num_classes=3, **kwargs) -> UMambaBot2Click:
    return UMambaBot2Click(1, num_classes=num_classes, deep_supervision=False,
                           **tiny(conv_op, [list(s) for s in strides]), **CLICK_KWARGS, **kwargs)


def with_clicks(image: torch.Tensor, clicks_per_sample: list[list[Click]], labels: tuple[int, ...]) -> torch.Tensor:
    maps = [torch.from_numpy(encode_click_channels(c, image.shape[2:], labels))
            for c in clicks_per_sample]
    return torch.cat([image, torch.stack(maps)], dim=1)


@pytest.mark.parametrize("shape", [(12, 9), (5, 8, 7)])
def test_click_channels_round_trip(shape):
    rng = np.random.default_rng(0)
    samples = [[Click(int(rng.integers(1, 4)), tuple(float(rng.integers(0, n)) for n in shape)) for _ in range(k)]
               for k in (3, 0, 5)]
    samples[0].append(Click(samples[0][0].label, tuple(p + 0.4 for p in samples[0][0].point)))  # same voxel, merged
    maps = torch.stack([torch.from_numpy(encode_click_channels(c, shape, (1, 2, 3))) for c in samples])
    assert maps.shape == (3, 3, *shape)
    coords, classes = decode_click_channels(maps)
    assert coords.shape == (3, 5, len(shape)) and classes.shape == (3, 5)
    for b, clicks in enumerate(samples):
        expected = {(c.label, tuple(round(p) for p in c.point)) for c in clicks}
        valid = classes[b] != PADDING
        decoded = {(int(k) + 1, tuple(int(p) for p in point)) for k, point in zip(classes[b][valid], coords[b][valid])}
        assert decoded == expected
        assert valid.sum() == len(expected) and not valid[len(expected):].any()  # padding after the clicks


def test_background_clicks_take_the_last_channel():
    assert click_labels(3, background=True) == (1, 2, 0) and click_labels(3) == (1, 2)
    maps = encode_click_channels([Click(0, (1, 2)), Click(2, (3, 3)), Click(1, (0, 0))], (4, 4), (1, 2, 0))
    assert [tuple(np.argwhere(m).ravel()) for m in maps] == [(0, 0), (3, 3), (1, 2)]
    with pytest.raises(ValueError, match=r"click labels \[1, 2, 0\]$"):
        encode_click_channels([Click(3, (1, 1))], (4, 4), (1, 2, 0))


def test_click_channels_reject_bad_clicks():
    with pytest.raises(ValueError, match=r"click labels \[1, 2\]"):
        encode_click_channels([Click(3, (1, 1))], (4, 4), (1, 2))
    with pytest.raises(ValueError, match="takes no background clicks"):
        encode_click_channels([Click(0, (1, 1))], (4, 4), (1, 2))
    with pytest.raises(ValueError, match="outside an array of shape"):
        encode_click_channels([Click(1, (1, 4))], (4, 4), (1, 2))
    with pytest.raises(ValueError, match="outside"):
        encode_click_channels([Click(1, (1, 1, 1))], (4, 4), (1, 2))


@pytest.mark.parametrize("click_map_sigma", [2.0, 0.0])
@pytest.mark.parametrize("conv_op, strides, kernel_sizes, patch", CASES)
def test_output_depends_on_clicks_and_only_on_its_own(conv_op, strides, kernel_sizes, patch, click_map_sigma):
    net = UMambaBot2Click(1, num_classes=3, deep_supervision=True, **tiny(conv_op, strides, kernel_sizes),
                          **CLICK_KWARGS, click_map_sigma=click_map_sigma).eval()
    image = torch.randn(2, 1, *patch)
    a = [Click(1, tuple(n // 4 for n in patch)), Click(2, tuple(n - 2 for n in patch))]
    b = [Click(1, tuple(n // 2 for n in patch))]
    with torch.no_grad():
        plain = net(image)
        clicked = net(with_clicks(image, [a, []], (1, 2)))
        moved = net(with_clicks(image, [b, []], (1, 2)))
        relabelled = net(with_clicks(image, [[Click(2, a[0].point), a[1]], []], (1, 2)))
        assert [tuple(o.shape) for o in clicked] == [(2, 3, *s) for s in deep_supervision_shapes(list(patch), strides)]
        for other in (plain, moved, relabelled):
            assert (clicked[0][0] - other[0][0]).abs().max() > 1e-3  # sample 0 sees its clicks ...
        # ... and sample 1 (no clicks) does not see sample 0's: padding is masked, not extra "no point" tokens
        torch.testing.assert_close(clicked[0][1], plain[0][1], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(net(with_clicks(image, [[], []], (1, 2)))[0], plain[0], rtol=0, atol=0)


def test_background_clicks_are_a_class_of_their_own():
    """With background_clicks the network takes one more channel; a background click changes the output, and not as
    a foreground click at the same place does."""
    net = tiny_net(background_clicks=True).eval()
    assert net.click_labels == (1, 2, 0) and net.click_maps(torch.zeros(1, 4, 16, 16)).shape == (1, 3, 16, 16)
    image = torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        plain, background, foreground = (net(x) for x in (
            image, with_clicks(image, [[Click(0, (5, 6))]], net.click_labels),
            with_clicks(image, [[Click(1, (5, 6))]], net.click_labels)))
    assert (background - plain).abs().max() > 1e-3 and (background - foreground).abs().max() > 1e-3
    with pytest.raises(ValueError, match="one per foreground class, then background"):
        net(torch.randn(1, 3, 16, 16))


@pytest.mark.parametrize("shape, click", [((20, 17), (6, 9)), ((9, 12, 10), (4, 2, 7))])
def test_click_maps_are_gaussian_bumps_cut_at_the_border(shape, click):
    net = tiny_net(conv_op=nn.Conv2d if len(shape) == 2 else nn.Conv3d, strides=[[1] * len(shape)] * 3)
    x = with_clicks(torch.randn(1, 1, *shape), [[Click(2, click)]], (1, 2))
    maps = net.click_maps(x)[0]
    assert maps.shape == (2, *shape) and not maps[0].any()
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"))
    distance2 = sum((g - c) ** 2 for g, c in zip(grid, click))
    expected = np.exp(-0.5 * distance2 / 2.0 ** 2) * (np.abs(grid - np.reshape(click, (-1,) + (1,) * len(shape)))
                                                      <= 6).all(axis=0)  # the kernel's radius is 3 sigma
    np.testing.assert_allclose(maps[1].numpy(), expected, atol=1e-6)
    torch.testing.assert_close(net.click_maps(x[:, :1]), torch.zeros(1, 2, *shape))  # unprompted: no bumps


def test_attention_only_variant_feeds_the_image_alone_to_the_encoder():
    net = tiny_net(click_map_sigma=0)
    assert net.encoder.stem.convs[0].conv.in_channels == 1
    with pytest.raises(ValueError, match="click_map_sigma must be >= 0"):
        tiny_net(click_map_sigma=-1)


def test_causal_scan_over_appended_click_tokens_is_blind_to_them():
    """The trap cross-attention avoids: in a causal scan, image tokens placed before click tokens cannot see them."""
    layer = Mamba2(16, headdim=8)
    image_tokens = torch.randn(1, 10, 16)
    outputs = [layer(torch.cat([image_tokens, torch.randn(1, 3, 16)], dim=1))[:, :10] for _ in range(2)]
    torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=0)


def test_input_channels_are_checked():
    net = tiny_net()
    with pytest.raises(ValueError, match=r"1 image channels, optionally followed by 2 click channels"):
        net(torch.randn(1, 2, 16, 16))
    with pytest.raises(ValueError, match="at least one class"):
        tiny_net(num_classes=1)


def test_gradients_reach_every_parameter_of_the_click_branch():
    net = tiny_net(strides=([1, 1], [2, 2]))
    image = torch.randn(2, 1, 8, 8)
    out = net(with_clicks(image, [[Click(1, (1, 2)), Click(2, (5, 5))], [Click(2, (3, 3))]], (1, 2)))
    out.square().mean().backward()
    for name, p in net.click_attention.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_click_coordinates_share_the_grid_frame_and_mirror():
    """A click's normalised coordinate is (voxel + 0.5) / size, the frame of the bottleneck's cell centres; mirroring
    the input maps it to 1 - coordinate, as mirroring maps the cell centres."""
    net = tiny_net()
    x = with_clicks(torch.randn(1, 1, 16, 12), [[Click(1, (3, 10)), Click(2, (15, 0))]], (1, 2))
    _, coords, classes = net.split_input(x)
    _, flipped, flipped_classes = net.split_input(torch.flip(x, (2, 3)))
    order = [sorted(range(2), key=lambda i: int(c[0, i])) for c in (classes, flipped_classes)]
    torch.testing.assert_close(flipped[0, order[1]], 1 - coords[0, order[0]])
    torch.testing.assert_close(coords[0, 0], torch.tensor([3.5 / 16, 10.5 / 12]))
    centres = cell_centres((4, 3))  # a 16 x 12 input after strides 4: cell (0, 2) covers voxels 0-3 x 8-11
    torch.testing.assert_close(centres[2], torch.tensor([2 / 16, 10 / 12]))
    torch.testing.assert_close(torch.flip(centres.reshape(4, 3, 2), (0, 1)).reshape(-1, 2), 1 - centres)


def test_float32_under_bf16_autocast():
    net = tiny_net().eval()
    x = with_clicks(torch.randn(2, 1, 16, 12), [[Click(1, (3, 3))], [Click(2, (8, 8))]], (1, 2))
    check_bf16_autocast(net, x, 0.1)


@pytest.fixture(scope="module")
def plans(tmp_path_factory):
    return acdc_like_configurations(tmp_path_factory.mktemp("nnunet"))


@pytest.mark.parametrize("configuration", ["2d", "3d_fullres"])
def test_plans_build_the_network_and_budget_for_the_branch(plans, configuration):
    base = {"plans_name": "nnUNetResEncUNetMPlans", "configurations": {configuration: plans[configuration]}}
    derived, _ = derive_plans(base, "UMambaBot2Click", dataset_json={"channel_names": {"0": "MRI"},
                                                                      "labels": {"bg": 0, "a": 1, "b": 2, "c": 3}})
    architecture = derived["configurations"][configuration]["architecture"]
    net = build(architecture)
    assert isinstance(net, UMambaBot2Click) and net.num_click_classes == 3
    assert (len(net.click_attention.blocks), net.click_attention.blocks[0].mlp.fc1.out_features) == (2, 1024)
    patch = [int(p) for p in plans[configuration]["patch_size"]]
    bot2_kwargs = {k: v for k, v in architecture["arch_kwargs"].items()
                   if not k.startswith("click_") and k != "background_clicks"}
    estimates = [ExperimentPlanner.static_estimate_VRAM_usage(patch, 1, 4, name, kwargs,
                                                              architecture["_kw_requires_import"])
                 for name, kwargs in ((architecture["network_class_name"], architecture["arch_kwargs"]),
                                      ("nnunetv2_mamba.nets.umamba_bot.UMambaBot2", bot2_kwargs))]
    bottleneck = deep_supervision_shapes(patch, [*architecture["arch_kwargs"]["strides"], [1] * len(patch)])[-1]
    fusion = (2 * 3 + 1) * int(np.prod(patch))  # click maps and the concatenated encoder input
    assert estimates[0] - estimates[1] == net.click_attention.compute_conv_feature_map_size(bottleneck) + fusion
    assert net.click_map_sigma == 2.0 and net.encoder.stem.convs[0].conv.in_channels == 1 + 3
    n_branch = sum(p.numel() for p in net.click_attention.parameters())
    print(f"\nUMambaBot2Click {configuration}: {n_branch / 1e6:.2f} M parameters in the click branch")


def trained_dice_with_and_without_clicks(net: UMambaBot2Click, case, label: int,
                                         iterations: int = 250) -> tuple[float, float]:
    """Train ``net`` briefly as nnU-Net would (DC + CE, SGD with momentum 0.99, poly lr) on batches of 8 ``case(None)``
    samples ((image and click channels, label map) pairs), then the mean Dice of ``label`` on 16 ``case(True)``
    samples with their clicks and with the click channels zeroed."""
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

    loss = DC_and_CE_loss({"batch_dice": True, "smooth": 1e-5, "do_bg": False, "ddp": False}, {}, 1, 1,
                          dice_class=MemoryEfficientSoftDiceLoss)
    optimizer = torch.optim.SGD(net.parameters(), 0.01, momentum=0.99, nesterov=True)
    for it in range(iterations):
        x, y = map(np.stack, zip(*[case(None) for _ in range(8)]))
        for group in optimizer.param_groups:
            group["lr"] = 0.01 * (1 - it / iterations) ** 0.9
        optimizer.zero_grad()
        loss(net(torch.from_numpy(x)), torch.from_numpy(y[:, None]).long()).backward()
        optimizer.step()
    net.eval()
    dice = {True: [], False: []}
    with torch.no_grad():
        for _ in range(16):
            image_and_clicks, reference = case(True)
            for clicked in dice:
                x = image_and_clicks.copy()
                x[net.image_channels:] *= clicked
                predicted = net(torch.from_numpy(x[None]).float())[0].argmax(0).numpy() == label
                target = reference == label
                dice[clicked].append(2 * (predicted & target).sum() / (predicted.sum() + target.sum()))
    return float(np.mean(dice[True])), float(np.mean(dice[False]))


def learning_net(num_classes: int, **kwargs) -> UMambaBot2Click:
    """A small 2D click network for 32 x 32 images (bottleneck 4 x 4)."""
    torch.manual_seed(0)
    arch = {**tiny(nn.Conv2d, [[1, 1], [2, 2], [2, 2], [2, 2]]), "features_per_stage": [8, 16, 32, 64]}
    return UMambaBot2Click(1, num_classes=num_classes, deep_supervision=False, click_mlp_dim=64, headdim=16,
                           **arch, **kwargs)


@pytest.mark.slow  # trains for 250 iterations
def test_training_learns_to_follow_clicks():
    """Where only a click tells which of two identical blobs is meant (the synthetic decoy variant), a short training
    with simulated clicks makes the clicked blob's Dice far better than without clicks: the clicks are used."""
    from nnunetv2_mamba.data.simulate_clicks import clicks_in_structure, simulate_clicks
    from nnunetv2_mamba.data.synthetic import synthetic_case

    shape, spacing, blob = (32, 32), (1.0, 1.0), 3
    rng = np.random.default_rng(0)

    def case(clicked: bool | None) -> tuple[np.ndarray, np.ndarray]:
        """A z-scored decoy image with click channels, and its label; None: training clicks (simulated for every
        class, sometimes none), True: one click on the labelled blob."""
        image, label = synthetic_case(rng, shape, spacing, decoy=True)
        clicks = (simulate_clicks(label, [1, 2, 3], rng) if clicked is None else
                  [Click(blob, p) for p in clicks_in_structure(label == blob, 1, rng)])
        maps = encode_click_channels(clicks, shape, (1, 2, 3))
        return np.concatenate([((image - image.mean()) / image.std())[None], maps]), label

    with_click, without = trained_dice_with_and_without_clicks(learning_net(4), case, blob)
    print(f"\nblob Dice with one click {with_click:.3f}, without {without:.3f}")
    assert with_click > without + 0.2


@pytest.mark.slow  # trains for 250 iterations
def test_training_learns_to_follow_background_clicks():
    """Two identical squares, one labelled at random: a background click on the other one is the only way to tell.
    After a short training with such clicks on half of the samples, the click removes the false positive."""
    size = 32
    rng = np.random.default_rng(0)

    def case(clicked: bool | None) -> tuple[np.ndarray, np.ndarray]:
        """Noisy image of two 6 x 6 squares in opposite halves, the label marking one; a background click at a random
        pixel of the other if ``clicked`` (None: on half of the samples)."""
        image, label = rng.normal(0, 0.2, (size, size)).astype(np.float32), np.zeros((size, size), np.uint8)
        rows = rng.integers(2, size - 8, 2)
        corners = [(rows[0], rng.integers(2, size // 2 - 6)), (rows[1], rng.integers(size // 2 + 2, size - 8))]
        labelled = int(rng.integers(2))
        for i, (r, c) in enumerate(corners):
            image[r:r + 6, c:c + 6] += 1
            label[r:r + 6, c:c + 6] = i == labelled
        r, c = corners[1 - labelled]
        if clicked is None:
            clicked = bool(rng.integers(2))
        clicks = [Click(0, (int(r + rng.integers(6)), int(c + rng.integers(6))))] if clicked else []
        return np.concatenate([image[None], encode_click_channels(clicks, (size, size), (1, 0))]), label

    with_click, without = trained_dice_with_and_without_clicks(learning_net(2, background_clicks=True), case, 1)
    print(f"\nsquare Dice with a background click on the other square {with_click:.3f}, without {without:.3f}")
    assert with_click > without + 0.2
