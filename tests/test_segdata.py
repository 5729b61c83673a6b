"""Segmentation data and scores: mIoU from confusion matrices, the VOC reader on a generated
tree, the Fashion-MNIST scenes, and the batched scale / crop / flip."""
import math

import numpy as np
import pytest
import torch
from PIL import Image

from entrannas.confusion import confusion_matrix, segmentation_scores
from entrannas.data import DataError
from entrannas.data.scenes import load_fmnist_scenes, make_scenes
from entrannas.data.segloader import SegAugment, SegLoader, prepare
from entrannas.data.voc import VOCSegmentation, voc_colormap


# ----------------------------------------------------------------------------- scores

def test_miou_of_a_hand_made_confusion_matrix_leaves_out_an_absent_class():
    # rows: true class, columns: predicted. Class 2 is neither labelled nor predicted.
    cm = torch.tensor([[3, 1, 0], [0, 2, 0], [0, 0, 0]])
    s = segmentation_scores(cm)
    assert s["iou"][0] == pytest.approx(100 * 3 / 4) and s["iou"][1] == pytest.approx(100 * 2 / 3)
    assert math.isnan(s["iou"][2])
    assert s["miou"] == pytest.approx(100 * (3 / 4 + 2 / 3) / 2)
    assert s["pixel_acc"] == pytest.approx(100 * 5 / 6)
    assert s["mean_acc"] == pytest.approx(100 * (3 / 4 + 1) / 2)


def test_ignored_pixels_are_not_counted_and_a_predicted_absent_class_scores_zero():
    target = torch.tensor([[0, 0, 1, 255], [1, 1, 255, 0]])
    pred = torch.tensor([[0, 3, 1, 2], [1, 0, 1, 0]])  # class 3 predicted once, never labelled
    cm = confusion_matrix(pred, target, 4)
    assert int(cm.sum()) == 6  # the two 255 pixels are left out, whatever was predicted there
    assert cm.tolist() == [[2, 0, 0, 1], [1, 2, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    s = segmentation_scores(cm)
    # class 0: tp 2, row 3, column 3 -> 2/4; class 1: tp 2, row 3, column 2 -> 2/3;
    # class 2: absent everywhere (NaN, left out); class 3: predicted, absent -> IoU 0, counted
    assert s["iou"][0] == pytest.approx(50) and s["iou"][1] == pytest.approx(200 / 3)
    assert math.isnan(s["iou"][2]) and s["iou"][3] == 0
    assert s["miou"] == pytest.approx((50 + 200 / 3 + 0) / 3)
    # batches add up: the matrix of the whole set is the sum of the batches' matrices
    halves = confusion_matrix(pred[:1], target[:1], 4) + confusion_matrix(pred[1:], target[1:], 4)
    assert torch.equal(halves, cm)
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix(pred, torch.full_like(target, 7), 4)


# ----------------------------------------------------------------------------- VOC reader

def _palette_png(labels: np.ndarray, path):
    img = Image.fromarray(labels.astype(np.uint8), mode="P")
    img.putpalette(voc_colormap().flatten().tolist())
    img.save(path)


@pytest.fixture
def voc_tree(tmp_path):
    """A VOCdevkit/VOC2012 tree: 5 images of different sizes with palette labels (255 on the
    object borders), train/val lists, and one SBD-style grey-level label for train_aug."""
    root = tmp_path / "VOCdevkit" / "VOC2012"
    for d in ("JPEGImages", "SegmentationClass", "SegmentationClassAug", "ImageSets/Segmentation"):
        (root / d).mkdir(parents=True)
    rng = np.random.default_rng(0)
    labels = {}
    for i, (h, w) in enumerate([(30, 40), (36, 28), (32, 32), (24, 44), (40, 36)]):
        name = f"2007_{i:06d}"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "JPEGImages" / f"{name}.jpg")
        y = np.zeros((h, w), dtype=np.uint8)
        y[4:h - 4, 5:w - 5] = 1 + i * 4  # an object, and its 1-pixel border ignored
        y[3, 4:w - 4] = y[h - 4, 4:w - 4] = 255
        labels[name] = y
        _palette_png(y, root / "SegmentationClass" / f"{name}.png")
    extra = np.full((20, 30), 15, dtype=np.uint8)
    extra[:, :10] = 0
    Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(root / "JPEGImages" / "sbd_1.jpg")
    Image.fromarray(extra, mode="L").save(root / "SegmentationClassAug" / "sbd_1.png")
    labels["sbd_1"] = extra
    lists = root / "ImageSets" / "Segmentation"
    (lists / "train.txt").write_text("2007_000000\n2007_000001\n2007_000002\n")
    (lists / "val.txt").write_text("2007_000003\n2007_000004\n")
    (lists / "train_aug.txt").write_text("2007_000000\n2007_000001\n2007_000002\n\nsbd_1\n")
    return tmp_path, labels


def test_voc_reader_decodes_the_palette_and_keeps_255(voc_tree):
    base, labels = voc_tree
    train = VOCSegmentation(base, "train")  # finds VOCdevkit/VOC2012 below the folder given
    assert len(train) == 3 and train.info.num_classes == 21 and train.info.classes[15] == "person"
    for i, name in enumerate(["2007_000000", "2007_000001", "2007_000002"]):
        x, y = train[i]
        assert x.dtype == torch.uint8 and x.shape == (3, *labels[name].shape)
        assert np.array_equal(y.numpy(), labels[name])  # palette indices = classes, 255 kept
    aug = VOCSegmentation(base, "train_aug")  # SBD's grey-level label through the same reader
    assert np.array_equal(aug[3][1].numpy(), labels["sbd_1"])
    # A label saved as RGB colours decodes back through the palette.
    root = base / "VOCdevkit" / "VOC2012"
    rgb = voc_colormap()[labels["2007_000001"]]
    Image.fromarray(rgb).save(root / "SegmentationClass" / "2007_000001.png")
    assert np.array_equal(train[1][1].numpy(), labels["2007_000001"])


def test_voc_loader_pads_with_ignore_and_scores_whole_images(voc_tree):
    base, labels = voc_tree
    val = VOCSegmentation(base, "val")
    loader = SegLoader(val, batch_size=2, eval_size=48)
    (x, y), = list(loader)
    assert x.shape == (2, 3, 48, 48) and y.shape == (2, 48, 48)
    assert np.array_equal(y[0, :24, :44].numpy(), labels["2007_000003"])
    assert bool((y[0, 24:] == 255).all()) and bool((y[0, :, 44:] == 255).all())
    assert bool((x[0, :, 24:] == 0).all())  # padding is the mean colour: 0 once normalised
    with pytest.raises(DataError, match="crop_size"):
        list(SegLoader(val, batch_size=2, eval_size=32))  # a 44-wide image does not fit


def test_voc_reader_refuses_bad_trees_with_one_line(voc_tree, tmp_path):
    base, _ = voc_tree
    root = base / "VOCdevkit" / "VOC2012"
    with pytest.raises(DataError, match="not found"):
        VOCSegmentation(tmp_path / "nowhere", "train")
    with pytest.raises(DataError, match="trainval.txt not found"):
        VOCSegmentation(base, "trainval")
    (root / "ImageSets" / "Segmentation" / "bad.txt").write_text("2007_000009\n")
    with pytest.raises(DataError, match="no label 2007_000009.png"):
        VOCSegmentation(base, "bad")
    _palette_png(np.full((30, 40), 30), root / "SegmentationClass" / "2007_000000.png")
    with pytest.raises(DataError, match="value 30 is no class"):
        VOCSegmentation(base, "train")[0]


# ----------------------------------------------------------------------------- scenes

def test_scenes_are_reproducible_from_the_seed_and_labelled_by_ink():
    a_train, a_val = load_fmnist_scenes(train_size=64, val_size=16, seed=3)
    b_train, b_val = load_fmnist_scenes(train_size=64, val_size=16, seed=3)
    assert torch.equal(a_train.images, b_train.images) and torch.equal(a_train.labels, b_train.labels)
    assert torch.equal(a_val.labels, b_val.labels)
    c_train, _ = load_fmnist_scenes(train_size=64, val_size=16, seed=4)
    assert not torch.equal(a_train.labels, c_train.labels)
    more, _ = load_fmnist_scenes(train_size=80, val_size=16, seed=3)
    assert torch.equal(more.labels[:64], a_train.labels)  # scene i does not depend on the count
    assert a_train.images.shape == (64, 1, 64, 64) and a_train.labels.dtype == torch.uint8
    # a pixel is an item's exactly where the ink is above the threshold (0.2 of 255 -> 51)
    assert torch.equal(a_train.labels > 0, a_train.images[:, 0] > 51)
    assert int(a_train.labels.max()) <= 10 and a_train.info.num_classes == 11
    assert not torch.equal(a_train.images[:16], a_val.images)  # val items come from the test set


def test_scene_items_are_whole_on_the_canvas_with_their_class():
    items = torch.zeros((3, 1, 4, 4), dtype=torch.uint8)
    items[:, :, 1:3, 1:3] = 200  # a 2x2 blob of ink in each 4x4 item
    images, labels = make_scenes(items, torch.tensor([0, 5, 9]), 200, seed=0, canvas=8,
                                 items_min=1, items_max=1)
    assert torch.equal((labels > 0).flatten(1).sum(1), torch.full((200,), 4))  # never cut at the edge
    assert set(labels.unique().tolist()) == {0, 1, 6, 10}  # class + 1


# ----------------------------------------------------------------------------- augmentation

def test_augment_at_scale_one_is_a_crop_and_flip_and_pads_with_ignore():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (4, 1, 16, 16), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 11, (4, 16, 16), dtype=torch.uint8, generator=g)
    sizes = torch.tensor([[16, 16]] * 4)
    plain_x, plain_y = prepare(x, y, sizes, (0.5,), (0.25,))
    aug = SegAugment(16, scale=(1.0, 1.0), flip=True, mean=(0.5,), std=(0.25,))
    s, corner, flip = aug.draw(sizes, torch.Generator().manual_seed(5))
    ax, ay = aug(x, y, sizes, torch.Generator().manual_seed(5))
    assert bool((corner == 0).all()) and flip.any() and not flip.all()
    want_y = torch.where(flip[:, None, None], plain_y.flip(-1), plain_y)
    assert torch.equal(ay, want_y)
    assert torch.allclose(ax, torch.where(flip[:, None, None, None], plain_x.flip(-1), plain_x), atol=1e-5)
    # half the size inside a 16x16 crop: an 8x8 image somewhere, the rest ignored
    small = SegAugment(16, scale=(0.5, 0.5), flip=False)
    sx, sy = small(x, y, sizes, torch.Generator().manual_seed(1))
    assert torch.equal((sy != 255).flatten(1).sum(1), torch.full((4,), 64))
    assert bool((sx[sy.unsqueeze(1).expand_as(sx) == 255] == 0).all())
    # twice the size: every pixel of the crop is labelled, and batches replay from the seed
    big = SegAugment(16, scale=(2.0, 2.0))
    bx, by = big(x, y, sizes, torch.Generator().manual_seed(2))
    assert bool((by != 255).all())
    bx2, by2 = big(x, y, sizes, torch.Generator().manual_seed(2))
    assert torch.equal(bx, bx2) and torch.equal(by, by2)
