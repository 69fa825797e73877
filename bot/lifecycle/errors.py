"""The lifecycle's domain errors; each message is written for the person who reads it
(the Slack layer shows it as it is)."""

from __future__ import annotations


class LifecycleError(Exception):
    """A request operation that cannot be done; the message is for the Slack user."""


class NotFound(LifecycleError):
    pass


class InvalidRequest(LifecycleError):
    """The request itself is malformed (reason, duration, entry, instance)."""


class NotAllowed(LifecycleError):
    """This person may not do this to this request."""


class SelfApproval(NotAllowed):
    pass


class InvalidTransition(LifecycleError):
    """The request is not in a state where this makes sense (e.g. already decided)."""


class DuplicateVote(LifecycleError):
    pass


class AlreadyActive(LifecycleError):
    """The principal already has an open request for this entry; extend it instead."""

    def __init__(self, message: str, existing_request_id: int) -> None:
        super().__init__(message)
        self.existing_request_id = existing_request_id


class ConcurrentChange(LifecycleError):
    pass


class GrantFailed(LifecycleError):
    pass
