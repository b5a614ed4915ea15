"""Every registered network builds, runs forward, embeds, names its last conv and freezes by depth."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from leukoscope.models.registry import get_model, list_models

NETWORKS = list_models(family="network")


def test_networks_are_registered():
    assert {"leukonet", "efficientnet_lite0"} <= set(NETWORKS)


@pytest.mark.parametrize("name", NETWORKS)
def test_forward_embed_last_conv(name):
    net = get_model(name).build(num_classes=3, pretrained=False).eval()
    x = torch.randn(2, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        assert net(x).shape == (2, 3)
        assert net.embed(x).shape == (2, net.head.in_features)
    assert isinstance(net.get_submodule(net.last_conv), nn.Conv2d)
    assert len(net.stages()) >= 3


@pytest.mark.parametrize("name", NETWORKS)
def test_trainable_depth(name):
    net = get_model(name).build(num_classes=2, pretrained=False)
    head_only = net.trainable(0)
    assert {id(p) for p in head_only} == {id(p) for p in net.head.parameters()}
    assert len(net.frozen_modules()) == len(net.stages())
    everything = net.trainable(-1)
    assert len(everything) == len(list(net.parameters())) and not net.frozen_modules()


def test_tta_averages_the_eight_views():
    from leukoscope.geometry import dihedral
    from leukoscope.models.networks import forward_logits

    net = get_model("leukonet").build(num_classes=2).eval()
    x = torch.randn(3, 3, 16, 16)
    views = dihedral(x, (2, 3))
    assert len(views) == 8 and all(v.shape == x.shape for v in views)
    with torch.inference_mode():
        expect = torch.stack([net(v) for v in views]).mean(0)
        assert torch.allclose(forward_logits(net, x, tta=True), expect, atol=1e-5)


def test_pretrained_lite0_has_pytorch_bn_momentum():
    net = get_model("efficientnet_lite0").build(num_classes=2)
    moms = {m.momentum for m in net.modules() if isinstance(m, nn.BatchNorm2d)}
    assert moms == {0.1}
    # ImageNet weights, not a random init: the stem differs from a fresh network's
    fresh = get_model("efficientnet_lite0").build(num_classes=2, pretrained=False)
    assert not torch.equal(net.net._conv_stem.weight, fresh.net._conv_stem.weight)
