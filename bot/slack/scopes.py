"""The bot token scopes the bot needs: slack-manifest.yaml asks for exactly these, and
`connect-access check` compares them with what Slack reports for SLACK_BOT_TOKEN."""

from __future__ import annotations

REQUIRED_BOT_SCOPES = (
    "commands",         # the slash command
    "chat:write",       # approval messages, DMs
    "im:write",         # conversations.open for DMs
    "usergroups:read",  # expand approver user groups
    "files:write",      # audit exports uploaded to auditors
    "channels:history",  # audit verify reads checkpoints back from audit.anchor_channel
    "groups:history",   # ... when that channel is private
)
