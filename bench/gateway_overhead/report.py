"""Ratios, the issue's targets (met or not, from the measured figures), and the markdown summary."""

from __future__ import annotations

from typing import Any

GATEWAYS = ("draftgate", "litellm", "relay")
MODE_TITLES = {"non_streaming": "non-streaming", "streaming": "streaming"}


def _rps(result: dict[str, Any], mode: str, c: int, name: str) -> float:
    return float(result["load"][mode][str(c)][name]["good_rps"])


def ratios(result: dict[str, Any]) -> dict[str, float | None]:
    """draftgate over LiteLLM and over the bare relay, for every measured figure that has both."""
    out: dict[str, float | None] = {}
    c1 = result["c1"]
    for mode in c1:
        dg, lt = c1[mode].get("draftgate", {}), c1[mode].get("litellm", {})
        for key in ("added_p50_ms", "added_p99_ms", "added_ttft_p50_ms"):
            if key in dg and key in lt and lt[key]:
                out[f"c1_{mode}_{key}_draftgate_over_litellm"] = round(dg[key] / lt[key], 3)
    for mode, cells in result["load"].items():
        for c in cells:
            dg = _rps(result, mode, int(c), "draftgate")
            for other in ("litellm", "relay"):
                base = _rps(result, mode, int(c), other)
                out[f"c{c}_{mode}_rps_draftgate_over_{other}"] = round(dg / base, 3) if base else None
    return out


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each with the measured figure and whether it was met."""
    rows: list[dict[str, Any]] = []
    c1 = result["c1"]["non_streaming"]
    dg_added, lt_added = c1["draftgate"].get("added_p50_ms"), c1["litellm"].get("added_p50_ms")
    if dg_added is not None and lt_added is not None:
        rows.append({"target": "added p50 at c=1 (non-streaming) <= 1/6 of LiteLLM's",
                     "measured": f"{dg_added:.3f} ms vs LiteLLM {lt_added:.3f} ms (limit {lt_added / 6:.3f} ms)",
                     "met": dg_added <= lt_added / 6})
        rows.append({"target": "added p50 at c=1 (non-streaming) about 1 ms or less",
                     "measured": f"{dg_added:.3f} ms", "met": dg_added <= 1.0})
    r = result["ratios"]
    for mode in ("non_streaming", "streaming"):
        if "32" not in result["load"].get(mode, {}):
            continue
        vs_lt, vs_relay = r.get(f"c32_{mode}_rps_draftgate_over_litellm"), r.get(f"c32_{mode}_rps_draftgate_over_relay")
        rows.append({"target": f"c=32 {MODE_TITLES[mode]}: >= 5x LiteLLM's req/s", "measured": f"{vs_lt}x",
                     "met": vs_lt is not None and vs_lt >= 5})
        rows.append({"target": f"c=32 {MODE_TITLES[mode]}: >= 70% of the bare relay's req/s",
                     "measured": f"{100 * vs_relay:.1f}%" if vs_relay is not None else "n/a",
                     "met": vs_relay is not None and vs_relay >= 0.7})
        if "128" in result["load"][mode]:
            errs = result["load"][mode]["128"]["draftgate"]["errors"]
            rows.append({"target": f"c=128 {MODE_TITLES[mode]}: 0 errors", "measured": f"{errs} errors",
                         "met": errs == 0})
    soak = result.get("soak")
    if soak:
        rows.append({"target": "RSS growth < 10% over a 100,000-request soak",
                     "measured": f"{soak['rss_growth_pct']}% over {soak['requests']} requests"
                                 + ("" if soak["requests"] >= 100_000 else " (shorter soak than asked)"),
                     "met": soak["rss_growth_pct"] < 10 and soak["requests"] >= 100_000})
    return rows


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def table(result: dict[str, Any]) -> str:
    """The side-by-side figures as markdown tables."""
    c1_names = [n for n in ("direct", "draftgate", "draftgate_vkey", "litellm", "relay") if n in result["c1"]["non_streaming"]]
    names = ["direct", *GATEWAYS]
    lines = ["| concurrency 1 | " + " | ".join(c1_names) + " |", "|---|" + "---|" * len(c1_names)]
    for mode in ("non_streaming", "streaming"):
        rows = result["c1"][mode]
        for key, label in (("p50_ms", "p50 ms"), ("p99_ms", "p99 ms"), ("added_p50_ms", "added p50 ms"),
                           ("added_p99_ms", "added p99 ms"), ("ttft_p50_ms", "TTFT p50 ms"),
                           ("added_ttft_p50_ms", "added TTFT p50 ms"), ("errors", "errors")):
            if any(key in rows[n] for n in c1_names):
                lines.append(f"| {MODE_TITLES[mode]} {label} | "
                             + " | ".join(_fmt(rows[n].get(key), 3) for n in c1_names) + " |")
    lines += ["", "| load (wrk) | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for mode, cells in result["load"].items():
        for c, cell in cells.items():
            for key, label in (("good_rps", "req/s"), ("error_pct", "error %"), ("p99_ms", "p99 ms")):
                lines.append(f"| {MODE_TITLES[mode]} c={c} {label} | "
                             + " | ".join(_fmt(cell[n][key], 1 if key == "good_rps" else 3) for n in names) + " |")
            lines.append(f"| {MODE_TITLES[mode]} c={c} gateway CPU % | - | "
                         + " | ".join(_fmt(cell[n]["cpu_pct"].get("gateway"), 0) for n in GATEWAYS) + " |")
            lines.append(f"| {MODE_TITLES[mode]} c={c} gateway core busy % (all processes) | - | "
                         + " | ".join(_fmt(cell[n]["cpu_pct"].get("cores_busy"), 0) for n in GATEWAYS) + " |")
            lines.append(f"| {MODE_TITLES[mode]} c={c} upstream / wrk CPU % | "
                         + " | ".join(f"{_fmt(cell[n]['cpu_pct'].get('upstream'), 0)} / "
                                      f"{_fmt(cell[n]['cpu_pct'].get('wrk'), 0)}" for n in names) + " |")
    lines += ["", "| RSS MiB | " + " | ".join(GATEWAYS) + " |", "|---|" + "---|" * len(GATEWAYS)]
    for key in ("idle", "before", "after"):
        lines.append(f"| {key} | " + " | ".join(_fmt(result["rss_mib"][n][key], 1) for n in GATEWAYS) + " |")
    return "\n".join(lines)


def contention_pct(result: dict[str, Any]) -> float | None:
    """Median share of the gateway core that other processes used during the gateways' load cells."""
    shares = sorted(float(cell[n]["cpu_pct"]["cores_busy"]) - float(cell[n]["cpu_pct"]["gateway"])
                    for cells in result["load"].values() for cell in cells.values() for n in GATEWAYS
                    if "cores_busy" in cell[n]["cpu_pct"] and "gateway" in cell[n]["cpu_pct"])
    return round(shares[len(shares) // 2], 1) if shares else None


def markdown(result: dict[str, Any]) -> str:
    """The summary written next to the JSON."""
    m, v, s = result["machine"], result["versions"], result["setup"]
    other = contention_pct(result)
    out = [f"# Gateway overhead: draftgate vs LiteLLM proxy vs a bare relay ({result['mode']} run)", "",
           f"Generated by `{result['command']}` on {result['generated_at']}.", "",
           f"Machine: {m['cpu_model']}, {m['cpu_count']} CPUs, {m['platform']}, Python {m['python']}.  ",
           "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()) + ".", "",
           "## Set-up", ""]
    out += [f"- {line}" for line in s["notes"]]
    if other is not None and other > 5:
        out.append(f"- **Shared machine**: during the load cells other processes used {other}% (median) of the "
                   "gateway core, so every gateway got less than a full core. Absolute req/s are depressed "
                   "accordingly; paths were interleaved, so the ratios are the figures to compare.")
    out += ["", "## Results", "", "`draftgate_vkey`: the same draftgate process, called with a virtual key "
            "(`draftgate keys create`) instead of the master key; every other draftgate figure uses the master key, "
            "as LiteLLM's does (without a database LiteLLM has no virtual keys).", "", table(result), "",
            "## Ratios", ""]
    out += [f"- `{k}`: {_fmt(val, 3)}" for k, val in result["ratios"].items()]
    out += ["", "## Targets (from the issue)", "", "| target | measured | met |", "|---|---|---|"]
    out += [f"| {t['target']} | {t['measured']} | {'yes' if t['met'] else '**no**'} |" for t in result["targets"]]
    if result.get("soak"):
        soak = result["soak"]
        out += ["", "## Soak (draftgate)", "",
                f"{soak['requests']} requests (half streamed) at c={soak['connections']} in {soak['seconds']} s, "
                f"{soak['errors']} errors; RSS {soak['samples'][0]['rss_mib']} -> {soak['samples'][-1]['rss_mib']} MiB "
                f"({soak['rss_growth_pct']}%; {soak['rss_growth_after_first_slice_pct']}% after the first slice).",
                "", "RSS after each slice (requests: MiB): "
                + ", ".join(f"{x['requests']}: {x['rss_mib']}" for x in soak["samples"]) + "."]
    if result.get("ledger"):
        out += ["", f"draftgate ledger rows at the end: {result['ledger']['rows']} "
                    f"(by status: {result['ledger']['by_status']})."]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    import json
    import sys
    from pathlib import Path

    source = Path(sys.argv[1])  # re-renders the markdown of an existing results JSON
    source.with_suffix(".md").write_text(markdown(json.loads(source.read_text())))
