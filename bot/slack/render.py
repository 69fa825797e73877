"""Block Kit -> readable text: what a Slack user would have seen, for the demo and logs.

mrkdwn control sequences are shown the way Slack shows them: `<@U1>` as @U1, dates by
their fallback, links by their label, and escaped `&lt;` back as `<`.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

_CONTROL = re.compile(r"<([^<>]*)>")
_BOLD = re.compile(r"(?<![\w*])\*([^*\n]+)\*(?![\w*])")
_ITALIC = re.compile(r"(?<![\w_])_([^_\n]+)_(?![\w_])")
_EMOJI = re.compile(r":([a-z0-9_+-]+):")
EMOJI = {
    "white_check_mark": "✅",
    "no_entry": "⛔",
    "no_entry_sign": "🚫",
    "hourglass_flowing_sand": "⏳",
    "hourglass": "⌛",
    "large_green_circle": "🟢",
    "white_circle": "⚪",
    "x": "❌",
    "warning": "⚠️",
    "alarm_clock": "⏰",
    "rotating_light": "🚨",
    "gear": "⚙️",
    "zzz": "💤",
    "heavy_multiplication_x": "✖️",
}


def _control(match: re.Match[str]) -> str:
    inner = match.group(1)
    target, _, label = inner.partition("|")
    if target.startswith("@"):
        return "@" + (label or target[1:])
    if target.startswith("#"):
        return "#" + (label or target[1:])
    if target.startswith("!subteam^"):
        return "@" + (label or target.split("^", 1)[1])
    if target.startswith("!date^"):
        return label or target
    if target.startswith("!"):
        return "@" + target[1:]
    return f"{label} ({target})" if label else target


def mrkdwn_to_text(text: str) -> str:
    """Formatting marks go (Slack shows *bold* as bold, not with stars); control sequences
    become what they display; entities are decoded last, so escaped text stays literal."""
    shown = _CONTROL.sub(_control, text)
    shown = _BOLD.sub(r"\1", shown)
    shown = _ITALIC.sub(r"\1", shown)
    shown = _EMOJI.sub(lambda m: EMOJI.get(m.group(1), m.group(0)), shown)
    return shown.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def _text(obj: Mapping[str, Any] | None) -> str:
    if not obj:
        return ""
    text = str(obj.get("text", ""))
    return mrkdwn_to_text(text) if obj.get("type") == "mrkdwn" else text


def _element(element: Mapping[str, Any]) -> str:
    kind = element.get("type")
    if kind == "button":
        return f"[{_text(element.get('text'))}]"
    if kind in ("static_select", "radio_buttons"):
        options = [_text(o.get("text")) for o in element.get("options", [])]
        chosen = element.get("initial_option")
        picked = f" = {_text(chosen.get('text'))}" if chosen else ""
        return f"<select: {' | '.join(options)}{picked}>"
    if kind == "plain_text_input":
        return "<text box" + (", multi-line" if element.get("multiline") else "") + ">"
    if kind in ("mrkdwn", "plain_text"):
        return _text(element)
    return f"<{kind}>"


def render_blocks(blocks: Sequence[Mapping[str, Any]], width: int = 88) -> str:
    lines: list[str] = []
    for block in blocks:
        kind = block.get("type")
        if kind == "header":
            title = _text(block.get("text"))
            lines += [title, "=" * min(len(title), width)]
        elif kind == "section":
            if block.get("text"):
                lines += _text(block.get("text")).splitlines()
            fields = [_text(f).replace("\n", ": ", 1) for f in block.get("fields", [])]
            lines += [f"  {f}" for f in fields]
            if block.get("accessory"):
                lines.append("  " + _element(block["accessory"]))
        elif kind == "context":
            lines += [
                "  " + line for e in block.get("elements", []) for line in _element(e).splitlines()
            ]
        elif kind == "actions":
            lines.append(" ".join(_element(e) for e in block.get("elements", [])))
        elif kind == "divider":
            lines.append("-" * 40)
        elif kind == "input":
            hint = f" ({_text(block.get('hint'))})" if block.get("hint") else ""
            lines.append(f"{_text(block.get('label'))}: {_element(block.get('element', {}))}{hint}")
        else:
            lines.append(f"<{kind} block>")
    wrapped: list[str] = []
    for line in lines:
        wrapped += textwrap.wrap(line, width, subsequent_indent="  ") or [""]
    return "\n".join(wrapped)


def render_view(view: Mapping[str, Any], width: int = 88) -> str:
    """A modal or App Home view, with its title and buttons."""
    title = _text(view.get("title")) or ("App Home" if view.get("type") == "home" else "")
    body = render_blocks(view.get("blocks", []), width)
    footer = " ".join(f"[{_text(view[key])}]" for key in ("close", "submit") if view.get(key))
    parts = [f"┌ {title}", body]
    if footer:
        parts.append(footer)
    return "\n".join(parts)


def render_message(message: Mapping[str, Any], width: int = 88) -> str:
    """A chat message: its blocks, or its fallback text when it has none."""
    blocks = message.get("blocks")
    if blocks:
        return render_blocks(blocks, width)
    return "\n".join(textwrap.wrap(mrkdwn_to_text(str(message.get("text", ""))), width))
