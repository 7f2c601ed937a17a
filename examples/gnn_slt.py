"""Strong lottery tickets in GCNs: dense vs UGT vs M-Sup vs a folded deep GCN with unshared masks.

    python examples/gnn_slt.py [--graphs sbm karate fashion-knn] [--epochs 200] [--seeds N] [--quick] [--out DIR]

Graphs (all offline): ``sbm``, a Cora-scale contextual stochastic block model (2708 nodes, 7 classes,
~5.2k edges, 500 sparse word features, Planetoid split 20/class, 500 val, 1000 test; the main one);
``karate``, Zachary's karate club; ``fashion-knn``, a 10-NN graph over 3000 Fashion-MNIST images
(needs the Debian package ``dataset-fashion-mnist``; skipped with a message when it is missing).

Rows, per graph (``H`` = hidden width, 256 for the 2-layer models and 128 for the deep ones on the
larger graphs, 16 on karate):

* ``mlp``: the dense 2-layer model on the same features with every edge removed (the feature-only
  baseline, for context);
* ``dense``: a 2-layer GCN with trained weights (AdamW lr 0.01, wd 5e-4, dropout 0.5), stored as fp32;
* ``ugt``: SLT GCN-2, UGT-style: an Edge-Popup supermask over signed-constant random weights, one global
  threshold on the raw scores, 90 % sparse, sparsity ramped from 0 over the first half of training;
* ``msup``: SLT GCN-2 with a 3-coat multicoated supermask (coat sparsities 0.5 / 0.667 / 0.833, global
  thresholds, the same ramp);
* ``dense-deep``: a dense residual 10-layer GCN (non-affine batch norm, dropout 0.3);
* ``folded``: its folded SLT counterpart: input conv, two folded stages run 4 times each, output conv
  (depth 10), one random weight per stage but a separate M-Sup mask per iteration (unshared masks),
  dropout 0.3. Its memory is compared with the *unfolded* dense GCN-10 (``dense_params``).

The 2-layer models have no normalization (as UGT's score-only runs); the deep ones need batch norm.
Accuracy is the test accuracy at the best validation epoch (``bqq.gnn.train_node_classifier``; for SLT
models only epochs after the ramp count), averaged over seeds 0..N-1 (model/ticket seed and dropout;
the graph and its split stay fixed). Every SLT model is exported with ``bqq.slt.export``, reloaded into
a fresh model with ``bqq.slt.load`` and checked for bit-identical logits; the ticket is the
best-validation-epoch state (``train_node_classifier`` restores it), and its reloaded accuracy is kept
too. Finished runs are kept as JSON in ``OUT/runs/gnn_slt``, so an interrupted run resumes without
redoing them. ``--quick`` (for tests) uses a small SBM and karate,
60 epochs, small widths and one seed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

import bqq
from bqq import gnn, slt
from bqq.datasets import FASHION_MNIST_DIR

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Variant:
    label: str
    deep: bool = False              # GCN-10 / folded (4, 4) instead of GCN-2
    method: str | None = None       # None: dense, weights trained
    sparsity: float = 0.5
    coats: int | None = None
    use_abs: bool = True
    lr: float = 0.01
    weight_decay: float = 0.0
    dropout: float = 0.0
    no_edges: bool = False          # the feature-only baseline


VARIANTS = {
    "mlp": Variant("MLP-2, features only (dense, edges removed)", weight_decay=5e-4, dropout=0.5, no_edges=True),
    "dense": Variant("GCN-2, dense (weights trained)", weight_decay=5e-4, dropout=0.5),
    "ugt": Variant("SLT GCN-2, UGT (Edge-Popup, global, 90 % sparse)", method="edge_popup", sparsity=0.9,
                   use_abs=False),
    "msup": Variant("SLT GCN-2, M-Sup (3 coats, global)", method="msup", sparsity=0.5, coats=3),
    "dense-deep": Variant("GCN-10, dense (residual, BN)", deep=True, weight_decay=5e-4, dropout=0.3),
    "folded": Variant("SLT folded GCN-10 (stages 4+4, unshared masks), M-Sup 3 coats", deep=True, method="msup",
                      sparsity=0.5, coats=3, dropout=0.3),
}
STAGES = (4, 4)
GRAPHS = ("sbm", "karate", "fashion-knn")
# Per graph: (hidden width of the 2-layer models, of the deep models, default number of seeds).
WIDTHS = {"sbm": (256, 128, 3), "karate": (16, 16, 3), "fashion-knn": (256, 128, 1)}
QUICK_WIDTHS = {"sbm": (32, 32, 1), "karate": (16, 16, 1), "fashion-knn": (32, 32, 1)}


def load_graph(name: str, quick: bool) -> gnn.Graph:
    if name == "sbm":
        if quick:  # the small SBM of tests/gnn/test_train.py
            return gnn.sbm_graph(num_nodes=700, num_classes=4, num_edges=1400, num_features=120, topic_words=15,
                                 signal=0.08, split=(20, 150, None))
        return gnn.sbm_graph()
    if name == "karate":
        return gnn.karate_club()
    if name == "fashion-knn":
        return gnn.fashion_knn_graph(num_nodes=600, k=5, val=100) if quick else gnn.fashion_knn_graph()
    raise ValueError(f"unknown graph {name!r}")


def without_edges(graph: gnn.Graph) -> gnn.Graph:
    """The same nodes, features and splits with no edges: a GCN on it is an MLP (Â = I)."""
    return gnn.Graph(graph.x, graph.y, torch.zeros(2, 0, dtype=torch.int64), graph.train, graph.val, graph.test,
                     name=f"{graph.name}-no-edges")


def build_dense(variant: Variant, graph: gnn.Graph, hidden: int, seed: int) -> torch.nn.Module:
    """The dense architecture of a row (before any SLT conversion); seeded initial weights."""
    torch.manual_seed(seed)
    f, c = graph.x.shape[1], graph.num_classes
    if not variant.deep:
        return gnn.GNN(f, hidden, c, layers=2, norm="none", dropout=variant.dropout)
    if variant.method is None:
        return gnn.GNN(f, hidden, c, layers=2 + sum(STAGES), norm="batch", dropout=variant.dropout)
    return gnn.FoldedGNN(f, hidden, c, stages=STAGES, norm="batch", dropout=variant.dropout, unshared_masks=True)


def build(variant: Variant, graph: gnn.Graph, hidden: int, seed: int) -> torch.nn.Module:
    model = build_dense(variant, graph, hidden, seed)
    if variant.method is not None:
        slt.convert(model, method=variant.method, sparsity=variant.sparsity, coats=variant.coats, scope="global",
                    use_abs=variant.use_abs, seed=seed)
    return model


def run_key(graph: str, variant: str, hidden: int, epochs: int, seed: int, quick: bool) -> str:
    """Names a finished run by everything that changes its result."""
    spec = json.dumps({"graph": graph, "quick": quick, "variant": asdict(VARIANTS[variant]), "hidden": hidden,
                       "epochs": epochs, "seed": seed, "stages": STAGES}, sort_keys=True)
    digest = hashlib.sha256(spec.encode()).hexdigest()[:10]
    return f"{graph}{'-quick' if quick else ''}_{variant}_h{hidden}_e{epochs}_s{seed}_{digest}"


def run_one(graph: gnn.Graph, graph_name: str, name: str, hidden: int, seed: int, args) -> dict:
    variant = VARIANTS[name]
    data = without_edges(graph) if variant.no_edges else graph
    model = build(variant, graph, hidden, seed)
    start = time.perf_counter()
    result = gnn.train_node_classifier(model, data, epochs=args.epochs, lr=variant.lr,
                                       weight_decay=variant.weight_decay, seed=seed, progress=not args.quick)
    seconds = time.perf_counter() - start
    f, c = graph.x.shape[1], graph.num_classes
    depth = 2 + sum(STAGES) if variant.deep else 2
    # The dense fp32 counterpart: the same (unfolded) depth and width.
    dense_params = sum(p.numel() for p in gnn.GNN(f, hidden, c, layers=depth).parameters())
    out = {"graph": graph_name, "variant": name, "label": variant.label, "seed": seed, "hidden": hidden,
           "depth": depth, "epochs": args.epochs, "settings": asdict(variant), "test": result["test"],
           "val": result["val"], "train": result["train"], "best_epoch": result["best_epoch"],
           "train_seconds": seconds, "dense_params": dense_params}
    if variant.method is None:
        params = sum(p.numel() for p in model.parameters())
        out.update(stored_mb=32 * params / 8e6, bits_per_weight=32.0, reduction=0.0, weights=params,
                   dense_mb=32 * dense_params / 8e6, reload_exact=None)
        return out
    report = slt.memory_report(model, dense_params=dense_params)
    key = run_key(graph_name, name, hidden, args.epochs, seed, args.quick)
    ticket = args.out / "tickets" / "gnn_slt" / f"{key}.safetensors"
    ticket.parent.mkdir(parents=True, exist_ok=True)
    slt.export(model, ticket)
    fresh = slt.load(ticket, build_dense(variant, graph, hidden, seed + 1))  # other init: the ticket must win
    with torch.no_grad():
        model.eval()
        fresh.eval()
        exact = torch.equal(model(data.x, data), fresh(data.x, data))
    out.update(stored_mb=report["ticket_mb"], bits_per_weight=report["mask_bits_per_weight"],
               reduction=report["reduction"], weights=report["masked_weights"], dense_mb=report["dense_mb"],
               ticket_bits=report["ticket_bits"], mask_bits=report["mask_bits"], compression=report["compression"],
               density=_density(model), ticket_file_bytes=ticket.stat().st_size,
               reload_exact=exact, reloaded_test=gnn.accuracy(fresh, data)["test"])
    return out


def _density(model: torch.nn.Module) -> float:
    """Fraction of masked weights with a nonzero level."""
    layers = [layer for _, layer in slt.masked_layers(model)]
    return sum(int((layer.levels > 0).sum()) for layer in layers) / sum(layer.numel for layer in layers)


def summarize(runs: list[dict]) -> list[dict]:
    """One row per (graph, variant): accuracy mean and sample std over seeds, the rest from the first seed."""
    rows = []
    for key in dict.fromkeys((r["graph"], r["variant"]) for r in runs):
        group = [r for r in runs if (r["graph"], r["variant"]) == key]
        tests = [r["test"] for r in group]
        exact = [r["reload_exact"] for r in group]
        rows.append({**{k: group[0][k] for k in ("graph", "variant", "label", "hidden", "depth", "stored_mb",
                                                  "bits_per_weight", "reduction", "dense_mb")},
                     "seeds": [r["seed"] for r in group], "test_mean": statistics.fmean(tests),
                     "test_std": statistics.stdev(tests) if len(tests) > 1 else 0.0,
                     "train_seconds": statistics.fmean(r["train_seconds"] for r in group),
                     "reload_exact": None if exact[0] is None else all(exact)})
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| Graph | Model | H | Test acc. (%) | Stored (MB) | Bits / weight | Memory vs dense fp32 | "
             "Train (s) | Reload exact |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        acc = f"{r['test_mean']:.1f} ± {r['test_std']:.1f}" if len(r["seeds"]) > 1 else f"{r['test_mean']:.1f}"
        vs = "—" if r["reload_exact"] is None else f"−{100 * r['reduction']:.1f} %"
        if r["variant"] == "folded":
            vs += " (vs unfolded GCN-10)"
        exact = "—" if r["reload_exact"] is None else ("yes" if r["reload_exact"] else "**NO**")
        lines.append(f"| {r['graph']} | {r['label']} | {r['hidden']} | {acc} | {r['stored_mb']:.4f} | "
                     f"{r['bits_per_weight']:.3f} | {vs} | {r['train_seconds']:.1f} | {exact} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--graphs", nargs="+", choices=GRAPHS, default=None,
                   help="default: all three (--quick: sbm karate)")
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    p.add_argument("--epochs", type=int, default=None, help="default 200 (--quick: 60)")
    p.add_argument("--seeds", type=int, default=None,
                   help="seeds per graph (default: 3 on sbm and karate, 1 on fashion-knn; --quick: 1)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (small sparse graphs gain little)")
    p.add_argument("--quick", action="store_true", help="small graphs, few epochs, one seed (for tests)")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    args.graphs = args.graphs or (["sbm", "karate"] if args.quick else list(GRAPHS))
    args.epochs = args.epochs or (60 if args.quick else 200)
    torch.set_num_threads(args.threads)
    wall = time.perf_counter()
    runs_dir = args.out / "runs" / "gnn_slt"
    runs_dir.mkdir(parents=True, exist_ok=True)
    widths = QUICK_WIDTHS if args.quick else WIDTHS
    plan, skipped, graphs = [], {}, {}
    for name in args.graphs:
        if name == "fashion-knn" and not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").exists():
            skipped[name] = (f"Fashion-MNIST not found in {FASHION_MNIST_DIR} (apt-get install "
                             "dataset-fashion-mnist)")
            print(f"skipping {name}: {skipped[name]}", flush=True)
            continue
        shallow, deep, n_seeds = widths[name]
        for seed in range(args.seeds or n_seeds):
            for variant in args.variants:
                plan.append((name, variant, deep if VARIANTS[variant].deep else shallow, seed))
    runs, resumed = [], 0
    for i, (name, variant, hidden, seed) in enumerate(plan, start=1):
        key = run_key(name, variant, hidden, args.epochs, seed, args.quick)
        done = runs_dir / f"{key}.json"
        tag = f"[{i}/{len(plan)}] {name} {variant} (H={hidden}, seed {seed})"
        if done.exists():
            runs.append(json.loads(done.read_text()))
            resumed += 1
            print(f"{tag}: done earlier ({done.name})", flush=True)
            continue
        if name not in graphs:
            print(f"building graph {name}", flush=True)
            graphs[name] = load_graph(name, args.quick)
        result = run_one(graphs[name], name, variant, hidden, seed, args)
        tmp = done.with_name(f".{done.name}.tmp")
        tmp.write_text(json.dumps(result, indent=2))
        tmp.replace(done)
        runs.append(result)
        exact = "" if result["reload_exact"] is None else f", reload exact: {result['reload_exact']}"
        print(f"{tag}: test {result['test']:.1f}% (best epoch {result['best_epoch']}), {result['stored_mb']:.4f} MB, "
              f"{result['train_seconds']:.1f} s{exact}", flush=True)
    rows = summarize(runs)
    text = table(rows)
    wall = time.perf_counter() - wall
    command = " ".join(["python examples/gnn_slt.py", *(sys.argv[1:] if argv is None else argv)])
    print(text)
    print(f"wall time {wall:.0f} s ({resumed} of {len(plan)} runs reused from {runs_dir})")
    doc = {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
           "variants": {k: asdict(v) for k, v in VARIANTS.items()}, "stages": list(STAGES),
           "widths": {g: dict(zip(("hidden", "deep_hidden", "seeds"), w, strict=True)) for g, w in widths.items()},
           "seeds": {g: sorted({r["seed"] for r in runs if r["graph"] == g}) for g in args.graphs},
           "skipped": skipped, "summary": rows, "runs": runs, "command": command, "wall_seconds": wall,
           "runs_reused": resumed,
           "env": {"bqq": bqq.__version__, "torch": torch.__version__, "python": sys.version.split()[0],
                   "machine": platform.machine(), "threads": torch.get_num_threads()}}
    (args.out / "gnn_slt.json").write_text(json.dumps(doc, indent=2))
    seeds_note = ", ".join(f"{g}: {len(s)} seed{'s' if len(s) > 1 else ''} ({', '.join(map(str, s))})"
                           for g, s in doc["seeds"].items() if s)
    notes = [
        f"Command: `{command}`; wall time {wall:.0f} s ({resumed} of {len(plan)} runs reused), "
        f"{torch.get_num_threads()} torch thread(s), torch {torch.__version__}.",
        "",
        f"Test accuracy at the best validation epoch, {args.epochs} epochs, mean ± sample std over seeds "
        f"({seeds_note}); the graphs and splits are fixed. Stored size: dense rows 32 bits per parameter; SLT "
        "rows as `bqq.slt.memory_report` counts it (64-bit seed + hierarchical mask bits; there are no "
        "other parameters). Bits / weight: mask bits per masked weight. Memory vs dense fp32: 1 − ticket / "
        "dense GCN of the same width and depth; for the folded model the dense counterpart is the unfolded "
        "GCN-10 (`dense_params`), whose 8 hidden layers each have their own weight. Reload exact: the ticket "
        "exported with `bqq.slt.export` and loaded into a fresh model with `bqq.slt.load` gives bit-identical "
        "logits (every seed).",
    ]
    if skipped:
        notes += ["", *(f"Skipped {g}: {why}." for g, why in skipped.items())]
    (args.out / "gnn_slt.md").write_text(f"{text}\n\n" + "\n".join(notes) + "\n")
    return 0 if all(r["reload_exact"] is not False for r in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
