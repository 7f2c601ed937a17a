"""Data-free 2* BQQ of MiniLM under the default annealing schedule and the two before it, over seeds.

    python -m benchmarks.minilm_schedule [--seeds 0 1 2] [--summary-only]

Each run is ``python -m benchmarks.ptq_transformer --bits 2 --rows bqq --sweeps 0`` (every encoder Linear,
384×384 groups, default sweeps; the held-out sentence-similarity check of that benchmark) with the
schedule's options and ``--quant-seed``, written to ``results/minilm_schedule/<schedule>_seed<k>/``
(seed 0 to ``<schedule>/``). The summary (``results/minilm_schedule.md``) gives Spearman and mean cosine per
run and their means: the spread between seeds shows how much of a difference between schedules is noise.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
OUT = RESULTS / "minilm_schedule"
# The BQQConfig options that give each schedule (the default is BQQConfig version 4's).
SCHEDULES = {
    "v4": {},
    "v4, t_start 0.95": {"t_start": 0.95},
    "v3": {"sweep_rule": "per_group", "polish_tolerance": 0, "bulk_end": "false"},
    "v2": {"sweep_rule": "per_group", "polish_tolerance": 0, "bulk_end": "false", "t_start": 0.95,
           "sweep_budget": 1.4e10},
}
DESCRIPTION = {
    "v4": "per-weight sweeps (714 at 384²), end at 0.18 of the bulk's T_c, polish to 1e-4",
    "v4, t_start 0.95": "the same from 0.95 T_c",
    "v3": "per-group sweeps (353 at 384²) from 0.6 T_c to 0.18 T_c, polish until nothing flips",
    "v2": "per-group sweeps (494 at 384²) from 0.95 T_c to 0.18 T_c, polish until nothing flips",
}


def folder(schedule: str, seed: int) -> Path:
    name = schedule.replace(", ", "_").replace(" ", "_")
    return OUT / (name if seed == 0 else f"{name}_seed{seed}")


def argv_of(schedule: str, seed: int) -> list[str]:
    options = [arg for key, value in SCHEDULES[schedule].items() for arg in ("--option", f"{key}={value}")]
    return ["--bits", "2", "--rows", "bqq", "--sweeps", "0", *(["--quant-seed", str(seed)] if seed else []),
            *options, "--out", str(folder(schedule, seed))]


def summary(seeds: list[int]) -> str:
    lines = ["# MiniLM, data-free 2* BQQ: annealing schedules over quantization seeds", "",
             "`python -m benchmarks.minilm_schedule --seeds " + " ".join(map(str, seeds)) + "`; each cell is "
             "Spearman / mean cosine of `benchmarks.ptq_transformer`'s held-out check (512 sentences).", "",
             "| schedule | " + " | ".join(f"seed {s}" for s in seeds) + " | mean Spearman | mean cosine | seconds |",
             "|---|" + "---|" * (len(seeds) + 3)]
    for schedule in SCHEDULES:
        cells, spearman, cosine, seconds = [], [], [], []
        for seed in seeds:
            path = folder(schedule, seed) / "ptq_transformer.json"
            if not path.exists():
                cells.append("—")
                continue
            row = json.loads(path.read_text())["rows"][0]
            spearman.append(row["spearman"])
            cosine.append(row["cosine"])
            seconds.append(row["seconds"])
            cells.append(f"{row['spearman']:.4f} / {row['cosine']:.4f}")
        means = [f"{statistics.mean(v):.4f}" if v else "—" for v in (spearman, cosine)]
        time = f"{statistics.mean(seconds):.0f}" if seconds else "—"
        lines.append(f"| {schedule}: {DESCRIPTION[schedule]} | " + " | ".join(cells) + f" | {' | '.join(means)} | "
                     f"{time} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--summary-only", action="store_true", help="only render the summary of earlier runs")
    args = parser.parse_args(argv)
    if not args.summary_only:
        from benchmarks import ptq_transformer

        for seed in args.seeds:
            for schedule in SCHEDULES:
                ptq_transformer.main(argv_of(schedule, seed))
    text = summary(args.seeds)
    (RESULTS / "minilm_schedule.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
