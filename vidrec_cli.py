"""The `vidrec` command. Sub-commands import their module lazily so that serving never
imports the offline build (and so never imports torch)."""

from __future__ import annotations

import argparse
import sys

SERVICES = ("all", "gateway", "retrieval", "ranking", "feature-store", "archiver")
DEFAULT_PORTS = {"all": 8000, "gateway": 8000, "retrieval": 8001, "ranking": 8002,
                 "feature-store": 8003, "archiver": 8004}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vidrec", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    b = sub.add_parser("build", help="Build an evaluated artifact bundle from a dataset.")
    b.add_argument("--dataset", required=True,
                   help="microlens-50k, ml-latest-small, or a folder in the custom format")
    b.add_argument("--sample-users", type=int, default=None,
                   help="Build on a random sample of this many users (quick runs, tests).")
    b.add_argument("--epochs", type=int, default=None, help="Override training epochs.")
    b.add_argument("--train-minutes", type=float, default=None,
                   help="Stop training after this many minutes, mid-epoch if need be (best "
                        "epoch kept); bounds the refit on train + validation too.")
    b.add_argument("--version", default=None, help="Bundle folder name (default: dataset+time).")
    b.add_argument("--train-users", type=int, default=None,
                   help="Train on a random sample of this many users; the catalogue, "
                        "users.json and evaluation keep every user (large datasets).")
    b.add_argument("--eval-users", type=int, default=None,
                   help="Evaluate on a random sample of this many test users (default: all).")
    b.add_argument("--no-tag-clusters", action="store_true",
                   help="Skip the tag clusters (every tag serves as its own cluster).")

    e = sub.add_parser("evaluate", help="Recompute metrics.json of a bundle.")
    e.add_argument("bundle", help="Bundle folder, or a version under the artifacts dir.")

    t = sub.add_parser("tags", help="(Re)build the tag clusters of an existing bundle.")
    t.add_argument("bundle", help="Bundle folder, or a version under the artifacts dir.")
    t.add_argument("--threshold", type=float, default=None,
                   help="Cosine similarity for joining a cluster (default: docs/tags.md).")

    d = sub.add_parser("data", help="Dataset utilities.")
    dsub = d.add_subparsers(dest="data_command", required=True)
    sy = dsub.add_parser("synth", help="Write a synthetic dataset (custom format) shaped like "
                                       "MicroLens-50k at any size (bench/synthetic.py).")
    from shared.data.synthetic import add_write_args

    add_write_args(sy)
    dl = dsub.add_parser("download", help="Download a dataset from its official source.")
    dl.add_argument("name", help="microlens-50k or ml-latest-small")
    dl.add_argument("--dest", default=None, help="Data folder (default: VIDREC_DATA_DIR).")

    ld = sub.add_parser("load", help="Bulk-load a bundle's users and items into Redis.")
    ld.add_argument("--bundle", default=None, help="Bundle version (default: VIDREC_BUNDLE).")

    s = sub.add_parser("serve", help="Serve the API (all services in one process by default).")
    s.add_argument("service", nargs="?", default="all", choices=SERVICES)
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=None)
    s.add_argument("--workers", type=int, default=1)

    r = sub.add_parser("retrain", help="Build a candidate bundle from the base dataset + the "
                       "event log + items upserted while serving, and gate it against the "
                       "serving bundle (docs/learning_loop.md).")
    r.add_argument("--dataset", required=True, help="The base dataset (as for `vidrec build`).")
    r.add_argument("--serving", default=None,
                   help="The bundle to compare against and warm-start from (default: the "
                   "active one in Redis, else VIDREC_BUNDLE).")
    r.add_argument("--cold", action="store_true", help="Train from scratch (no warm start).")
    r.add_argument("--epochs", type=int, default=None, help="Override training epochs.")
    r.add_argument("--train-minutes", type=float, default=None,
                   help="Stop training after this many minutes (best epoch kept).")
    r.add_argument("--version", default=None, help="Bundle folder name.")
    r.add_argument("--tolerance", type=float, default=None,
                   help="Gate tolerance on NDCG@10 (default: VIDREC_PROMOTION_TOLERANCE).")
    r.add_argument("--promote", action="store_true",
                   help="Promote the candidate when the gate passes.")

    pr = sub.add_parser("promote", help="Make a bundle the active one on every replica "
                        "(refused when its promotion gate said no, unless --force).")
    pr.add_argument("bundle", help="Bundle folder, or a version under the artifacts dir.")
    pr.add_argument("--force", action="store_true",
                    help="Promote even when promotion.json says the gate refused it.")
    sub.add_parser("rollback", help="Make the previously active bundle active again.")

    a = sub.add_parser("archive", help="Copy the events and impressions streams into the event "
                       "log (Parquet, docs/learning_loop.md); serves /metrics on --port.")
    a.add_argument("--host", default="127.0.0.1")
    a.add_argument("--port", type=int, default=DEFAULT_PORTS["archiver"])
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from shared.settings import get_settings

    settings = get_settings()
    if args.command == "build":
        from offline.build import run_build

        run_build(settings, dataset=args.dataset, sample_users=args.sample_users,
                  epochs=args.epochs, train_minutes=args.train_minutes, version=args.version,
                  train_users=args.train_users, eval_users=args.eval_users,
                  tag_clusters=not args.no_tag_clusters)
    elif args.command == "evaluate":
        from offline.evaluate_bundle import evaluate_bundle

        evaluate_bundle(settings, args.bundle)
    elif args.command == "tags":
        _tags(settings, args.bundle, args.threshold)
    elif args.command == "data" and args.data_command == "synth":
        from shared.data.synthetic import run_write

        run_write(args)
    elif args.command == "data":
        from shared.data.download import download

        download(args.name, args.dest or settings.data_dir)
    elif args.command == "load":
        from services.feature_store.loader import load_bundle

        load_bundle(settings, args.bundle or settings.bundle)
    elif args.command == "serve":
        from services.topology import serve

        serve(settings, args.service, args.host, args.port or DEFAULT_PORTS[args.service],
              workers=args.workers)
    elif args.command == "retrain":
        from offline.retrain import run_retrain

        run_retrain(settings, args.dataset, serving=args.serving, warm_start=not args.cold,
                    epochs=args.epochs, train_minutes=args.train_minutes, version=args.version,
                    tolerance=args.tolerance, promote=args.promote)
    elif args.command in ("promote", "rollback"):
        from shared.rollout_cli import promote_command, rollback_command

        if args.command == "promote":
            return promote_command(settings, args.bundle, force=args.force)
        return rollback_command(settings)
    elif args.command == "archive":
        from services.topology import serve

        serve(settings, "archiver", args.host, args.port)
    return 0


def _tags(settings, bundle_arg: str, threshold: float | None) -> None:
    from pathlib import Path

    from offline.tag_clusters import add_to_bundle
    from shared.bundle import resolve_bundle
    from shared.tags import DEFAULT_THRESHOLD

    path = Path(bundle_arg)
    path = path.resolve() if path.is_dir() else resolve_bundle(settings.artifacts_dir, bundle_arg)
    facts = add_to_bundle(path, settings.encoder, Path(settings.artifacts_dir) / ".cache",
                          DEFAULT_THRESHOLD if threshold is None else threshold,
                          settings.candidate_caps["tags"])
    print((path / "tags.md").read_text().split("## A sample")[0])
    print(f"tag clusters written to {path}: {facts}")


if __name__ == "__main__":
    sys.exit(main())
