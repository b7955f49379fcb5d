"""spec.scaling maps onto the autoscaling policy knob for knob."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kvpilot.api.parse import parse_inference_service
from kvpilot.autoscaling.policy import (
    DEFAULT_POLICY,
    PolicyConfig,
    PolicyFileError,
    load_policy_defaults,
)
from kvpilot.reconcile import policy_config

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))


def _isvc(spec: dict[str, object]) -> object:
    return parse_inference_service(
        {"metadata": {"name": "x", "namespace": "ns", "uid": "u"}, "spec": spec}
    )


def test_defaults_are_the_operator_policy() -> None:
    isvc = _isvc({"model": {"source": "hf://meta-llama/Llama-3.1-8B-Instruct"}})
    assert policy_config(isvc) == DEFAULT_POLICY  # type: ignore[arg-type]


def test_every_knob_reaches_the_policy() -> None:
    scaling = {
        "minReplicas": 2,
        "maxReplicas": 9,
        "targets": {"queueDepthPerReplica": 2.5, "kvCacheUtilization": 0.7,
                    "timeToFirstTokenSeconds": 1.5, "concurrencyPerReplica": 24.0,
                    "batchUtilization": 0.5},
        "stableWindowSeconds": 120,
        "panicWindowSeconds": 30,
        "panicThreshold": 3.0,
        "tolerance": 0.05,
        "forecastSeconds": 90,
        "scaleUp": {"stabilizationWindowSeconds": 10, "maxReplicasPerStep": 2, "periodSeconds": 30},
        "scaleDown": {"stabilizationWindowSeconds": 90, "maxReplicasPerStep": 3,
                      "periodSeconds": 20, "burstHoldSeconds": 600},
        "scaleToZero": {"enabled": True, "idleSeconds": 900},
        "coldStartGraceSeconds": 240,
        "manualOverrideSeconds": 60,
        "maxMetricAgeSeconds": 20,
    }  # fmt: skip
    cfg = policy_config(_isvc({"model": {"source": "hf://x/y"}, "scaling": scaling}))  # type: ignore[arg-type]
    assert cfg.model_dump(by_alias=True) == scaling


@pytest.mark.parametrize(
    ("runtime", "targets", "expected"),
    [
        ({}, {}, None),  # no batch limit rendered: no concurrency target
        ({"maxNumSeqs": 64}, {}, 64 * 0.65),  # the operator-wide fraction of the batch limit
        ({"maxNumSeqs": 64}, {"batchUtilization": 0.5}, 32.0),
        ({"maxNumSeqs": 64}, {"concurrencyPerReplica": 10}, 10.0),  # set: wins
        ({}, {"concurrencyPerReplica": 10}, 10.0),
    ],
)
def test_concurrency_target_follows_the_batch_limit(
    runtime: dict[str, object], targets: dict[str, object], expected: float | None
) -> None:
    spec = {
        "model": {"source": "hf://x/y"},
        "runtime": runtime,
        "scaling": {"maxReplicas": 4, "targets": targets},
    }
    cfg = policy_config(_isvc(spec))  # type: ignore[arg-type]
    assert cfg.targets.concurrency_per_replica == expected


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_map(path: Path) -> None:
    body = yaml.safe_load(path.read_text())
    body["metadata"].update(namespace="ns", uid="u")
    cfg = policy_config(parse_inference_service(body))
    assert cfg.max_replicas == body["spec"].get("scaling", {}).get("maxReplicas", 1)


SITE = DEFAULT_POLICY.with_overrides(
    {
        "stableWindowSeconds": 300,
        "panicWindowSeconds": 90,
        "scaleDown": {"stabilizationWindowSeconds": 600, "periodSeconds": 120},
        "targets": {"kvCacheUtilization": 0.7},
    }
)
"""An operator-wide policy a site might run with."""


@pytest.mark.parametrize(
    ("scaling", "expected"),
    [
        ({}, SITE),
        (
            {"minReplicas": 1, "maxReplicas": 4, "scaleDown": {"maxReplicasPerStep": 2}},
            SITE.with_overrides(
                {"minReplicas": 1, "maxReplicas": 4, "scaleDown": {"maxReplicasPerStep": 2}}
            ),
        ),
        (
            {"targets": {"queueDepthPerReplica": 2}},
            SITE.with_overrides({"targets": {"queueDepthPerReplica": 2}}),
        ),
        # A stable window below the site's panic window pulls the unset panic window down.
        (
            {"stableWindowSeconds": 30},
            SITE.with_overrides({"stableWindowSeconds": 30, "panicWindowSeconds": 30}),
        ),
        (
            {"stableWindowSeconds": 30, "panicWindowSeconds": 10},
            SITE.with_overrides({"stableWindowSeconds": 30, "panicWindowSeconds": 10}),
        ),
    ],
)
def test_spec_overrides_the_operator_policy_knob_by_knob(
    scaling: dict[str, object], expected: PolicyConfig
) -> None:
    isvc = _isvc({"model": {"source": "hf://x/y"}, "scaling": scaling})
    assert policy_config(isvc, SITE) == expected  # type: ignore[arg-type]


def test_a_merge_that_breaks_a_rule_names_the_knobs() -> None:
    site = DEFAULT_POLICY.with_overrides({"stableWindowSeconds": 600, "panicWindowSeconds": 400})
    isvc = _isvc({"model": {"source": "hf://x/y"}, "scaling": {"panicWindowSeconds": 500}})
    # The site's 600 s stable window holds a 500 s panic window.
    ok = policy_config(isvc, site)  # type: ignore[arg-type]
    assert (ok.stable_window_seconds, ok.panic_window_seconds) == (600, 500)
    bad = _isvc(
        {"model": {"source": "hf://x/y"}, "scaling": {"stableWindowSeconds": 300,
                                                       "panicWindowSeconds": 200}}
    )  # fmt: skip
    assert policy_config(bad, site).panic_window_seconds == 200  # type: ignore[arg-type]
    clash = _isvc({"model": {"source": "hf://x/y"}, "scaling": {"panicWindowSeconds": 700}})
    with pytest.raises(ValueError) as err:
        policy_config(clash, site)  # type: ignore[arg-type]
    assert str(err.value) == (
        "spec.scaling over the operator-wide policy: "
        "panicWindowSeconds (700) exceeds stableWindowSeconds (600)"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", DEFAULT_POLICY),
        ("# built-in defaults\n", DEFAULT_POLICY),
        (
            "stableWindowSeconds: 300\npanicWindowSeconds: 90\n"
            "scaleDown: {stabilizationWindowSeconds: 600, periodSeconds: 120}\n"
            "targets: {kvCacheUtilization: 0.7}\n",
            SITE,
        ),
        (
            "scaleToZero: {enabled: true}\ntargets: {timeToFirstTokenSeconds: 2}\n",
            DEFAULT_POLICY.with_overrides(
                {"scaleToZero": {"enabled": True}, "targets": {"timeToFirstTokenSeconds": 2.0}}
            ),
        ),
    ],
)
def test_load_policy_defaults(text: str, expected: PolicyConfig) -> None:
    assert load_policy_defaults(text, "site.yaml") == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- 1\n", "site.yaml: expected a mapping of spec.scaling knobs"),
        ("stableWindow: 30\n", "site.yaml: stableWindow: Extra inputs are not permitted"),
        ("tolerance: 2\n", "site.yaml: tolerance: Input should be less than 1"),
        ("scaleDown: {periodSecond: 5}\n",
         "site.yaml: scaleDown.periodSecond: Extra inputs are not permitted"),
        ("panicWindowSeconds: 500\n", "site.yaml: (policy): Value error, panicWindowSeconds "
         "(500) exceeds stableWindowSeconds (180)"),
        ("minReplicas: 2\n", "site.yaml: minReplicas belong to each service's spec.scaling, "
         "not to the operator-wide policy"),
        ("stable_window_seconds: 300\n",
         "site.yaml: stable_window_seconds: Extra inputs are not permitted"),
        # YAML values the CRD would refuse but pydantic would coerce.
        ("stableWindowSeconds: '300'\n",
         "site.yaml: stableWindowSeconds: expected a finite number, got '300'"),
        ("stableWindowSeconds: true\n",
         "site.yaml: stableWindowSeconds: expected a finite number, got True"),
        ("scaleDown: {stabilizationWindowSeconds: .inf}\n",
         "site.yaml: scaleDown.stabilizationWindowSeconds: expected a finite number, got inf"),
        ("scaleToZero: {enabled: 1}\n",
         "site.yaml: scaleToZero.enabled: expected true or false, got 1"),
        ("scaleDown: {maxReplicasPerStep: 1.5}\n", "site.yaml: scaleDown.maxReplicasPerStep: "
         "Input should be a valid integer, got a number with a fractional part"),
        ("a: [\n", None),
    ],
)  # fmt: skip
def test_load_policy_defaults_rejects(text: str, message: str | None) -> None:
    with pytest.raises(PolicyFileError) as err:
        load_policy_defaults(text, "site.yaml")
    if message is None:
        assert str(err.value).startswith("site.yaml: not YAML:")
    else:
        assert str(err.value) == message
