"""Result -> markdown: the tables of NAME.md (one file per benchmark run).

    markdown(result, path, png)    # the whole file: header, targets, variants, one table per op,
                                   # memory tables, where gan_fast is slower, problems

Times are per call, median ms +-half the p20-p80 spread; slower rows are in bold.
"""
from __future__ import annotations

from typing import Optional

from benchmarks.report_data import (OP_ORDER, best_compile, case_sort_key, command_of, failures, is_compile,
                                    is_fused, median, runs_by_variant, slower_cases, targets, variant_names)

OP_TITLES = {
    "bn_act": "bn_act: BatchNorm2d (training) + ReLU/LeakyReLU(0.2)",
    "gan_loss": "gan_loss: GAN loss on (N,) logits",
    "blocks": "blocks: conv + BatchNorm2d + activation (whole block)",
    "step": "step: DCGAN training step with Adam (G and D steps)",
    "models": "models: training steps of pix2pix (U-Net + PatchGAN), CycleGAN's ResNet generator, a conv VAE",
    "dispatch": "dispatch: host cost of one call on tiny tensors (one thread, variants interleaved)",
}
MEMORY_NOTE = ("Memory. *held*: what stays allocated between forward and backward: the storages "
               "saved for backward plus the output, without the inputs and parameters (saved-tensor "
               "hooks; not for steps, which hold several graphs in turn). *peak*: training peak of one "
               "iteration (fwd+bwd, or the whole step) above what "
               "was allocated before it: torch.cuda.max_memory_allocated on GPU, the CPU allocation "
               "events of torch.profiler on CPU.")


def fmt_ms(ms: Optional[float]) -> str:
    if ms is None:
        return "-"
    if ms >= 100:
        return f"{ms:.0f}"
    if ms >= 10:
        return f"{ms:.1f}"
    if ms >= 1:
        return f"{ms:.2f}"
    return f"{ms:.3f}"


def fmt_ratio(r: Optional[float]) -> str:
    if r is None:
        return "-"
    s = f"{r:.2f}x"
    return f"**{s} slower**" if r < 0.995 else s


def _short_reason(reason: Optional[str], n: int = 60) -> str:
    reason = (reason or "").replace("|", "/").replace("\n", " ")
    return reason if len(reason) <= n else reason[: n - 1] + "…"


def cell(run: Optional[dict], mode: str, with_spread: bool = True) -> str:
    if run is None:
        return "-"
    if run["status"] != "ok":
        word = "n/a" if run["status"] == "n/a" else run["status"]
        return f"{word} ({_short_reason(run.get('reason'))})"
    t = run.get("timings", {}).get(mode)
    if not t:
        return "-"
    s = fmt_ms(t["median_ms"])
    if with_spread and t["median_ms"] > 0:
        spread = (t["p80_ms"] - t["p20_ms"]) / 2 / t["median_ms"] * 100
        s += f" ±{spread:.0f}%"
    return s


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def header_lines(result: dict, path: Optional[str] = None) -> list[str]:
    env = result["env"]
    rev = (env.get("git_revision") or "unknown")[:10] + (" (dirty)" if env.get("git_dirty") else "")
    lines = [f"Device: **{env.get('device_name')}** ({env.get('device')}, {env.get('torch_threads')} torch threads)"
             f" · torch {env.get('torch')} · triton {env.get('triton')} · CUDA {env.get('cuda')}"
             f" · gan_fast {env.get('gan_fast')} · git {rev} · {env.get('date_utc')}"]
    if path:
        lines.append(f"Result file: `{path}`")
    lines.append(f"Command: `{command_of(result)}` · {result.get('elapsed_s', '?')} s"
                 + ("" if result.get("complete") else " · **incomplete (interrupted)**"))
    la0, la1 = env.get("load_average_start"), env.get("load_average_end")
    if la0 and env.get("device") == "cpu":
        lines.append(f"Load average at start/end: {la0[0]:.2f} / {la1[0] if la1 else float('nan'):.2f} "
                     f"({env.get('cpu_count')} CPUs; the run itself adds about the thread count: more than that at "
                     "the start means other processes ran and the timings are noisy)")
    if env.get("cpu_allocator"):
        lines.append(f"CPU allocator: {env['cpu_allocator']}")
    return lines


def variants_table(result: dict) -> str:
    rows = []
    for name, st in result.get("variants", {}).items():
        if st["status"] == "ok":
            n_ok = sum(1 for c in result["cases"] for r in c["runs"] if r["variant"] == name and r["status"] == "ok")
            n_all = sum(1 for c in result["cases"] for r in c["runs"] if r["variant"] == name)
            rows.append([name, f"ran ({n_ok}/{n_all} cases)"])
        else:
            rows.append([name, f"{st['status']} ({st['reason']})"])
    return table(["variant", "status"], rows)


def targets_table(result: dict) -> str:
    rows = [[t["target"], t["variant"], "PASS" if t["ok"] else "**FAIL**", t["detail"]] for t in targets(result)]
    if not rows:
        return "_No gan_fast variant ran: no target can be checked._"
    return table(["target", "variant", "result", "detail"], rows)


def op_table(result: dict, op: str) -> str:
    cases = sorted([c for c in result["cases"] if c["op"] == op], key=case_sort_key(result))
    if not cases:
        return ""
    vnames = variant_names(result, op)
    fused = [v for v in vnames if is_fused(v)]
    has_compile = any(is_compile(v) for v in vnames)
    header = ["case", "shape", "dtype", "format", "mode"] + [f"{v} ms" for v in vnames]
    for f in fused:
        header += [f"{f} vs eager"] + ([f"{f} vs compile"] if has_compile else [])
    rows = []
    for c in cases:
        rv = runs_by_variant(c)
        for mode in c["modes"]:
            if not any(mode in r.get("timings", {}) for r in c["runs"]) and all(
                    r["status"] == "ok" for r in c["runs"]):
                continue
            row = [c["case"], c["shape"], c["dtype"], c["format"], mode]
            row += [cell(rv.get(v), mode) for v in vnames]
            e = median(rv.get("eager"), mode)
            bc, _ = best_compile(c, mode)
            for f in fused:
                m = median(rv.get(f), mode)
                row.append(fmt_ratio(e / m if e and m else None))
                if has_compile:
                    row.append(fmt_ratio(bc / m if bc and m else None))
            rows.append(row)
    return table(header, rows)


def fmt_bytes(b: Optional[float]) -> str:
    if b is None:
        return "-"
    if b >= 2**20 or b == 0:
        return f"{b / 2**20:.1f} MB"
    return f"{b / 2**10:.1f} KB"


def memory_table(result: dict, op: str) -> str:
    cases = sorted([c for c in result["cases"] if c["op"] == op], key=case_sort_key(result))
    vnames = [v for v in variant_names(result, op)]
    if not cases or not any(r.get("memory") for c in cases for r in c["runs"]):
        return ""
    has = lambda k: any(k in (r.get("memory") or {}) for c in cases for r in c["runs"])  # noqa: E731
    keys = [k for k in ("held_bytes", "peak_bytes") if has(k)]
    inplace = has("eager_inplace_held_bytes")
    fused = [v for v in vnames if is_fused(v)]
    header = ["case", "dtype", "format"]
    for k in keys:
        word = k.split("_")[0]
        header += [f"{v} {word}" for v in vnames]
        if k == "held_bytes" and inplace:
            header.append("eager, in-place act., held")
        header += [f"{v} {word} vs eager" for v in fused]
    rows = []
    for c in cases:
        rv = runs_by_variant(c)
        mem = {v: (rv[v].get("memory") or {}) if v in rv and rv[v]["status"] == "ok" else {} for v in vnames}
        row = [f"{c['case']} b{c['batch']}", c["dtype"], c["format"]]
        for k in keys:
            row += [fmt_bytes(mem[v].get(k)) for v in vnames]
            if k == "held_bytes" and inplace:
                row.append(fmt_bytes(mem.get("eager", {}).get("eager_inplace_held_bytes")))
            base = mem.get("eager", {}).get(k)
            for v in fused:
                x = mem[v].get(k)
                row.append((f"**{x / base:.2f}x**" if x / base > 1.005 else f"{x / base:.2f}x")
                           if x is not None and base else "-")
        rows.append(row)
    return table(header, rows)


def markdown(result: dict, path: Optional[str] = None, png: Optional[str] = None) -> str:
    parts = [f"# gan_fast benchmarks: {result['env'].get('device_name')}", ""]
    parts += [line + "  " for line in header_lines(result, path)]
    parts += ["", "Times are per call, median ms ±half the p20–p80 spread. Speedup = baseline time / "
              "variant time (> 1: the variant is faster); *vs compile* compares with the fastest "
              "torch.compile mode that ran for that row. Slower rows are in bold.", ""]
    parts += ["## Targets", "", targets_table(result), "", "## Variants", "", variants_table(result), ""]
    if png:
        parts += [f"![speedup vs eager]({png})", ""]
    for op in OP_ORDER:
        t = op_table(result, op)
        if not t:
            continue
        parts += [f"## {OP_TITLES[op]}", "", t, ""]
        m = memory_table(result, op)
        if m:
            parts += [MEMORY_NOTE, "", m, ""]
    slow = slower_cases(result)
    parts += ["## Where gan_fast is slower", ""]
    parts += [f"- {s}" for s in slow] if slow else ["None: every gan_fast row is at least as fast as eager and compile."]
    parts += [""]
    fails = failures(result)
    if fails:
        parts += ["## Not run, errors and mismatches", ""] + fails + [""]
    return "\n".join(parts)
