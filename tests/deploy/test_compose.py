"""docker-compose.yml and deploy/nginx.conf against the service they run: the api's variables are
settings of the service, its health check is the readiness route, the stop grace period covers
the drain, and nginx passes on what a stopping or starting replica answers."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.api import router
from service.settings import Settings
from service.workers import GRACEFUL_SHUTDOWN_SECONDS

ROOT = Path(__file__).resolve().parents[2]
MARGIN_SECONDS = 5
DEFAULT = re.compile(r"\$\{[A-Z0-9_]+:-([^}]*)\}")


def api_service() -> dict[str, Any]:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    service: dict[str, Any] = compose["services"]["api"]
    return service


def defaults(value: str) -> str:
    """A compose value with each `${VAR:-default}` replaced by its default."""
    return DEFAULT.sub(lambda match: match.group(1), value)


def api_settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The service's settings as the compose file sets them, with every variable at its default."""
    for name in list(Settings.model_fields):
        monkeypatch.delenv(f"AFM_{name.upper()}", raising=False)
    for name, value in api_service()["environment"].items():
        monkeypatch.setenv(name, defaults(str(value)))
    return Settings()


def test_api_environment_names_settings_of_the_service(monkeypatch: pytest.MonkeyPatch) -> None:
    names = list(api_service()["environment"])
    unknown = [n for n in names if n.removeprefix("AFM_").lower() not in Settings.model_fields]
    assert all(n.startswith("AFM_") for n in names) and not unknown, unknown
    settings = api_settings(monkeypatch)
    assert (settings.host, settings.port) == ("0.0.0.0", 8000)


def test_health_check_asks_the_readiness_route() -> None:
    test = " ".join(api_service()["healthcheck"]["test"])
    assert "/readyz" in test
    assert "/readyz" in {getattr(route, "path", None) for route in router.routes}


def test_stop_grace_period_covers_the_drain_and_the_shutdown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    grace = re.fullmatch(r"(\d+)s", api_service()["stop_grace_period"])
    assert grace is not None
    settings = api_settings(monkeypatch)
    assert settings.drain_seconds >= 1
    needed = settings.drain_seconds + GRACEFUL_SHUTDOWN_SECONDS + MARGIN_SECONDS
    assert int(grace.group(1)) >= needed


def test_nginx_passes_on_what_a_stopping_or_starting_replica_answers() -> None:
    conf = (ROOT / "deploy" / "nginx.conf").read_text()
    (directive,) = re.findall(r"^\s*proxy_next_upstream\s+([^;]+);", conf, re.MULTILINE)
    conditions = set(directive.split())
    # refused or reset connections, a silent address, 503 not_ready or overloaded, POST /predict
    assert {"error", "timeout", "http_502", "http_503", "non_idempotent"} <= conditions
    (tries,) = re.findall(r"^\s*proxy_next_upstream_tries\s+(\d+);", conf, re.MULTILINE)
    assert int(tries) >= 2
