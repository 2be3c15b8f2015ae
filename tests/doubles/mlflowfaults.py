"""FAKE for fault injection: an MLflow client that fails once, on purpose.

:class:`FaultyClient` wraps a real ``mlflow.MlflowClient`` (talking to a real server) and passes
every call through, except the call an :class:`Injector` is armed for: the ``nth`` call of that
method raises ``MlflowException`` (``INTERNAL_ERROR``, as a tracking server's 5xx reaches the
client), once. Installed in place of :func:`kadet.registry.tracking.client` (``install``), it
stands in for a registry that fails at one chosen step; the calls MLflow's fluent API makes
(``log_model``, ``register_model``) are not wrapped.
"""

from __future__ import annotations

from mlflow.exceptions import MlflowException


class Injector:
    """Which call fails next: ``arm(method, nth)``; ``fired`` records the faults raised."""

    def __init__(self):
        self.method, self.left, self.fired = "", 0, []

    def arm(self, method: str, nth: int = 1) -> None:
        self.method, self.left = method, nth

    def check(self, method: str) -> None:
        if self.left and method == self.method:
            self.left -= 1
            if not self.left:
                self.fired.append(method)
                raise MlflowException(f"injected fault: {method} failed (HTTP 503)", error_code="INTERNAL_ERROR")


class FaultyClient:
    """FAKE (fault injection): the real client, failing once where the injector says."""

    def __init__(self, real, injector: Injector):
        self._real, self._injector = real, injector

    def __getattr__(self, name):
        attr = getattr(self._real, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            self._injector.check(name)
            return attr(*args, **kwargs)
        return call


def install(monkeypatch, injector: Injector) -> None:
    """Every ``kadet.registry.tracking.client(cfg)`` is a :class:`FaultyClient` for the test."""
    from kadet.registry import tracking

    real = tracking.client
    monkeypatch.setattr(tracking, "client", lambda cfg: FaultyClient(real(cfg), injector))
