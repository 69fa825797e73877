"""How the approval message and the DM show who receives a grant (bot.slack.blocks)."""

from __future__ import annotations

from bot.slack.blocks.request_text import access_lines
from bot.targets import access_route

INSTANCE = "arn:aws:connect:us-east-1:111122223333:instance/11111111-2222-3333-4444-555555555555"


def test_a_group_target_warns_how_many_users_it_reaches() -> None:
    route = access_route("arn:aws:iam::111122223333:group/admins", INSTANCE, group_members=12)
    lines = access_lines(route)
    assert lines[0] == ("*Access* IAM group arn:aws:iam::111122223333:group/admins "
                        "(account `111122223333`)")
    assert lines[1] == ":warning: This is an IAM group: the grant reaches all 12 IAM users in it."
    single = access_lines(access_route("arn:aws:iam::111122223333:group/admins", INSTANCE,
                                       group_members=1))
    assert single[1].endswith("all 1 IAM user in it.")


def test_an_identity_center_route_before_and_after_the_grant() -> None:
    before = access_lines(access_route("identity-center-user:a<b>@example.com", INSTANCE,
                                       portal_url="https://d-1234567890.awsapps.com/start"))
    assert "a&lt;b&gt;@example.com" in before[0] and "<b>" not in before[0]
    assert before[1] == ("Sign in to the <https://d-1234567890.awsapps.com/start|AWS access "
                         "portal>, choose account `111122223333`, then permission set "
                         "`connect-access-…` (named when it is granted).")
    after = access_lines(access_route("identity-center-user:alice@example.com", INSTANCE,
                                      grant_name="connect-access-abc123"))
    assert after[1].endswith("then permission set `connect-access-abc123`.")


def test_plain_roles_show_no_group_or_session_lines() -> None:
    lines = access_lines(access_route("arn:aws:iam::111122223333:role/alice", INSTANCE,
                                      group_members=3))
    assert lines == ["*Access* IAM role arn:aws:iam::111122223333:role/alice "
                     "(account `111122223333`)"]
    assert access_lines(None) == []
