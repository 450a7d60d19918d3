"""``hostbus manpage``: the manual page, written from the commands themselves (their
usage, help and options), so it cannot drift from ``--help``."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import click

from console.commands.common import CONFIGURATION, EXIT_MEANING, Exit, exits
from hostbus import __version__


def _roff(text: str) -> str:
    """Text safe in roff: backslashes and hyphens escaped, no line starting a request."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join(("\\&" + line) if line[:1] in (".", "'") else line
                     for line in text.splitlines())


def _paragraphs(help_text: str) -> list[str]:
    """Help text as roff paragraphs; click's \\b blocks keep their lines."""
    out: list[str] = []
    for block in re.split(r"\n\s*\n", help_text.strip()):
        if block.lstrip().startswith("\b"):
            lines = block.lstrip().removeprefix("\b").strip("\n")
            out.append(".nf\n" + _roff(lines) + "\n.fi")
        else:
            out.append(_roff(" ".join(line.strip() for line in block.splitlines())))
    return out


def _command(cmd: click.Command, ctx: click.Context, path: str) -> list[str]:
    lines = [f'.SS "{_roff(path)} {_roff(" ".join(cmd.collect_usage_pieces(ctx)))}"']
    for para in _paragraphs(cmd.help or ""):
        lines += [para, ".PP"]
    for param in cmd.get_params(ctx):
        record = param.get_help_record(ctx)
        if record is None:
            continue
        lines += [".TP", f"\\fB{_roff(record[0])}\\fR", _roff(record[1])]
    if isinstance(cmd, click.Group):
        for name in cmd.list_commands(ctx):
            sub = cmd.get_command(ctx, name)
            if sub is not None and not sub.hidden:
                lines += _command(sub, click.Context(sub, info_name=name, parent=ctx),
                                  f"{path} {name}")
    return lines


def render(root: click.Group) -> str:
    ctx = click.Context(root, info_name="hostbus")
    date = datetime.now(UTC).strftime("%Y-%m-%d")
    lines = [f'.TH HOSTBUS 1 "{date}" "hostbus {__version__}" "User Commands"',
             ".nh", ".ad l",  # ids and URLs are neither hyphenated nor stretched
             ".SH NAME", "hostbus \\- manage hosts and their VMs through the hostbus "
             "message bus", ".SH SYNOPSIS",
             ".B hostbus", "[\\fIOPTIONS\\fR] \\fICOMMAND\\fR [\\fIARGS\\fR]...",
             ".SH DESCRIPTION"]
    for para in _paragraphs(root.help or ""):
        lines += [para, ".PP"]
    lines.append(".SH OPTIONS")
    for param in root.get_params(ctx):
        record = param.get_help_record(ctx)
        if record is not None:
            lines += [".TP", f"\\fB{_roff(record[0])}\\fR", _roff(record[1])]
    lines.append(".SH COMMANDS")
    for name in root.list_commands(ctx):
        cmd = root.get_command(ctx, name)
        if cmd is not None and not cmd.hidden:
            lines += _command(cmd, click.Context(cmd, info_name=name, parent=ctx),
                              f"hostbus {name}")
    lines += [".SH EXIT STATUS", "Each command's \\-\\-help lists the codes it can end with.",
              *(item for code, meaning in EXIT_MEANING.items()
                for item in (".TP", f"\\fB{int(code)}\\fR", _roff(meaning))),
              ".SH ENVIRONMENT AND FILES", *_paragraphs(CONFIGURATION),
              ".SH SEE ALSO", "hostbus\\-agent(1), rabbitmqctl(8)"]
    return "\n".join(lines) + "\n"


@exits(configured=False)
@click.command()
@click.pass_context
def manpage(click_ctx: click.Context) -> Exit:
    """Print the manual page (roff), made from every command's help.

    \b
      hostbus manpage | man -l -                         read it now
      hostbus manpage > ~/.local/share/man/man1/hostbus.1  then: man hostbus
    """
    root = click_ctx.find_root().command
    assert isinstance(root, click.Group)
    click.echo(render(root), nl=False)
    return Exit.OK
