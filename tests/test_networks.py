"""Backbones and ASR-Net: shapes, the paper's parameter count, size adaptation, TorchScript."""

import pytest
import torch

from scripts.networks.asr import ASRNet
from scripts.networks.backbones import AE, BACKBONES, MemAE, build_backbone, count_parameters, stage_channels


@pytest.mark.parametrize("name,out_channels", [("ae", 1), ("memae", 1), ("aeu", 2)])
@pytest.mark.parametrize("size", [64, 128])
def test_backbone_output_shape(name, out_channels, size):
    net = build_backbone(name, in_channels=1, image_size=size).eval()
    assert net(torch.randn(3, 1, size, size)).shape == (3, out_channels, size, size)


def test_ae_parameter_count_matches_paper():
    # The paper reports about 4.49 M parameters for its AE at 64x64 with a latent of 16.
    assert abs(count_parameters(AE(1, 64, 16)) - 4.49e6) < 0.01e6


def test_128_adds_one_stage_and_keeps_the_bottleneck():
    assert stage_channels(64) == [16, 32, 64, 64]
    assert stage_channels(128) == [16, 32, 64, 64, 64]
    extra = count_parameters(AE(1, 128, 16)) - count_parameters(AE(1, 64, 16))
    # one more conv and one more transposed conv, 64 -> 64 channels, 4x4 kernels, plus their BN
    assert extra == 2 * (64 * 64 * 16 + 2 * 64)


def test_rgb_and_latent_size_are_config_values():
    net = AE(in_channels=3, image_size=64, latent_size=32).eval()
    assert net(torch.randn(2, 3, 64, 64)).shape == (2, 3, 64, 64)
    assert net.encode(torch.randn(2, 3, 64, 64)).shape == (2, 32)


def test_memae_attention_is_a_distribution_over_25_slots():
    net = MemAE(1, 64, 16, memory_slots=25).eval()
    recon, attention = net.forward_with_attention(torch.randn(4, 1, 64, 64))
    assert attention.shape == (4, 25)
    assert torch.allclose(attention.sum(1), torch.ones(4), atol=1e-5)
    assert (attention >= 0).all() and recon.shape == (4, 1, 64, 64)


def test_memae_decoder_only_sees_memory_mixtures():
    net = MemAE(1, 64, 16).eval()
    x = torch.randn(2, 1, 64, 64)
    _, attention = net.forward_with_attention(x)
    assert torch.allclose(net(x), net.decode(attention @ net.memory), atol=1e-5)


def test_asr_net_outputs_two_class_logits():
    net = ASRNet(in_channels=2).eval()
    assert net(torch.randn(2, 2, 64, 64)).shape == (2, 2, 64, 64)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.kernel_size for c in convs] == [(3, 3)] * 3
    assert [c.out_channels for c in convs] == [128, 128, 2]


@pytest.mark.parametrize("name", BACKBONES)
def test_backbones_script_and_match_eager(name):
    net = build_backbone(name, 1, 64).eval()
    scripted = torch.jit.script(net)
    x = torch.randn(2, 1, 64, 64)
    assert torch.allclose(scripted(x), net(x), atol=1e-5)


def test_asr_net_scripts():
    net = ASRNet(1).eval()
    x = torch.randn(1, 1, 32, 32)
    assert torch.allclose(torch.jit.script(net)(x), net(x), atol=1e-5)


@pytest.mark.parametrize("bad", [0, 48, 100, 8])
def test_unsupported_image_size_is_refused(bad):
    with pytest.raises(ValueError, match="image_size"):
        AE(1, bad)


def test_unknown_backbone_names_the_key():
    with pytest.raises(ValueError, match="backbone.*ae, memae, aeu"):
        build_backbone("vae")
