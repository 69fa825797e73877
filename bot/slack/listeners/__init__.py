"""Bolt listeners, one module per Slack surface: commands, actions, views, events.

Each surface has small `ack_*` functions (pure, no I/O, so Slack gets its answer within
3 s) and `run_*` handlers that do the work in Bolt lazy listeners after the ack. Handlers
are plain functions of (SlackDeps, Incoming); each module's `register(app, deps)` binds
its own ids to them, and `bot.slack.app.build_app` calls every module's register.
"""
