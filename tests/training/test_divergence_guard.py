"""The divergence guard: training stops with one line when the held-out bound falls far below its best
(more than max(50 nats, 10 x the std of the last 5 epochs)), keeping the last good checkpoint, and
``best.pt`` always holds the best-validation epoch, which ``evaluate``/``sample --checkpoint best`` load.
"""

import copy
import json
import math

import pyro
import pytest
import torch

from pyro_vae import evaluate, fit
from pyro_vae.cli import main
from pyro_vae.rundir import load_run
from pyro_vae.rundir.checkpoint import load as load_ckpt
from pyro_vae.training import loop as train_mod
from pyro_vae.training import nonfinite
from pyro_vae.training.nonfinite import Diverged, check_divergence, divergence_threshold

CFG = {"elbo": {"kind": "dreg", "num_particles": 10}, "train": {"kl_schedule": "linear", "kl_steps": 3000, "lr": 5e-3},
       "model": {"likelihood": {"kind": "gaussian"}}}  # fmt: skip


def _history(values):
    return [{"epoch": i + 1, "valid_elbo": v, "test_elbo": v - 1.0} for i, v in enumerate(values)]


def test_the_rule_50_nats_or_10_recent_standard_deviations(tmp_path) -> None:
    flat = _history([-100.0, -60.0, -50.0, -50.0, -50.0, -50.0])  # recent std 0: the 50-nat floor applies
    assert divergence_threshold(flat, "valid_elbo") == 50.0
    check_divergence(flat, {"epoch": 7, "valid_elbo": -99.9}, CFG, tmp_path / "checkpoint.pt")  # 49.9 below: fine
    with pytest.raises(Diverged):
        check_divergence(flat, {"epoch": 7, "valid_elbo": -100.1}, CFG, tmp_path / "checkpoint.pt")
    noisy = _history([-200.0, -180.0, -200.0, -180.0, -200.0, -180.0])  # recent std ~11: limit ~110 nats
    limit = divergence_threshold(noisy, "valid_elbo")
    assert limit == pytest.approx(10 * torch.tensor([-180.0, -200.0, -180.0, -200.0, -180.0]).std().item())
    check_divergence(noisy, {"epoch": 7, "valid_elbo": -180.0 - limit + 1}, CFG, tmp_path / "checkpoint.pt")
    with pytest.raises(Diverged):
        check_divergence(noisy, {"epoch": 7, "valid_elbo": -180.0 - limit - 1}, CFG, tmp_path / "checkpoint.pt")
    off = {**CFG, "train": {**CFG["train"], "divergence_nats": 0}}  # train.divergence_nats: 0 turns it off
    check_divergence(flat, {"epoch": 7, "valid_elbo": -1e6}, off, tmp_path / "checkpoint.pt")
    wide = {**CFG, "train": {**CFG["train"], "divergence_nats": 200}}
    check_divergence(flat, {"epoch": 7, "valid_elbo": -240.0}, wide, tmp_path / "checkpoint.pt")
    with pytest.raises(Diverged):
        check_divergence(flat, {"epoch": 7, "valid_elbo": -260.0}, wide, tmp_path / "checkpoint.pt")
    # the best of all epochs counts, not only the window; the valid split decides when there is one
    assert nonfinite.best_epoch(flat)["epoch"] == 3
    assert nonfinite.held_out_key({"test_elbo": 1.0}) == "test_elbo"


def test_the_message_is_one_line_naming_estimator_schedule_and_cause(tmp_path) -> None:
    with pytest.raises(Diverged) as e:
        check_divergence(_history([-50.0, -44.0]), {"epoch": 3, "valid_elbo": -1144.0}, CFG, tmp_path / "checkpoint.pt")
    msg = str(e.value)
    assert "\n" not in msg
    assert "elbo.kind: dreg (num_particles 10)" in msg and "train.kl_schedule: linear" in msg
    assert "likely cause: dreg's path-derivative term" in msg and "elbo.kind: iwae" in msg
    assert "(-44, epoch 2;" in msg and "nats below its best" in msg and "train.divergence_nats 50" in msg
    assert "characters cut" not in msg and len(msg) < 600
    other = {**CFG, "elbo": {"kind": "elbo"}, "train": {"kl_schedule": "constant", "lr": 1.0}}
    with pytest.raises(Diverged, match="learning rate too large"):
        check_divergence(_history([-50.0]), {"epoch": 2, "valid_elbo": -500.0}, other, tmp_path / "checkpoint.pt")


def _blow_up_after(epoch: int, saved: dict):
    """on_epoch_end: keep each epoch's parameters; after ``epoch``, push the decoder's output bias to +30
    (every pixel predicted on: the Bernoulli cross-entropy jumps by hundreds of nats, still finite)."""

    def hook(record, vae):
        saved[record["epoch"]] = copy.deepcopy(vae.state_dict())
        if record["epoch"] == epoch:
            with torch.no_grad():
                last = [m for m in vae.model.decoder.modules() if isinstance(m, torch.nn.Linear)][-1]
                last.bias.fill_(30.0)

    return hook


def test_injected_divergence_stops_and_keeps_the_last_good_and_the_best_checkpoint(tmp_path, tiny) -> None:
    run = tmp_path / "run"
    saved: dict[int, dict] = {}
    with pytest.raises(Diverged) as e:
        fit(overrides=tiny + ["train.epochs=5", "train.figures=false"], out=run,
            callbacks={"on_epoch_end": [_blow_up_after(3, saved)]})  # fmt: skip
    assert "epoch 4: held-out valid_elbo" in str(e.value) and "elbo.kind: trace" in str(e.value)
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in history] == [1, 2, 3]  # the diverged epoch is never recorded ...
    last = load_ckpt(run / "checkpoint.pt")
    assert last["epoch"] == 3  # ... nor checkpointed
    best_rec = max(history, key=lambda r: r["valid_elbo"])
    best = load_ckpt(run / "best.pt")
    assert best["epoch"] == best_rec["epoch"]
    for k, v in saved[best_rec["epoch"]].items():  # best.pt holds exactly that epoch's parameters
        torch.testing.assert_close(best["model"][k], v, rtol=0, atol=0)
    for k, v in saved[3].items():
        torch.testing.assert_close(last["model"][k], v, rtol=0, atol=0)


def test_best_pt_is_the_best_validation_epoch_and_evaluate_scores_it(tmp_path, tiny, capsys, monkeypatch) -> None:
    run = tmp_path / "run"
    saved: dict[int, dict] = {}

    def keep(record, vae):
        saved[record["epoch"]] = copy.deepcopy(vae.state_dict())

    real = train_mod.epoch_eval

    def epoch_eval(vae, ds):  # epochs 3 and 4: the validation bound reported 20 nats lower (under the limit)
        out = real(vae, ds)
        if len(saved) >= 2:
            out["valid_elbo"] -= 20.0
        return out

    monkeypatch.setattr(train_mod, "epoch_eval", epoch_eval)
    fit(overrides=tiny + ["train.epochs=4", "train.figures=false"], out=run, callbacks={"on_epoch_end": [keep]})
    monkeypatch.setattr(train_mod, "epoch_eval", real)
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    best_epoch = max(history, key=lambda r: r["valid_elbo"])["epoch"]
    assert best_epoch in (1, 2) and json.loads((run / "summary.json").read_text())["best_epoch"] == best_epoch
    assert load_ckpt(run / "best.pt")["epoch"] == best_epoch and load_ckpt(run / "checkpoint.pt")["epoch"] == 4
    assert main(["evaluate", str(run), "--particles", "5", "--checkpoint", "best", "--seed", "7"]) == 0
    ev = json.loads((run / "eval.json").read_text())
    assert ev["checkpoint"] == {"file": "best.pt", "epoch": best_epoch}
    loaded = load_run(run, device="cpu")  # the last epoch's model, given the best epoch's parameters
    loaded.vae.load_state_dict(saved[best_epoch])
    pyro.set_rng_seed(7)
    ref = evaluate(loaded.vae, loaded.data, "test", 5)
    assert ev["elbo"] == pytest.approx(ref.elbo, abs=1e-9) and ev["log_likelihood"] == pytest.approx(
        ref.log_likelihood, abs=1e-9
    )
    assert main(["evaluate", str(run), "--particles", "5", "--seed", "7"]) == 0
    assert json.loads((run / "eval.json").read_text())["checkpoint"] == {"file": "checkpoint.pt", "epoch": 4}
    assert main(["sample", str(run), "--num", "4", "--checkpoint", "best", "--out", str(tmp_path / "s.png")]) == 0


def test_cli_stops_a_divergence_with_one_line_and_exit_2(tmp_path, capsys, monkeypatch) -> None:
    real = train_mod.epoch_eval
    calls = []

    def diverging(vae, ds):  # the held-out bound collapses by 1,000 nats from epoch 3 on, still finite
        out = real(vae, ds)
        calls.append(1)
        if len(calls) >= 3:
            out = {k: v - 1000.0 if k.endswith("_elbo") else v for k, v in out.items()}
        return out

    monkeypatch.setattr(train_mod, "epoch_eval", diverging)
    run = tmp_path / "run"
    argv = ["train", "--set", "train.epochs=4", "--set", "data.limit=256", "--set", "model.network.hidden=[32]",
            "--set", "train.progress=false", "--set", "train.figures=false", "--out", str(run)]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "diverged with elbo.kind: trace" in err and "train.kl_schedule: linear" in err
    assert load_ckpt(run / "checkpoint.pt")["epoch"] == 2 and (run / "best.pt").is_file()
    assert not (run / "summary.json").exists()
    # resuming stops again; with the guard turned off (train.divergence_nats: 0) the run finishes
    assert main(["train", "--resume", "--out", str(run)]) == 2
    assert "diverged" in capsys.readouterr().err
    assert main(["train", "--resume", "--out", str(run), "--set", "train.divergence_nats=0"]) == 0
    assert json.loads((run / "summary.json").read_text())["epochs"] == 4
    assert load_ckpt(run / "best.pt")["epoch"] in (1, 2)  # the collapsed epochs are never the best


def test_resume_restores_a_best_pt_lost_between_the_two_writes(tmp_path, tiny, monkeypatch) -> None:
    real = train_mod.epoch_eval
    calls = []

    def improving(vae, ds):  # every epoch reported 100 nats better than the last: epoch 2 is the best
        calls.append(1)
        return {k: v + 100.0 * len(calls) if k.endswith("_elbo") else v for k, v in real(vae, ds).items()}

    monkeypatch.setattr(train_mod, "epoch_eval", improving)
    run = tmp_path / "run"
    fit(overrides=tiny + ["train.epochs=2", "train.figures=false"], out=run)
    assert load_ckpt(run / "best.pt")["epoch"] == 2
    (run / "best.pt").unlink()  # a kill after checkpoint.pt (epoch 2) but before best.pt
    fit(overrides=["train.epochs=2"], out=run, resume=True)
    state, last = load_ckpt(run / "best.pt"), load_ckpt(run / "checkpoint.pt")
    assert state["epoch"] == 2
    for k, v in last["model"].items():
        torch.testing.assert_close(state["model"][k], v, rtol=0, atol=0)


def test_evaluate_best_without_best_pt_is_one_line(tmp_path, tiny, capsys) -> None:
    run = tmp_path / "run"
    fit(overrides=tiny + ["train.figures=false"], out=run)
    (run / "best.pt").unlink()
    assert main(["evaluate", str(run), "--checkpoint", "best"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "no best.pt" in err and "--checkpoint last" in err
    assert math.isfinite(json.loads((run / "summary.json").read_text())["test_log_likelihood"])
