"""README's "Your own data" on a generated folder, end to end, with the real command line:

    python3 scripts/folder_walkthrough.py OUT [--per-class 200] [--search-epochs 3] [--train-epochs 4]

1. writes OUT/images: 10 classes x 200 PNGs of 32x32 (2,000 images; tests/imagefolders.py);
2. `entrannas search -c folder-quick --set data.data_dir=OUT/images` (decodes into the cache);
3. `entrannas train`, `entrannas eval`, `entrannas export -o model.pt -o model.onnx`;
4. runs the exported TorchScript and ONNX files on the held-out test images and compares
   them with the trained module (load_model);
5. starts a second search and reports how long its data loading took from the cache.
Every figure it prints comes from this machine at the time it runs.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def sh(*args, env):
    cmd = [sys.executable, "-m", "entrannas", *map(str, args)]
    print("$ entrannas " + " ".join(map(str, args)), flush=True)
    t0 = time.time()
    subprocess.run(cmd, check=True, env=env)
    print(f"  ({time.time() - t0:.0f} s)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--per-class", type=int, default=200)
    ap.add_argument("--search-epochs", type=int, default=3)
    ap.add_argument("--train-epochs", type=int, default=4)
    a = ap.parse_args()
    out = a.out.resolve()
    env = dict(os.environ, ENTRANNAS_CACHE=str(out / "cache"),
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])))
    sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]
    from imagefolders import make_folder
    images = out / "images"
    if not images.exists():
        make_folder(images, classes=10, per_class=a.per_class, size=32, fmt="png")
    print(f"{sum(1 for _ in images.rglob('*.png'))} PNGs in {images}")
    data = ["--set", "data.dataset=folder", "--set", f"data.data_dir={images}"]
    sh("search", "-c", "folder-quick", *data, "--set", f"optim.epochs={a.search_epochs}", "-q",
       "--out", out / "search", env=env)
    sh("train", "-c", "folder-eval", "-g", out / "search", *data, "--set", f"optim.epochs={a.train_epochs}",
       "-q", "--out", out / "train", env=env)
    sh("eval", out / "train", env=env)
    sh("export", out / "train", "-o", out / "model.pt", "-o", out / "model.onnx", env=env)

    import numpy as np
    import onnxruntime as ort
    import torch

    import entrannas
    from entrannas.data import load_folder
    model = entrannas.load_model(out / "train")
    _, test = load_folder(images, cache_dir=out / "cache")
    x = test.images.float() / 255
    with torch.no_grad():
        want = model(x)
        ts = torch.jit.load(str(out / "model.pt"))(x)
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    onnx_out = torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
    for name, got in (("TorchScript", ts), ("ONNX", onnx_out)):
        print(f"{name} vs the trained module on {len(x)} test images: max |diff| "
              f"{float((got - want).abs().max()):.2e} on logits up to {float(want.abs().max()):.1f}, "
              f"same predictions: {bool((got.argmax(1) == want.argmax(1)).all())}")
    # float32 logits of magnitude ~50 carry ~1e-5 of rounding whichever runtime computes them:
    # 1e-5 absolute plus 1e-5 relative.
    assert np.allclose(ts.numpy(), want.numpy(), atol=1e-5) and np.allclose(onnx_out.numpy(), want.numpy(), atol=1e-5)

    sh("search", "-c", "folder-quick", *data, "--set", "optim.epochs=1", "-q", "--out", out / "search2", env=env)
    line = next(l for l in (out / "search2" / "log.txt").read_text().splitlines() if "from the cache" in l)
    print("second search: " + line.split(" ", 2)[2])
    t0 = time.perf_counter()
    from entrannas.config import load_config
    from entrannas.loop import build_loaders
    cfg = load_config("folder-quick", [f"data.data_dir={images}", f"data.cache_dir={out / 'cache'}"])
    build_loaders(cfg, torch.device("cpu"), search=True)
    print(f"build_loaders from the cache (scan, load, split, statistics, loaders): "
          f"{time.perf_counter() - t0:.2f} s")
    r = json.loads((out / "train" / "eval.json").read_text())
    print(f"eval: top-1 {r['top1']:.2f}% on {r['images']} test images; "
          + "; ".join(f"batch {t['batch']}: {t['images_per_s']:.0f} images/s" for t in r["latency"]))


if __name__ == "__main__":
    main()
