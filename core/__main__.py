"""Command line: ``python -m core {demo,extract,findings,cache,bench,report} ...``."""
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
    """A ``progress(done, total, message)`` callback drawing one tqdm bar per message prefix (the text
    before the first ": ", so that model ids such as ``tv:alexnet`` stay whole)."""
    from tqdm import tqdm

    bars: dict[str, tqdm] = {}

    def cb(done: int, total: int, message: str) -> None:
        key = message.split(": ")[0]
        bar = bars.get(key)
        if bar is None:
            for b in bars.values():
                b.close()
            bars.clear()
            bar = bars[key] = tqdm(total=total, desc=key, unit="it", dynamic_ncols=True, file=sys.stderr)
        bar.total = total
        bar.n = done
        bar.set_postfix_str(message[len(key) + 2:].strip()[:60], refresh=False)
        bar.refresh()

    try:
        yield cb
    finally:
        for b in bars.values():
            b.close()


def _demo_profile(args: argparse.Namespace) -> str | None:
    """``--profile``, or the profile of ``--dataset`` (they must agree when both are given)."""
    from core.demo import profiles as demo_profiles
    from core.errors import InputError

    if args.profile and args.profile not in demo_profiles.PROFILES:
        raise InputError(f"unknown demo profile {args.profile!r}; use one of {', '.join(demo_profiles.PROFILES)}")
    if args.dataset is None:
        return args.profile
    want = demo_profiles.DATASET_PROFILES[args.dataset]
    if args.profile and demo_profiles.PROFILES[args.profile].data != demo_profiles.PROFILES[want].data:
        raise InputError(f"--profile {args.profile} builds from {demo_profiles.PROFILES[args.profile].data}, not "
                         f"{args.dataset}: drop one of --profile / --dataset")
    return args.profile or want


def cmd_demo(args: argparse.Namespace) -> int:
    from core import service
    from core.demo import build as demo
    from core.demo import profiles as demo_profiles
    from core.data.datasets import ensure_fashion_mnist

    args.profile = _demo_profile(args)
    if args.train_source:
        return _train_source(args.profile or demo_profiles.profile_name(), args.out)
    if demo_profiles.PROFILES[args.profile or demo_profiles.profile_name()].data == "fashion-mnist":
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
        print(f"Demo already built in {demo_profiles.demo_dir(args.profile)} (nothing to do).")
    else:
        print(f"Demo built in {demo_profiles.demo_dir(args.profile)}: "
              f"source val acc {info['pretrain']['source_val_accuracy']:.3f}, "
              + ", ".join(f"{k} {v['target_detgt_test_accuracy']:.3f}" for k, v in info["finetune"].items()))
    return 0


def _train_source(profile: str, out: str | None) -> int:
    """``python -m core demo --train-source``: pretrain the source network and write the shipped files."""
    import time
    from pathlib import Path

    from core.demo import profiles as demo_profiles
    from core.demo import source_net

    cfg = demo_profiles.PROFILES[profile]
    target = Path(out) if out else source_net.shipped_dir(profile)
    t0 = time.perf_counter()
    with tqdm_progress() as cb:
        man = source_net.train_source(cfg, target, source_net.source_data(cfg, cb), cb)
    print(f"Source network of profile {profile} written to {target} in {time.perf_counter() - t0:.0f} s: "
          f"source val accuracy {man['source_val_accuracy']:.3f} (train {man['source_train_accuracy']:.3f}), "
          f"{len(man['snapshots'])} snapshots, {sum(f['bytes'] for f in man['files'].values()) / 1e6:.1f} MB")
    return 0


def cmd_findings(args: argparse.Namespace) -> int:
    from core import service

    model = service.resolve_model(args.model)
    compare = service.pretrained_counterpart(model, service.resolve_model(args.compare) if args.compare else None)
    with tqdm_progress() as cb:
        rows = service.findings(model, compare, args.task, args.cls_task or None, progress=cb)
    mark = {True: "holds", False: "DOES NOT HOLD", None: "not measured"}
    for r in rows:
        print(f"[{mark[r['holds']]:>13}] {r['id']}: {r['measured']}" + (f"  ({r['why']})" if r["why"] else ""))
    print(service.findings_summary(rows))
    if args.json:
        doc = {"summary": service.findings_summary(rows), "findings": rows,
               "provenance": service.findings_provenance(model, compare, args.task, args.cls_task or None)}
        with open(args.json, "w") as fh:
            json.dump(doc, fh, indent=1, default=str)
        print(f"wrote {args.json}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from core import service

    a, b = service.resolve_model(args.a), service.resolve_model(args.b)
    with tqdm_progress() as cb:
        doc = service.compare_summary(a, b, args.task, args.layer or None, args.pool, args.top, progress=cb)
    print(f"What changed from {a} to {b} on {args.task} (linear CKA, {doc['pool']}, {doc['estimator']}):")
    print(f"{'layer':>10}  {'CKA':>6}  {'moved (1 - CKA)':>15}")
    for r in doc["diagonal"]:
        print(f"{r['layer']:>10}  {r['cka']:6.3f}  {r['moved']:15.3f}")
    how = ("units matched one to one by response correlation" if doc["units_matched"]
           else "unit i before is unit i after")
    print(f"\nTop {len(doc['top_changed_units'])} changed units of {doc['layer']} by |ΔAuE| ({how}):")
    print(f"{'unit':>5} {'after':>5} {'corr':>6} {'AuE before':>10} {'AuE after':>9}  best class before -> after"
          f"{'':>4} {'‖Δw‖/‖w‖':>9}")
    for r in doc["top_changed_units"]:
        print(f"{r['unit']:>5} {r['unit after']:>5} {r['match correlation']:6.3f} {r['AuE before']:10.3f} "
              f"{r['AuE after']:9.3f}  {r['best class before']} ({r['best AP before']:.2f}) -> {r['best class after']} "
              f"({r['best AP after']:.2f}) {r['weight change']:9.4f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(doc, fh, indent=1, default=str)
        print(f"wrote {args.json}")
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    from core.store import cache_usage

    if args.action == "prune":
        gone = cache_usage.prune(dry_run=args.dry_run)
        for item in gone:
            print(f"{'would remove' if args.dry_run else 'removed'} {item.path} ({item.bytes / 1e6:.1f} MB): {item.why}")
        print(f"{'would free' if args.dry_run else 'freed'} {sum(i.bytes for i in gone) / 1e6:.1f} MB "
              f"in {len(gone)} stale item(s)")
        return 0
    use = cache_usage.usage()
    print(f"cache folder {use.root}")
    print(f"{'kind':<20} {'items':>6} {'MB':>9} {'live MB':>9} {'stale MB':>9}")
    for row in use.table():
        print(f"{row['kind']:<20} {row['items']:>6} {row['bytes'] / 1e6:>9.1f} {row['live_bytes'] / 1e6:>9.1f} "
              f"{row['stale_bytes'] / 1e6:>9.1f}")
    if args.verbose:
        for item in use.items:
            print(f"  {'live ' if item.live else 'STALE'} {item.bytes / 1e6:8.1f} MB  {item.path}  ({item.why})")
    stale = use.total(live=False)
    print(f"total {use.total() / 1e6:.1f} MB; {stale / 1e6:.1f} MB stale"
          + (" (python -m core cache prune removes it)" if stale else ""))
    return 0


def _model_id(args: argparse.Namespace) -> str:
    """``--model`` (any model id; a bare torchvision name means tv:<name>) with ``--weights``."""
    from core import service
    from core.errors import InputError

    if args.model == "demo" or args.model.startswith("demo:"):
        return service.resolve_model(args.model)
    if ":" in args.model:
        if getattr(args, "weights", None):
            raise InputError("--weights goes with a bare torchvision name; put the weights in the id: "
                             f"{args.model}@{args.weights}")
        return service.resolve_model(args.model)
    return f"tv:{args.model}" + (f"@{args.weights}" if getattr(args, "weights", None) else "")


def cmd_layers(args: argparse.Namespace) -> int:
    """Every module path of a model with its output shape as stored; defaults marked with *."""
    from core import service

    model_id = _model_id(args)
    info = service.model_layers(model_id)
    print(f"{model_id}: {len(info)} modules; * = default layer (display name in brackets when it differs). "
          "Token outputs are shown as stored: [units, h, w].")
    width = max(len(r["path"]) for r in info) if info else 0
    for r in info:
        mark = "*" if r["default"] else " "
        shape = "x".join(map(str, r["shape"])) if r["shape"] is not None else "-"
        name = f"  [{r['name']}]" if r["name"] and r["name"] != r["path"] else ""
        print(f"{mark} {r['path']:<{width}}  {shape}{name}")
    return 0


def cmd_extract(args: argparse.Namespace) -> int:
    from core import service
    from core.store import extraction
    from core.data.datasets import load_dataset

    model_id = _model_id(args)
    lm = service.load_model(model_id)
    data = load_dataset(args.dataset)
    layers = [l.strip() for l in args.layers.split(",") if l.strip()] if args.layers else list(lm.spec.layers)
    with tqdm_progress() as cb:
        if args.backend == "ray":
            from core.store import ray_backend as distributed
            out = distributed.extract_ray(lm, data, layers, address=args.ray_address,
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
    from core.errors import InputError

    if args.paper_scale:
        return _paper_scale(args)
    given = [f for f, v in (("--fraction", args.fraction), ("--weights", args.weights), ("--root", args.root),
                            ("--keep-cache", args.keep_cache)) if v]
    if given:
        raise InputError(f"{', '.join(given)}: only with --paper-scale (python -m core bench --paper-scale "
                         "[--fraction F] [--weights FILE] [--json PATH] [--root DIR] [--keep-cache])")
    result = bench.run(quick=args.quick)
    print(bench.format_table(result))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)
        print(f"wrote {args.json}")
    return 0


def _paper_scale(args: argparse.Namespace) -> int:
    """``python -m core bench --paper-scale``: the analyses on a VOC 2007-sized tree, stage by stage."""
    from pathlib import Path

    from core.bench import paper_scale
    from core.errors import InputError

    if args.quick:
        raise InputError("--quick and --paper-scale are two different benchmarks; give one of them")
    given = "1" if args.fraction is None else str(args.fraction)
    fractions = [paper_scale.check_fraction(f.strip()) for f in given.split(",")]
    if len(fractions) > 1 and len(set(fractions)) < 2:
        raise InputError(f"--fraction {given}: give two different fractions for the scaling, e.g. 0.4,1")
    out = Path(args.json) if args.json else paper_scale.DEFAULT_JSON
    runs = [paper_scale.run(f, weights=args.weights, root=args.root, keep_cache=args.keep_cache,
                            say=lambda msg: print(msg, file=sys.stderr, flush=True)) for f in fractions]
    if len(runs) > 1:   # one record: every run and the time / memory scaling between the extremes
        result = paper_scale.scaling(runs)
        print(paper_scale.format_scaling(result))
    else:
        result = runs[0]
        print(paper_scale.format_paper_table(result))
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w") as fh:
        json.dump(result, fh, indent=1)
    print(f"wrote {out}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from core import service
    from core.present import report

    keys = [k.strip() for k in args.figures.split(",") if k.strip()] if args.figures else None
    req = report.ReportRequest(model=service.resolve_model(args.model),
                               compare=service.resolve_model(args.compare) if args.compare else None, task=args.task, layer=args.layer,
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


MODEL_HELP = ("model id: demo (= demo:finetuned), demo:<variant>, tv:<arch>, timm:<name> or "
              "py:<file.py>:<callable>, each with an optional @<weights file>; or a bare torchvision name")


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
    p.add_argument("--train-source", action="store_true",
                   help="(re)train the profile's source network and its snapshots once and write the shipped "
                        "files (weights/demo/<profile>: float16 weights + manifest with SHA-256); tens of minutes "
                        "for the full profile")
    p.add_argument("--out", default=None, help="with --train-source: write there instead of weights/demo/<profile>")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("layers", help="every module path of a model with its output shape; defaults marked")
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("--weights", default=None, help="local state dict for a bare torchvision name")
    p.set_defaults(func=cmd_layers)

    p = sub.add_parser("extract", help="extract layer features into the feature store")
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("--weights", default=None, help="local state dict for a bare torchvision name")
    p.add_argument("--dataset", required=True, help="demo:<split>, voc2007:<root>:<split>[:det-gt], "
                                                     "imagefolder:<root>, fashion-mnist:<split> or a path")
    p.add_argument("--layers", default="", help="comma-separated default layers or any module paths, e.g. "
                                                "conv1,conv5,fc7 or layer3.1.conv2,blocks.5 (default: the defaults)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--backend", choices=("local", "ray"), default="local",
                   help="local (default) or ray: model actors on Ray Data writing a sharded store")
    p.add_argument("--ray-address", default=None,
                   help="running Ray cluster: auto or host:port (`ray start --head`); default: a local Ray")
    p.add_argument("--num-actors", type=int, default=None, help="Ray model actors (default: one per GPU, else CPU)")
    p.add_argument("--shard-size", type=int, default=None,
                   help="items per Ray shard, rounded up to a multiple of --batch-size (default: ~2 per actor)")
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser("findings", help="check the paper's ten headline findings and CKA's on a model (as the "
                                        "Overview page)")
    p.add_argument("--model", default="demo", help="model id (default demo = demo:finetuned)")
    p.add_argument("--compare", default=None, help="the pretrained net it is compared with (default: "
                   "demo:pretrained for a demo network; none for your own)")
    p.add_argument("--task", default="demo-detgt", help="task of the measurements (default demo-detgt, DET-GT)")
    p.add_argument("--cls-task", default="demo-cls", help="image-level task of the depth and Table 3 rows "
                                                           "('' to skip)")
    p.add_argument("--json", default=None, help="also write the rows and their provenance as JSON")
    p.set_defaults(func=cmd_findings)

    p = sub.add_parser("compare", help="what changed between two networks: layer x layer CKA and the units that "
                                       "changed most (as the What changed page)")
    p.add_argument("--a", default="demo:pretrained", help="the network before (default demo:pretrained)")
    p.add_argument("--b", default="demo:finetuned", help="the network after (default demo:finetuned)")
    p.add_argument("--task", default="demo-detgt", help="task whose test split both networks see (default demo-detgt)")
    p.add_argument("--layer", default=None, help="layer of the unit table (default: the last layer both have)")
    p.add_argument("--pool", default="flatten", choices=("flatten", "mean", "max"),
                   help="conv maps in CKA: flattened (default) or spatially pooled")
    p.add_argument("--top", type=int, default=10, help="how many changed units to list (default 10)")
    p.add_argument("--json", default=None, help="also write the CKA matrix, the diagonal and the units as JSON")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("cache", help="sizes of the cache folder (info) or removal of stale items (prune)")
    p.add_argument("action", choices=("info", "prune"), help="info: sizes per kind, live and stale; prune: remove "
                                                             "what no built demo references")
    p.add_argument("--dry-run", action="store_true", help="prune: list what would be removed, remove nothing")
    p.set_defaults(func=cmd_cache)

    p = sub.add_parser("bench", help="speed/memory benchmark, side by side; --paper-scale: the analyses at VOC size")
    p.add_argument("--json", default=None, help="write the result as JSON (--paper-scale: default "
                                                 "bench/paper_scale.json)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--paper-scale", action="store_true",
                   help="every analysis of every AlexNet layer on a synthetic PASCAL VOC 2007-sized tree, each stage "
                        "in its own process: wall time and peak RSS per stage")
    p.add_argument("--fraction", default=None, help="--paper-scale: fraction of VOC 2007's size in (0, 1] "
                                                     "(default 1: 5,011 trainval + 4,952 test images); several, "
                                                     "comma-separated (0.4,1): one run each, in order, and the "
                                                     "time and memory scaling between the smallest and the largest")
    p.add_argument("--weights", default=None, help="--paper-scale: AlexNet state dict (default: seeded random init)")
    p.add_argument("--root", default=None, help="--paper-scale: folder of the generated tree "
                                                 "(default <cache>/paper_scale; reused when it matches)")
    p.add_argument("--keep-cache", action="store_true",
                   help="--paper-scale: keep the run's features and results (<root>/run-cache) afterwards, to open "
                        "them in the app (FILTERSCOPE_CACHE=<root>/run-cache FILTERSCOPE_VOC=<root>)")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("report", help="write the standard figures as an HTML report, slides, PDF and tables")
    p.add_argument("--model", default="demo", help="model id: demo (= demo:finetuned), demo:<variant>, tv:<arch>")
    p.add_argument("--compare", default=None, help="second model drawn alongside, e.g. demo:pretrained")
    p.add_argument("--task", default="demo-detgt", help="task id, e.g. demo-detgt, demo-cls, demo-scene")
    p.add_argument("--layer", default="conv5", help="layer of the Sec. 4 figures (default conv5)")
    p.add_argument("--cls", type=int, default=0, help="class index of the precision-recall figure")
    p.add_argument("--figures", default="", help="comma-separated subset of findings,sel,pr,needed,overlap,sparsity,"
                                                 "ablation,layers,changed (default: all)")
    p.add_argument("--ablation-splits", type=int, default=3, help="re-drawn splits for the ablation error bars")
    p.add_argument("--title", default="Filterscope report")
    p.add_argument("--base-url", default="http://127.0.0.1:8501", help="where the app runs (for permalinks)")
    p.add_argument("--no-static", action="store_true", help="HTML, tables and index only (no browser needed)")
    p.add_argument("--out", required=True, help="output folder (created)")
    p.set_defaults(func=cmd_report)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    from tqdm.contrib.logging import logging_redirect_tqdm

    try:
        with logging_redirect_tqdm():  # a warning gets its own line, not the tail of a progress bar
            return args.func(args)
    except FilterscopeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # cache folder not writable, full or gone; an unreadable input file
        from core.store.cache import storage_problem
        print(f"error: {storage_problem(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
