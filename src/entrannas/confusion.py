"""Segmentation scores from one confusion matrix over a whole validation set (as the VOC
benchmark computes them, not a mean of per-image scores).

    cm = confusion_matrix(pred, target, num_classes)        # add batch after batch
    s = segmentation_scores(cm)   # miou, iou (per class), pixel_acc, mean_acc

cm[t, p] counts the pixels of true class t predicted as p; pixels labelled ``ignore_index``
(255: VOC's object boundaries and the augmentation's padding) are not counted. The IoU of
class c is cm[c, c] / (row c + column c - cm[c, c]). A class that is in neither the labels nor
the predictions has no IoU (NaN) and is left out of the mean; a class that is predicted but
absent from the labels has IoU 0 and counts.
"""
from __future__ import annotations

import math

import torch

__all__ = ["confusion_matrix", "segmentation_scores"]


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore_index: int = 255) -> torch.Tensor:
    """int64 [num_classes, num_classes] counts of (true, predicted) pixel pairs, on the
    device of the inputs; ``pred`` and ``target`` hold class indices of the same shape."""
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    keep = target != ignore_index
    t, p = target[keep].long(), pred[keep].long()
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= num_classes):
        raise ValueError(f"a label outside 0..{num_classes - 1} that is not {ignore_index}")
    return torch.bincount(t * num_classes + p, minlength=num_classes ** 2).view(num_classes, num_classes)


def segmentation_scores(cm: torch.Tensor) -> dict:
    """mIoU (%), IoU per class (%, NaN where undefined), pixel accuracy (%) and mean class
    accuracy (%, over the classes present in the labels)."""
    cm = cm.double().cpu()
    tp = cm.diag()
    truth, predicted = cm.sum(1), cm.sum(0)
    union = truth + predicted - tp
    iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, math.nan))
    acc = torch.where(truth > 0, tp / truth.clamp(min=1), torch.full_like(tp, math.nan))
    total = float(cm.sum())
    return {"miou": 100 * float(iou.nanmean()) if (union > 0).any() else math.nan,
            "iou": [100 * v for v in iou.tolist()],
            "pixel_acc": 100 * float(tp.sum()) / total if total else math.nan,
            "mean_acc": 100 * float(acc.nanmean()) if (truth > 0).any() else math.nan}
