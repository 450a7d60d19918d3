"""Human output: tables and result blocks (rich). Scripts use ``--json`` instead.

Tables never cut what a person acts on: identifiers, names, states, arguments. Only
free text (command lines, descriptions, facts) is shortened to fit a terminal, and not
even that with ``--wide``. A table whose identifiers alone do not fit turns into one
block per record. Output to a pipe or a file is plain text, one line per record, with
nothing cut (``COLUMNS`` sets a width for it).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from rich import box
from rich.cells import cell_len
from rich.console import Console as RichConsole
from rich.console import Group, RenderableType
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from console.client import AgentInfo, FanoutResult, HostResult
from hostbus.envelope import Event

STATUS_STYLE = {"ok": "green", "error": "red", "no_reply": "yellow", "not_enrolled": "magenta",
                "pending": "cyan"}

# Columns of free text: the only ones a table may shorten to fit (with an ellipsis).
FREE_TEXT = frozenset({"cmdline", "description", "fields", "facts", "outcome", "message",
                       "reason", "detail", "hosts"})
# Columns a narrow terminal may hide (first to last), saying so: details, not identities.
SECONDARY = ("ppid", "started", "created", "updated", "expires", "decided_by", "rss_bytes",
             "memory_percent", "version", "rtt ms")
MIN_FREE = 12  # below this a shortened column says too little: one block per record
HALF = -1  # _fit's least: free text keeps half its width before details are hidden
GAP = 2  # spaces between columns


@dataclass(frozen=True)
class Layout:
    """How tables are fitted: to ``width`` (a terminal's), or not at all (None: a pipe
    or a file). ``wide``: free text wraps instead of being cut. ``columns``: only these,
    in this order (where a table has them)."""

    width: int | None = None
    wide: bool = False
    columns: tuple[str, ...] = ()
    #: For a pipe or a file fitted to COLUMNS: plain text still (no rules, no trailing
    #: spaces), only fitted as on a terminal that wide.
    plain: bool = False

    @classmethod
    def of(cls, out: RichConsole, *, wide: bool = False,
           columns: Iterable[str] = ()) -> Layout:
        width: int | None = out.width if out.is_terminal else None
        plain = False
        if width is None and os.environ.get("COLUMNS", "").isdigit():
            width, plain = int(os.environ["COLUMNS"]), True
        return cls(width, wide, tuple(columns), plain)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if value == []:
        return "(none)"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list) and all(not isinstance(v, dict | list) for v in value):
        return ", ".join(str(v) for v in value)
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


BYTE_UNITS = {"_bytes": 1, "_kib": 1024, "_mib": 1024 ** 2, "_gib": 1024 ** 3}
RATE = "_per_s"


def human_bytes(n: float) -> str:
    """1536 -> 1.5 KiB (binary units, as free and ls -h)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def human_duration(seconds: float) -> str:
    """3725 -> 1 h 2 min: the two largest units."""
    if seconds < 60:
        return f"{seconds:g} s" if seconds >= 1 or seconds == 0 else f"{seconds * 1000:.3g} ms"
    parts = []
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min"), (1, "s")):
        if seconds >= size:
            parts.append(f"{int(seconds // size)} {unit}")
            seconds %= size
    return " ".join(parts[:2])


def humanized(key: str, value: Any) -> str:
    """A table cell: sizes and durations as a person reads them, by the field's unit
    suffix (rss_bytes 305504256 -> 291.3 MiB, uptime_s 1020 -> 17 min); --json keeps
    the raw numbers. Latencies in ms stay as they are: that is how they are read."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return _text(value)
    name = key.rsplit(".", 1)[-1]
    rate = name.endswith(RATE)
    base = name.removesuffix(RATE) if rate else name
    for suffix, scale in BYTE_UNITS.items():
        if base.endswith(suffix) or name.endswith(f"{suffix}_s"):  # bandwidth_mib_s
            return human_bytes(value * scale) + ("/s" if rate or name.endswith("_s")
                                                 else "")
    if rate:
        return _text(value)
    if name.endswith("_ns"):
        return human_duration(value / 1e9)
    if name.endswith("_s"):
        return human_duration(value)
    return _text(value)


def _cell(value: Any) -> str:
    """Any value as markup-safe text: it comes from agents, and rich would read "[...]"
    in it as markup."""
    return escape(_text(value))


def _flatten(prefix: str, value: dict[str, Any], out: dict[str, Any]) -> None:
    for key, item in value.items():
        name = f"{prefix}{key}"
        if isinstance(item, dict) and item:
            _flatten(f"{name}.", item, out)
        else:
            out[name] = item


def _width(text: str) -> int:
    return max((cell_len(line) for line in text.splitlines()), default=0)


def _pick(rows: list[dict[str, Any]], columns: list[str] | None, layout: Layout) -> list[str]:
    cols = columns or list(dict.fromkeys(k for row in rows for k in row))
    if not layout.columns:
        return cols
    wanted = [c for c in layout.columns if c in cols]
    if not wanted:
        return cols
    # the host column stays: without it a fleet's rows cannot be told apart
    return (["host"] if "host" in cols and "host" not in wanted else []) + wanted


def objects_table(rows: list[dict[str, Any]], layout: Layout, columns: list[str] | None = None,
                  title: str | None = None) -> RenderableType:
    """Rows of objects as a table that fits ``layout`` without cutting identifiers,
    or as one block per row where it cannot."""
    cols = _pick(rows, columns, layout)
    cells = [[humanized(c, row.get(c)) for c in cols] for row in rows]
    values = [max((_width(r[i]) for r in cells), default=0) for i in range(len(cols))]
    natural = [max(v, _width(c)) for v, c in zip(values, cols, strict=True)]
    if layout.width is None:
        return _plain(cols, cells, natural, title)
    # Narrower and narrower: long headers (memory_percent over numbers) fold at their
    # underscores; then details are hidden (not with --wide or --columns) before free
    # text is cut to less than half; then it is cut further; then blocks.
    folded = [max(v, *(cell_len(p) for p in _header_parts(c)))
              for v, c in zip(values, cols, strict=True)]
    may_hide = [] if layout.wide or layout.columns else [
        cols.index(c) for c in SECONDARY if c in cols]
    widths: list[int] | None = None
    for least in (HALF, MIN_FREE):
        shown = list(range(len(cols)))
        widths = _fit(cols, natural, layout, least) or _fit(cols, folded, layout, least)
        hide = list(may_hide)
        while widths is None and hide:
            shown.remove(hide.pop(0))
            widths = _fit([cols[i] for i in shown], [folded[i] for i in shown], layout, least)
        if widths is not None:
            break
    if widths is None:
        return _blocks(cols, cells, title)
    hidden = [cols[i] for i in range(len(cols)) if i not in shown]
    # padding 1 on each side, collapsed between cells: GAP spaces between columns
    table = Table(box=None if layout.plain else box.SIMPLE_HEAD, show_edge=False,
                  pad_edge=False, padding=(0, 1), collapse_padding=not layout.plain,
                  header_style="bold")
    for i, width in zip(shown, widths, strict=True):
        free = cols[i] in FREE_TEXT
        table.add_column(Text(_fold_header(cols[i], width)), width=width,
                         no_wrap=not (free and layout.wide),
                         overflow="fold" if layout.wide or not free else "ellipsis")
    for row in cells:
        table.add_row(*(Text(row[i]) for i in shown))
    parts: list[RenderableType] = [Text(title, style="bold")] if title else []
    parts.append(table)
    if hidden:
        parts.append(Text(f"  (hidden to fit: {', '.join(hidden)}; --wide shows them)",
                          style="dim"))
    return _stripped(Group(*parts), layout.width) if layout.plain else Group(*parts)


def _stripped(renderable: RenderableType, width: int) -> Text:
    """``renderable`` as plain lines ``width`` wide at most, without trailing spaces:
    what a pipe gets (grep and awk see no padding)."""
    import io

    buf = io.StringIO()
    RichConsole(file=buf, width=width, color_system=None, highlight=False,
                soft_wrap=False).print(renderable)
    return Text("\n".join(line.rstrip() for line in buf.getvalue().splitlines()))


def _header_parts(header: str) -> list[str]:
    return re.findall(r"[^_ ]*[_ ]|[^_ ]+$", header) or [header]


def _fold_header(header: str, width: int) -> str:
    """``header`` in lines of at most ``width``, broken after its underscores."""
    lines = [""]
    for part in _header_parts(header):
        if lines[-1] and cell_len(lines[-1] + part) > width:
            lines.append("")
        lines[-1] += part
    return "\n".join(line.rstrip() for line in lines)


def _overhead(n: int) -> int:
    """The spaces between the columns of the table ``objects_table`` draws."""
    return GAP * max(n - 1, 0)


def _fit(cols: list[str], natural: list[int], layout: Layout, least: int) -> list[int] | None:
    """Column widths within ``layout.width``: identifiers at full width, free text in
    what is left, at least ``least`` each (HALF: half its width, and MIN_FREE at
    least); None if that cannot be done."""
    assert layout.width is not None
    total = sum(natural) + _overhead(len(cols))
    if total <= layout.width:
        return natural
    free = [i for i, c in enumerate(cols) if c in FREE_TEXT]
    room = layout.width - (total - sum(natural[i] for i in free))
    floor = {i: min(natural[i], max(MIN_FREE, natural[i] // 2 if least == HALF else least))
             for i in free}
    if not free or room < sum(floor.values()):
        return None
    widths = list(natural)
    extra = room - sum(floor.values())
    want = {i: natural[i] - floor[i] for i in free}
    wanted = sum(want.values()) or 1
    for i in free:
        widths[i] = floor[i] + extra * want[i] // wanted
    return widths


def _blocks(cols: list[str], cells: list[list[str]], title: str | None) -> RenderableType:
    """One block per record: ``column  value`` lines; long values wrap, never cut."""
    parts: list[RenderableType] = [Text(title, style="bold")] if title else []
    for n, row in enumerate(cells):
        grid = Table.grid(padding=(0, GAP, 0, 0))
        grid.add_column(style="bold", no_wrap=True)
        grid.add_column(overflow="fold")
        for col, value in zip(cols, row, strict=True):
            grid.add_row(Text(col), Text(value))
        if n:
            parts.append(Text(""))
        parts.append(grid)
    return Group(*parts)


def _plain(cols: list[str], cells: list[list[str]], natural: list[int],
           title: str | None) -> Text:
    """Plain lines for pipes and files: aligned, nothing cut, no trailing spaces."""

    def line(values: list[str]) -> str:
        return (" " * GAP).join(v.ljust(natural[i]) for i, v in enumerate(values)).rstrip()

    flat = [[v.replace("\n", "\\n") for v in row] for row in cells]
    lines = ([title] if title else []) + [line(cols)] + [line(row) for row in flat]
    return Text("\n".join(lines))


def print_result(out: RichConsole, result: dict[str, Any], layout: Layout | None = None) -> None:
    """Scalars and nested tables as aligned key/value lines; lists of objects as tables."""
    layout = layout or Layout.of(out)
    flat: dict[str, Any] = {}
    lists: dict[str, list[dict[str, Any]]] = {}
    for key, value in result.items():
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            lists[key] = value
        elif isinstance(value, dict) and value:
            _flatten(f"{key}.", value, flat)
        else:
            flat[key] = value
    if flat:
        width = max(len(k) for k in flat)
        for key, value in flat.items():
            out.print(f"  [bold]{escape(key):<{width}}[/bold]  "
                      f"{escape(humanized(key, value))}", highlight=False)
    for key, rows in lists.items():
        out.print(objects_table(rows, layout, title=f"  {key} ({len(rows)})"))


def shown(res: HostResult, display: str) -> bool:
    """Whether ``--display`` (all, ok, failed: errors and silence) shows this result."""
    return display == "all" or (res.status == "ok") == (display == "ok")


def print_fanout(out: RichConsole, result: FanoutResult, layout: Layout | None = None,
                 display: str = "all") -> None:
    for res in result.results:
        if shown(res, display):
            print_host_result(out, res, layout)
    print_summary(out, result)


def print_host_result(out: RichConsole, res: HostResult, layout: Layout | None = None) -> None:
    style = STATUS_STYLE[res.status]
    rtt = f"  {res.elapsed_ms:.1f} ms" if res.elapsed_ms is not None else ""
    rid = f"  [dim]request {escape(res.request_id)}[/dim]" if res.request_id else ""
    out.print(f"[bold]{escape(res.host)}[/bold]  [{style}]{res.status}[/{style}]{rtt}{rid}",
              highlight=False)
    if res.not_enrolled is not None:
        out.print(f"  {escape(res.not_enrolled)}", style="magenta", highlight=False)
    elif res.approval is not None:
        out.print(f"  {escape(pending_text(res.approval))}", style="cyan", highlight=False)
    elif res.reply is None:
        out.print(f"  {escape(res.offline or 'no reply before the timeout')}",
                  style="yellow", highlight=False)
    elif res.reply.error is not None:
        err = res.reply.error
        out.print(f"  {escape(str(err['code']))}: {escape(str(err['message']))}", style="red",
                  highlight=False)
    elif res.reply.result is not None:
        if res.reply.result.get("dry_run") is True:
            out.print("  dry run: nothing was done, only logged on the host (its "
                      "power_control or similar setting is \"dry-run\")", style="yellow",
                      highlight=False)
        print_result(out, res.reply.result, layout)


def pending_text(approval: dict[str, Any]) -> str:
    """What a requester is told about a call parked for approval: its id and how it
    gets approved."""
    aid = approval["approval_id"]
    rule = f" (rule {approval['rule']!r})" if approval.get("rule") else ""
    until = f" before {approval['expires']}" if approval.get("expires") else ""
    return (f"waits for approval {aid}{rule}: another person runs `hostbus approvals "
            f"approve {aid}`{until}; it runs then. --wait-approval waits for its result")


def print_summary(out: RichConsole, result: FanoutResult, interrupted: int = 0) -> None:
    """The counts, then the hosts that failed or stayed silent, by name (and with
    ``interrupted``, how many were still being waited for)."""
    s = result.summary
    counts = [f"[green]{s['ok']} ok[/green]", f"[red]{s['failed']} failed[/red]",
              f"[yellow]{s['no_reply']} no reply[/yellow]"]
    if s.get("not_enrolled"):
        counts.append(f"[magenta]{s['not_enrolled']} not enrolled[/magenta]")
    if s.get("pending"):
        counts.append(f"[cyan]{s['pending']} pending approval[/cyan]")
    out.print(f"{s['hosts']} host{'s' if s['hosts'] != 1 else ''}: {', '.join(counts)} "
              f"in {s['elapsed_ms']:.1f} ms", highlight=False)
    failed = [r for r in result.results if r.status == "error"]
    if failed:
        out.print("[red]failed:[/red] " + ", ".join(
            f"{escape(r.host)} ({escape(str((r.reply.error or {}).get('code')))})"
            for r in failed if r.reply is not None), highlight=False)
    pending = [r for r in result.results if r.approval is not None]
    if pending:
        out.print("[cyan]pending approval:[/cyan] " + ", ".join(
            f"{escape(r.host)} ({escape(str(r.approval['approval_id']))})"
            for r in pending if r.approval is not None), highlight=False)
    silent = [r.host for r in result.results if r.status == "no_reply"]
    if silent:
        out.print(f"[yellow]no reply:[/yellow] {escape(', '.join(silent))}", highlight=False)
    if interrupted:
        out.print(f"[yellow]interrupted:[/yellow] {interrupted} host"
                  f"{'s' if interrupted != 1 else ''} not waited for", highlight=False)


AGENT_COLUMNS = ["host", "agents", "version", "started", "facts", "rtt ms"]


def agents_table(infos: list[AgentInfo], layout: Layout) -> RenderableType:
    rows = [dict(zip(AGENT_COLUMNS, (
        i.host, ", ".join(i.agents), i.version, i.started,
        " ".join(f"{k}={v}" for k, v in sorted(i.facts.items())), f"{i.rtt_ms:.1f}"),
        strict=True)) for i in infos]
    return objects_table(rows, layout)


def _release_summary(event: str, d: dict[str, Any]) -> str:
    if event == "release.accepted":
        of = f" of request {d['release_of']}" if d.get("release_of") else ""
        return f"release {d['request_id']}{of}: " + (
            ", ".join(f"{v['name']}@{v['host']}" for v in d["vms"]) or "nothing left")
    if event == "release.progress":
        return (f"{d['vm']} on {d['host']} {d['outcome'].replace('_', ' ')} "
                f"({d['step']}/{d['total']})  release {d['request_id']}")
    if event == "release.completed":
        released = [v["name"] for v in d["vms"] if v.get("outcome") == "released"]
        return (f"release {d['request_id']} completed: {len(released)} of "
                f"{len(d['vms'])} VMs released" + (f" ({', '.join(released)})" if released
                                                   else ""))
    code = "" if d.get("code") == "failed" else f"{d.get('code')}: "
    return f"release {d['request_id']} failed: {code}{d.get('reason')}"


def event_line(ev: Event) -> str:
    d = ev.data
    summary: str
    if ev.full_name == "host.metrics":
        summary = (f"cpu {d.get('cpu_percent')}%  mem {d.get('memory', {}).get('percent')}%  "
                   f"load {_text(d.get('load'))}")
    elif ev.full_name == "host.alert":
        where = f" {d['resource']}" if d.get("resource") else ""
        level = d["raise_at"] if d["state"] == "raised" else d["clear_at"]
        summary = f"{d['state'].upper()} {d['metric']}{where} = {d['value']} (level {level})"
    elif ev.full_name == "virt.domain.lifecycle":
        summary = f"{d['name']} {d['event']} ({d['detail']})"
    elif ev.full_name == "virt.domain.stats":
        doms = d.get("domains", [])
        summary = f"{len(doms)} running domain{'s' if len(doms) != 1 else ''}: " + \
            ", ".join(x["name"] for x in doms[:8]) + (" ..." if len(doms) > 8 else "")
    elif ev.agent == "provision" and ev.event == "accepted":
        summary = (f"request {d.get('request_id')} accepted: {d.get('count')} x "
                   f"{d.get('template')} for {d.get('owner')}")
    elif ev.agent == "provision" and ev.event == "completed":
        summary = f"request {d['request_id']} completed: " + \
            ", ".join(f"{v['name']}@{v['host']}" for v in d["vms"])
    elif ev.agent == "provision" and ev.event == "progress":
        summary = f"{d['vm']} on {d['host']} ({d['step']}/{d['total']})  request {d['request_id']}"
    elif ev.agent == "provision" and ev.event == "failed":
        code = "" if d.get("code") == "failed" else f"{d.get('code')}: "  # not twice
        summary = f"request {d['request_id']} failed: {code}{d['reason']}"
    elif ev.agent == "provision" and ev.event.startswith("release."):
        summary = _release_summary(ev.event, d)
    elif ev.agent == "provision" and ev.event == "quota":
        summary = f"owner {d['owner']} has {d['count']} of {d['max_vms']} VMs"
    elif ev.full_name == "agent.heartbeat":
        summary = f"up {d.get('uptime_s')} s, {d.get('requests', 0)} requests, " \
                  f"agents {_text(d.get('agents'))}"
    else:
        summary = json.dumps(d, separators=(",", ":"))
    if len(summary) > 160:
        summary = summary[:157] + "..."
    return f"{ev.time}  {ev.host}  {ev.full_name}  #{ev.seq}  {summary}"  # printed plain
