"""`classifier_node`: classify camera images (whole, or regions of interest) with a model bundle
and publish the top classes; a managed (lifecycle) node.

This module is the lifecycle shell. What one configuration holds (model, cameras, pipeline,
worker, capture) is `session.Session`; the data path is `pipeline.py` (each camera's callbacks
only store the newest frame or image + detections pair, `handoff.py`; one worker thread
classifies the newest frame of every camera in one batched inference and publishes per camera);
hot reload is `reload.py`; the parameters are the table in `config.py` (docs/node.md).

Lifecycle: `configure` reads the parameters into one frozen config, loads and warms up the model
and builds the cameras (a broken bundle or a bad parameter fails the transition with the
one-line reason, and the node stays unconfigured and alive); `activate` creates the publishers
and subscriptions and starts the worker; `deactivate` stops both and keeps the model; `cleanup`
releases the model; `shutdown` releases everything from any state. `autostart` (default true)
walks to active in the constructor, so `ros2 run` behaves as a plain node and a refused start-up
still raises (the console script exits 2 with one line). Parameters are declared in the
constructor, so they can be set in every state; /diagnostics runs in every state and says it.

`model_path` is the user's request and the node never writes it; what serves is published in the
node-owned `serving_model_path` and `class_names`, through the public `set_parameters` (see
`config.py` for why they are not `read_only`).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import rclpy
import rclpy.logging
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter

from tl_perception.errors import NodeConfigError, TlPerceptionError, one_line
from tl_perception.ros.camera import OUTPUT_QOS
from tl_perception.ros.config import PARAMETERS, convert_values
from tl_perception.ros.diagnostics import build_unconfigured_diagnostics
from tl_perception.ros.names import NODE_NAME, diagnostics_status_name
from tl_perception.ros.params import NodeOwnedWriter, declare_all, read_config
from tl_perception.ros.session import Session

DIAGNOSTICS_PERIOD_S = 1.0
#: The primary lifecycle states, spelled as lifecycle_msgs/State labels them.
UNCONFIGURED, INACTIVE, ACTIVE, FINALIZED = "unconfigured", "inactive", "active", "finalized"
#: After `shutdown` the console script spins this long before it exits, so the reply to the
#: change_state request that finalized the node reaches the caller.
FINALIZED_GRACE_S = 0.5


class ClassifierNode(LifecycleNode):
    """The classifier as a managed node. What each transition does, and undoes when it fails:

    - configure (unconfigured -> inactive): a `Session` from the parameters (the model loaded);
      a refusal (broken bundle, bad parameter) is FAILURE with its one-line reason logged and
      shown in /diagnostics, and the node stays unconfigured;
    - activate (inactive -> active): the session's publishers, subscriptions, worker and
      capture; deactivate (active -> inactive) stops and destroys them and keeps the model;
    - cleanup (inactive -> unconfigured): the session released;
    - shutdown (any state -> finalized): everything above, whatever was running.

    An unexpected exception in a transition is ERROR: `on_error` releases everything and the
    node is unconfigured again.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        self._lifecycle_state = UNCONFIGURED
        self._starting = False  # autostart in progress: a refusal is raised, not logged
        self._transition_error: Exception | None = None
        self._configure_error = ""  # one line, shown in /diagnostics while unconfigured
        self._owned = NodeOwnedWriter(self)
        self._session: Session | None = None
        try:
            autostart = bool(declare_all(self)["autostart"])  # a bad value stops start-up
            self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", OUTPUT_QOS)
            self._diag_timer = self.create_timer(DIAGNOSTICS_PERIOD_S, self._publish_diagnostics)
            self.add_on_set_parameters_callback(self._on_set_parameters)
            if autostart:
                self._walk_to_active()
        except BaseException:
            # A refused start-up (bad parameter, broken bundle) must not leave a half-built
            # node in the graph: a caller that goes on (a test, a launch retry) would see it.
            self.destroy_node()
            raise
        if not autostart:
            self.get_logger().info(
                "autostart is false: unconfigured until a lifecycle manager configures and "
                f"activates it (ros2 lifecycle set {self.get_fully_qualified_name()} configure)"
            )

    @property
    def lifecycle_state(self) -> str:
        """The primary state: unconfigured, inactive, active or finalized."""
        return self._lifecycle_state

    # ---------------------------------------------------------------- lifecycle transitions
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """unconfigured -> inactive: parameters, cameras, the model."""
        return self._transition("configure", self._configure, INACTIVE, self._cleanup)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """inactive -> active: subscribe, publish, classify."""
        return self._transition("activate", self._activate, ACTIVE, self._deactivate)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """active -> inactive: inputs and outputs gone, the model kept."""
        return self._transition("deactivate", self._deactivate, INACTIVE, self._deactivate)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        """inactive -> unconfigured: the model released."""
        return self._transition("cleanup", self._cleanup, UNCONFIGURED, self._cleanup)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Any primary state -> finalized: threads stopped, everything released."""
        return self._transition("shutdown", self._shutdown, FINALIZED, self._shutdown)

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        """After an unexpected exception in a transition: release everything, unconfigured."""
        try:
            self._deactivate()
            self._cleanup()
        except Exception as err:  # cannot even release: finalized (rclpy's rule for FAILURE)
            self.get_logger().error(f"error processing failed: {one_line(err)}; finalized")
            self._lifecycle_state = FINALIZED
            return TransitionCallbackReturn.FAILURE
        self._lifecycle_state = UNCONFIGURED
        return TransitionCallbackReturn.SUCCESS

    def _walk_to_active(self) -> None:
        """`autostart`: configure, then activate; a failed step raises its error."""
        self._starting = True
        try:
            for trigger in (self.trigger_configure, self.trigger_activate):
                if trigger() != TransitionCallbackReturn.SUCCESS:
                    raise self._transition_error or NodeConfigError("start-up transition failed")
        finally:
            self._starting = False

    def _transition(
        self, name: str, step: Callable[[], None], goal: str, undo: Callable[[], None]
    ) -> TransitionCallbackReturn:
        """Run one transition's `step`; on an exception `undo` what it half did.

        rclpy itself turns an exception into ERROR without a word, hence the logging here.
        """
        self._transition_error = None
        try:
            step()
        except Exception as err:
            self._transition_error = err
            return self._failed(name, err, undo)
        if name == "configure":
            self._configure_error = ""
        self._lifecycle_state = goal
        self.get_logger().info(f"{name}: now {goal}")
        return TransitionCallbackReturn.SUCCESS

    def _failed(
        self, name: str, err: Exception, undo: Callable[[], None]
    ) -> TransitionCallbackReturn:
        """A refused configure or activate (TlPerceptionError: broken bundle, bad parameter) is
        FAILURE, logged in one line (during autostart the caller raises it instead), and the
        node stays where it was. Anything else, and any failure to release, is ERROR: error
        processing (`on_error`) releases everything."""
        refused = isinstance(err, TlPerceptionError) and name in ("configure", "activate")
        if name == "configure":
            self._configure_error = one_line(err)
        try:
            undo()
        except Exception as undo_err:  # report the first error; error processing follows
            self.get_logger().error(f"{name}: undoing failed too: {one_line(undo_err)}")
            refused = False
        if not (self._starting and refused):
            why = one_line(err) if refused else f"{type(err).__name__}: {one_line(err)}"
            self.get_logger().error(
                f"{name} failed: {why}; "
                + (f"still {self._lifecycle_state}" if refused else "error processing follows")
            )
        return TransitionCallbackReturn.FAILURE if refused else TransitionCallbackReturn.ERROR

    # ---------------------------------------------------------------- the steps
    def _configure(self) -> None:
        """The parameters as they are now, then everything a configuration holds."""
        self._session = Session(self, read_config(self), self._owned)

    def _activate(self) -> None:
        assert self._session is not None
        self._session.activate()

    def _deactivate(self) -> None:
        """Idempotent (it also undoes a half-done activate and runs from any state)."""
        if self._session is not None:
            self._session.deactivate()

    def _cleanup(self) -> None:
        """Release the session; the node-owned parameters show that nothing serves."""
        self._release()
        self._owned.clear()

    def _release(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            session.release()

    def _shutdown(self) -> None:
        """Whatever runs stops, everything is released; /diagnostics stops too."""
        self._deactivate()
        self._cleanup()
        self._diag_timer.cancel()

    # ---------------------------------------------------------------- parameters, diagnostics
    def _on_set_parameters(self, params: Sequence[Parameter]) -> SetParametersResult:
        """Apply a run-time set as one new config, or refuse it whole with the reason.

        Unconfigured, nothing serves: each value is checked on its own and stored for the next
        configure, which checks the rules between them (and loads `model_path`).
        """
        values = {p.name: p.value for p in params}
        session = self._session
        try:
            self._owned.check(values)
            if session is None:
                convert_values(values)
                return SetParametersResult(successful=True)
            config = session.config.with_changes(values)
            if "model_path" in values:
                session.check_bundle(config.model_path)
        except TlPerceptionError as err:
            return SetParametersResult(successful=False, reason=one_line(err))
        names = values.keys() & PARAMETERS.keys()
        if names:
            session.apply(config, names)
        return SetParametersResult(successful=True)

    def _publish_diagnostics(self) -> None:
        """Every state: unconfigured (and why, after a failed configure), inactive or active
        with the cameras' statistics."""
        stamp = self.get_clock().now().to_msg()
        session = self._session
        if session is not None:
            self._diag_pub.publish(session.diagnostics(stamp, self._lifecycle_state))
            return
        self._diag_pub.publish(
            build_unconfigured_diagnostics(
                diagnostics_status_name(self.get_fully_qualified_name()),
                stamp,
                str(self.get_parameter("model_path").value),
                self._configure_error,
            )
        )

    def destroy_node(self) -> None:
        """Whatever the state (Ctrl-C ends an active node): stop the threads, release all."""
        self._deactivate()
        self._release()
        super().destroy_node()


def spin_until_finalized(executor: SingleThreadedExecutor, node: ClassifierNode) -> None:
    """Spin until the context ends (Ctrl-C) or the node is finalized (`shutdown`): a finalized
    node can never serve again, so the process ends; it spins a moment longer so the caller of
    that shutdown gets its reply."""
    while rclpy.ok() and node.lifecycle_state != FINALIZED:
        executor.spin_once(timeout_sec=0.1)
    deadline = time.monotonic() + FINALIZED_GRACE_S
    while rclpy.ok() and time.monotonic() < deadline:
        executor.spin_once(timeout_sec=0.05)


def main(args: list[str] | None = None) -> int:
    """Console script `classifier_node` (what `ros2 run tl_perception classifier_node` starts)."""
    rclpy.init(args=args)
    node = None
    try:
        node = ClassifierNode()
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        spin_until_finalized(executor, node)
    except TlPerceptionError as err:
        rclpy.logging.get_logger(NODE_NAME).error(f"cannot start: {one_line(err)}")
        return 2
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
