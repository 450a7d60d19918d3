"""The peers benchmark's lines in `hostbus bench`'s table, and its targets: hostbus must
lead each peer on each measurement, in the same run."""

from __future__ import annotations

from typing import Any

SIDES = ("raw_pika", "hostbus", "oslo.messaging", "nameko")
LABELS = {"raw_pika": "raw pika"}


def text(peers: dict[str, Any]) -> list[str]:
    m = peers["machine"]
    lines = [f"peers (same broker, same run, sides in turns; {m['cores']} cores: {m['cpu']}; "
             f"load {m['loadavg'][0]} at the start, {m.get('loadavg_end', ['?'])[0]} "
             f"at the end; the peers' logs: {peers.get('logs', '?')})",
             "  versions: " + ", ".join(f"{name} {p['version']}"
                                        for name, p in peers["peers"].items())]
    call = peers["call"]
    lines.append("  call round trip (ms)     p50      p90      p99   p50 / hostbus")
    for side in SIDES:
        r = call[side]
        lines.append(f"    {LABELS.get(side, side):20} {r['p50']:7.3f}  {r['p90']:7.3f}  "
                     f"{r['p99']:7.3f}   {call['over_hostbus'].get(side, 1.0):.2f}x")
    fan = peers["broadcast"]
    lines.append(f"  broadcast to {fan['servers']} servers, every reply (ms)   p50      p90"
                 f"   p50 / hostbus")
    for side in SIDES:
        r = fan[side]
        lines.append(f"    {LABELS.get(side, side):36} {r['p50']:7.1f}  {r['p90']:7.1f}   "
                     f"{fan['over_hostbus'].get(side, 1.0):.2f}x")
    ev = peers["events"]
    lines.append(f"  events/s, one publisher into one subscriber ({ev['events']} a run): "
                 "median (every run)   / hostbus")
    for side in SIDES:
        r = ev[side]
        runs = " ".join(str(x) for x in r["per_s"])
        lines.append(f"    {LABELS.get(side, side):20} {r['median_per_s']:>7} ({runs})   "
                     f"{ev['over_hostbus'].get(side, 1.0):.2f}x")
    return lines


def checks(peers: dict[str, Any]) -> list[tuple[str, str, str, bool]]:
    rows = []
    for peer in peers["peers"]:
        call = peers["call"]["over_hostbus"][peer]
        rows.append((f"{peer} call p50 / hostbus call p50", f"{call}x", "> 1x (hostbus leads)",
                     call > 1))
        fan = peers["broadcast"]["over_hostbus"][peer]
        rows.append((f"{peer} broadcast to {peers['broadcast']['servers']} p50 / hostbus's",
                     f"{fan}x", "> 1x (hostbus leads)", fan > 1))
        ev = peers["events"]["over_hostbus"][peer]
        rows.append((f"{peer} events/s / hostbus's", f"{ev}x", "< 1x (hostbus leads)", ev < 1))
    return rows
