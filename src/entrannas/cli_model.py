"""`entrannas eval` and `export`: a trained model measured, and written for use without
entrannas. Parses arguments, calls export.py, prints; cli.py turns user errors into one line."""
from __future__ import annotations

__all__ = ["add_commands"]


def add_commands(sub) -> None:
    e = sub.add_parser("eval", help="test accuracy (top-1/top-5, per class), params, multiply-adds "
                                    "and latency of a trained model; writes RUN/eval.json")
    e.add_argument("run_dir", metavar="RUN", help="a train run folder")
    e.add_argument("--data", metavar="DIR", help="evaluate on this data instead of the run's test set: "
                   "a folder of class folders (its test/ if it has one) for folder runs, else the "
                   "data_dir of the run's dataset")
    e.add_argument("--device", help="cpu, cuda, cuda:N (default: the run's run.device)")
    e.add_argument("--batch-size", type=int, default=256, help="evaluation batch (default 256)")
    e.add_argument("--no-latency", action="store_true", help="skip the throughput measurement")
    e.set_defaults(handler=cmd_eval)

    x = sub.add_parser("export", help="write a trained model as TorchScript (.pt), torch.export "
                                      "(.pt2), ONNX (.onnx) or safetensors weights (.safetensors)")
    x.add_argument("run_dir", metavar="RUN", help="a train run folder (or a .safetensors export)")
    x.add_argument("-o", "--output", action="append", required=True, metavar="FILE",
                   help="model.pt, model.pt2, model.onnx or model.safetensors (repeatable)")
    x.set_defaults(handler=cmd_export)


def cmd_eval(args) -> int:
    from .export import evaluate_run
    r = evaluate_run(args.run_dir, data=args.data, device=args.device, batch_size=args.batch_size,
                     latency=not args.no_latency)
    for line in r["notes"]:
        print(line)
    print(f"test accuracy on {r['images']} images ({r['data']}): top-1 {r['top1']:.2f}%  "
          f"top-{r['top5_k']} {r['top5']:.2f}%")
    width = max(len(c) for c in r["per_class"])
    for c, v in r["per_class"].items():
        acc = f"{v['acc']:6.2f}%" if v["acc"] is not None else "     -"
        print(f"  {c:<{width}}  {acc}  ({v['images']} images)")
    print(f"params: {r['params_M']:.3f}M  multiply-adds: {r['macs_M']:.1f}M per image "
          f"(input {'x'.join(map(str, r['input']))})")
    for t in r.get("latency", []):
        print(f"throughput at batch {t['batch']}: {t['images_per_s']:.1f} images/s "
              f"({t['ms_per_batch']:.2f} ms per batch) on {r['device']} ({r['machine']})")
    print(f"written to {r['written_to']}")
    return 0


def cmd_export(args) -> int:
    from .export import export_model
    for out in args.output:
        r = export_model(args.run_dir, out)
        diff = ("not checked: onnxruntime is not installed" if r["max_abs_diff"] is None
                else f"outputs match the trained model to {r['max_abs_diff']:.1e}")
        print(f"wrote {r['path']} ({r['format']}; input images [{', '.join(map(str, r['input']))}] "
              f"float in [0, 1], output logits over {len(r['classes'])} classes); {diff}")
    return 0
