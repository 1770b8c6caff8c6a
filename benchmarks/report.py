"""Writing the results: RESULTS.md (tables), results.json (raw numbers), chart.png."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from .harness import Check, Outcome, Series

FINDINGS = os.path.join(os.path.dirname(__file__), "findings.md")
# Sections of the benchmarks that run on their own (`python -m benchmarks.streaming`,
# `python -m benchmarks.jetstream`): each script prints its section, which is kept in
# sections/ with its commentary, so that a full `python -m benchmarks` run keeps them.
SECTIONS = os.path.join(os.path.dirname(__file__), "sections")


def _num(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    if unit == "ms":
        return f"{value:.3f} ms" if value < 10 else f"{value:,.1f} ms"
    if unit == "records/s":
        return f"{value:,.0f}/s"
    if unit == "MiB":
        return f"{value:.1f} MiB"
    if unit == "×":
        return f"{value:.2f}×"
    if unit == "%":
        return f"{value:.2f}%"
    return f"{value:g}"


def _mark(check: Check) -> str:
    return {True: "✅ met", False: "❌ missed", None: "— not measured"}[check.met]


def _ratio_cells(out: Outcome) -> dict[str, list[str]]:
    """Ratio text per row: on the baseline's row when sqlstream is one row, else on ours."""
    cells: dict[str, list[str]] = {}
    for r in out.ratios:
        text = "—" if r.value is None else f"{r.value:.2f}×"
        row = r.theirs if r.ours == "sqlstream" else r.ours
        label = "" if r.ours == "sqlstream" else f"{r.label.split(':')[-1].strip()} "
        cells.setdefault(row, []).append(f"{label}{text}".strip())
    return cells


def _series_row(s: Series, cells: dict[str, list[str]]) -> str:
    if s.skipped:
        return f"| {s.system} | skipped: {s.skipped} | | | |"
    if s.is_latency:
        median, p99 = _num(s.median(), "ms"), _num(s.p99(), "ms") if len(s.values) > 1 else "—"
    else:
        median = _num(s.median(), s.unit)
        p99 = _num(s.op_p(99), "ms") if s.op_ms else "—"
    ratio = ", ".join(cells.get(s.system, [])) or ("(reference)" if s.system == "sqlstream" else "")
    n = f"{len(s.values)} {'samples' if s.is_latency else 'rounds'}"
    note = f"{n}; {s.note}" if s.note else n
    return f"| {s.system} | {median} | {p99} | {ratio} | {note} |"


def markdown(outcomes: Sequence[Outcome], meta: dict[str, Any], chart: str | None) -> str:
    lines = [
        "# sqlstream benchmarks",
        "",
        "Produced by:",
        "",
        "```",
        meta["command"],
        "```",
        "",
        f"{meta['when']} · {meta['machine']} · Python {meta['python']} · apsw {meta['apsw']} "
        f"(SQLite {meta['sqlite']}) · {meta['mode']} mode, {meta['rounds']} alternating rounds per workload "
        f"· {meta['seconds']:.0f} s",
        "",
        "Peers: " + ", ".join(f"{k} {v or 'not installed'}" for k, v in meta["peers"].items()) + ".",
        "",
    ]
    if meta.get("note"):
        lines += [f"> **Note:** {meta['note']}", ""]
    lines += [
        "How to read this: every workload runs sqlstream and its baselines in the same process run, "
        "alternating rounds (order rotated each round). Rates are medians over rounds; latencies are "
        "p50/p99 over all samples (nearest rank); the mean is not reported. The ratio column is "
        "*sqlstream ÷ baseline* for rates and *baseline ÷ sqlstream* for latencies, so above 1 always "
        "means sqlstream is better. All SQLite contenders run WAL with `synchronous=NORMAL` unless "
        "noted; Redis runs with AOF `appendfsync everysec`, on 127.0.0.1. 100-byte payloads.",
        "",
        "## Targets",
        "",
        "| workload | target | measured | result |",
        "|---|---|---|---|",
    ]
    for out in outcomes:
        for c in out.checks:
            lines.append(f"| {c.workload} | {c.what} {c.op} {_num(c.threshold, c.unit)} | "
                         f"{_num(c.value, c.unit)} | {_mark(c)}{' (' + c.note + ')' if c.note else ''} |")
    lines += ["", "Why the missed targets are missed: *What limits sqlstream* at the end of this file "
              "(`python -m benchmarks.anatomy` reproduces the split). The chunks-table layout study is "
              "in LAYOUT.md (`python -m benchmarks.layout`)."]
    if chart:
        lines += ["", f"![sqlstream vs baselines]({chart})"]
    lines += ["", "## Results", ""]
    for out in outcomes:
        lines += [f"### {out.workload}: {out.title}", ""]
        if out.skipped:
            lines += [f"Skipped: {out.skipped}", ""]
            continue
        latency = all(s.is_latency for s in out.series if not s.skipped)
        head = "p50" if latency else "median"
        p99 = "p99" if latency else "p99 per op"
        lines += [
            f"| system | {head} | {p99} | ratio (>1: sqlstream better) | notes |",
            "|---|---|---|---|---|",
        ]
        cells = _ratio_cells(out)
        lines += [_series_row(s, cells) for s in out.series]
        lines.append("")
        for note in out.notes:
            lines += [f"- {note}"]
        if out.notes:
            lines.append("")
    lines += _written_parts()
    return "\n".join(lines)


def _written_parts() -> list[str]:
    """The parts of RESULTS.md after the measured tables: sections/, method, findings."""
    lines: list[str] = []
    for section in sorted(os.listdir(SECTIONS)) if os.path.isdir(SECTIONS) else []:
        if section.endswith(".md"):
            with open(os.path.join(SECTIONS, section), encoding="utf-8") as f:
                lines += [f.read().rstrip(), ""]
    lines += [METHOD_HEADING, "", *[f"- {m}" for m in METHOD], ""]
    if os.path.exists(FINDINGS):
        with open(FINDINGS, encoding="utf-8") as f:
            lines += [f.read().rstrip(), ""]
    return lines


def refresh(path: str) -> None:
    """Rewrite the written parts of an existing RESULTS.md (after editing sections/ or
    findings.md) and keep its measured part as it is: ``python -m benchmarks.report``."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    cut = len(text)
    headings = [METHOD_HEADING]
    for section in sorted(os.listdir(SECTIONS)) if os.path.isdir(SECTIONS) else []:
        if section.endswith(".md"):
            with open(os.path.join(SECTIONS, section), encoding="utf-8") as f:
                headings.append(f.readline().rstrip())
    for heading in headings:
        at = text.find("\n" + heading + "\n")
        if at >= 0:
            cut = min(cut, at + 1)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text[:cut] + "\n".join(_written_parts()))



METHOD_HEADING = "## Method and caveats"
METHOD = [
    "W1: sqlstream `Stream.extend` of 1,000 records; raw apsw `executemany` into "
    "`records(id INTEGER PRIMARY KEY, data BLOB)` inside `BEGIN IMMEDIATE … COMMIT`; Redis: a "
    "non-transactional pipeline of 1,000 `XADD`.",
    "W2: one commit per record. The raw baseline is `BEGIN IMMEDIATE; INSERT; COMMIT` on the bare table "
    "with sqlstream's journal and sync settings. persist-queue keeps its default `synchronous=FULL` (an "
    "fsync per commit); that is the library as users get it. litequeue stores TEXT, so it gets a 100-char str.",
    "W3: the whole stream is read each round, 1,000 records a call. sqlstream returns `Record` objects "
    "(offset, timestamp, key, headers, value, position, txn, content type); the raw baseline returns "
    "`(id, data)` tuples; Redis returns `(id, {field: value})`.",
    "W4: each round refills the queue (not timed) and times draining it in fetches of 100.",
    "W5: end-to-end latency, from just before the append call to the blocked reader holding the record; the "
    "writer pauses 1–4 ms (random) between records so the reader is always blocked. The other-process "
    "reader is a spawned Python process.",
    "W6: start and end windows measure the median 1,000-record batch and the median single commit, and "
    "random-offset page reads of 1,000 records; the scan runs in a separate process opened read-only.",
    "W7: 4 spawned processes each append N records one commit at a time to one stream, started together; "
    "the rate is all records over the wall time from the first start to the last finish; afterwards the "
    "stream is checked (count, per-writer counts, gap-free offsets).",
    "W8: 1 or 2 spawned processes each make N single appends to a stream of their own in a file of 10, "
    "10,000 or 1,000,000 streams (one 100-byte record each, built with plain SQL); with 2 writers every "
    "append follows the other's commit and derives the commit number again. The rate counts each writer's "
    "first append after opening; afterwards offsets, txn order and the last txn are checked.",
    "W9: 64 KiB records, one commit per append, then a stream of them read in pages of 100; the raw "
    "baseline is a rowid table (id, data), the layout SQLite suits best to large rows.",
    "Numbers from a shared machine drift between runs; the ratios, measured side by side, are what to compare.",
]


def write_json(path: str, outcomes: Sequence[Outcome], meta: dict[str, Any]) -> None:
    doc = {
        "meta": meta,
        "workloads": [
            {
                "workload": o.workload,
                "title": o.title,
                "seconds": o.seconds,
                "skipped": o.skipped,
                "series": [s.summary() for s in o.series],
                "ratios": [r.__dict__ for r in o.ratios],
                "checks": [dict(c.__dict__, met=c.met) for c in o.checks],
                "facts": o.facts,
                "notes": o.notes,
            }
            for o in outcomes
        ],
    }
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1, default=str)
        f.write("\n")


def chart(path: str, outcomes: Sequence[Outcome], title: str) -> str | None:
    """Draw the ratios (throughput) and W5 latencies; return None if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        return None
    bars: list[tuple[str, float, float | None]] = []
    for out in outcomes:
        if out.workload in ("W5",):
            continue
        for r in out.ratios:
            if r.value is not None:
                bars.append((f"{out.workload} {r.label}", r.value, r.target))
    wake = [s for o in outcomes if o.workload == "W5" for s in o.series if s.values]
    panels = (1 if bars else 0) + (1 if wake else 0)
    if panels == 0:
        return None
    heights = [max(2.5, 0.32 * len(bars) + 1)] if bars else []
    if wake:
        heights.append(max(2.5, 0.45 * len(wake) + 1))
    fig, axes = plt.subplots(panels, 1, figsize=(9, sum(heights)), height_ratios=heights, squeeze=False)
    ax_i = 0
    if bars:
        ax = axes[ax_i][0]
        ax_i += 1
        labels = [b[0] for b in bars][::-1]
        values = [b[1] for b in bars][::-1]
        targets = [b[2] for b in bars][::-1]
        colors = ["#4c9a2a" if (t is None or v >= t) else "#c0392b" for v, t in zip(values, targets)]
        colors = [c if t is not None else "#7f8c8d" for c, t in zip(colors, targets)]
        y = range(len(values))
        ax.barh(list(y), values, color=colors)
        for i, (v, t) in enumerate(zip(values, targets)):
            ax.text(v, i, f" {v:.2f}×", va="center", fontsize=7)
            if t is not None:
                ax.plot([t, t], [i - 0.4, i + 0.4], color="black", linewidth=1.5)
        ax.axvline(1.0, color="#555", linewidth=0.8, linestyle="--")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_yticks(list(y))
        ax.set_yticklabels(labels, fontsize=7)
        ax.set_xlabel("ratio, >1 = sqlstream better (log scale); black tick = target; red = target missed")
        ax.set_title(title, fontsize=9)
    if wake:
        ax = axes[ax_i][0]
        names = [s.system for s in wake][::-1]
        p50 = [s.median() for s in wake][::-1]
        p99 = [s.p99() for s in wake][::-1]
        y = list(range(len(names)))
        ax.barh([i + 0.2 for i in y], p99, height=0.4, color="#e67e22", label="p99")
        ax.barh([i - 0.2 for i in y], p50, height=0.4, color="#2980b9", label="p50")
        ax.axvline(1.0, color="black", linewidth=0.8, linestyle=":")
        ax.axvline(5.0, color="black", linewidth=0.8, linestyle="--")
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(matplotlib.ticker.FixedLocator(
            [0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500]))
        ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_yticks(y)
        ax.set_yticklabels(names, fontsize=7)
        ax.set_xlabel("W5 wake latency, ms (log); targets: same process p99 ≤ 1 ms (dotted), other ≤ 5 ms (dashed)")
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return os.path.basename(path)


if __name__ == "__main__":
    refresh(os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md"))
