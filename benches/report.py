"""Turns the raw measurements of benches/run.sh (tab-separated files in a
work folder) into Markdown tables: medians over the rounds with the range,
and every firedrill figure as a ratio to direct and to HAProxy, taken round
by round (same run, neighbouring measurements) and then the median.

Usage: python3 benches/report.py WORK_DIR
"""

import os
import statistics
import sys


def rows(path, fields):
    if not os.path.exists(path):
        return []
    out = []
    with open(path) as f:
        for line in f:
            values = line.rstrip("\n").split("\t")
            out.append(dict(zip(fields, values)))
    return out


def number(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def spread(values, fmt):
    """Median, and the range when the rounds disagree."""
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    mid = fmt(statistics.median(values))
    low, high = fmt(min(values)), fmt(max(values))
    return mid if len(values) == 1 or low == high else f"{mid} ({low}…{high})"


def whole(v):
    return f"{v:,.0f}"


def rate(v):
    if v >= 1e6:
        return f"{v / 1e6:.2f} M"
    return f"{v:,.0f}" if v >= 100 else f"{v:.1f}"


def ms(v):
    return f"{v:.2f} ms" if v < 10 else f"{v:.1f} ms"


def micros(v):
    return f"{v:.1f}" if v < 100 else f"{v:,.0f}"


def ratio(v):
    return f"{v:.2f}"


def first_seen(items, key):
    seen = []
    for item in items:
        if item[key] not in seen:
            seen.append(item[key])
    return seen


def throughput_tables(work):
    fields = "round workload unit config label value p50 p99 requests cpu rss errors".split()
    results = rows(os.path.join(work, "results.tsv"), fields)
    if not results:
        return []
    for r in results:
        r["value"] = number(r["value"])
        r["p50"] = number(r["p50"])
        r["p99"] = number(r["p99"])
        requests, cpu = number(r["requests"]), number(r["cpu"])
        r["cpu_us"] = cpu / requests * 1e6 if cpu is not None and requests else None
        r["rss"] = number(r["rss"])
        r["errors"] = int(number(r["errors"]) or 0)
    out = [
        "| workload | configuration | throughput | p50 | p99 | proxy CPU µs/request | proxy CPU s per 100k requests | proxy peak RSS |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    ratio_rows = []
    notes = []
    for workload in first_seen(results, "workload"):
        mine = [r for r in results if r["workload"] == workload]
        unit = mine[0]["unit"]
        for config in first_seen(mine, "config"):
            runs = [r for r in mine if r["config"] == config]
            label = runs[0]["label"]
            cpu = [r["cpu_us"] for r in runs]
            p50, p99 = median([r["p50"] for r in runs]), median([r["p99"] for r in runs])
            rss = [r["rss"] for r in runs if r["rss"] is not None]
            out.append(
                "| {} | {} | {} {} | {} | {} | {} | {} | {} |".format(
                    workload,
                    label,
                    spread([r["value"] for r in runs], rate),
                    unit,
                    ms(p50) if p50 is not None else "-",
                    ms(p99) if p99 is not None else "-",
                    spread(cpu, micros),
                    spread([c / 10 if c is not None else None for c in cpu], lambda v: f"{v:.2f}"),
                    f"{max(rss) / 1024:.1f} MiB" if rss else "-",
                )
            )
            errors = sum(r["errors"] for r in runs)
            if errors:
                notes.append(f"- {workload}, {label}: {errors:,} errors (socket errors or non-2xx answers) over {len(runs)} runs.")
            if config.startswith("firedrill"):
                ratio_rows.append(firedrill_ratios(workload, label, mine, config))
    out.append("")
    out.append(
        "Throughput and CPU: median over the rounds, range in brackets. "
        "p50/p99: median over the rounds of the load tool's percentiles (wrk, redis-benchmark). "
        "Peak RSS: the highest VmHWM over the rounds, reset before each run."
    )
    out.append("")
    out.append("### firedrill ÷ direct and ÷ HAProxy")
    out.append("")
    out.append(
        "Each ratio is taken within a round (measurements minutes apart), then the median over the rounds; "
        "for throughput higher is better, for latency, CPU and memory lower is better. "
        "\"p99 added\" is firedrill's p99 minus direct's."
    )
    out.append("")
    out.append(
        "| workload | firedrill | throughput ÷ direct | throughput ÷ HAProxy | p50 ÷ direct | p99 ÷ direct | p99 added | p99 ÷ HAProxy | CPU/request ÷ HAProxy | peak RSS ÷ HAProxy |"
    )
    out.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    out.extend(ratio_rows)
    if notes:
        out.append("")
        out.extend(notes)
    return out


def firedrill_ratios(workload, label, mine, config):
    def per_round(field, against, transform=lambda a, b: a / b if b else None):
        values = []
        for round_ in first_seen(mine, "round"):
            a = [r for r in mine if r["round"] == round_ and r["config"] == config]
            b = [r for r in mine if r["round"] == round_ and r["config"] == against]
            if a and b and a[0][field] is not None and b[0][field] is not None:
                values.append(transform(a[0][field], b[0][field]))
        return values

    cells = [
        spread(per_round("value", "direct"), ratio),
        spread(per_round("value", "haproxy"), ratio),
        spread(per_round("p50", "direct"), ratio),
        spread(per_round("p99", "direct"), ratio),
        spread(per_round("p99", "direct", lambda a, b: a - b), lambda v: f"{v:+.2f} ms"),
        spread(per_round("p99", "haproxy"), ratio),
        spread(per_round("cpu_us", "haproxy"), ratio),
        spread(per_round("rss", "haproxy"), ratio),
    ]
    return f"| {workload} | {label} | " + " | ".join(cells) + " |"


def idle_table(work):
    fields = "round config label n before after".split()
    idle = rows(os.path.join(work, "idle.tsv"), fields)
    if not idle:
        return []
    out = [
        "Each proxy is started fresh, then a client opens the connections through its tcp service to redis-server "
        "(each answers one PING, so the upstream side is open too) and holds them idle; "
        "RSS per connection is (VmRSS with them open − VmRSS before) ÷ connections.",
        "",
        "| configuration | open connections | RSS before | RSS with them open | RSS per connection | ÷ HAProxy |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    per_conn = {}
    for r in idle:
        n, before, after = number(r["n"]), number(r["before"]), number(r["after"])
        r["per"] = (after - before) / n if n else None
        per_conn.setdefault((r["round"], r["config"]), r["per"])
    for config in first_seen(idle, "config"):
        runs = [r for r in idle if r["config"] == config]
        ratios = []
        if config != "haproxy":
            for r in runs:
                h = per_conn.get((r["round"], "haproxy"))
                if h and r["per"] is not None:
                    ratios.append(r["per"] / h)
        out.append(
            "| {} | {} | {} | {} | {} | {} |".format(
                runs[0]["label"],
                f"{int(number(runs[0]['n'])):,}",
                spread([number(r["before"]) / 1024 for r in runs], lambda v: f"{v:.1f} MiB"),
                spread([number(r["after"]) / 1024 for r in runs], lambda v: f"{v:.1f} MiB"),
                spread([r["per"] for r in runs], lambda v: f"{v:.1f} KiB"),
                spread(ratios, ratio) if ratios else "-",
            )
        )
    return out


def fidelity_table(work):
    fields = "round workload config label target requests p50 p99 max".split()
    fid = rows(os.path.join(work, "fidelity.tsv"), fields)
    if not fid:
        return []
    out = [
        "A few connections in a closed loop, so every request waits out the delay. "
        "On tcp, the connections answer one PING before the clock starts: firedrill also delays a new "
        "connection's upstream setup, so its first request takes twice the delay by design.",
        "",
        "| workload | configuration | injected | requests per run | p50 | p99 | max | p50 − injected | p99 − injected |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for workload in first_seen(fid, "workload"):
        mine = [r for r in fid if r["workload"] == workload]
        for config in first_seen(mine, "config"):
            runs = [r for r in mine if r["config"] == config]
            target = number(runs[0]["target"]) or 0
            p50 = [number(r["p50"]) for r in runs]
            p99 = [number(r["p99"]) for r in runs]
            out.append(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
                    workload,
                    runs[0]["label"],
                    f"{target:.0f} ms" if target else "none",
                    spread([number(r["requests"]) for r in runs], whole),
                    spread(p50, ms),
                    spread(p99, ms),
                    spread([number(r["max"]) for r in runs], ms),
                    spread([v - target for v in p50 if v is not None], lambda v: f"{v:+.2f} ms") if target else "-",
                    spread([v - target for v in p99 if v is not None], lambda v: f"{v:+.2f} ms") if target else "-",
                )
            )
    return out


def reaction_table(work):
    fields = "round connections interval post p50 p99 max early".split()
    reaction = rows(os.path.join(work, "reaction.tsv"), fields)
    if not reaction:
        return []
    out = [
        "A fresh firedrill; every connection goes through its tcp service to redis-server and sends a PING at the interval shown "
        "(benches/reaction.rs, in a process of its own); then `POST /faults/pangyo-fire` (a blackhole on the service's data center). "
        "Times are from sending the POST to the last PONG any connection received: the max is when the last connection went quiet. "
        "Connections between pings at that moment hold no data to stop, so most report 0; with these many pings per second "
        "the max is within about a millisecond of when the fault had reached every connection.",
        "",
        "| round | open connections | ping interval per connection | POST answered after | last answer after the POST: p50 | p99 | max | silent before the POST |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in reaction:
        out.append(
            "| {} | {} | {} ms | {} | {} | {} | {} | {} |".format(
                r["round"],
                f"{int(number(r['connections'])):,}",
                r["interval"],
                ms(number(r["post"])),
                ms(number(r["p50"])),
                ms(number(r["p99"])),
                ms(number(r["max"])),
                r["early"],
            )
        )
    return out


def main():
    work = sys.argv[1]
    sections = [
        ("## Throughput, latency and proxy cost", throughput_tables(work)),
        ("## Memory per idle connection", idle_table(work)),
        ("## Fault fidelity: injected delay as the client sees it", fidelity_table(work)),
        ("## Reaction: how fast a blackhole reaches open connections", reaction_table(work)),
    ]
    for title, lines in sections:
        if lines:
            print(title)
            print()
            print("\n".join(lines))
            print()


if __name__ == "__main__":
    main()
