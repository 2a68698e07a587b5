"""Command line: ``python -m core {demo,extract,bench,report} ...``."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from contextlib import contextmanager
from typing import Iterator

from core.errors import FilterscopeError


@contextmanager
def tqdm_progress(desc: str = "") -> Iterator:
    """A ``progress(done, total, message)`` callback drawing one tqdm bar per message prefix."""
    from tqdm import tqdm

    bars: dict[str, tqdm] = {}

    def cb(done: int, total: int, message: str) -> None:
        key = message.split(":")[0]
        bar = bars.get(key)
        if bar is None:
            for b in bars.values():
                b.close()
            bars.clear()
            bar = bars[key] = tqdm(total=total, desc=key, unit="it", dynamic_ncols=True, file=sys.stderr)
        bar.total = total
        bar.n = done
        bar.set_postfix_str(message[len(key) + 1:].strip()[:60], refresh=False)
        bar.refresh()

    try:
        yield cb
    finally:
        for b in bars.values():
            b.close()


def _demo_profile(args: argparse.Namespace) -> str | None:
    """``--profile``, or the profile of ``--dataset`` (they must agree when both are given)."""
    from core import demo
    from core.errors import InputError

    if args.profile and args.profile not in demo.PROFILES:
        raise InputError(f"unknown demo profile {args.profile!r}; use one of {', '.join(demo.PROFILES)}")
    if args.dataset is None:
        return args.profile
    want = demo.DATASET_PROFILES[args.dataset]
    if args.profile and demo.PROFILES[args.profile].data != demo.PROFILES[want].data:
        raise InputError(f"--profile {args.profile} builds from {demo.PROFILES[args.profile].data}, not "
                         f"{args.dataset}: drop one of --profile / --dataset")
    return args.profile or want


def cmd_demo(args: argparse.Namespace) -> int:
    from core import demo, service
    from core.datasets import ensure_fashion_mnist

    args.profile = _demo_profile(args)
    if demo.PROFILES[args.profile or demo.profile_name()].data == "fashion-mnist":
        ensure_fashion_mnist(install=True, say=print)  # Debian's package, when root; else says the command
    if args.profile:  # the warm step and the app read the profile from the environment
        import os

        os.environ["FILTERSCOPE_DEMO"] = args.profile
    already = demo.is_built(args.profile) and not args.force
    with tqdm_progress() as cb:
        info = demo.build(args.profile, progress=cb, force=args.force)
        if not args.no_warm:
            service.warm_demo(progress=cb)
    if already:
        print(f"Demo already built in {demo.demo_dir(args.profile)} (nothing to do).")
    else:
        print(f"Demo built in {demo.demo_dir(args.profile)}: "
              f"source val acc {info['pretrain']['source_val_accuracy']:.3f}, "
              + ", ".join(f"{k} {v['target_detgt_test_accuracy']:.3f}" for k, v in info["finetune"].items()))
    return 0


def cmd_extract(args: argparse.Namespace) -> int:
    from core import extraction, service
    from core.datasets import load_dataset

    model_id = args.model if ":" in args.model else f"tv:{args.model}" + (f"@{args.weights}" if args.weights else "")
    lm = service.load_model(model_id)
    data = load_dataset(args.dataset)
    layers = [l.strip() for l in args.layers.split(",") if l.strip()] if args.layers else list(lm.spec.layers)
    with tqdm_progress() as cb:
        if args.backend == "ray":
            from core import distributed
            # ids, not objects: each actor builds the model and opens the dataset itself
            out = distributed.extract_ray(model_id, args.dataset, layers, address=args.ray_address,
                                          num_actors=args.num_actors,
                                          batch_size=args.batch_size, shard_size=args.shard_size,
                                          device=args.device, progress=cb)
        else:
            out = extraction.extract(lm, data, layers, device=args.device, batch_size=args.batch_size, progress=cb)
    for layer, f in out.items():
        print(f"{layer}: {tuple(f.shape)} -> {f.path}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from core import bench

    result = bench.run(quick=args.quick)
    print(bench.format_table(result))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)
        print(f"wrote {args.json}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from core import report

    keys = [k.strip() for k in args.figures.split(",") if k.strip()] if args.figures else None
    req = report.ReportRequest(model=args.model, compare=args.compare or None, task=args.task, layer=args.layer,
                               cls=args.cls, base_url=args.base_url,
                               ablation_seeds=tuple(range(max(1, args.ablation_splits))))
    skipped: list[str] = []
    with tqdm_progress() as cb:
        items = report.standard_items(req, keys, progress=cb, on_skip=lambda k, why: skipped.append(why))
        files = report.write_report(items, args.out, title=args.title, static=not args.no_static, progress=cb,
                                    skipped=skipped)
    for why in skipped:
        print(f"skipped: {why}")
    if files.static_problem and not args.no_static:
        print(f"no slides / PDF: {files.static_problem}")
    print(f"wrote {len(items)} figure(s) to {args.out}: " + ", ".join(str(p) for p in files.all()))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core", description="Filterscope engine")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("demo", help="build the embedded demo (idempotent)")
    p.add_argument("--profile", default=None, help="full (default), tiny or fashion ($FILTERSCOPE_DEMO)")
    p.add_argument("--dataset", choices=("scenes", "fashion-mnist"), default=None,
                   help="scenes: the procedural demo (profile full); fashion-mnist: the real-image demo on "
                        "Debian's dataset-fashion-mnist (profile fashion; installs the package when root)")
    p.add_argument("--force", action="store_true", help="rebuild from scratch")
    p.add_argument("--no-warm", action="store_true", help="skip pre-computing the standard analyses")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("extract", help="extract layer features into the feature store")
    p.add_argument("--model", required=True, help="demo:<variant>, tv:<arch> or a torchvision name")
    p.add_argument("--weights", default=None, help="local state dict for a torchvision model")
    p.add_argument("--dataset", required=True, help="demo:<split>, voc2007:<root>:<split>[:det-gt], "
                                                     "imagefolder:<root>, fashion-mnist:<split> or a path")
    p.add_argument("--layers", default="", help="comma-separated, e.g. conv1,conv5,fc7 (default: all)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--backend", choices=("local", "ray"), default="local",
                   help="local (default) or ray: model actors on Ray Data writing a sharded store")
    p.add_argument("--ray-address", default=None,
                   help="running Ray cluster: auto or host:port (`ray start --head`); default: a local Ray")
    p.add_argument("--num-actors", type=int, default=None, help="Ray model actors (default: one per GPU, else CPU)")
    p.add_argument("--shard-size", type=int, default=None, help="items per Ray shard (default: ~2 per actor)")
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser("bench", help="speed/memory benchmark, side by side")
    p.add_argument("--json", default=None)
    p.add_argument("--quick", action="store_true")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("report", help="write the standard figures as an HTML report, slides, PDF and tables")
    p.add_argument("--model", default="demo:finetuned", help="model id, e.g. demo:finetuned")
    p.add_argument("--compare", default=None, help="second model drawn alongside, e.g. demo:pretrained")
    p.add_argument("--task", default="demo-detgt", help="task id, e.g. demo-detgt, demo-cls, demo-scene")
    p.add_argument("--layer", default="conv5", help="layer of the Sec. 4 figures (default conv5)")
    p.add_argument("--cls", type=int, default=0, help="class index of the precision-recall figure")
    p.add_argument("--figures", default="", help="comma-separated subset of sel,pr,needed,overlap,sparsity,"
                                                 "ablation,layers (default: all)")
    p.add_argument("--ablation-splits", type=int, default=3, help="re-drawn splits for the ablation error bars")
    p.add_argument("--title", default="Filterscope report")
    p.add_argument("--base-url", default="http://127.0.0.1:8501", help="where the app runs (for permalinks)")
    p.add_argument("--no-static", action="store_true", help="HTML, tables and index only (no browser needed)")
    p.add_argument("--out", required=True, help="output folder (created)")
    p.set_defaults(func=cmd_report)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return args.func(args)
    except FilterscopeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
