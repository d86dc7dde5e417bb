"""The network pieces: convolutional encoders and decoders for images, beside the MLPs."""

import dataclasses
import json

import pyro
import pytest
import torch
from torch import nn

from pyro_vae.config import ModelConfig, RunConfig
from pyro_vae.errors import ConfigError
from pyro_vae.infer import (
    DeviceTrace_ELBO,
    ais_log_likelihood,
    auto_log_likelihood,
    importance_log_likelihood,
    refined_log_likelihood,
)
from pyro_vae.infer.optim import JointAdam
from pyro_vae.infer.svi import DeviceSVI
from pyro_vae.models.nets import ConvDecoderNet, ConvEncoderNet, ConvNetworks, conv_sizes
from pyro_vae.registry import build_vae
from tests.helpers import binary_data


@pytest.mark.parametrize("shape", [(28, 28), (8, 8), (5, 7), (3, 12, 10)])
def test_conv_networks_keep_any_leading_dimensions_and_give_back_the_image(shape):
    d = torch.Size(shape).numel()
    encoder = ConvEncoderNet(shape, (4, 6), (16,), out_features=10)
    decoder = ConvDecoderNet(3, shape, (4, 6), (16,), params_per_dim=2)
    assert encoder(torch.rand(7, d)).shape == (7, 10)
    assert encoder(torch.rand(2, 7, d)).shape == (2, 7, 10)
    assert decoder(torch.randn(5, 7, 3)).shape == (5, 7, 2 * d)  # particles x batch x z
    assert decoder(torch.randn(3)).shape == (2 * d,)


def test_each_convolution_halves_the_image_and_the_decoder_mirrors_it():
    assert conv_sizes(28, 28, 2) == [(28, 28), (14, 14), (7, 7)]
    assert conv_sizes(5, 7, 2) == [(5, 7), (2, 3), (1, 1)]
    decoder = ConvDecoderNet(2, (5, 7), (4, 6), (8,), params_per_dim=1)
    sizes = []
    for layer in decoder.deconvs:
        if isinstance(layer, nn.ConvTranspose2d):
            layer.register_forward_hook(lambda m, i, o: sizes.append(tuple(o.shape[-2:])))
    decoder(torch.randn(4, 2))
    assert sizes == [(2, 3), (5, 7)]  # odd sizes restored exactly


def test_the_decoder_gives_each_parameter_its_own_image_in_the_likelihoods_layout():
    """LocationScale likelihoods read (loc, raw scale) as the two halves of the output: the
    first half must be the first output channel's image, row by row."""
    decoder = ConvDecoderNet(2, (6, 4), (3,), (8,), params_per_dim=2)
    last = decoder.deconvs[-1]
    seen = {}
    last.register_forward_hook(lambda m, i, o: seen.setdefault("out", o))
    h = decoder(torch.randn(5, 2))
    out = seen["out"]  # (5, 2, 6, 4)
    loc, raw = h.chunk(2, dim=-1)
    assert torch.equal(loc, out[:, 0].reshape(5, 24))
    assert torch.equal(raw, out[:, 1].reshape(5, 24))


def test_the_decoder_runs_channels_last_activations_with_the_same_values_and_gradients():
    """channels_last activations are oneDNN's faster layout on a CPU (docs/speed.md); they must
    change nothing but the speed and the order of float sums."""
    decoder = ConvDecoderNet(3, (9, 6), (4, 5), (8,), params_per_dim=2).double()
    z = torch.randn(2, 7, 3, dtype=torch.float64)
    h = decoder.dense(z.reshape(-1, 3)).reshape(-1, *decoder.start).contiguous()
    for layer in decoder.deconvs:
        if isinstance(layer, nn.ConvTranspose2d):
            h = nn.functional.conv_transpose2d(
                h, layer.weight, layer.bias, layer.stride, layer.padding, layer.output_padding
            )
        else:
            h = layer(h)
    out = decoder(z)
    torch.testing.assert_close(out, h.reshape(2, 7, -1), rtol=1e-12, atol=1e-12)
    probe = torch.randn(out.shape, dtype=torch.float64)
    params = list(decoder.parameters())
    ours = torch.autograd.grad((out * probe).sum(), params)
    reference = torch.autograd.grad((h.reshape(2, 7, -1) * probe).sum(), params)
    for a, b in zip(ours, reference, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("layers", [1, 2])
def test_one_training_step_moves_every_parameter_of_a_conv_vae(layers):
    """The parameters Pyro's param store holds (and the optimiser steps) must be the networks'
    own: the store keeps a contiguous copy of a parameter that is not (a channels_last weight
    once left a decoder's transposed convolution untrained, its gradient on the module's
    tensor and the optimiser stepping the copy)."""
    x = binary_data(64, 64)
    config = ModelConfig(latent_dim=3, hidden=(8,), net="conv", channels=(4, 5))
    if layers == 2:
        config = dataclasses.replace(config, top_latent_dim=2, top_hidden=(6,))
    vae = build_vae(config, 64, image_shape=(8, 8))
    before = {name: p.detach().clone() for name, p in vae.named_parameters()}
    svi = DeviceSVI(vae.model, vae.guide, JointAdam({"lr": 1e-2}), DeviceTrace_ELBO())
    svi.step(x)
    store = pyro.get_param_store()
    held = {id(store._params[name]) for name in store.keys()}
    for name, p in vae.named_parameters():
        assert id(p) in held, name  # the store's tensor is the module's parameter
        assert not torch.equal(p.detach(), before[name]), name  # and it was trained


def test_a_channels_last_weight_is_refused_before_training():
    from pyro_vae.training import Trainer

    config = ModelConfig(latent_dim=3, hidden=(8,), net="conv", channels=(4, 5))
    vae = build_vae(config, 64, image_shape=(8, 8))
    vae.decoder.deconvs.to(memory_format=torch.channels_last)  # the 5 -> 4 channels weight
    with pytest.raises(ValueError, match=r"'vae.decoder\$\$\$deconvs.1.weight' is not contig"):
        Trainer(vae, binary_data(64, 64), elbo=DeviceTrace_ELBO(), lr=1e-3, batch_size=32)
    vae.decoder.deconvs.to(memory_format=torch.contiguous_format)
    Trainer(vae, binary_data(64, 64), elbo=DeviceTrace_ELBO(), lr=1e-3, batch_size=32)


def test_too_many_convolutions_for_the_image_or_flat_data_are_refused_by_name():
    with pytest.raises(ConfigError) as e:
        build_vae(ModelConfig(net="conv", channels=(4, 4, 4, 4)), 64, image_shape=(8, 8))
    assert e.value.option == "model.channels"
    assert "4 convolutions, each halving the image, do not fit 8x8 images" in str(e.value)
    with pytest.raises(ConfigError, match="needs images"):
        build_vae(ModelConfig(net="conv"), 12, image_shape=(12,))
    with pytest.raises(ConfigError, match="needs the data's image shape"):
        build_vae(ModelConfig(net="conv"), 12)
    with pytest.raises(ConfigError) as e:
        build_vae(ModelConfig(net="conv", channels=(0, 4)), 64, image_shape=(8, 8))
    assert e.value.option == "model.channels" and "got (0, 4)" in str(e.value)
    with pytest.raises(ConfigError, match="unknown model.net 'resnet'"):
        build_vae(ModelConfig(net="resnet"), 64, image_shape=(8, 8))


def test_a_conv_model_config_reads_back_from_json_and_an_old_one_is_an_mlp():
    config = RunConfig(model=ModelConfig(net="conv", channels=(8, 16)))
    again = RunConfig.from_json(config.to_json())
    assert again == config and again.model.channels == (8, 16)
    old = json.loads(RunConfig().to_json())
    del old["model"]["net"], old["model"]["channels"]
    read = RunConfig.from_dict(old)
    assert read.model.net == "mlp" and read.model.channels == (32, 64)


def test_the_guides_and_decoder_are_convolutional_and_run_in_bf16():
    vae = build_vae(
        ModelConfig(latent_dim=3, hidden=(16,), net="conv", channels=(4, 8)),
        64,
        image_shape=(8, 8),
    )
    assert isinstance(vae.encoder.net, ConvEncoderNet)
    assert isinstance(vae.decoder, ConvDecoderNet)
    x = binary_data(6, 64)
    full = vae.decoder(vae.encoder(x).mean)
    with vae.precision(torch.bfloat16):
        half = vae.decoder(vae.encoder(x).mean)
    assert half.dtype == torch.float32 and not torch.equal(half, full)
    torch.testing.assert_close(half, full, atol=0.1, rtol=0.05)


def test_every_estimator_runs_on_a_convolutional_vae():
    torch.manual_seed(0)
    vae = build_vae(
        ModelConfig(latent_dim=2, hidden=(8,), net="conv", channels=(3,)),
        12,
        image_shape=(3, 4),
    )
    x = binary_data(5, 12)
    iwae = importance_log_likelihood(vae.model, vae.guide, x, num_samples=50)
    refined = refined_log_likelihood(vae.model, vae.guide, x, num_samples=50, max_steps=30)
    ais = ais_log_likelihood(vae.model, vae.guide, x, num_steps=10, num_chains=4)
    auto = auto_log_likelihood(
        vae.model,
        vae.guide,
        x,
        khat=lambda w: torch.zeros(w.shape[1]),
        num_samples=50,
        refine={"max_steps": 30},
        smc={"num_particles": 8, "num_replicates": 2},
    )
    for r in (iwae, refined, ais, auto):
        assert torch.isfinite(r.log_px).all()
    # the exact log p(x) of 2-d latents by quadrature is not at hand here; the estimates of
    # the same model agree within a few nats on 12 binary pixels
    assert (iwae.log_px - ais.log_px).abs().max() < 3.0
    assert (refined.log_px - iwae.log_px).abs().max() < 3.0


def test_conv_networks_are_one_piece_for_every_guide():
    pieces = ConvNetworks((8, 8), 3, (16,), channels=(4,))
    for guide in ("diagonal", "full", "lowrank", "iaf"):
        vae = build_vae(
            ModelConfig(latent_dim=3, hidden=(16,), net="conv", channels=(4,), guide=guide),
            64,
            image_shape=(8, 8),
        )
        assert isinstance(vae.encoder.net, ConvEncoderNet), guide
        assert vae.encoder.net.convs[0].out_channels == pieces.channels[0]
