"""connect-access: just-in-time, time-boxed access to the Amazon Connect console from Slack."""

__version__ = "0.1.0"
