"""Plan arguments checked against the plans' type annotations at the call, before a run opens;
the annotations are evaluated objects, as the queue server reads them."""

from __future__ import annotations

import inspect
import typing

import pytest
from bluesky import RunEngine
from bluesky.utils import is_plan

from endstation.devices import make_endstation
from endstation.sample import SimulatedSample
from plans import xafs_scan
from plans.adaptive import adaptive_xas_plan
from plans.checks import check_arguments, checked_plan


@pytest.fixture(scope="module")
def es(synthetic_library):
    lib = synthetic_library
    sample = SimulatedSample.from_spectrum(lib.energies, lib.mean[0], element="Cu", edge="K", name="x")
    return make_endstation(sample, seed=1, time_scale=0.0)


def test_the_plans_are_plans_with_evaluated_annotations():
    for plan in (xafs_scan, adaptive_xas_plan):
        assert is_plan(plan)
        for parameter in inspect.signature(plan).parameters.values():
            assert not isinstance(parameter.annotation, str), (plan.__name__, parameter.name)
    assert typing.get_args(inspect.signature(xafs_scan).parameters["mode"].annotation) == ("transmission",
                                                                                           "fluorescence")


@pytest.mark.parametrize("kwargs, error, message", [
    ({"max_points": "ten"}, TypeError, r"max_points must be int, got 'ten' \(str\)"),
    ({"max_points": 10.5}, TypeError, "max_points must be int"),
    ({"max_points": True}, TypeError, "max_points must be int"),
    ({"confidence": "high"}, TypeError, "confidence must be float"),
    ({"element": 29}, TypeError, "element must be str"),
    ({"candidates": 3}, TypeError, "candidates must be str or PathLike or CandidateLibrary"),
    ({"mode": "xes"}, ValueError, "mode must be one of 'transmission', 'fluorescence'"),
    ({"max_points": 0}, ValueError, "max_points must be >= 1"),
    ({"confidence": 1.5}, ValueError, r"confidence must be in \(0, 1\]"),
    ({"dwell_s": 0}, ValueError, "dwell_s must be > 0"),
    ({"colour": "red"}, TypeError, "unexpected keyword argument 'colour'"),
])
def test_bad_arguments_are_refused_before_a_run_opens(es, synthetic_library, kwargs, error, message):
    RE = RunEngine({})
    docs: list = []
    RE.subscribe(lambda name, doc: docs.append(name))
    before = es.energy.position
    args = {"element": "Cu", "edge": "K", "candidates": synthetic_library, **kwargs}
    with pytest.raises(error, match=message):
        RE(adaptive_xas_plan(es.detectors, es.energy, **args))
    assert docs == [] and es.energy.position == before


def test_numbers_as_json_gives_them_are_accepted(es, synthetic_library):
    # JSON has no float/int distinction for whole numbers: confidence=1 is a float setting.
    plan = adaptive_xas_plan(es.detectors, es.energy, element="Cu", edge="K", candidates=synthetic_library,
                             confidence=1, dwell_s=1, max_points=12)
    plan.close()
    with pytest.raises(TypeError, match=r"xafs_scan: grid must be Mapping or EnergyGrid or None, got 'fine'"):
        xafs_scan(es.detectors, es.energy, element="Cu", edge="K", grid="fine")


def test_check_arguments_leaves_protocols_and_any_to_the_plan():
    @checked_plan
    def plan(devices: typing.Sequence[typing.Any], callback: typing.Callable[..., None] | None = None,
             option: dict[str, int] | None = None):
        yield from []

    signature = inspect.signature(plan)
    check_arguments("plan", signature, ([object()],), {"callback": print, "option": {"a": 1}})
    with pytest.raises(TypeError, match="callback must be Callable or None"):
        check_arguments("plan", signature, ([],), {"callback": 3})
    with pytest.raises(TypeError, match="devices must be Sequence"):
        check_arguments("plan", signature, ("abc",), {})
