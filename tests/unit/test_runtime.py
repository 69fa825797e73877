"""The composition root: how the notifier reaches the RequestService. Nothing here opens a
database connection or calls AWS (the engine and the boto3 clients are lazy)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from bot.evidence import NotificationRecorder
from bot.fakes import RecordingNotifier
from bot.lifecycle import RequestService
from bot.runtime import build_runtime
from bot.settings import Settings


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(database_url=f"sqlite:///{tmp_path / 'unused.db'}", aws_region="us-east-1")


def test_the_notifier_factory_is_given_the_service_it_notifies_for(settings: Settings) -> None:
    made: list[tuple[RequestService, RecordingNotifier]] = []

    def factory(service: RequestService) -> RecordingNotifier:
        made.append((service, RecordingNotifier()))
        return made[-1][1]

    runtime = build_runtime(settings, notifier_factory=factory,
                            min_duration=timedelta(seconds=1))
    try:
        ((service, notifier),) = made
        assert service is runtime.service
        # Wrapped so that each notification sent is recorded for `audit show`.
        assert isinstance(runtime.service.notifier, NotificationRecorder)
        assert runtime.service.notifier.inner is notifier and runtime.notifier is runtime.service.notifier
        assert runtime.service.min_duration == timedelta(seconds=1)
    finally:
        runtime.close()


def test_a_ready_notifier_is_used_as_it_is(settings: Settings) -> None:
    notifier = RecordingNotifier()
    runtime = build_runtime(settings, notifier=notifier)
    try:
        assert isinstance(runtime.service.notifier, NotificationRecorder)
        assert runtime.service.notifier.inner is notifier and runtime.notifier is runtime.service.notifier
        assert runtime.service.min_duration == timedelta(minutes=1)  # the lifecycle's floor
    finally:
        runtime.close()


def test_a_notifier_and_a_factory_together_are_refused(settings: Settings) -> None:
    with pytest.raises(TypeError, match="not both"):
        build_runtime(settings, notifier=RecordingNotifier(),
                      notifier_factory=lambda service: RecordingNotifier())
