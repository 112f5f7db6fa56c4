"""The classifier node as a managed (lifecycle) node, driven over DDS.

Every transition is requested the way `ros2 lifecycle set` and nav2_lifecycle_manager do it:
lifecycle_msgs/srv/ChangeState on `<node>/change_state`, and the state read back with GetState
on `<node>/get_state`; parameters are read and set over the parameter services, as `ros2 param`
does. The node runs in this process (or, once, as the console script) with a real tiny bundle.
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rcl_interfaces.msg import Parameter as ParameterMsg
from rcl_interfaces.msg import ParameterType, ParameterValue
from rcl_interfaces.srv import GetParameters, SetParameters

from support.bundle_breakers import copy_bundle, truncated_zip
from support.helpers import color_image
from support.node_harness import (
    NODE_SCRIPT,
    Probe,
    node_in_process,
    probe,
    raw_image,
    start_node_process,
    stop_process,
    wait_until,
)

CONFIGURE = Transition.TRANSITION_CONFIGURE
ACTIVATE = Transition.TRANSITION_ACTIVATE
DEACTIVATE = Transition.TRANSITION_DEACTIVATE
CLEANUP = Transition.TRANSITION_CLEANUP
SHUTDOWN_FROM = {
    "unconfigured": Transition.TRANSITION_UNCONFIGURED_SHUTDOWN,
    "inactive": Transition.TRANSITION_INACTIVE_SHUTDOWN,
    "active": Transition.TRANSITION_ACTIVE_SHUTDOWN,
}


class Managed:
    """The node's lifecycle and parameter services, called from the probe's node over DDS."""

    def __init__(self, p: Probe, node: str) -> None:
        self.p = p
        self.node = node  # fully qualified, e.g. /lc/classifier
        self._change = p.node.create_client(ChangeState, f"{node}/change_state")
        self._get = p.node.create_client(GetState, f"{node}/get_state")
        self._get_params = p.node.create_client(GetParameters, f"{node}/get_parameters")
        self._set_params = p.node.create_client(SetParameters, f"{node}/set_parameters")
        clients = (self._change, self._get, self._get_params, self._set_params)
        wait_until(lambda: all(c.service_is_ready() for c in clients), 15.0)

    def _call(self, client: Any, request: Any, timeout: float) -> Any:
        future = client.call_async(request)
        wait_until(future.done, timeout)
        return future.result()

    def state(self) -> str:
        return self._call(self._get, GetState.Request(), 10.0).current_state.label

    def change(self, transition: int, timeout: float = 60.0) -> bool:
        request = ChangeState.Request()
        request.transition.id = transition
        return bool(self._call(self._change, request, timeout).success)

    def timed_change(self, transition: int) -> tuple[bool, float]:
        started = time.monotonic()
        ok = self.change(transition)
        return ok, time.monotonic() - started

    def param(self, name: str) -> Any:
        """A parameter's value as `ros2 param get` reads it (None: not declared or not set)."""
        values = self._call(self._get_params, GetParameters.Request(names=[name]), 10.0).values
        if not values:  # rclpy answers nothing for an undeclared parameter
            return None
        value = values[0]
        return {
            ParameterType.PARAMETER_NOT_SET: None,
            ParameterType.PARAMETER_STRING: value.string_value,
            ParameterType.PARAMETER_STRING_ARRAY: list(value.string_array_value),
        }[value.type]

    def set_string(self, name: str, value: str) -> tuple[bool, str]:
        """`ros2 param set <node> name value` for a string parameter."""
        param = ParameterMsg(
            name=name, value=ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=value)
        )
        result = self._call(self._set_params, SetParameters.Request(parameters=[param]), 10.0)
        return result.results[0].successful, result.results[0].reason

    def diagnostics(self, predicate: Any, timeout: float = 5.0) -> dict[str, str]:
        """The first node status from now on that satisfies `predicate`."""
        seen = len(self.p.diagnostics)
        return wait_until(
            lambda: next((d for d in self.p.diagnostics[seen:] if predicate(d)), None), timeout
        )


def _subscribed(p: Probe, topic: str) -> int:
    return len(p.node.get_subscriptions_info_by_topic(topic))


def _published(p: Probe, topic: str) -> int:
    return len(p.node.get_publishers_info_by_topic(topic))


def _no_answer(p: Probe, secs: range, colour: str = "red", period: float = 0.1) -> None:
    """Publish one frame per stamp in `secs`, then wait: none of them may be answered."""
    for sec in secs:
        p.image_pub.publish(raw_image(color_image(colour), "rgb8", sec))
        time.sleep(period)
    time.sleep(0.5)
    answered = [sec for sec in secs if p.result_for(sec) is not None]
    assert not answered, f"frames {answered} were classified while the node was not active"


def _threads(name: str) -> int:
    return sum(1 for t in threading.enumerate() if t.name == name and t.is_alive())


def test_autostart_false_walks_every_transition_over_dds(
    color_bundle: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """unconfigured -> inactive -> active -> inactive -> active -> inactive -> unconfigured ->
    finalized, with what each state promises checked from outside."""
    other = copy_bundle(color_bundle, tmp_path / "copy")  # the same classes at another path
    reloads_before, workers_before = _threads("reload"), _threads("classify")
    overrides = {"model_path": str(color_bundle), "autostart": False}
    with node_in_process(overrides, namespace="/lc") as node, probe(namespace="/lc") as p:
        m = Managed(p, "/lc/classifier")
        # unconfigured: no model, no endpoints, and /diagnostics says why nothing happens
        assert m.state() == "unconfigured"
        assert m.param("class_names") is None
        unconfigured = m.diagnostics(lambda d: d["lifecycle_state"] == "unconfigured")
        assert unconfigured["_level"] == "0" and "waiting for configure" in unconfigured["_message"]
        time.sleep(0.3)  # the probe has discovered the node (its services answered)
        assert _subscribed(p, "/lc/image") == 0 and _published(p, "/lc/classification") == 0
        _no_answer(p, range(1, 4))

        # configure: the model loads, class_names appear; still no inputs and no outputs
        ok, configure_s = m.timed_change(CONFIGURE)
        assert ok and m.state() == "inactive"
        assert m.param("class_names") == ["red", "green", "blue"]
        assert m.param("serving_model_path") == str(color_bundle)
        inactive = m.diagnostics(lambda d: d["lifecycle_state"] == "inactive")
        assert inactive["_message"].startswith("inactive:") and inactive["_level"] == "0"
        assert _subscribed(p, "/lc/image") == 0 and _published(p, "/lc/classification") == 0
        _no_answer(p, range(4, 7))

        # hot reload works while inactive: the next activation serves the new bundle
        assert m.set_string("model_path", str(other)) == (True, "")
        wait_until(lambda: m.param("serving_model_path") == str(other), 30.0)

        # activate: subscribed, classifying
        assert m.change(ACTIVATE) and m.state() == "active"
        p.wait_for_subscriber(p.image_pub)
        red = lambda s: raw_image(color_image("red"), "rgb8", s)  # noqa: E731
        assert p.publish_until_result(red, p.image_pub, 10)["results"][0]["class_id"] == "red"
        assert _threads("classify") == workers_before + 1  # the one worker, running
        m.diagnostics(lambda d: d["lifecycle_state"] == "active" and d["processed_frames"] != "0")

        # deactivate: the subscription and the outputs go away, frames are ignored
        assert m.change(DEACTIVATE) and m.state() == "inactive"
        wait_until(lambda: _subscribed(p, "/lc/image") == 0, 10.0)
        wait_until(lambda: _published(p, "/lc/classification") == 0, 10.0)
        assert _threads("classify") == workers_before
        _no_answer(p, range(20, 23))
        assert m.param("class_names") == ["red", "green", "blue"]  # the model is kept

        # re-activate: no model load, it answers at once
        ok, activate_s = m.timed_change(ACTIVATE)
        assert ok and activate_s < 2.0, (activate_s, configure_s)
        p.wait_for_subscriber(p.image_pub)
        assert p.publish_until_result(red, p.image_pub, 30)["results"][0]["class_id"] == "red"

        # deactivate + cleanup: the model is released, the node-owned parameters say so
        assert m.change(DEACTIVATE) and m.change(CLEANUP) and m.state() == "unconfigured"
        assert m.param("class_names") == [] and m.param("serving_model_path") == ""
        m.diagnostics(lambda d: d["lifecycle_state"] == "unconfigured")
        assert _threads("reload") == reloads_before

        # shutdown from unconfigured
        assert m.change(SHUTDOWN_FROM["unconfigured"]) and m.state() == "finalized"
        assert node.lifecycle_state == "finalized" and _threads("classify") == workers_before
    log = capfd.readouterr()
    text = log.out + log.err
    loads = [line for line in text.splitlines() if f"loaded {color_bundle} (" in line]
    assert len(loads) == 1, "the model was loaded more than once (deactivate must keep it)"
    assert "ERROR" not in text and "Traceback" not in text, text[-3000:]


def test_a_broken_bundle_fails_configure_with_the_reason_and_the_node_recovers(
    color_bundle: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    broken = copy_bundle(color_bundle, tmp_path / "broken")
    truncated_zip(broken, random.Random(3))
    workers_before = _threads("classify")
    overrides = {"model_path": str(broken), "autostart": False}
    with node_in_process(overrides, namespace="/lcb"), probe(namespace="/lcb") as p:
        m = Managed(p, "/lcb/classifier")
        assert not m.change(CONFIGURE)
        assert m.state() == "unconfigured"  # alive, answering, and unconfigured
        failed = m.diagnostics(lambda d: "configure failed" in d["_message"])
        assert failed["_level"] == "2" and str(broken) in failed["_message"]
        errors = [line for line in capfd.readouterr().err.splitlines() if "ERROR" in line]
        assert len(errors) == 1 and "configure failed" in errors[0] and str(broken) in errors[0]

        # unconfigured, model_path is only stored: a missing bundle is accepted here and
        # refused by the next configure, with its own reason
        missing = tmp_path / "missing"
        assert m.set_string("model_path", str(missing)) == (True, "")
        assert not m.change(CONFIGURE) and m.state() == "unconfigured"
        m.diagnostics(
            lambda d: str(missing) in d["_message"] and "not a model bundle" in d["_message"]
        )

        # fixed: configure, activate, classify; then shutdown from active
        assert m.set_string("model_path", str(color_bundle)) == (True, "")
        assert m.change(CONFIGURE) and m.change(ACTIVATE) and m.state() == "active"
        m.diagnostics(lambda d: d["lifecycle_state"] == "active" and d["_level"] == "0")
        p.wait_for_subscriber(p.image_pub)
        green = lambda s: raw_image(color_image("green"), "rgb8", s)  # noqa: E731
        assert p.publish_until_result(green, p.image_pub, 5)["results"][0]["class_id"] == "green"
        assert m.change(SHUTDOWN_FROM["active"]) and m.state() == "finalized"
        assert _threads("classify") == workers_before
        wait_until(lambda: _subscribed(p, "/lcb/image") == 0, 10.0)
        assert m.param("class_names") == []


def test_autostart_true_by_default_is_active_at_once(color_bundle: Path) -> None:
    with (
        node_in_process({"model_path": str(color_bundle)}, namespace="/lca") as node,
        probe(namespace="/lca") as p,
    ):
        assert node.lifecycle_state == "active"
        assert Managed(p, "/lca/classifier").state() == "active"
        p.wait_for_subscriber(p.image_pub)
        red = lambda s: raw_image(color_image("red"), "rgb8", s)  # noqa: E731
        assert p.publish_until_result(red, p.image_pub, 1)["results"][0]["class_id"] == "red"


@pytest.mark.skipif(not NODE_SCRIPT.is_file(), reason="console script not installed (make venv)")
def test_console_script_with_autostart_false_waits_for_its_manager_and_exits_on_shutdown(
    color_bundle: Path,
) -> None:
    proc = start_node_process(["-p", f"model_path:={color_bundle}", "-p", "autostart:=false"])
    try:
        with probe() as p:
            m = Managed(p, "/classifier")
            assert m.state() == "unconfigured"
            assert m.change(CONFIGURE) and m.change(ACTIVATE)
            p.wait_for_subscriber(p.image_pub)
            red = lambda s: raw_image(color_image("red"), "rgb8", s)  # noqa: E731
            assert p.publish_until_result(red, p.image_pub, 2)["results"][0]["class_id"] == "red"
            assert m.change(SHUTDOWN_FROM["active"])  # the reply comes before the exit
        proc.wait(timeout=15.0)
    finally:
        out = stop_process(proc)
    assert proc.returncode == 0, out
    assert "Traceback" not in out and "ERROR" not in out, out
    assert "autostart is false" in out
