"""Stages, configs and pipelines: declarations, overrides, YAML loading and their errors."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Literal

import pytest
from click.testing import CliRunner
from stages_toys import VD, Calibrate, CalibrateConfig, toy_pipeline_yaml

from cli.main import cli
from stages.framework.base import Connection, PipelineError, Stage
from stages.framework.config import (
    ConfigError,
    NoConfig,
    apply_overrides,
    config_from_dict,
    config_hash,
    config_json,
)
from stages.framework.pipeline import Pipeline, StageDef, packaged_pipelines

# -- configs ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Inner:
    threshold: float = 5.0
    planes: tuple[str, ...] = ("BAD", "SAT")


@dataclass(frozen=True)
class RichConfig:
    gain: float = 1.0
    iterations: int = 3
    enabled: bool = True
    label: str | None = None
    mode: Literal["fast", "exact"] = "fast"
    visits: tuple[int, ...] = ()
    inner: Inner = field(default_factory=Inner)


def test_overrides_from_strings_are_converted_to_the_field_types():
    config = apply_overrides(
        RichConfig(),
        {
            "gain": "2.5",
            "iterations": "7",
            "enabled": "false",
            "label": "null",
            "mode": "exact",
            "visits": "1,2,3",
            "inner.threshold": "3",
            "inner.planes": "[CR, EDGE]",
        },
    )
    assert config == RichConfig(
        gain=2.5,
        iterations=7,
        enabled=False,
        label=None,
        mode="exact",
        visits=(1, 2, 3),
        inner=Inner(threshold=3.0, planes=("CR", "EDGE")),
    )
    assert isinstance(config.inner.threshold, float)
    # typed values (from YAML) pass through; an int is accepted for a float
    typed = apply_overrides(RichConfig(), {"gain": 4, "label": "x", "inner": {"threshold": 1}})
    assert (typed.gain, typed.label, typed.inner.threshold) == (4.0, "x", 1.0)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"gian": "2"}, "unknown config key 'gian'"),
        ({"inner.thresh": "2"}, "unknown config key 'thresh'"),
        ({"gain": "fast"}, "expected a number"),
        ({"iterations": "2.5"}, "expected an integer"),
        ({"iterations": True}, "expected an integer"),
        ({"enabled": "maybe"}, "expected true or false"),
        ({"mode": "slow"}, "is not one of ['fast', 'exact']"),
        ({"visits": "1,a"}, "expected an integer"),
        ({"gain.sub": "1"}, "is not a group of settings"),
    ],
)
def test_bad_overrides_are_config_errors(overrides, message):
    with pytest.raises(ConfigError) as info:
        apply_overrides(RichConfig(), overrides, where="stage")
    assert message in str(info.value)


def test_unknown_key_error_lists_the_known_keys():
    with pytest.raises(ConfigError, match="known: gain, iterations, enabled, label, mode"):
        apply_overrides(RichConfig(), {"nope": 1})
    with pytest.raises(ConfigError, match="this stage has no config"):
        apply_overrides(NoConfig(), {"x": 1})


def test_config_hash_is_sha256_of_canonical_json_and_round_trips():
    config = RichConfig(gain=2.0, visits=(3, 1))
    text = config_json(config)
    assert text == json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"))
    assert json.loads(text)["visits"] == [3, 1]
    assert config_hash(config) == hashlib.sha256(text.encode()).hexdigest()
    assert config_hash(RichConfig(gain=2.0, visits=(3, 1))) == config_hash(config)
    assert config_hash(RichConfig(gain=2.0000001, visits=(3, 1))) != config_hash(config)
    assert config_from_dict(RichConfig, json.loads(text)) == config


# -- stage declarations ----------------------------------------------------------------------------


class BadOutputDims(Stage):
    dimensions = VD
    inputs = {"raw": Connection("rawImage", VD, "Image")}
    outputs = {"out": Connection("visitThing", ("instrument", "visit"), "Image")}

    def run(self, raw):
        return {"out": raw}


class SingleInputOutside(Stage):
    dimensions = ("instrument", "visit")
    inputs = {"raw": Connection("rawImage", VD, "Image")}
    outputs = {"out": Connection("visitThing", ("instrument", "visit"), "Image")}

    def run(self, raw):
        return {"out": raw}


class Underivable(Stage):
    dimensions = ("instrument", "visit", "detector")
    inputs = {"summary": Connection("visitThing", ("instrument", "visit"), "Image")}
    outputs = {"out": Connection("detThing", VD, "Image")}

    def run(self, summary):
        return {"out": summary}


class BadStorageClass(Stage):
    dimensions = VD
    inputs = {"raw": Connection("rawImage", VD, "Image")}
    outputs = {"out": Connection("thing", VD, "Picture")}

    def run(self, raw):
        return {"out": raw}


class RunMissesInput(Stage):
    dimensions = VD
    inputs = {"raw": Connection("rawImage", VD, "Image")}
    outputs = {"out": Connection("thing", VD, "Image")}

    def run(self, image):
        return {"out": image}


class ReservedName(Stage):
    dimensions = VD
    inputs = {"data_id": Connection("rawImage", VD, "Image")}
    outputs = {"out": Connection("thing", VD, "Image")}

    def run(self, **kwargs):
        return {"out": kwargs}


class RedefinesCalexp(Stage):
    dimensions = VD
    inputs = {"raw": Connection("rawImage", VD, "Image")}
    outputs = {"calexp": Connection("calexp", VD, "Catalog")}

    def run(self, raw):
        return {"calexp": raw}


class UsesCalexpAsPrerequisite(Stage):
    dimensions = VD
    inputs = {"calexp": Connection("calexp", VD, "Image", prerequisite=True)}
    outputs = {"out": Connection("thing", VD, "Image")}

    def run(self, calexp):
        return {"out": calexp}


class Ping(Stage):
    dimensions = VD
    inputs = {"a": Connection("pong", VD, "Image")}
    outputs = {"b": Connection("ping", VD, "Image")}

    def run(self, a):
        return {"b": a}


class Pong(Stage):
    dimensions = VD
    inputs = {"a": Connection("ping", VD, "Image")}
    outputs = {"b": Connection("pong", VD, "Image")}

    def run(self, a):
        return {"b": a}


def _pipeline(*classes: type[Stage]) -> Pipeline:
    return Pipeline([StageDef(c.__name__.lower(), c, c.config_class()) for c in classes])


@pytest.mark.parametrize(
    ("classes", "message"),
    [
        (
            (BadOutputDims,),
            "output 'out' (visitThing(instrument, visit) [Image]) must have the "
            "quantum's dimensions (instrument, visit, detector)",
        ),
        (
            (SingleInputOutside,),
            "input 'raw' (rawImage(instrument, visit, detector) [Image]) has "
            "dimension(s) detector outside the quantum dimensions",
        ),
        ((Underivable,), "quantum dimension 'detector' cannot be derived from any input"),
        ((BadStorageClass,), "unknown storage class 'Picture'"),
        ((RunMissesInput,), "run() does not accept input(s) ['raw']"),
        ((ReservedName,), "input name 'data_id' must be a Python identifier other than"),
        (
            (Calibrate, RedefinesCalexp),
            "dataset type 'calexp' is calexp(instrument, visit, "
            "detector) [Image] in stage 'calibrate' but calexp(instrument, visit, detector) "
            "[Catalog] in stage 'redefinescalexp'",
        ),
        (
            (Calibrate, UsesCalexpAsPrerequisite),
            "prerequisite input 'calexp' (calexp) is produced by stage 'calibrate'",
        ),
        ((Ping, Pong), "the stages ping, pong depend on each other in a cycle"),
    ],
)
def test_invalid_stage_declarations_are_refused_before_any_work(classes, message):
    with pytest.raises(PipelineError) as info:
        _pipeline(*classes)
    assert message in str(info.value)


def test_two_producers_of_one_dataset_type_are_refused():
    with pytest.raises(PipelineError, match="'calexp' is produced by both stage 'a' and stage 'b'"):
        Pipeline(
            [
                StageDef("a", Calibrate, CalibrateConfig()),
                StageDef("b", Calibrate, CalibrateConfig()),
            ]
        )


# -- YAML pipelines ------------------------------------------------------------------------------


def test_yaml_pipeline_orders_stages_and_applies_config():
    pipeline = Pipeline.from_yaml(toy_pipeline_yaml(gain=3.5, fail_visits=[2]))
    labels = pipeline.labels
    assert set(labels) == {"calibrate", "measure", "visitSummary", "warp", "coadd"}
    for before, after in [
        ("calibrate", "measure"),
        ("measure", "visitSummary"),
        ("calibrate", "warp"),
        ("warp", "coadd"),
    ]:
        assert labels.index(before) < labels.index(after)
    assert pipeline.stage("calibrate").config == CalibrateConfig(gain=3.5, fail_visits=(2,))
    assert pipeline.producers()["warp"] == "warp"
    assert pipeline.subset("singleFrame").labels == ["calibrate", "measure"]
    assert pipeline.subset("warp,coadd").labels == ["warp", "coadd"]
    overridden = pipeline.with_overrides(["calibrate.gain=0.5", "calibrate.fail_visits=3,4"])
    assert overridden.stage("calibrate").config == CalibrateConfig(gain=0.5, fail_visits=(3, 4))
    assert overridden.stage("calibrate").config_hash != pipeline.stage("calibrate").config_hash


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "stages:\n  a: {class: nosuchmodule.Stage}\n",
            "cannot import stage module 'nosuchmodule'",
        ),
        ("stages:\n  a: {class: stages_toys.VD}\n", "'stages_toys.VD' is not a Stage class"),
        (
            "stages:\n  a: {class: stages_toys.Calibrate, config: {gian: 1}}\n",
            "unknown config key 'gian'",
        ),
        (
            "stages:\n  a: {class: stages_toys.Calibrate, colour: red}\n",
            "unknown key(s) ['colour']",
        ),
        ("stage:\n  a: stages_toys.Calibrate\n", "unknown key(s) ['stage']"),
        (
            "stages:\n  a: {class: stages_toys.Calibrate, calibration: maybe}\n",
            "'calibration' must be true or false",
        ),
        (
            "stages:\n  a: stages_toys.Calibrate\nintermediates: calexp\n",
            "'intermediates' must be a list of dataset types",
        ),
        (
            "stages:\n  a: stages_toys.Calibrate\nsubsets:\n  s: [a, b]\n",
            "subset 's' names unknown stage(s) ['b']",
        ),
        ("stages: [\n", "is not valid YAML"),
    ],
)
def test_bad_pipeline_files_give_one_clear_error(text, message):
    with pytest.raises((PipelineError, ConfigError)) as info:
        Pipeline.from_yaml(text, "bad.yaml")
    assert message in str(info.value)


def test_bad_overrides_and_selections():
    pipeline = Pipeline.from_yaml(toy_pipeline_yaml())
    with pytest.raises(ConfigError, match="no stage labelled 'calib'"):
        pipeline.with_overrides(["calib.gain=1"])
    with pytest.raises(ConfigError, match="unknown config key 'gian'"):
        pipeline.with_overrides(["calibrate.gian=1"])
    with pytest.raises(ConfigError, match="must be label.key=value"):
        pipeline.with_overrides(["calibrate.gain"])
    with pytest.raises(PipelineError, match="neither a subset"):
        pipeline.subset("everything")


def test_packaged_pipeline_and_cli_show(tmp_path):
    assert "drp" in packaged_pipelines()
    assert Pipeline.load("drp").source == "drp"
    path = tmp_path / "toy.yaml"
    path.write_text(toy_pipeline_yaml())
    runner = CliRunner()
    result = runner.invoke(
        cli, ["pipeline", "show", f"{path}#singleFrame", "--config", "calibrate.gain=4"]
    )
    assert result.exit_code == 0, result.output
    assert "stage calibrate (stages_toys.Calibrate)" in result.output
    assert "gain: 4.0" in result.output
    assert "bias: bias(instrument, detector) [Image] prerequisite" in result.output
    assert "stage warp" not in result.output
    bad = runner.invoke(cli, ["pipeline", "show", str(path), "--config", "calibrate.gain=x"])
    assert bad.exit_code == 1
    assert "calibrate.gain: expected a number, got 'x'" in bad.output
