"""Human output: tables and result blocks (rich). Scripts use ``--json`` instead."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console as RichConsole
from rich.markup import escape
from rich.table import Table

from console.client import AgentInfo, FanoutResult, HostResult
from hostbus.envelope import Event

STATUS_STYLE = {"ok": "green", "error": "red", "no_reply": "yellow", "not_enrolled": "magenta"}


def _cell(value: Any) -> str:
    """Any value as display text, escaped: it comes from agents, and rich would read
    "[...]" in it as markup."""
    return escape(_text(value))


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


def _flatten(prefix: str, value: dict[str, Any], out: dict[str, Any]) -> None:
    for key, item in value.items():
        name = f"{prefix}{key}"
        if isinstance(item, dict) and item:
            _flatten(f"{name}.", item, out)
        else:
            out[name] = item


def objects_table(rows: list[dict[str, Any]], columns: list[str] | None = None,
                  title: str | None = None) -> Table:
    cols = columns or list(dict.fromkeys(k for row in rows for k in row))
    table = Table(title=title, title_justify="left", header_style="bold")
    for col in cols:
        # One line per object: long values (command lines) are cut, not wrapped.
        table.add_column(col, overflow="ellipsis", no_wrap=True, max_width=48,
                         min_width=min(len(col), 12))
    for row in rows:
        table.add_row(*(_cell(row.get(c)) for c in cols))
    return table


def print_result(out: RichConsole, result: dict[str, Any]) -> None:
    """Scalars and nested tables as aligned key/value lines; lists of objects as tables."""
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
            out.print(f"  [bold]{escape(key):<{width}}[/bold]  {_cell(value)}",
                      highlight=False)
    for key, rows in lists.items():
        out.print(objects_table(rows, title=f"  {escape(key)} ({len(rows)})"))


def print_fanout(out: RichConsole, result: FanoutResult) -> None:
    for res in result.results:
        print_host_result(out, res)
    print_summary(out, result)


def print_host_result(out: RichConsole, res: HostResult) -> None:
    style = STATUS_STYLE[res.status]
    rtt = f"  {res.elapsed_ms:.1f} ms" if res.elapsed_ms is not None else ""
    out.print(f"[bold]{escape(res.host)}[/bold]  [{style}]{res.status}[/{style}]{rtt}",
              highlight=False)
    if res.not_enrolled is not None:
        out.print(f"  {escape(res.not_enrolled)}", style="magenta", highlight=False)
    elif res.reply is None:
        out.print("  no reply before the timeout", style="yellow")
    elif res.reply.error is not None:
        err = res.reply.error
        out.print(f"  {escape(str(err['code']))}: {escape(str(err['message']))}", style="red",
                  highlight=False)
    elif res.reply.result is not None:
        print_result(out, res.reply.result)


def print_summary(out: RichConsole, result: FanoutResult) -> None:
    s = result.summary
    out.print(
        f"{s['hosts']} host{'s' if s['hosts'] != 1 else ''}: [green]{s['ok']} ok[/green], "
        f"[red]{s['failed']} failed[/red], [yellow]{s['no_reply']} no reply[/yellow] "
        + (f"[magenta]{s['not_enrolled']} not enrolled[/magenta] " if s["not_enrolled"]
           else "")
        + f"in {s['elapsed_ms']:.1f} ms", highlight=False,
    )


def agents_table(infos: list[AgentInfo]) -> Table:
    table = Table(header_style="bold")
    for col in ("host", "agents", "version", "started", "facts", "rtt ms"):
        table.add_column(col, overflow="fold", no_wrap=col != "facts")
    for info in infos:
        facts = " ".join(f"{k}={v}" for k, v in sorted(info.facts.items()))
        table.add_row(*(escape(x) for x in (info.host, ", ".join(info.agents), info.version,
                                             info.started, facts)), f"{info.rtt_ms:.1f}")
    return table


def event_line(ev: Event) -> str:
    d = ev.data
    summary: str
    if ev.full_name == "host.metrics":
        summary = (f"cpu {d.get('cpu_percent')}%  mem {d.get('memory', {}).get('percent')}%  "
                   f"load {_cell(d.get('load'))}")
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
    elif ev.agent == "provision" and ev.event == "completed":
        summary = f"request {d['request_id']} completed: " + \
            ", ".join(f"{v['name']}@{v['host']}" for v in d["vms"])
    elif ev.agent == "provision" and ev.event == "progress":
        summary = f"{d['vm']} on {d['host']} ({d['step']}/{d['total']})  request {d['request_id']}"
    elif ev.agent == "provision" and ev.event == "failed":
        summary = f"request {d['request_id']} failed: {d['code']}: {d['reason']}"
    elif ev.full_name == "agent.heartbeat":
        summary = f"up {d.get('uptime_s')} s, {d.get('requests', 0)} requests, " \
                  f"agents {_cell(d.get('agents'))}"
    else:
        summary = json.dumps(d, separators=(",", ":"))
    if len(summary) > 160:
        summary = summary[:157] + "..."
    return f"{ev.time}  {ev.host}  {ev.full_name}  #{ev.seq}  {summary}"  # printed plain
