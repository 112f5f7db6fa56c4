"""`--strategy auto` races the real candidates: rungs, pruning, budget, continued weights.

Everything runs on tiny real Keras models (MobileNet a0.25 at 32 px) and real PNG datasets;
the race's bookkeeping is checked against what the trainer actually did.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from tl_perception.train import race
from tl_perception.train.auto import decide
from tl_perception.train.config import FinetuneConfig

from support.finetune_helpers import make_color_dataset


def probe(accuracy: float, chance: float) -> dict[str, float]:
    return {"accuracy": accuracy, "chance": chance, "skill": (accuracy - chance) / (1 - chance)}


def tiny(tmp_path: Path, **overrides: object) -> FinetuneConfig:
    values: dict[str, object] = {
        "backbone": "mobilenet",  # a0.25: the cheapest to build and trace
        "input_size": 32,
        "weights": "none",
        "strategy": "auto",
        "epochs": 4,
        "head_epochs": 1,
        "cache_dir": str(tmp_path / "cache"),
        "cache_augmentations": 1,
        "export_tflite": False,
        "evaluate": False,
    }
    values.update(overrides)
    return FinetuneConfig(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def colors(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_color_dataset(tmp_path_factory.mktemp("race") / "colors", per_class=16)


def test_rungs_halve_the_field_until_one_is_left() -> None:
    assert [race.rung_count(n) for n in (1, 2, 3, 4, 5, 8, 9)] == [0, 1, 2, 2, 3, 3, 4]
    a, b, c = (race.Candidate(k, k) for k in ("a", "b", "c"))
    # scores come from trainees; none trained yet: all tie, so the cheaper (earlier) go on
    assert race.survivors([a, b, c], 2) == [a, b]


@pytest.mark.parametrize(
    ("per_class", "final", "cut", "pruned"),
    [
        (80, probe(0.42, 0.023), probe(0.43, 0.023), True),  # GTSRB: small, features help
        (80, probe(0.05, 0.023), probe(0.04, 0.023), False),  # small, features near chance
        (5000, probe(0.60, 0.1), probe(0.50, 0.1), False),  # large: everything races
    ],
)
def test_the_four_case_rule_prunes_from_scratch_only_where_it_cannot_win(
    per_class: int, final: dict, cut: dict, pruned: bool
) -> None:
    cfg = FinetuneConfig()
    prior = decide(per_class, final, cut, "mid", cfg)
    candidates = race.plan_candidates(cfg, prior)
    assert [c.strategy for c in candidates] == [
        "feature_extraction",
        "truncate",
        "fine_tune",
        "from_scratch",
    ]
    scratch = candidates[-1]
    assert (scratch.status == "pruned") is pruned
    assert ("random initialisation needs thousands" in scratch.reason) is pruned
    assert all(c.status == "racing" for c in candidates[:-1])


def test_several_backbones_and_input_sizes_are_variants_raced_in_cost_order(
    tmp_path: Path,
) -> None:
    from tl_perception.errors import TrainingError
    from tl_perception.train.finetune import _backbone_choices, variant_label

    cfg = tiny(
        tmp_path,
        backbone="mobilenet_v2",
        race_backbones=["mobilenet:0.25"],
        race_input_sizes=[40, 32],
    ).validate()
    choices = _backbone_choices(cfg)
    labels = [variant_label(c) for c in choices]
    assert labels == [  # the configured one first; 32 twice is one variant
        "mobilenet_v2:0.35@32",
        "mobilenet_v2:0.35@40",
        "mobilenet:0.25@32",
        "mobilenet:0.25@40",
    ]
    prior = decide(80, probe(0.42, 0.023), probe(0.43, 0.023), "mid", cfg)
    candidates = race.plan_candidates(cfg, prior, list(zip(labels, choices, strict=True)))
    assert [c.key for c in candidates[:5]] == [
        *(f"{label}/feature_extraction" for label in labels),
        "mobilenet_v2:0.35@32/truncate",
    ]  # every frozen candidate before any unfrozen one
    assert [c.status for c in candidates if c.strategy == "from_scratch"] == ["pruned"] * 4
    with pytest.raises(TrainingError, match="candidates of auto's race"):
        tiny(tmp_path, strategy="fine_tune", race_input_sizes=[64]).validate()
    with pytest.raises(TrainingError, match="fits one backbone"):
        _backbone_choices(tiny(tmp_path, weights="w.h5", race_backbones=["mobilenet_v2"]))


def _weights_digest(model) -> str:  # type: ignore[no-untyped-def]
    digest = hashlib.sha256()
    for weight in model.get_weights():
        digest.update(np.ascontiguousarray(weight).tobytes())
    return digest.hexdigest()


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


def _fine_tune_in_steps(colors: Path, tmp_path: Path, steps: list[int | None]):
    """Train fine_tune (head, then 3 epochs of the main phase) advancing by `steps`."""
    import keras

    from tl_perception import backbones
    from tl_perception.train.data import load_training_data
    from tl_perception.train.phases import StrategyTraining
    from tl_perception.train.run import TrainingRun
    from tl_perception.train.strategies import build_network
    from tl_perception.train.trainer import Checkpoints, Recorder

    cfg = tiny(tmp_path, strategy="fine_tune", epochs=3)
    choice = backbones.choose_backbone("mobilenet", alpha=0.25, input_size=32, weights="none")
    run = TrainingRun(cfg, choice, load_training_data(colors, 32, 0.2, 0, print), print)
    keras.utils.set_random_seed(0)
    network = build_network(choice, 3, "fine_tune")
    recorder = Recorder(Checkpoints(_mkdir(tmp_path / "checkpoints")), None, print, 0)
    training = StrategyTraining(network, run, recorder)
    for step in steps:
        training.advance(step)
    assert training.done and training.main_epochs_done == 3
    steps_per_epoch = training.trainer.plan.steps_per_epoch if training.trainer else 0
    assert int(network.model.optimizer.iterations.numpy()) == 3 * steps_per_epoch
    return _weights_digest(network.model)


def test_training_in_rungs_adds_up_to_exactly_one_run(colors: Path, tmp_path: Path) -> None:
    """A race's steps are one run: the last epoch's weights equal a plain run's (one optimizer,
    one schedule; a recompile or a restart at a rung would change them)."""
    whole = _fine_tune_in_steps(colors, tmp_path / "whole", [None])
    rungs = _fine_tune_in_steps(colors, tmp_path / "rungs", [1, None])
    assert rungs == whole


def test_auto_races_prunes_and_records_every_rung(colors: Path, tmp_path: Path) -> None:
    from tl_perception.bundle import read_bundle
    from tl_perception.train.finetune import finetune

    logs: list[str] = []
    result = finetune(colors, tmp_path / "bundle", tiny(tmp_path), log=logs.append, verbose=0)
    meta = read_bundle(result.bundle_path).meta
    record = meta["auto"]["race"]
    by_key = {c["key"]: c for c in record["candidates"]}
    assert list(by_key) == ["feature_extraction", "truncate", "fine_tune", "from_scratch"]
    assert by_key["from_scratch"]["status"] == "pruned" and by_key["from_scratch"]["rungs"] == []
    winner = [c for c in record["candidates"] if c["status"] == "winner"]
    assert len(winner) == 1 and winner[0]["strategy"] == result.strategy == meta["strategy"]
    # three racers: shares 1/4, 1/2, 1; frozen candidates train whole at once
    assert record["rung_shares"] == [0.25, 0.5, 1.0]
    fine_tune = by_key["fine_tune"]
    assert fine_tune["rungs"][0]["epochs"] == race.MIN_RUNG_EPOCHS  # max(2, ceil(4 / 4))
    for c in record["candidates"]:
        if c["status"] == "stopped":
            assert c["reason"] and c["epochs"] <= 4
    # budget accounting: each candidate's seconds are its rungs'; the race is at least all
    for c in record["candidates"]:
        assert c["seconds"] == pytest.approx(sum(r["seconds"] for r in c["rungs"]), abs=0.05)
    assert record["seconds"] >= sum(c["seconds"] for c in record["candidates"]) - 0.05
    # the winner was trained once: its main phase ran its own schedule, no rung twice
    main = result.phases[-1]
    assert main["epochs_run"] == winner[0]["epochs"] <= 4
    assert any(line.startswith("race rung 0: fine_tune") for line in logs)
    # the val split decided (never test); the prior guess is kept beside the race
    prior = meta["auto"]["prior"]
    assert prior["probe_final"]["images"] > 0 and prior["reason"].startswith(prior["strategy"])
    assert set(meta["auto"]["probe_cut"]) >= {"accuracy", "chance", "skill"}
    assert json.dumps(meta["decision"]) == json.dumps(meta["auto"])
    # the winner is its own run: the same weights as `--strategy <winner>` from the same seed
    alone = finetune(
        colors, tmp_path / "alone", tiny(tmp_path, strategy=result.strategy), log=print, verbose=0
    )
    assert _bundle_digest(alone.bundle_path) == _bundle_digest(result.bundle_path)


def _bundle_digest(bundle: Path) -> str:
    import keras

    return _weights_digest(keras.saving.load_model(bundle / "model.keras", safe_mode=True))


def test_a_finished_leader_with_nothing_left_to_gain_ends_the_race(
    colors: Path, tmp_path: Path, shared_dir: Path
) -> None:
    """ImageNet features separate colours: feature_extraction, first in the race, validates
    at 1.0, so no rival could win by a point and none is trained."""
    from tl_perception.train.finetune import finetune

    weights = str(shared_dir / "weights" / "mobilenet_v2_0.35_imagenet_no_top.h5")
    cfg = tiny(tmp_path, backbone="mobilenet_v2", weights=weights)
    logs: list[str] = []
    result = finetune(colors, tmp_path / "bundle", cfg, log=logs.append)
    record = {c["key"]: c for c in result.decision["race"]["candidates"]}
    assert result.strategy == "feature_extraction"
    assert record["feature_extraction"]["val_accuracy"] == 1.0
    for rival in ("truncate", "fine_tune"):
        assert record[rival]["status"] == "stopped" and record[rival]["rungs"] == []
        assert "less than 0.01 left to gain" in record[rival]["reason"]
    assert not any("fine_tune" in line and "phase" in line for line in logs)
    assert "2 not started (less than 0.01 left to gain); 1 pruned" in result.decision["reason"]


def test_a_race_cut_short_resumes_every_candidate_from_its_checkpoints(
    colors: Path, tmp_path: Path
) -> None:
    from tl_perception.train.finetune import finetune

    def interrupt(line: str) -> None:
        if line.startswith("race rung 0: fine_tune"):
            raise KeyboardInterrupt  # Ctrl-C after the first rung

    with pytest.raises(KeyboardInterrupt):
        finetune(colors, tmp_path / "bundle", tiny(tmp_path), log=interrupt, verbose=0)
    assert (tmp_path / "bundle.partial").is_dir() and not (tmp_path / "bundle").exists()
    logs: list[str] = []
    result = finetune(
        colors, tmp_path / "bundle", tiny(tmp_path, resume=True), log=logs.append, verbose=0
    )
    for phase in ("feature_extraction.head", "truncate.head", "fine_tune.head"):
        assert any(f"phase {phase!r}: already trained" in line for line in logs), phase
    assert any("phase 'fine_tune.all': resuming at epoch 3 of 4" in line for line in logs)
    assert result.decision["race"]["candidates"][0]["rungs"]
    assert not (tmp_path / "bundle.partial").exists()
