"""MkDocs hook: the CLI reference is generated from hetdiff's argparse parser at build time.

``docs/reference/cli.md`` holds the marker ``<!-- cli-reference -->``; ``on_page_markdown``
replaces it with ``cli_reference(build_parser())``: one section per subcommand with its usage,
description and a table of every option (flags, default, choices, help). Adding a flag to a
subcommand changes the page; nothing in it is written by hand.
"""

from __future__ import annotations

import argparse
from typing import Any

MARKER = "<!-- cli-reference -->"


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ").strip()


def _default(action: argparse.Action) -> str:
    if action.required or action.default in (None, argparse.SUPPRESS):
        return "required" if action.required else ""
    if isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction):
        return ""
    return f"`{action.default}`"


def _help(action: argparse.Action) -> str:
    if not action.help or action.help == argparse.SUPPRESS:
        return ""
    try:  # argparse's own expansion of %(default)s and friends
        text = action.help % {**vars(action), "prog": ""}
    except (KeyError, TypeError, ValueError):
        text = action.help
    return _cell(text)


def _options(parser: argparse.ArgumentParser) -> list[str]:
    rows = ["| option | default | choices | help |", "|---|---|---|---|"]
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
            continue
        if action.option_strings:
            name = ", ".join(f"`{flag}`" for flag in action.option_strings)
            if action.nargs != 0:
                name += f" `{action.metavar or action.dest.upper()}`"
        else:
            name = f"`{action.metavar or action.dest}` (positional)"
        choices = ", ".join(f"`{c}`" for c in action.choices) if action.choices else ""
        rows.append(f"| {name} | {_default(action)} | {choices} | {_help(action)} |")
    return rows


def _usage(parser: argparse.ArgumentParser) -> str:
    formatter = argparse.HelpFormatter(parser.prog, width=100)
    formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups, "")
    return formatter.format_help().strip()


def cli_reference(parser: argparse.ArgumentParser) -> str:
    """Markdown for ``parser`` and each of its subcommands, in the order they were added."""
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {choice.dest: choice.help for choice in subparsers._choices_actions}
    lines = [f"```text\n{_usage(parser)}\n```", "", *_options(parser), ""]
    for name, sub in subparsers.choices.items():
        lines += [f"## `hetdiff {name}`", "", _cell(helps.get(name) or ""), ""]
        if sub.description:
            lines += [sub.description, ""]
        lines += [f"```text\n{_usage(sub)}\n```", "", *_options(sub), ""]
    return "\n".join(lines)


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    if MARKER not in markdown:
        return markdown
    from hetdiff.cli import build_parser

    return markdown.replace(MARKER, cli_reference(build_parser()))
