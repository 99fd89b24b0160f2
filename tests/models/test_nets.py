"""Networks: shapes for any leading dims, image sizes, and rejected shapes."""

import pytest
import torch

from pyro_vae.errors import SpecError
from pyro_vae.models.nets import conv, mlp


@pytest.mark.parametrize("factory", [mlp, conv])
@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 12, 16)])
@pytest.mark.parametrize("out_params", [1, 3])
def test_encoder_decoder_shapes(factory, shape, out_params):
    nets = factory(event_shape=shape, latent_dim=5, out_params=out_params)
    x = torch.rand(4, *shape)
    h = nets.encoder(x)
    assert h.shape == (4, nets.encoder.out_features)
    z = torch.randn(7, 4, 5)  # particles x batch x latent
    assert nets.decoder(z).shape == (7, 4, out_params, *shape)


def test_conditional_widths():
    nets = mlp(event_shape=(6,), latent_dim=2, out_params=1, cond_dim=3, hidden=[8])
    h = nets.encoder(torch.rand(5, 6), torch.rand(5, 3))
    assert h.shape == (5, 8)
    assert nets.decoder(torch.randn(5, 2 + 3)).shape == (5, 1, 6)


def test_seed_002_layout():
    nets = conv(event_shape=(1, 28, 28), latent_dim=2, out_params=1)
    convs = [m for m in nets.encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 64] and all(c.stride == (2, 2) for c in convs)
    assert nets.encoder.out_features == 32


@pytest.mark.parametrize("shape", [(1, 30, 30), (784,)])
def test_conv_rejects_shapes_it_cannot_handle(shape):
    with pytest.raises(SpecError, match="divisible by 4"):
        conv(event_shape=shape, latent_dim=2, out_params=1)
