"""Reading a result JSON: what ran, speedups and memory ratios, the targets, where gan_fast is slower.

Ratios are speedups: ``time(baseline) / time(variant)``, > 1 means the variant is
faster. "vs compile" compares with the fastest torch.compile mode that ran for
that case. Nothing here formats a table: ``report_tables`` and ``report_docs`` do.
"""
from __future__ import annotations

import json
import math
from typing import Optional

OP_ORDER = ("bn_act", "gan_loss", "blocks", "step", "models", "dispatch")
# None: each case's own mode (dispatch: train fwd+bwd and eval fwd cases)
PRIMARY_MODE = {"bn_act": "fwd+bwd", "gan_loss": "fwd+bwd", "blocks": "fwd+bwd", "step": "step",
                "models": "step", "dispatch": None}
LAYER_ORDER = ["G1", "G2", "G3", "G4", "D2", "D3", "D4"]
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


def case_sort_key(result: dict):
    """Sort key for cases: op, then the run's dtype and format order, batch, layer."""
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


def fused_variants(result: dict) -> list[str]:
    return [v for v in variant_names(result) if is_fused(v)]


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


def geomean(xs):
    xs = [x for x in xs if x and x > 0]
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else None


def case_name(c: dict, with_dtype=True) -> str:
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


def op_summary(result: dict) -> list[dict]:
    """Per (op, gan_fast variant) in the op's primary mode: geomean, worst and best case vs
    eager ([(case, ratio)] ends) and the geomean vs the fastest torch.compile (None if none ran)."""
    rows = []
    for op in OP_ORDER:
        mode = PRIMARY_MODE[op]
        for fv in fused_variants(result):
            se = speedups(result, op, mode, fv)
            if not se:
                continue
            sc = speedups(result, op, mode, fv, "compile")
            rows.append({"op": op, "mode": mode, "variant": fv, "geomean": geomean([s for _, s in se]),
                         "worst": min(se, key=lambda x: x[1]), "best": max(se, key=lambda x: x[1]),
                         "vs_compile": geomean([s for _, s in sc]) if sc else None})
    return rows


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
            "detail": f"max {worst[1]:.2f}x ({case_name(worst[0])}) over {len(ratios)} cases" + note}


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
                             "detail": f"min {worst[1]:.2f}x ({case_name(worst[0])}), geomean "
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
    for c in sorted(result["cases"], key=case_sort_key(result)):
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
        groups.setdefault((c["op"], mode, v, base), []).append(f"{case_name(c)} {ratio:.2f}x")
    return [f"{op} {mode}, {v} vs {base} ({len(items)}): " + ", ".join(items)
            for (op, mode, v, base), items in groups.items()]


def failures(result: dict) -> list[str]:
    """Markdown list items: pairs that errored or could not run, forward mismatches, budget skips."""
    out = []
    for c in result["cases"]:
        for r in c["runs"]:
            if r["status"] in ("error", "n/a"):
                out.append(f"- {c['op']} {case_name(c)} {r['variant']}: {r['status']}: {r.get('reason')}")
            mrd = r.get("max_rel_diff_vs_eager")
            tol = 2e-3 if c["dtype"] == "fp32" else 5e-2
            if mrd is not None and mrd > tol:
                out.append(f"- {c['op']} {case_name(c)} {r['variant']}: forward differs from eager "
                           f"(max rel. diff {mrd:.2e} > {tol:g})")
    skipped = sum(1 for c in result["cases"] for r in c["runs"]
                  if r["status"] == "skipped" and (r.get("reason") or "").startswith("time budget"))
    if skipped:
        out.append(f"- {skipped} (case, variant) pairs skipped: the time budget was used up (see the JSON)")
    return out
