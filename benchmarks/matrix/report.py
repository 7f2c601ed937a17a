"""Outputs of the matrix benchmark: Markdown tables, JSON, MSE-vs-KB plots, and the one-line summaries."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .methods import METHODS, TRADEOFF, Point, budget_allowance

FIRST_ORDER = ("uq", "bcq")
# Table S.4, Random column, rank_scale = 1 (MSE).
PAPER_RANDOM = {1: 0.3243, 2: 0.1053, 3: 0.0344, 4: 0.0112}
# Table S.4, Random column, every (p, rank_scale) row: (KB, MSE).
PAPER_TRADEOFF_RANDOM = {
    (1, 1.0): (2.1, 0.3243), (2, 0.5): (2.1, 0.3299), (4, 0.25): (2.1, 0.3371), (1, 2.0): (4.1, 0.1064),
    (2, 1.0): (4.1, 0.1053), (4, 0.5): (4.1, 0.1084), (8, 0.25): (4.2, 0.1142), (2, 1.5): (6.2, 0.0332),
    (3, 1.0): (6.2, 0.0344), (6, 0.5): (6.2, 0.0360), (12, 0.25): (6.3, 0.0384), (2, 2.0): (8.2, 0.0115),
    (4, 1.0): (8.2, 0.0112), (8, 0.5): (8.3, 0.0119), (16, 0.25): (8.4, 0.0130)}
TOLERANCE = 0.03


# --- selections ----------------------------------------------------------------------------------

def fits(point: Point, budget: int, shape: Sequence[int]) -> bool:
    return point.total_bits <= budget_allowance(budget, tuple(shape))


def best_fitting(points: list[Point], method: str, budget: int, shape: Sequence[int]) -> Point | None:
    """The method's lowest-MSE point whose bits fit the budget (any of its settings)."""
    ok = [p for p in points if p.method == method and fits(p, budget, shape)]
    return min(ok, key=lambda p: p.mse) if ok else None


def nominal(points: list[Point], method: str, budget: float) -> Point | None:
    return next((p for p in points if p.method == method and p.budget == budget), None)


def bqq_point(points: list[Point], budget: int) -> Point | None:
    return next((p for p in points if p.method == "bqq" and p.extra.get("p") == budget), None)


def competitors(points: list[Point], budget: int, shape: Sequence[int], families: Sequence[str] | None = None):
    """(method, best fitting point) of every non-BQQ method with a point that fits the budget."""
    out = []
    for name, method in METHODS.items():
        if method.family == "bqq" or (families is not None and name not in families):
            continue
        best = best_fitting(points, name, budget, shape)
        if best is not None:
            out.append((name, best))
    return out


def random_row_check(results: dict[str, dict]) -> list[dict[str, Any]]:
    """BQQ p = 1..4 (rank_scale 1) on the Random matrix against Table S.4."""
    data = results.get("random", {})
    rows = []
    for p, paper in PAPER_RANDOM.items():
        point = bqq_point(data.get("points", []), p)
        if point is None:
            continue
        rel = point.mse / paper - 1
        verdict = ("within 3%" if abs(rel) <= TOLERANCE else
                   f"better than the paper by {-rel:.1%} (lower error)" if rel < 0 else f"WORSE by {rel:.1%}")
        rows.append({"p": p, "mse": point.mse, "paper": paper, "rel_diff": rel, "verdict": verdict,
                     "within_3pct_or_better": rel <= TOLERANCE})
    return rows


def headline(results: dict[str, dict], budget: int = 2) -> list[dict[str, Any]]:
    """Per dataset: BQQ-b* against the best first-order method and the best other method at the budget."""
    rows = []
    for name, data in results.items():
        if "points" not in data:
            continue
        points, shape = data["points"], data["shape"]
        mine = bqq_point(points, budget)
        first = min(competitors(points, budget, shape, FIRST_ORDER), key=lambda c: c[1].mse, default=None)
        other = min(competitors(points, budget, shape), key=lambda c: c[1].mse, default=None)
        if mine is None:
            continue
        rows.append({"dataset": name, "shape": shape, "bqq_mse": mine.mse, "bqq_kb": mine.kb,
                     "first_order": first[0] if first else None, "first_order_mse": first[1].mse if first else None,
                     "ratio": mine.mse / first[1].mse if first else None,
                     "best_other": other[0] if other else None, "best_other_mse": other[1].mse if other else None,
                     "best_other_setting": other[1].setting if other else None})
    return rows


def wins(results: dict[str, dict], budgets: Sequence[int]) -> list[dict[str, Any]]:
    """For every budget: the datasets where BQQ-b* has the lowest MSE, and who beats it elsewhere."""
    out = []
    for b in budgets:
        won, lost = [], []
        for name, data in results.items():
            if "points" not in data:
                continue
            mine = bqq_point(data["points"], b)
            rivals = competitors(data["points"], b, data["shape"])
            if mine is None or not rivals:
                continue
            rival, point = min(rivals, key=lambda c: c[1].mse)
            if mine.mse < point.mse:
                won.append(name)
            else:
                lost.append({"dataset": name, "by": rival, "mse": point.mse, "bqq_mse": mine.mse})
        out.append({"budget": b, "won": won, "lost": lost})
    return out


def summary_lines(win_rows: list[dict[str, Any]]) -> list[str]:
    lines = []
    for row in win_rows:
        total = len(row["won"]) + len(row["lost"])
        if not total:
            continue
        text = f"{row['budget']} bit{'s' if row['budget'] > 1 else ''}: BQQ best on {len(row['won'])}/{total}"
        if row["won"]:
            text += f" ({', '.join(row['won'])})"
        if row["lost"]:
            text += "; beaten on " + ", ".join(f"{x['dataset']} by {METHODS[x['by']].label} "
                                               f"({x['mse']:.4g} vs {x['bqq_mse']:.4g})" for x in row["lost"])
        lines.append(text)
    return lines


# --- writing ---------------------------------------------------------------------------------------

def write_outputs(out: Path, results: dict[str, dict], settings: dict[str, Any], env: dict[str, Any],
                  wall: float) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    budgets = settings["budgets"]
    win_rows = wins(results, budgets)
    heads = headline(results, 2) if 2 in budgets else []
    check = random_row_check(results)
    lines = summary_lines(win_rows)
    summary_text = "Where BQQ wins (BQQ p* vs every other method's best point within the same budget):\n" + \
        "\n".join(f"- {line}" for line in lines)
    doc = {
        "env": env, "settings": settings, "wall_seconds": wall,
        "datasets": {name: ({**data, "points": [p.to_json() for p in data["points"]]} if "points" in data else data)
                     for name, data in results.items()},
        "summary": lines, "wins": win_rows, "headline_2bit": heads, "random_row_check": check,
    }
    (out / "matrix.json").write_text(json.dumps(doc, indent=1) + "\n")
    (out / "matrix.md").write_text(markdown(results, settings, env, wall, lines, heads, check) + "\n")
    plot(out, results)
    return {"summary_text": summary_text, "headline": heads, "random_row_check": check}


def markdown(results, settings, env, wall, lines, heads, check) -> str:
    budgets = settings["budgets"]
    md = ["# Matrix-compression benchmark", "",
          f"`{settings['command'].strip()}`: wall time **{wall / 60:.1f} min** ({wall:.0f} s) on "
          f"{env['cpu_count']} cores.", "",
          " ".join(f"{k}={v}" for k, v in env.items()), "",
          f"Budgets {', '.join(map(str, budgets))} bits per weight; seed {settings['seed']}; BQQ sweeps "
          f"{settings['bqq_sweeps'] or 'default (solver schedule)'}; every matrix standardized to zero mean, "
          "unit variance. MSE is against the standardized matrix; KB = stored bits / 8000 (every binary, code and "
          "FP32 scalar). A point counts for budget b when its bits fit b·m·n or BQQ-b*'s own total if larger "
          "(its 3b+1 scalars).", "",
          "## Where BQQ wins", ""]
    md += [f"- {line}" for line in lines] or ["- (no dataset with both BQQ and another method)"]
    if heads:
        md += ["", "## BQQ vs the best first-order method (UQ, BCQ) at 2 bits", "",
               "| dataset | shape | BQQ 2* MSE | best first-order | its MSE | BQQ / first-order | best non-BQQ within "
               "2 bits | its MSE |", "|---|---|---|---|---|---|---|---|"]
        for h in heads:
            first = (f"{METHODS[h['first_order']].label} | {h['first_order_mse']:.4f} | {h['ratio']:.2f}"
                     if h["first_order"] else "— | — | —")
            other = (f"{METHODS[h['best_other']].label} ({h['best_other_setting']}) | {h['best_other_mse']:.4f}"
                     if h["best_other"] else "— | —")
            md.append(f"| {h['dataset']} | {h['shape'][0]}x{h['shape'][1]} | {h['bqq_mse']:.4f} | {first} | {other} |")
    if check:
        md += ["", "## Random row vs the paper's Table S.4 (rank_scale = 1)", "",
               "| p | MSE here | Table S.4 | difference | within 3% or better |", "|---|---|---|---|---|"]
        md += [f"| {r['p']} | {r['mse']:.4f} | {r['paper']:.4f} | {r['rel_diff']:+.1%} | "
               f"{'yes' if r['within_3pct_or_better'] else 'NO'}: {r['verdict']} |" for r in check]
    md += tradeoff_table(results)
    md += ["", "## Per dataset", "",
           "MSE and KB at each budget (the method's setting for that budget); **bold**: lowest MSE among the "
           "points that fit the budget; † exceeds the budget (LVQ spends (8 + 1)/8 bits per weight per stage). "
           "Seconds: all budgets of the method together."]
    for name, data in results.items():
        if "points" not in data:
            continue
        md += per_dataset(name, data, budgets)
    skipped = {n: d["skipped"] for n, d in results.items() if "skipped" in d}
    if skipped:
        md += ["", "## Skipped datasets", ""] + [f"- {n}: {msg}" for n, msg in skipped.items()]
    return "\n".join(md)


def per_dataset(name: str, data: dict, budgets: Sequence[int]) -> list[str]:
    points, shape = data["points"], data["shape"]
    best = {}
    for b in budgets:
        fitting = [p for p in points if p.method != "bqq-tradeoff" and p.budget == b and fits(p, b, shape)]
        best[b] = min(fitting, key=lambda p: p.mse) if fitting else None
    md = ["", f"### {name} ({shape[0]}x{shape[1]})", "", f"{data['source']}.", "",
          "| method | " + " | ".join(f"{b} bit{'s' if b > 1 else ''}" for b in budgets) + " | seconds |",
          "|---" * (len(budgets) + 2) + "|"]
    for mname, method in METHODS.items():
        if mname == "bqq-tradeoff":
            continue
        mine = [p for p in points if p.method == mname]
        if not mine:
            continue
        cells = []
        for b in budgets:
            p = nominal(points, mname, b)
            if p is None:
                cells.append("—")
                continue
            text = f"{p.mse:.4f} · {p.kb:.1f} KB"
            if best[b] is p:
                text = f"**{p.mse:.4f}** · {p.kb:.1f} KB"
            if not fits(p, b, shape):
                text += " †"
            cells.append(text)
        seconds = max(p.seconds for p in mine) if mname == "bqq" else sum(p.seconds for p in mine)
        md.append(f"| {method.label} | " + " | ".join(cells) + f" | {seconds:.1f} |")
    return md


def tradeoff_table(results: dict[str, dict]) -> list[str]:
    names = [n for n, d in results.items() if "points" in d and any(p.method == "bqq-tradeoff" for p in d["points"])]
    if not names:
        return []
    rows = sorted({(p, rs) for p, rs in TRADEOFF} | {(b, 1.0) for b in range(1, 5)},
                  key=lambda x: (x[0] * x[1], x[1] != 1, -x[1]))
    md = ["", "## p × rank_scale trade-off at equal budget (Table S.4 layout): KB / MSE×10⁻³", "",
          "| p | rank_scale | " + " | ".join(names) + " | Table S.4 Random |",
          "|---|---" + "|---" * (len(names) + 1) + "|"]
    for p, rs in rows:
        cells = []
        for name in names:
            point = next((q for q in results[name]["points"] if q.method in ("bqq", "bqq-tradeoff")
                          and q.extra.get("p") == p and q.extra.get("rank_scale") == rs), None)
            cells.append(f"{point.kb:.1f} / {point.mse * 1e3:.1f}" if point else "—")
        paper = PAPER_TRADEOFF_RANDOM.get((p, rs))
        cells.append(f"{paper[0]:.1f} / {paper[1] * 1e3:.1f}" if paper else "—")
        md.append(f"| {p} | {rs:g} | " + " | ".join(cells) + " |")
    return md


# --- plots ------------------------------------------------------------------------------------------

STYLE = {  # method -> (color, marker)
    "svd": ("purple", "p"), "svd-q4": ("orchid", "p"), "svd-q8": ("indigo", "p"), "uq": ("black", "s"),
    "bcq": ("blue", "^"), "vq": ("orange", "<"), "vq-q4": ("coral", "<"), "vq-q8": ("saddlebrown", "<"),
    "lvq": ("green", "D"), "jpeg": ("darkturquoise", "P"), "bqq": ("red", "o"), "bqq-tradeoff": ("red", "x"),
}


def _draw(ax, name: str, data: dict) -> None:
    for mname, method in METHODS.items():
        pts = sorted((p for p in data["points"] if p.method == mname), key=lambda p: p.kb)
        if not pts:
            continue
        color, marker = STYLE[mname]
        if mname == "bqq-tradeoff":
            ax.scatter([p.kb for p in pts], [p.mse for p in pts], color=color, marker=marker, s=25,
                       label=method.label, zorder=3)
            continue
        ax.plot([p.kb for p in pts], [p.mse for p in pts], marker=marker, color=color, label=method.label,
                linewidth=2.5 if mname == "bqq" else 1.2, markersize=6, zorder=4 if mname == "bqq" else 2)
    ax.set_yscale("log")
    ax.set_xlabel("memory [KB]")
    ax.set_ylabel("MSE")
    ax.set_title(f"{name} ({data['shape'][0]}x{data['shape'][1]})")
    ax.grid(True, which="both", alpha=0.3)


def plot(out: Path, results: dict[str, dict]) -> None:
    try:
        import matplotlib
    except ImportError:
        print("plots skipped: needs matplotlib (pip install -e '.[bench]')")
        return

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = {n: d for n, d in results.items() if d.get("points")}
    for name, data in done.items():
        fig, ax = plt.subplots(figsize=(7, 5))
        _draw(ax, name, data)
        ax.legend(fontsize=7, loc="upper right")
        fig.tight_layout()
        fig.savefig(out / f"matrix_{name}.png", dpi=110)
        plt.close(fig)
    if not done:
        return
    cols = min(3, len(done))
    rows = -(-len(done) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 4.2 * rows), squeeze=False)
    for ax, (name, data) in zip(axes.flat, done.items(), strict=False):
        _draw(ax, name, data)
    for ax in list(axes.flat)[len(done):]:
        ax.axis("off")
    legend: dict[str, Any] = {}
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(label, handle)
    fig.legend(list(legend.values()), list(legend), loc="lower center", ncol=6, fontsize=8)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(out / "matrix.png", dpi=90)
    plt.close(fig)
