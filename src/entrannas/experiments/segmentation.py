"""Table 5 (segmentation): searched cells as DeepLabV3 backbones. Each genotype's atrous
ImageNet-layout network (output stride 16) gets the same head and the same training, and is
scored by the mIoU of one confusion matrix over the whole validation set. A network that
predicts background everywhere is scored too: the floor every backbone must clear."""
from __future__ import annotations

import re

import torch

from ..config import ConfigError, from_dict
from ..confusion import confusion_matrix, segmentation_scores
from ..genotype import GenotypeError, load_genotype
from ..segment import load_segmentation_data
from .common import Context, markdown_table, run_jobs, segment_job, write_summary

# The paper's Table 5 (Pascal VOC 2012 val, ImageNet-pretrained backbones): label -> mIoU %.
PAPER = {"ResNet-50": 76.5, "NASNet-A": 75.4, "DARTS": 75.1, "EnTranNAS-DST (lambda 0.2)": 76.3,
         "EnTranNAS-DST (lambda 0.1)": 76.8, "EnTranNAS-DST (lambda 0.05)": 77.1}


def _genotype(source: str, scale: str):
    try:
        return load_genotype(source)
    except GenotypeError as e:
        hint = (f"run `entrannas experiment flexibility --scale {scale}` first (from the repository root)"
                if "flexibility" in str(source) else "check the genotype in the experiment's settings")
        raise ConfigError(f"segmentation backbone {source}: {e}; {hint}") from None


def background_baseline(cfg) -> dict:
    """Scores of predicting background (class 0) for every pixel of the validation set."""
    data = load_segmentation_data(cfg, "cpu")
    n = data.info.num_classes
    cm = torch.zeros((n, n), dtype=torch.long)
    for _, y in data.val:
        cm += confusion_matrix(torch.zeros_like(y), y, n)
    return segmentation_scores(cm)


def run(ctx: Context) -> dict:
    s = ctx.settings
    jobs, ops = [], []
    for b in s["backbones"]:
        g = _genotype(b["genotype"], ctx.scale)
        extra = [f"model.backbone={b['backbone']}"] if b.get("backbone") else []
        name = re.sub(r"[^a-z0-9.]+", "-", b["label"].lower()).strip("-")
        jobs.append(segment_job(ctx, b["label"], s["segment"], name, g.to_dict(), extra,
                                backbone_label=b["label"], genotype_source=str(b["genotype"])))
        ops.append(g.normal.num_ops + g.reduce.num_ops)
    # the most expensive (most ops) first, so that --jobs 2 packs them well; the table keeps its order
    order = sorted(range(len(jobs)), key=lambda i: -ops[i])
    rows: list[dict] = [{}] * len(jobs)
    for i, r in zip(order, run_jobs(ctx, [jobs[i] for i in order])):
        rows[i] = r
    cfg0 = from_dict(jobs[0].config, "segment")
    classes = _classes(cfg0)
    base = background_baseline(cfg0)
    for r in rows:
        if r["backbone_label"] in PAPER:
            r["paper_miou"] = PAPER[r["backbone_label"]]
    table_rows = [*rows, {"label": "predict background everywhere", "miou": base["miou"],
                          "pixel_acc": base["pixel_acc"], "params_M": 0.0, "macs_M": 0.0}]
    table_rows += [{"label": f"{k} (not run: not a cell genotype)", "paper_miou": v}
                   for k, v in PAPER.items() if k in ("ResNet-50", "NASNet-A")]
    table = markdown_table([("label", "backbone"), ("params_M", "params M"), ("macs_M", "multiply-adds M"),
                            ("miou", "mIoU %"), ("pixel_acc", "pixel acc %"), ("best_miou", "best epoch mIoU %"),
                            ("paper_miou", "paper mIoU % (VOC)")], table_rows)
    per_class = markdown_table([("label", "backbone")] + [(c, c) for c in classes],
                               [{"label": r["label"], **dict(zip(classes, r["iou"].values()))} for r in rows], 1)
    note = _note(cfg0)
    write_summary(ctx, "Table 5: searched cells as DeepLabV3 backbones (mIoU)",
                  [table, "", "IoU % per class (final epoch):", "", per_class],
                  {"rows": rows, "baseline": base, "paper": PAPER}, note,
                  proxy=("CPU-scale proxy: Fashion-MNIST scenes, backbones trained from scratch; not the "
                         "paper's Pascal VOC with ImageNet-pretrained backbones. Compare directions, not "
                         "values." if ctx.scale == "cpu" else None))
    return {"rows": rows, "baseline": base}


def _classes(cfg) -> list[str]:
    from ..data.scenes import SCENE_CLASSES
    from ..data.voc import VOC_CLASSES
    return list(SCENE_CLASSES if cfg.data.dataset == "fmnist-scenes" else VOC_CLASSES)


def _note(cfg) -> str:
    d, m, o = cfg.data, cfg.model, cfg.optim
    data = (f"{d.scenes_train} training and {d.scenes_val} validation scenes of 2-4 Fashion-MNIST items on a "
            f"{d.scene_canvas}x{d.scene_canvas} canvas (data/scenes.py; 11 classes)" if d.dataset == "fmnist-scenes"
            else f"Pascal VOC 2012 {d.train_split} / {d.val_split}")
    return (f"Data: {data}. Every backbone: the genotype's ImageNet-layout target network (C={m.C}, "
            f"{m.layers} cells) at output stride {m.output_stride}, DeepLabV3 head (ASPP rates "
            f"{'/'.join(map(str, m.aspp_rates))}, {m.head_channels} channels), {o.epochs} epochs at batch "
            f"{o.batch_size}, SGD lr {o.lr} poly {o.power}, random scale {d.scale[0]}-{d.scale[1]}, crop "
            f"{d.crop_size}, flip. mIoU from one confusion matrix over the whole validation set, single "
            f"scale; params and multiply-adds of the whole network for one {d.crop_size}x{d.crop_size} "
            f"image. The paper's column is its Table 5 (VOC, ImageNet-pretrained); ResNet-50 and "
            f"NASNet-A are not cell genotypes of this search space and are not run.")
