"""Turning results into a readable table and a PNG chart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

TARGETS = {
    "call_p50_ms": 1.0, "call_ratio_p50": 1.5, "fanout_1000_ratio": 2.0,
    "fanout_1000_return_ms": 1000.0,
    "events_per_s": 10000.0, "events_ratio": 0.6, "idle_cpu_percent": 1.0,
    "rss_over_floor": 1.25,
}


def checks(results: dict[str, Any]) -> list[tuple[str, str, str, bool]]:
    """(what, measured, target, met) for every target the results speak to."""
    rows: list[tuple[str, str, str, bool]] = []
    call = results.get("call")
    if call:
        p50 = call["hostbus"]["p50"]
        rows.append(("call round trip p50", f"{p50:.3f} ms", "<= 1.0 ms", p50 <= 1.0))
        rows.append(("call p50 / raw pika p50", f"{call['ratio_p50']}x", "<= 1.5x",
                     call["ratio_p50"] <= 1.5))
        if "signed_over_unsigned_p50" in call:
            ratio = call["signed_over_unsigned_p50"]
            rows.append(("signed call p50 / unsigned", f"{ratio}x", "< 2x", ratio < 2))
    for item in results.get("fanout", []):
        if item["agents"] == 1000:
            ms = item["return_ms_idle_window"]
            rows.append(("1,000 agents: all replies, command returned",
                         f"{item['replies']} replies, {ms:.0f} ms", "all, <= 1000 ms",
                         item["all_replied"] and ms <= 1000))
            if "ratio_to_raw" in item:
                rows.append(("1,000 agents: every reply back / raw pika fan-out",
                             f"{item['return_ms_expected_hosts']:.0f} / "
                             f"{item['raw_pika_ms']:.0f} ms = {item['ratio_to_raw']}x",
                             "<= 2x", item["ratio_to_raw"] <= 2))
    placed = results.get("placement")
    if placed and placed["hosts"] >= 1000:
        p50 = placed["plain"]["p50"]
        rows.append((f"placement decision p50, {placed['hosts']} hosts", f"{p50:.3f} ms",
                     "< 1 ms", p50 < 1.0))
    prov = results.get("provisioning")
    if prov and prov["hosts"] >= 100:
        rows.append((f"provisioning, {prov['hosts']} hosts", f"{prov['requests_per_s']} VMs/s",
                     ">= 50 VMs/s", prov["requests_per_s"] >= 50))
    events = results.get("events")
    if events:
        rows.append(("events into one subscriber", f"{events['hostbus_per_s']}/s",
                     ">= 10000/s", events["hostbus_per_s"] >= 10000))
        rows.append(("events / raw pika", f"{events['ratio']}x", ">= 0.6x",
                     events["ratio"] >= 0.6))
    over10 = results.get("amqp10")
    if over10:
        rows.append(("AMQP 1.0 call p50 / raw proton p50",
                     f"{over10['hostbus']['p50']:.3f} / {over10['raw_proton']['p50']:.3f} ms = "
                     f"{over10['ratio_p50']}x", "<= 1.5x", over10["ratio_p50"] <= 1.5))
        ev = over10["events"]
        rows.append(("AMQP 1.0 events / raw proton",
                     f"{ev['hostbus_per_s']} / {ev['raw_proton_per_s']}/s = {ev['ratio']}x",
                     ">= 0.67x (within 1.5x)", ev["ratio"] >= 1 / 1.5))
    for label, fp in results.get("footprint", {}).items():
        rows.append((f"idle agent CPU ({label})", f"{fp['idle']['cpu_percent']}%", "< 1%",
                     fp["idle"]["cpu_percent"] < 1))
        rows.append((f"idle agent RSS / floor ({label})",
                     f"{fp['idle']['rss_mb']} / {fp['floor']['rss_mb']} MB = "
                     f"{fp['rss_over_floor']}x", "<= 1.25x", fp["rss_over_floor"] <= 1.25))
    hist = results.get("history")
    if hist:
        ingest = hist["ingest"]
        for store in ("sqlite", "postgresql"):
            if f"{store}_per_s" in ingest:
                rate = ingest[f"{store}_per_s"] / ingest["subscriber_per_s"]
                rows.append((f"historian ingest ({store}) / events into one subscriber",
                             f"{ingest[f'{store}_per_s']} / {ingest['subscriber_per_s']}/s = "
                             f"{rate:.2f}x", ">= 1.0x (keeps up)", rate >= 1.0))
    big = results.get("fanout10k")
    if big and "error" not in big:
        rows.append((f"broadcast to {big['agents']:,} simulated agents: every reply back",
                     f"{big['return_ms']:.0f} ms, {big['ratio_to_raw']}x raw pika",
                     "all replied", big["all_replied"]))
    if results.get("peers"):
        from benchmarks.peers.report import checks as peer_checks

        rows += peer_checks(results["peers"])
    soaked = results.get("soak")
    if soaked:
        after = soaked["after_warmup"]
        rows.append((f"soak: agent RSS over {soaked['minutes']:g} min",
                     f"{after['rss_growth_mb']:+} MB, {after['rss_slope_mb_per_min']:+} MB/min",
                     "flat (< 1 MB)", soaked["flat"]))
    return rows


def text(results: dict[str, Any]) -> str:
    lines = [f"hostbus bench ({results['meta']['when']}, {results['meta']['cpus']} cpus, "
             f"RabbitMQ {results['meta'].get('broker', '?')})"]
    meta = results["meta"]
    if "machine" in meta:
        from benchmarks.machine import text as machine_text

        for when, wakeup in (meta.get("wakeup_us") or {}).items():
            lines.append(f"{machine_text(meta['machine'], wakeup)} [{when} the benchmarks]")
    lines.append("")
    call = results.get("call")
    if call:
        lines.append("call round trip (ms)        p50      p90      p99")
        for key, label in (("raw_pika", "raw pika"),
                           ("raw_pika_hostbus_topology", "raw pika, hostbus topology"),
                           ("hostbus", "hostbus"),
                           ("hostbus_io_thread", "hostbus, via the I/O thread"),
                           ("hostbus_signed", "hostbus, signed both ways"),
                           ("hostbus_quorum", "hostbus, quorum host queue")):
            if key not in call:
                continue
            r = call[key]
            lines.append(f"  {label:26} {r['p50']:7.3f}  {r['p90']:7.3f}  {r['p99']:7.3f}")
        lines.append("")
    if results.get("fanout"):
        # Two broadcasts each: one that knows whom to expect, one that stops after an
        # idle window. A column shows figures of one broadcast only.
        lines.append("broadcast ping    replies  expected hosts: returned  "
                     "idle window: last reply, returned  replies/s  raw pika  ratio")
        for f in results["fanout"]:
            raw = (f"  {f['raw_pika_ms']:>6.0f} ms  {f['ratio_to_raw']:>4}x"
                   if "raw_pika_ms" in f else "")
            lines.append(
                f"  {f['agents']:>6} agents  {f['replies']:>6}  "
                f"{f['return_ms_expected_hosts']:>17.0f} ms  "
                f"{f['last_reply_ms']:>21.0f} ms, {f['return_ms_idle_window']:>5.0f} ms"
                f"  {f['replies_per_s'] or 0:>9.0f}{raw}")
        lines.append("")
    events = results.get("events")
    if events:
        lines.append(f"events: hostbus {events['hostbus_per_s']}/s, raw pika "
                     f"{events['raw_pika_per_s']}/s ({events['events']} events)")
    placed = results.get("placement")
    if placed:
        lines.append(f"placement decisions ({placed['hosts']} hosts, {placed['vms']} VMs; "
                     "ms)    p50      p90      p99")
        for key in ("plain", "ha_anti_affinity", "pinned_10", "naive"):
            r = placed[key]
            lines.append(f"  {key:30} {r['p50']:7.3f}  {r['p90']:7.3f}  {r['p99']:7.3f}")
        lines.append(f"  plain / naive loop p50: {placed['ratio_plain_to_naive_p50']}x")
    prov = results.get("provisioning")
    if prov:
        done, floor = prov["completion_ms"], prov["direct_defines"]
        lines.append(f"provisioning (test driver, {prov['hosts']} hosts, {prov['workers']} "
                     f"workers): {prov['requests']} requests in {prov['elapsed_s']} s = "
                     f"{prov['requests_per_s']}/s (completed p50 {done['p50']:.0f} ms, p99 "
                     f"{done['p99']:.0f} ms); direct domain.define {floor['vms_per_s']}/s: "
                     f"{prov['ratio_to_direct']}x")
    over10 = results.get("amqp10")
    if over10:
        lines.append("AMQP 1.0 call round trip (ms) p50      p90      p99")
        for key, label in (("raw_proton", "raw proton"),
                           ("raw_proton_blocking", "raw proton, blocking client"),
                           ("hostbus", "hostbus")):
            r = over10[key]
            lines.append(f"  {label:27} {r['p50']:7.3f}  {r['p90']:7.3f}  {r['p99']:7.3f}")
        ev = over10["events"]
        lines.append(f"AMQP 1.0 events: hostbus {ev['hostbus_per_s']}/s, raw proton "
                     f"{ev['raw_proton_per_s']}/s ({ev['events']} events)")
    for label, fp in results.get("footprint", {}).items():
        narrow = fp.get("floor_third_party_only", {})
        lines.append(f"agent {label}: idle {fp['idle']['cpu_percent']}% cpu, RSS "
                     f"{fp['idle']['rss_mb']} MB (floor {fp['floor']['rss_mb']} with the "
                     f"{fp['floor'].get('modules', '?')} modules it loads; "
                     f"{narrow.get('rss_mb', '?')} with {'+'.join(narrow.get('modules', []))}"
                     f" alone), USS "
                     f"{fp['idle']['uss_mb']} MB; storm {fp['storm']['calls_per_s']} calls/s "
                     f"at {fp['storm']['cpu_percent']}% cpu, RSS {fp['storm']['rss_mb']} MB")
    soaked = results.get("soak")
    if soaked:
        rss = [f"{x['rss_mb']:g}" for x in soaked["samples"]]
        lines.append(f"soak: {soaked['minutes']:g} min, {soaked['calls_ok']} calls "
                     f"({soaked['calls_failed']} failed), RSS MB every sample: "
                     f"{' '.join(rss)}")
    traced = results.get("tracing")
    if traced:
        lines.append("call with tracing (ms)      p50      p90      p99")
        for side in ("off", "on"):
            r = traced[side]
            lines.append(f"  {side:26} {r['p50']:7.3f}  {r['p90']:7.3f}  {r['p99']:7.3f}")
    if results.get("history"):
        from benchmarks.history import text as history_text

        lines += ["", *history_text(results["history"])]
    if results.get("scale"):
        from benchmarks.scale import text as scale_text

        lines += ["", *scale_text(results["scale"])]
    if results.get("fanout10k"):
        from benchmarks.fanout10k import text as fanout10k_text

        lines += ["", *fanout10k_text(results["fanout10k"])]
    if results.get("peers"):
        from benchmarks.peers.report import text as peers_text

        lines += ["", *peers_text(results["peers"])]
    if results.get("faults"):
        from benchmarks.faults import text as faults_text

        lines += ["", *faults_text(results["faults"])]
    lines += ["", "targets"]
    for what, measured, target, met in checks(results):
        lines.append(f"  {'ok  ' if met else 'MISS'} {what}: {measured} (target {target})")
    return "\n".join(lines)


def chart(results: dict[str, Any], path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    call = results.get("call") or {}
    samples = call.get("samples", {})
    over10 = (results.get("amqp10") or {}).get("samples", {})
    curves = [(samples, "raw_pika", "raw pika", "-"),
              (samples, "raw_pika_hostbus_topology", "raw pika, hostbus topology", "-"),
              (samples, "hostbus", "hostbus", "-"),
              (over10, "raw_proton", "raw proton (AMQP 1.0)", "--"),
              (over10, "hostbus", "hostbus over AMQP 1.0", "--")]
    for source, key, label, style in curves:
        data = sorted(source.get(key, []))
        if data:
            left.plot(data, [i / len(data) * 100 for i in range(len(data))], style,
                      label=label)
    left.set_xlabel("call round trip (ms)")
    left.set_ylabel("percentile")
    left.set_title("Latency distribution")
    left.legend()
    left.grid(alpha=0.3)
    fan = results.get("fanout", [])
    if fan:
        xs = [f["agents"] for f in fan]
        # Separate broadcasts: the expected-hosts one may finish before the idle-window
        # one's last reply, so each line names its broadcast.
        right.plot(xs, [f["return_ms_expected_hosts"] for f in fan], "s-",
                   label="expected hosts: returned (all answered)")
        right.plot(xs, [f["last_reply_ms"] for f in fan], "o-",
                   label="idle window: last reply")
        right.plot(xs, [f["return_ms_idle_window"] for f in fan], "^-",
                   label="idle window: returned")
        right.set_xscale("log")
        right.set_xticks(xs)
        right.set_xticklabels([f"{x:,}" for x in xs])
        right.minorticks_off()
        right.set_xlabel("simulated agents")
        right.set_ylabel("ms")
        right.set_title("Broadcast ping: scaling with N")
        right.legend()
        right.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
