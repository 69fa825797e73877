"""An index of the IAM principals tagged `connect-access:slack-user=<id>`, so finding a
person's principal by tag costs no IAM call in the common case.

IAM cannot look a principal up by tag, and ListRoles/ListUsers do not return tags: a scan
that asks per principal makes one call per role and user (6,000 in an account with 5,000
roles and 1,000 users). `GetAccountAuthorizationDetails` returns roles and users with
their tags, a thousand per page, so one full scan is a handful of calls. The index keeps
the result and refreshes it:

- in the background once it is older than `max_age` (lookups meanwhile use what it has);
- on a miss (a Slack user it does not know), at once, unless it was refreshed less than
  `miss_refresh` ago (so people without a principal cannot make it scan on every request);
- on demand (`forget`), when the caller finds that a principal no longer carries the tag.

Staleness, as documented in README ("Principal lookup at scale"): a new tag is found by
the first request after it is set (or within `miss_refresh`); a tag removed or moved to
another principal is noticed by the very next request, because the caller checks the
principal (one GetRole/GetUser call, which returns its tags) before granting; a second
principal tagged for a user already indexed is found within `max_age`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mypy_boto3_iam import IAMClient

log = logging.getLogger(__name__)

SLACK_USER_TAG = "connect-access:slack-user"
SERVICE_ROLE_PATH = "/aws-service-role/"
# GetAccountAuthorizationDetails pages hold at most 1,000 entities.
PAGE_SIZE = 1000


@dataclass(frozen=True)
class TaggedPrincipal:
    arn: str
    kind: str  # role | user
    tags: Mapping[str, str]


def account_principals(iam: IAMClient, filters: Sequence[str] = ("Role", "User")
                       ) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """(kind, detail) of every role and user in the account behind `iam`, with tags and
    inline policies, from GetAccountAuthorizationDetails, every page (botocore retries
    each page on its own)."""
    paginator = iam.get_paginator("get_account_authorization_details")
    for page in paginator.paginate(Filter=list(filters),  # type: ignore[arg-type]
                                   PaginationConfig={"PageSize": PAGE_SIZE}):
        for role in page.get("RoleDetailList", []):
            yield "role", role
        for user in page.get("UserDetailList", []):
            yield "user", user
        for group in page.get("GroupDetailList", []):
            yield "group", group


def tagged_in_account(iam: IAMClient) -> Iterator[TaggedPrincipal]:
    """Every role (not service-linked) and user carrying a connect-access:* tag."""
    for kind, detail in account_principals(iam):
        if kind == "role" and str(detail.get("Path", "/")).startswith(SERVICE_ROLE_PATH):
            continue
        tags = {t["Key"]: t["Value"] for t in detail.get("Tags", [])}
        if any(key.startswith("connect-access:") for key in tags):
            yield TaggedPrincipal(str(detail["Arn"]), kind, tags)


class PrincipalIndex:
    """Slack user id -> ARNs of the principals tagged for them, over the given accounts
    (None: the bot's own). Thread-safe; one refresh runs at a time."""

    def __init__(
        self,
        iam_client_factory: Callable[[str | None], IAMClient],
        accounts: Sequence[str | None] = (None,),
        *,
        max_age: float = 600.0,
        miss_refresh: float = 30.0,
        background: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._iam = iam_client_factory
        self._accounts = tuple(accounts)
        self.max_age = max_age
        self.miss_refresh = miss_refresh
        self._background = background
        self._clock = clock
        self._lock = threading.Lock()
        self._refresh_lock = threading.Lock()
        self._by_user: dict[str, tuple[str, ...]] = {}
        self._built_at: float | None = None
        self._refreshing = False
        self.refreshes = 0  # full scans made; visible for tests and benchmarks

    def lookup(self, slack_user_id: str) -> tuple[str, ...]:
        """The principals tagged for this user (empty when none)."""
        now = self._clock()
        with self._lock:
            built_at = self._built_at
        if built_at is None:
            self.refresh()  # warm-up: the first lookup waits for the first scan
        elif now - built_at >= self.max_age:
            self._refresh_soon()
        with self._lock:
            found = self._by_user.get(slack_user_id, ())
            built_at = self._built_at
        if not found and built_at is not None and self._clock() - built_at >= self.miss_refresh:
            self.refresh()
            with self._lock:
                found = self._by_user.get(slack_user_id, ())
        return found

    def forget(self, arn: str) -> None:
        """The caller saw `arn` without the tag the index has for it: drop it and let the
        next miss rescan at once."""
        with self._lock:
            self._by_user = {user: kept for user, arns in self._by_user.items()
                             if (kept := tuple(a for a in arns if a != arn))}
            if self._built_at is not None:
                self._built_at = min(self._built_at, self._clock() - self.miss_refresh)

    def refresh(self) -> None:
        """Scan every account now (waits for a scan already running instead of starting a
        second one). On failure the previous index stays and the error is raised."""
        with self._lock:
            generation = self.refreshes
        with self._refresh_lock:
            with self._lock:
                if self.refreshes != generation:
                    return  # someone else scanned while we waited
            started = self._clock()
            by_user: dict[str, list[str]] = {}
            for account in self._accounts:
                for principal in tagged_in_account(self._iam(account)):
                    user = principal.tags.get(SLACK_USER_TAG)
                    if user:
                        by_user.setdefault(user, []).append(principal.arn)
            with self._lock:
                self._by_user = {user: tuple(sorted(arns)) for user, arns in by_user.items()}
                self._built_at = started
                self.refreshes += 1
        log.info("principal index: %d Slack user(s) tagged across %d account(s)",
                 len(by_user), len(self._accounts))

    def _refresh_soon(self) -> None:
        if not self._background:
            self.refresh()
            return
        with self._lock:
            if self._refreshing:
                return
            self._refreshing = True

        def run() -> None:
            try:
                self.refresh()
            except Exception:
                # The old index keeps serving; the next lookup past max_age tries again.
                log.exception("refreshing the principal index failed")
            finally:
                with self._lock:
                    self._refreshing = False

        threading.Thread(target=run, name="principal-index", daemon=True).start()
