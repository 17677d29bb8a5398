"""Result -> PNG: speedup vs eager per case and variant, one panel per op, dtype and memory format."""
from __future__ import annotations

import math
from typing import Optional

from benchmarks.report_data import (OP_ORDER, PRIMARY_MODE, TARGETS, case_sort_key, is_fused, median,
                                    runs_by_variant, speedups, variant_names)


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
        cases = sorted([c for c in result["cases"] if c["op"] == op], key=case_sort_key(result))
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
