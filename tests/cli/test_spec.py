"""The spec: defaults, overrides, validation messages, round trips."""

import pytest
import yaml

from pyro_vae import spec
from pyro_vae.errors import SpecError


def test_default_resolves_with_every_default_filled():
    r = spec.resolve(spec.load(None))
    assert r["model"]["kind"] == "vae"
    assert r["model"]["prior"] == {"kind": "standard_normal"}
    assert r["elbo"]["beta"] == 1.0 and r["elbo"]["num_particles"] == 1
    assert r["data"]["binarize"] == "none"
    assert set(r["train"]) >= {"epochs", "batch_size", "lr", "optimizer", "device"}


def test_resolved_spec_is_a_fixed_point_through_yaml():
    r = spec.resolve(spec.load(None))
    again = spec.resolve(yaml.safe_load(spec.to_yaml(r)))
    assert again == r


def test_overrides_parse_yaml_values_and_create_paths():
    s = spec.apply_overrides(spec.load(None), ["train.lr=1e-2", "model.network.hidden=[8, 4]", "elbo.kind=iwae"])
    r = spec.resolve(s)
    assert r["train"]["lr"] == 0.01
    assert r["model"]["network"]["hidden"] == [8, 4]
    assert r["elbo"] == {"kind": "iwae", "beta": 1.0, "num_particles": 5}


def test_string_shorthand_for_a_component():
    r = spec.resolve(spec.apply_overrides(spec.load(None), ["guide=diagonal_normal"]))
    assert r["guide"]["kind"] == "diagonal_normal"


def test_file_sections_replace_default_sections_whole(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("elbo: {kind: iwae, num_particles: 7}\ntrain: {epochs: 3}\n")
    r = spec.resolve(spec.load(p))
    assert r["elbo"]["num_particles"] == 7 and r["train"]["epochs"] == 3
    # omitted train keys take TrainConfig's defaults, not the default job's (no leaking warm-up)
    assert r["train"]["batch_size"] == spec.TrainConfig.batch_size
    assert r["train"]["kl_schedule"] == "constant" != spec.DEFAULT_SPEC["train"]["kl_schedule"]
    assert r["model"] == spec.resolve(spec.load(None))["model"]  # missing sections: the default job's


@pytest.mark.parametrize(
    "override, fragment",
    [
        (["model.prior.kind=nope"], "model.prior.kind: unknown prior 'nope'; valid choices: "),
        (["guide.kind=gauss"], "guide.kind: unknown guide"),
        (["elbo.kind=elbo"], "valid choices:"),
        (["model.bogus=1"], "model.bogus: unknown key; valid keys:"),
        (["train.epochs=-1"], "train.epochs: -1 is out of range; must be >= 0"),
        (["train.epochs=two"], "train.epochs: 'two' is not valid; expected an integer"),
        (["elbo.kind=iwae", "elbo.num_particles=0"], "elbo.num_particles: 0 is out of range; must be >= 1"),
        (["model.latent_dim=0"], "model.latent_dim: 0 is out of range"),
        (
            ["train.optimizer=adagrad"],
            "train.optimizer: 'adagrad' is not valid; valid choices: adam, adamw, nadam, sgd",
        ),
        (["train.lr=0"], "train.lr: 0 is out of range; must be > 0"),
        (["data.binarize=yes"], "data.binarize"),
        (["elbo.kind=renyi", "elbo.alpha=1"], "elbo.alpha: 1 is the plain ELBO"),
        (["bogus=1"], "bogus: unknown top-level key"),
        (["model.network.hidden=3"], "model.network.hidden: 3 is not valid; expected a list"),
        (["train.progress=1"], "expected true or false"),
        (["data.name=npz"], "data.path: required key is missing"),
    ],
)
def test_bad_values_name_the_key_and_choices(override, fragment):
    with pytest.raises(SpecError) as e:
        spec.from_args(None, override)
    msg = str(e.value)
    assert fragment in msg
    assert "\n" not in msg


@pytest.mark.parametrize("text", ["a: [", "- 1\n- 2\n", "\x00\x01"])
def test_bad_files(tmp_path, text):
    p = tmp_path / "s.yaml"
    p.write_text(text)
    with pytest.raises(SpecError):
        spec.from_args(str(p))


def test_missing_file_and_bad_override_syntax(tmp_path):
    with pytest.raises(SpecError, match="does not exist"):
        spec.from_args(str(tmp_path / "none.yaml"))
    with pytest.raises(SpecError, match="expected KEY=VALUE"):
        spec.from_args(None, ["train.epochs"])


def test_switching_kind_drops_the_old_kinds_parameters():
    r = spec.from_args(None, ["model.network.kind=conv", "model.network.filters=4"])
    assert r["model"]["network"]["kind"] == "conv" and r["model"]["network"]["filters"] == 4
    assert "hidden" not in r["model"]["network"]
    assert spec.from_args(None, ["train.lr=1e-3"])["train"]["lr"] == 0.001  # YAML 1.1 reads 1e-3 as text


def test_switching_kind_keeps_common_and_shared_options():
    r = spec.from_args(None, ["data.valid_size=400", "data.binarize=static", "data.name=mnist"])
    assert r["data"]["valid_size"] == 400 and r["data"]["binarize"] == "static"
    r = spec.from_args(None, ["elbo.beta=2", "elbo.kind=iwae"])
    assert r["elbo"]["beta"] == 2.0
    r = spec.from_args(None, ["model.network.activation=tanh", "model.network.kind=conv"])
    assert r["model"]["network"]["activation"] == "tanh"  # both kinds take an activation
