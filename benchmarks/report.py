"""Result JSON -> markdown table, PNG plot, README performance section.

    python -m benchmarks.report RESULT.json                 # writes RESULT.md and RESULT.png
    python -m benchmarks.report RESULT.json --readme        # prints the README section
    python -m benchmarks.report RESULT.json --md - --no-png # markdown to stdout

Ratios are speedups: ``time(baseline) / time(variant)``, > 1 means the variant is
faster. "vs compile" compares with the fastest torch.compile mode that ran for
that row. Rows where gan_fast is slower are shown (in bold), never dropped.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Optional

OP_TITLES = {
    "bn_act": "bn_act: BatchNorm2d (training) + ReLU/LeakyReLU(0.2)",
    "gan_loss": "gan_loss: GAN loss on (N,) logits",
    "blocks": "blocks: conv + BatchNorm2d + activation (whole block)",
    "step": "step: DCGAN training step with Adam (G and D steps)",
    "dispatch": "dispatch: host cost of one call on tiny tensors (one thread, variants interleaved)",
}
OP_ORDER = ("bn_act", "gan_loss", "blocks", "step", "dispatch")
# None: each case's own mode (dispatch: train fwd+bwd and eval fwd cases)
PRIMARY_MODE = {"bn_act": "fwd+bwd", "gan_loss": "fwd+bwd", "blocks": "fwd+bwd", "step": "step",
                "dispatch": None}
LAYER_ORDER = ["G1", "G2", "G3", "G4", "D2", "D3", "D4"]
MEMORY_NOTE = ("Memory. *held*: what stays allocated between forward and backward: the storages "
               "saved for backward plus the output, without the inputs and parameters (saved-tensor "
               "hooks; not for steps, which hold several graphs in turn). *peak*: training peak of one "
               "iteration (fwd+bwd, or the whole step) above what "
               "was allocated before it: torch.cuda.max_memory_allocated on GPU, the CPU allocation "
               "events of torch.profiler on CPU.")
TARGETS = {  # (op, mode): minimum speedup vs eager
    ("bn_act", "fwd+bwd"): 2.0,
    ("gan_loss", "fwd+bwd"): 3.0,
    ("blocks", "fwd+bwd"): 1.0,
}
# dispatch (issue 12): (what, case selector, maximum host time of gan_fast / stock's)
DISPATCH_TARGETS = (
    ("dispatch: a block call (train fwd+bwd, eval fwd) <= 0.7x stock host time",
     lambda c: c["case"][:1] in ("G", "D"), 0.7),
    ("dispatch: a GANLoss call (fwd+bwd) <= 1.0x stock host time",
     lambda c: c["case"].startswith("bce-"), 1.0),
)


# ----------------------------------------------------------------------- helpers
def load(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def is_fused(variant: str) -> bool:
    return variant.startswith("gan_fast:")


def is_compile(variant: str) -> bool:
    return variant.startswith("compile")


def _label_key(label: str):
    return (LAYER_ORDER.index(label), "") if label in LAYER_ORDER else (len(LAYER_ORDER), label)


def _case_sort_key(result: dict):
    opts = result.get("options", {})
    dts, fmts = list(opts.get("dtypes") or []), list(opts.get("formats") or [])

    def key(c):
        return (OP_ORDER.index(c["op"]) if c["op"] in OP_ORDER else 99,
                dts.index(c["dtype"]) if c["dtype"] in dts else 99,
                fmts.index(c["format"]) if c["format"] in fmts else 99,
                c["batch"], _label_key(c["case"]))
    return key


def variant_names(result: dict, op: Optional[str] = None) -> list[str]:
    """Variants that ran (status ok) at least once for `op`, in option order, eager first."""
    order = list(result.get("options", {}).get("variants") or [])
    seen = []
    for c in result["cases"]:
        if op and c["op"] != op:
            continue
        for r in c["runs"]:
            if r["variant"] not in seen and r["status"] in ("ok", "error", "n/a", "skipped"):
                seen.append(r["variant"])
    seen.sort(key=lambda v: (v != "eager", order.index(v) if v in order else 99))
    ran_any = {r["variant"] for c in result["cases"] if not op or c["op"] == op
               for r in c["runs"] if r["status"] == "ok"}
    return [v for v in seen if v in ran_any or v == "eager"]


def median(run: dict, mode: str) -> Optional[float]:
    if run is None or run.get("status") != "ok":
        return None
    t = run.get("timings", {}).get(mode)
    return t["median_ms"] if t else None


def runs_by_variant(case: dict) -> dict:
    return {r["variant"]: r for r in case["runs"]}


def best_compile(case: dict, mode: str) -> tuple[Optional[float], Optional[str]]:
    best = (None, None)
    for r in case["runs"]:
        if is_compile(r["variant"]):
            m = median(r, mode)
            if m is not None and (best[0] is None or m < best[0]):
                best = (m, r["variant"])
    return best


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


def fmt_mb(b: Optional[float]) -> str:
    return "-" if b is None else f"{b / 2**20:.1f}"


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


def geomean(xs):
    xs = [x for x in xs if x and x > 0]
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else None


def _case_name(c: dict, with_dtype=True) -> str:
    s = f"{c['case']} b{c['batch']}"
    if with_dtype and c["format"] != "-":
        s += f" {c['dtype']} {c['format']}"
    return s


def command_of(result: dict) -> str:
    argv = result.get("argv")
    if argv is None:
        return "python -m benchmarks"
    return " ".join(["python -m benchmarks", *argv]).strip()


# ---------------------------------------------------------------------- analyses
def speedups(result: dict, op: str, mode: Optional[str], variant: str, baseline: str = "eager"):
    """[(case, ratio)] of baseline/variant for every case of `op` where both ran
    (mode None: each case's first mode)."""
    out = []
    for c in result["cases"]:
        if c["op"] != op:
            continue
        m = mode or c["modes"][0]
        rv = runs_by_variant(c)
        v = median(rv.get(variant), m)
        if baseline == "compile":
            b, _ = best_compile(c, m)
        else:
            b = median(rv.get(baseline), m)
        if v and b:
            out.append((c, b / v))
    return out


def fused_variants(result: dict) -> list[str]:
    return [v for v in variant_names(result) if is_fused(v)]


def memory_ratios(result: dict, op: str, variant: str, key: str = "held_bytes", baseline_key: str = None):
    out = []
    for c in result["cases"]:
        if c["op"] != op:
            continue
        rv = runs_by_variant(c)
        e, v = rv.get("eager"), rv.get(variant)
        if not e or not v or e["status"] != "ok" or v["status"] != "ok":
            continue
        em, vm = e.get("memory", {}), v.get("memory", {})
        base = em.get(baseline_key or key)
        if base and vm.get(key) is not None:
            out.append((c, vm[key] / base))
    return out


def _mem_row(fv, what, ratios, limit, note=""):
    worst = max(ratios, key=lambda x: x[1])
    return {"variant": fv, "target": what, "ok": worst[1] <= limit + 0.005,
            "detail": f"max {worst[1]:.2f}x ({_case_name(worst[0])}) over {len(ratios)} cases" + note}


def targets(result: dict) -> list[dict]:
    """Each performance and memory target, per gan_fast variant: pass/fail and the worst case."""
    rows = []
    d_layers = lambda c: c["case"].startswith("D")  # noqa: E731 - LeakyReLU blocks
    g_layers = lambda c: c["case"].startswith("G")  # noqa: E731 - ReLU blocks
    for fv in fused_variants(result):
        for (op, mode), want in TARGETS.items():
            what = {"bn_act": f"bn_act {mode} >= {want:g}x eager",
                    "gan_loss": f"gan_loss {mode} >= {want:g}x eager",
                    "blocks": f"blocks (conv included) {mode} never slower than eager"}[op]
            groups = [("", lambda c: True)]
            if op == "gan_loss":  # launch-bound (N,) logits apart from the patch logits
                groups = [(", (N,) logits", lambda c: not c["case"].endswith("-patch")),
                          (", patch logits", lambda c: c["case"].endswith("-patch"))]
            for suffix, sel in groups:
                sp = [x for x in speedups(result, op, mode, fv) if sel(x[0])]
                if not sp:
                    continue
                worst = min(sp, key=lambda x: x[1])
                rows.append({"variant": fv, "target": what + suffix, "ok": worst[1] >= want * 0.995,
                             "detail": f"min {worst[1]:.2f}x ({_case_name(worst[0])}), geomean "
                                       f"{geomean([s for _, s in sp]):.2f}x over {len(sp)} cases"})
        for op in ("blocks", "step"):
            mp = memory_ratios(result, op, fv, "peak_bytes")
            if mp:
                rows.append(_mem_row(fv, f"{op}: training peak memory <= stock", mp, 1.0))
            mr = memory_ratios(result, op, fv)
            if mr and op == "blocks":
                rows.append(_mem_row(fv, f"{op}: memory held for backward <= stock", mr, 1.0))
        for name, sel in (("LeakyReLU blocks (D)", d_layers), ("ReLU blocks (G)", g_layers)):
            for key, label in (("held_bytes", "held for backward"), ("peak_bytes", "training peak")):
                mr = [x for x in memory_ratios(result, "blocks", fv, key) if sel(x[0])]
                if mr:
                    note = ("; stock ReLU keeps its output, not the BN output" if sel is g_layers
                            and key == "held_bytes" else "")
                    rows.append(_mem_row(fv, f"{name}: {label} <= 0.7x stock (act. not in place)",
                                         mr, 0.7, note))
        mi = memory_ratios(result, "blocks", fv, "held_bytes", "eager_inplace_held_bytes")
        if mi:
            rows.append(_mem_row(fv, "blocks: held for backward <= stock with in-place act.", mi, 1.0))
        for what, sel, limit in DISPATCH_TARGETS:
            hr = [(c, 1.0 / s) for c, s in speedups(result, "dispatch", None, fv) if sel(c)]
            if hr:
                rows.append(_mem_row(fv, what, hr, limit))
    return rows


def slower(result: dict) -> list[tuple]:
    """Every (case, mode, gan_fast variant, baseline, ratio) where gan_fast is slower than
    eager or than the fastest torch.compile mode."""
    out = []
    for c in sorted(result["cases"], key=_case_sort_key(result)):
        rv = runs_by_variant(c)
        for mode in c["modes"]:
            e = median(rv.get("eager"), mode)
            bc, bcn = best_compile(c, mode)
            for v, r in rv.items():
                m = median(r, mode) if is_fused(v) else None
                if not m:
                    continue
                if e and m > e * 1.005:
                    out.append((c, mode, v, "eager", e / m))
                if bc and m > bc * 1.005:
                    out.append((c, mode, v, bcn, bc / m))
    return out


def slower_cases(result: dict) -> list[str]:
    """`slower` as lines, one per (op, mode, variant, baseline), the cases listed in it."""
    groups: dict = {}
    for c, mode, v, base, ratio in slower(result):
        groups.setdefault((c["op"], mode, v, base), []).append(f"{_case_name(c)} {ratio:.2f}x")
    return [f"{op} {mode}, {v} vs {base} ({len(items)}): " + ", ".join(items)
            for (op, mode, v, base), items in groups.items()]


# ---------------------------------------------------------------------- markdown
def _table(header: list[str], rows: list[list[str]]) -> str:
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
    return _table(["variant", "status"], rows)


def targets_table(result: dict) -> str:
    rows = [[t["target"], t["variant"], "PASS" if t["ok"] else "**FAIL**", t["detail"]] for t in targets(result)]
    if not rows:
        return "_No gan_fast variant ran: no target can be checked._"
    return _table(["target", "variant", "result", "detail"], rows)


def op_table(result: dict, op: str) -> str:
    cases = sorted([c for c in result["cases"] if c["op"] == op], key=_case_sort_key(result))
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
    return _table(header, rows)


def fmt_bytes(b: Optional[float]) -> str:
    if b is None:
        return "-"
    if b >= 2**20 or b == 0:
        return f"{b / 2**20:.1f} MB"
    return f"{b / 2**10:.1f} KB"


def memory_table(result: dict, op: str) -> str:
    cases = sorted([c for c in result["cases"] if c["op"] == op], key=_case_sort_key(result))
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
    return _table(header, rows)


def failures(result: dict) -> list[str]:
    out = []
    for c in result["cases"]:
        for r in c["runs"]:
            if r["status"] in ("error", "n/a"):
                out.append(f"- {c['op']} {_case_name(c)} {r['variant']}: {r['status']}: {r.get('reason')}")
            mrd = r.get("max_rel_diff_vs_eager")
            tol = 2e-3 if c["dtype"] == "fp32" else 5e-2
            if mrd is not None and mrd > tol:
                out.append(f"- {c['op']} {_case_name(c)} {r['variant']}: forward differs from eager "
                           f"(max rel. diff {mrd:.2e} > {tol:g})")
    skipped = sum(1 for c in result["cases"] for r in c["runs"]
                  if r["status"] == "skipped" and (r.get("reason") or "").startswith("time budget"))
    if skipped:
        out.append(f"- {skipped} (case, variant) pairs skipped: the time budget was used up (see the JSON)")
    return out


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


# --------------------------------------------------------------------------- plot
def _minor_label(y, _pos=None) -> str:
    """Label log-axis minor ticks 2 and 5 of each decade (0.2x, 0.5x, 2x, 5x, ...)."""
    if y <= 0:
        return ""
    mant = round(y / 10 ** math.floor(math.log10(y) + 1e-9), 3)
    return f"{y:g}x" if mant in (2.0, 5.0) else ""


def plot(result: dict, path: str) -> Optional[str]:
    """PNG: speedup vs eager per shape and variant, one panel per op/dtype/format."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter
    except Exception as e:  # noqa: BLE001
        return f"matplotlib not available ({type(e).__name__}: {e})"
    panels = []
    for op in OP_ORDER:
        mode = PRIMARY_MODE[op]
        cases = sorted([c for c in result["cases"] if c["op"] == op], key=_case_sort_key(result))
        groups = []
        for c in cases:
            key = (c["dtype"], c["format"])
            if not groups or groups[-1][0] != key:
                groups.append((key, []))
            groups[-1][1].append(c)
        for key, cs in groups:
            vn = [v for v in variant_names(result, op) if v != "eager"]
            if vn and any(speedups(result, op, mode, v) for v in vn):
                panels.append((op, mode, key, cs, vn))
    if not panels:
        return "nothing to plot (no variant ran beside eager)"
    ncol = 2 if len(panels) > 1 else 1
    nrow = math.ceil(len(panels) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(8 * ncol, 3.4 * nrow), squeeze=False)
    allv = sorted({v for p in panels for v in p[4]}, key=lambda v: (is_fused(v), v))
    colors = {v: plt.cm.tab10(i % 10) for i, v in enumerate(allv)}
    for ax, (op, mode, (dt, fm), cs, vn) in zip(axes.flat, panels):
        width = 0.8 / max(1, len(vn))
        labels = [f"{c['case']}\nb{c['batch']}" for c in cs]
        for j, v in enumerate(vn):
            ys = []
            for c in cs:
                rv, cm = runs_by_variant(c), mode or c["modes"][0]
                e, m = median(rv.get("eager"), cm), median(rv.get(v), cm)
                ys.append(e / m if e and m else float("nan"))
            xs = [i + (j - (len(vn) - 1) / 2) * width for i in range(len(cs))]
            ax.bar(xs, ys, width=width, color=colors[v], label=v)
            if len(cs) * len(vn) <= 40:
                for x, y in zip(xs, ys):
                    if y == y:  # not NaN
                        ax.annotate(f"{y:.2g}", (x, y), ha="center", va="bottom", fontsize=5)
        for i, c in enumerate(cs):
            rv, cm = runs_by_variant(c), mode or c["modes"][0]
            if not any(median(rv.get(v), cm) for v in vn) or not median(rv.get("eager"), cm):
                ax.annotate("not run", (i, 1.0), ha="center", va="bottom", fontsize=6, color="gray")
        ax.axhline(1.0, color="black", lw=0.8)
        if op in ("bn_act", "gan_loss"):
            ax.axhline(TARGETS[(op, "fwd+bwd")], color="red",
                       lw=0.8, ls="--", label="target")
        ax.set_xticks(range(len(cs)))
        crowded = len(cs) > 16  # e.g. 32 loss cases: vertical labels that do not overlap
        ax.set_xticklabels([lb.replace("\n", " ") for lb in labels] if crowded else labels,
                           fontsize=6 if crowded else 7, rotation=90 if crowded else 0)
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}x"))
        ax.yaxis.set_minor_formatter(FuncFormatter(_minor_label))
        ax.tick_params(axis="y", which="both", labelsize=6)
        ax.set_ylabel("speedup vs eager")
        title = f"{op} {mode}" + (f" · {dt} {fm}" if fm != "-" else "")
        ax.set_title(title.replace(" None", " (per case)"), fontsize=9)
        ax.legend(fontsize=6, loc="best")
        ax.grid(axis="y", which="both", alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    env = result["env"]
    fig.suptitle(f"gan_fast speedup vs eager PyTorch — {env.get('device_name')} · torch {env.get('torch')}",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


# ------------------------------------------------------------------------ README
def repo_path(path: str) -> str:
    """`path` relative to the repository root when it lies inside it (README links)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = os.path.abspath(path)
    return os.path.relpath(ap, root) if ap.startswith(root + os.sep) else ap


def readme_section(result: dict, path: str) -> str:
    """The README's performance section, generated from one committed result file."""
    path = repo_path(path)
    stem = os.path.splitext(path)[0]
    env = result["env"]
    lines = ["## Performance", "",
             f"Generated from [`{path}`]({path}) by `python -m benchmarks.report {path} --update-readme README.md`; "
             f"full table [`{stem}.md`]({stem}.md). Measured with `{command_of(result)}` on "
             f"{env.get('device_name')} ({env.get('device')}, {env.get('torch_threads')} threads), "
             f"torch {env.get('torch')}, git {(env.get('git_revision') or '?')[:10]}, {env.get('date_utc')}.", "",
             targets_table(result), ""]
    rows = []
    for op in OP_ORDER:
        mode = PRIMARY_MODE[op]
        for fv in fused_variants(result):
            se = speedups(result, op, mode, fv)
            if not se:
                continue
            sc = speedups(result, op, mode, fv, "compile")
            lo = min(se, key=lambda x: x[1])
            hi = max(se, key=lambda x: x[1])
            rows.append([op, mode or "per case", fv, f"{geomean([s for _, s in se]):.2f}x",
                         f"{lo[1]:.2f}x ({_case_name(lo[0])})", f"{hi[1]:.2f}x ({_case_name(hi[0])})",
                         f"{geomean([s for _, s in sc]):.2f}x" if sc else "n/a (no torch.compile run)"])
    if rows:
        lines += [_table(["op", "mode", "variant", "vs eager (geomean)", "worst", "best", "vs compile (geomean)"],
                         rows), ""]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if os.path.exists(os.path.join(root, stem + ".png")):
        lines += [f"![gan_fast speedup vs eager]({stem}.png)", ""]
    slow = slower_cases(result)
    if slow:
        lines += ["Where gan_fast is slower (every case, grouped by op, mode, backend and baseline):", ""]
        lines += [f"- {s}" for s in slow] + [""]
    else:
        lines += ["gan_fast is at least as fast as eager and torch.compile in every case measured.", ""]
    return "\n".join(lines)


README_START = "<!-- benchmarks:start (generated by python -m benchmarks.report --update-readme) -->"
README_END = "<!-- benchmarks:end -->"


def update_readme(readme: str, section: str) -> int:
    """Replace the generated block of `readme` (between the marker lines) with `section`."""
    with open(readme) as f:
        text = f.read()
    lines = text.splitlines()
    starts = [i for i, l in enumerate(lines) if l.strip().startswith("<!-- benchmarks:start")]
    ends = [i for i, l in enumerate(lines) if l.strip() == README_END]
    if len(starts) != 1 or len(ends) != 1 or ends[0] < starts[0]:
        print(f"{readme}: put the generated section between one line\n  {README_START}\n"
              f"and one line\n  {README_END}", file=sys.stderr)
        return 2
    new = lines[:starts[0] + 1] + section.rstrip("\n").splitlines() + lines[ends[0]:]
    with open(readme, "w") as f:
        f.write("\n".join(new) + ("\n" if text.endswith("\n") else ""))
    print(f"{readme}: performance section updated")
    return 0


# -------------------------------------------------------------------------- main
def write_outputs(result: dict, json_path: str, md: bool = True, png: bool = True) -> dict:
    """Writes <stem>.md and <stem>.png beside the JSON; returns {kind: path or problem}."""
    stem = os.path.splitext(json_path)[0]
    rel = repo_path(json_path)
    out = {"json": json_path}
    png_name = None
    if png:
        err = plot(result, stem + ".png")
        out["png"] = err or stem + ".png"
        png_name = None if err else os.path.basename(stem + ".png")
    if md:
        with open(stem + ".md", "w") as f:
            f.write(markdown(result, rel, png_name))
        out["md"] = stem + ".md"
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("result", help="a result JSON written by python -m benchmarks")
    p.add_argument("--readme", action="store_true", help="print the README performance section")
    p.add_argument("--update-readme", metavar="README", default=None,
                   help=f"replace the text between the lines {README_START!r} and {README_END!r} "
                        "in README with the performance section")
    p.add_argument("--md", default=None, help="markdown output path ('-' for stdout; default beside the JSON)")
    p.add_argument("--png", default=None, help="plot output path (default beside the JSON)")
    p.add_argument("--no-png", action="store_true")
    a = p.parse_args(argv)
    result = load(a.result)
    path = repo_path(a.result)
    if a.readme:
        print(readme_section(result, path))
        return 0
    if a.update_readme:
        return update_readme(a.update_readme, readme_section(result, path))
    stem = os.path.splitext(a.result)[0]
    png = None
    if not a.no_png:
        png = a.png or stem + ".png"
        err = plot(result, png)
        if err:
            print(f"plot: {err}", file=sys.stderr)
            png = None
    text = markdown(result, path, os.path.relpath(png, os.path.dirname(os.path.abspath(a.md or stem + ".md")))
                    if png else None)
    if a.md == "-":
        print(text)
    else:
        with open(a.md or stem + ".md", "w") as f:
            f.write(text)
        print(a.md or stem + ".md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
