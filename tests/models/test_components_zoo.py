"""The component zoo from the user's side: one-line swaps through the spec, Python objects, the listing."""

from __future__ import annotations

import warnings

import pytest
import torch

import pyro_vae
from pyro_vae import fit, load_run
from pyro_vae.components import listing
from pyro_vae.evaluation.evaluate import point_terms

ZOO = {
    "prior": ["learned_normal", "mixture", "vamp", "flow"],
    "guide": ["full_rank", "low_rank", "flow", "delta"],
    "likelihood": ["laplace", "categorical", "discretized_logistic"],
    "network": ["conv64"],
    "data": ["celeba"],
}


def test_listing_shows_every_zoo_component_with_its_parameters() -> None:
    text = listing()
    for group, names in ZOO.items():
        block = listing(group)
        for name in names:
            assert f"  {name} - " in block, (group, name)
    assert "num_components: int >= 1 (default 100)" in listing("prior")
    assert "rank: int >= 1 (default 2)" in listing("guide")
    assert text.count("\n") > 40


@pytest.mark.parametrize(
    "override",
    ["model.prior={kind: vamp, num_components: 4}", "guide={kind: flow, hidden: [8]}", "guide={kind: full_rank}",
     "model.prior={kind: flow, hidden: [8]}"],
)  # fmt: skip
def test_one_line_swap_trains_checkpoints_and_reloads(override: str, tmp_path, tiny) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = fit(overrides=[*tiny, override, "train.figures=false"], out=tmp_path / "run")
    assert res.history and all(torch.isfinite(torch.tensor(r["train_loss"])) for r in res.history)
    run = load_run(tmp_path / "run", device="cpu")
    x = res.data.x_test[:8]
    torch.manual_seed(0)
    a = point_terms(res.vae.eval(), x, num_particles=3)
    torch.manual_seed(0)
    b = point_terms(run.vae, x, num_particles=3)
    torch.testing.assert_close(a.elbo, b.elbo)  # same parameters, permutations and masks after reload


def test_building_a_vae_from_python_objects() -> None:
    """The same components as plain objects: VampPrior over a FullRankGuide, Bernoulli pixels."""
    nets = pyro_vae.mlp(event_shape=(1, 8, 8), latent_dim=3, out_params=1, hidden=[16])
    guide = pyro_vae.FullRankGuide(encoder=nets.encoder, latent_dim=3)
    prior = pyro_vae.VampPrior(latent_dim=3, event_shape=(1, 8, 8), guide=guide, num_components=5)
    vae = pyro_vae.VAE(pyro_vae.Generative(prior, nets.decoder, pyro_vae.Bernoulli(event_shape=(1, 8, 8))), guide)
    loss = pyro_vae.REGISTRY.build("elbo", {"kind": "iwae", "num_particles": 4})(vae.model, vae.guide)
    x = torch.rand(5, 1, 8, 8).round()
    value = loss(x)
    value.backward()
    assert torch.isfinite(value)
    assert prior.pseudo_inputs.grad is not None and guide.off_diag.weight.grad is not None
    assert sum(p.numel() for p in vae.parameters()) == sum(p.numel() for _, p in vae.named_parameters())
