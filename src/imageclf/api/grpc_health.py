"""The standard gRPC health protocol (grpc.health.v1.Health) on the gRPC port.

Kubernetes' `grpc:` probes and cloud load balancers ask it. It answers NOT_SERVING until /readyz
would pass (Redis answers, every served model has a live worker, a decoder runs), re-checked
every HEALTH_POLL_S by one thread, and again NOT_SERVING from the moment the server is asked to
stop, so a balancer drains it before it goes. The overall status (service "") and the inference
service's own name report the same; "liveness" is SERVING while the process runs (a liveness
probe must not restart a server only because Redis is away).
"""

from __future__ import annotations

import logging
import threading

import grpc
from flask import Flask
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from imageclf import settings
from imageclf.api.health import readiness

logger = logging.getLogger("imageclf.api.grpc")

SERVICES = ("", "inference.GRPCInferenceService")
LIVENESS = "liveness"


class Health:
    """The health servicer and the thread that keeps it in step with /readyz."""

    def __init__(self, app: Flask) -> None:
        self.app = app
        self.servicer = health.HealthServicer()
        self._stopping = threading.Event()
        self._serving: bool | None = None
        self._set(False, "starting")
        self.servicer.set(LIVENESS, health_pb2.HealthCheckResponse.SERVING)

    def add_to(self, server: grpc.Server) -> None:
        health_pb2_grpc.add_HealthServicer_to_server(self.servicer, server)
        threading.Thread(target=self._poll, name="grpc-health", daemon=True).start()

    def stop(self) -> None:
        """NOT_SERVING from now on, whatever /readyz says."""
        self._stopping.set()
        self.servicer.enter_graceful_shutdown()

    def _poll(self) -> None:
        while not self._stopping.is_set():
            with self.app.app_context():
                try:
                    ready, body = readiness()
                except Exception as exc:  # never let the probe's thread die: report, retry next round
                    ready, body = False, {"reason": f"{type(exc).__name__}: {exc}"}
            if not self._stopping.is_set():
                self._set(ready, body.get("reason", ""))
            self._stopping.wait(settings.HEALTH_POLL_S)

    def _set(self, serving: bool, reason: str) -> None:
        if serving != self._serving:
            logger.info("gRPC health: %s%s", "SERVING" if serving else "NOT_SERVING", f" ({reason})" if reason else "")
        self._serving = serving
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for service in SERVICES:
            self.servicer.set(service, status)
