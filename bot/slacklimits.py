"""Slack's limits on what the bot sends (Block Kit reference), in one place: config load
refuses settings that would break a surface, and the Block Kit builders cut to them."""

from __future__ import annotations

SELECT_OPTIONS_MAX = 100      # options in one static_select (the request form's instances)
OPTION_VALUE_MAX = 150        # an option's value (an instance alias)
PRIVATE_METADATA_MAX = 3000   # a view's private_metadata (the request form carries aliases)
TEXT_MAX = 3000               # a section's text, a context element's text
VIEW_BLOCKS_MAX = 100         # blocks in a modal or the App Home
MESSAGE_BLOCKS_MAX = 50       # blocks in a message

# Not Slack's, but as binding: access_requests.instance_alias is VARCHAR(100).
ALIAS_STORED_MAX = 100
# Longest catalog entry id the request form's metadata must leave room for
# (access_requests.entry_id is VARCHAR(200)).
ENTRY_ID_MAX = 200
