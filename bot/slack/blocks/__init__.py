"""Block Kit: every message, modal and App Home view the bot shows, one module per surface.

- `primitives`: text, section, button, context and the other building blocks, cut to
  Slack's size limits;
- `request_text`: how a request, an entry and its access read in mrkdwn on every surface;
- `forms`: the request, deny and extension forms: their fields, Slack's limits on them,
  and the parsing and validation of what is submitted;
- one module per surface, each owning its action ids: `answers` (what /connect-access
  replies), `approval` (the approval channel's message), `dms` (what the requester is
  told), `home` (App Home), `modals` (the modals around the forms and their outcomes),
  `permissions` (the "See permissions" modal) and `audit` (audit review).

Builders take plain data from bot.slack.services and return Block Kit dicts. Text that came
from people (queries, reasons, comments) or from the core's messages is escaped in these
modules, at the one place it enters mrkdwn; plain_text fields are shown literally by Slack
and need no escaping. Import the module you need (`from bot.slack.blocks import approval`):
this package re-exports nothing, so each name has one home.
"""
