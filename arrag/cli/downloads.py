"""`arrag download ...`: pinned, resumable, verified downloads (files, hub models and datasets, ModelScope
models, the scorers' weights, MJHQ-30K), each from a local mirror folder where one is given. The only commands
that reach the network."""

from __future__ import annotations

import json

LOCK_HELP = "lock file: written by the first download (commit + SHA-256 of each file), enforced by every later one"


def register(sub) -> None:
    download = sub.add_parser("download", help="pinned downloads (resumable, verified, atomic)")
    download = download.add_subparsers(dest="download", required=True)
    for add in (
        add_download_file,
        add_download_model,
        add_download_dataset,
        add_download_modelscope,
        add_download_geneval_detector,
        add_download_inception,
        add_download_mjhq,
    ):
        add(download)


def add_download_file(sub) -> None:
    p = sub.add_parser("file", help="one file by URL, checked against its SHA-256 (or published prefix)")
    p.add_argument("--url", required=True)
    p.add_argument("--sha256", default=None, help="expected SHA-256, full or a published prefix")
    p.add_argument("--mirror", default=None, help="local folder holding the file under its URL's name")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_download_file)


def cmd_download_file(args) -> None:
    from arrag.data.downloads import fetch, sha256_of

    path = fetch(args.url, args.out, sha256=args.sha256, mirror=args.mirror)
    print(f"{path}  sha256 {sha256_of(path)}" + ("" if args.sha256 else "  (not pinned: pin this digest)"))


def add_download_model(sub) -> None:
    p = sub.add_parser("model", help="a hub model snapshot at a pinned commit (safetensors and configs only)")
    p.add_argument("--hub-id", required=True, help="e.g. deepseek-community/Janus-Pro-1B")
    p.add_argument("--revision", required=True, help="40-hex-digit commit, or a branch locked by --lock")
    p.add_argument("--include", nargs="+", default=None, help="file patterns (default: safetensors and configs)")
    p.add_argument("--sha256", action="append", default=[], help="FILE=DIGEST: a file's pinned SHA-256")
    p.add_argument("--lock", default=None, help=LOCK_HELP)
    p.add_argument("--mirror", default=None, help="local folder holding <org>--<name>/ snapshots")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_download_model)


def cmd_download_model(args) -> None:
    from arrag.data.downloads import download_model

    pins = dict(pin.partition("=")[::2] for pin in args.sha256)
    print(download_model(args.hub_id, args.revision, args.out, args.mirror, args.include, args.lock, pins))


def add_download_dataset(sub) -> None:
    p = sub.add_parser("dataset", help="hub dataset files (WebDataset tars, parquet) at a pinned commit, hash-checked")
    p.add_argument("--repo", required=True, help="e.g. pixparse/cc12m-wds")
    p.add_argument("--revision", required=True, help="40-hex-digit commit")
    p.add_argument("--include", nargs="+", required=True, help="file patterns, e.g. 'cc12m-train-00*.tar'")
    p.add_argument("--lock", default=None, help=LOCK_HELP)
    p.add_argument("--mirror", default=None, help="local folder holding <org>--<name>/ copies")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_download_dataset)


def cmd_download_dataset(args) -> None:
    from arrag.data.downloads import download_dataset

    print(download_dataset(args.repo, args.revision, args.include, args.out, mirror=args.mirror, lock=args.lock))


def add_download_modelscope(sub) -> None:
    p = sub.add_parser("modelscope", help="every file of a ModelScope model (DPG-Bench's mPLUG), locked")
    p.add_argument("--model-id", required=True, help="e.g. damo/mplug_visual-question-answering_coco_large_en")
    p.add_argument("--revision", required=True, help="a ModelScope tag or branch, e.g. master")
    p.add_argument("--lock", default=None, help=LOCK_HELP)
    p.add_argument("--mirror", default=None, help="local folder holding <org>--<name>/ copies")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_download_modelscope)


def cmd_download_modelscope(args) -> None:
    from arrag.data.downloads import download_modelscope

    print(download_modelscope(args.model_id, args.revision, args.out, mirror=args.mirror, lock=args.lock))


def add_download_geneval_detector(sub) -> None:
    p = sub.add_parser("geneval-detector", help="GenEval's Mask2Former checkpoint (OpenMMLab, SHA-256 prefix)")
    p.add_argument("--mirror", default=None, help="local folder holding the checkpoint under its URL's file name")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_download_geneval_detector)


def cmd_download_geneval_detector(args) -> None:
    from arrag.data.downloads import fetch
    from arrag.evaluation.geneval_mask2former import CHECKPOINT_SHA256_PREFIX, CHECKPOINT_URL

    print(fetch(CHECKPOINT_URL, args.out, sha256=CHECKPOINT_SHA256_PREFIX, mirror=args.mirror))


def add_download_inception(sub) -> None:
    p = sub.add_parser("inception", help="FID's Inception weights (clean-fid's file, SHA-256 pinned)")
    p.add_argument("--mirror", default=None, help="local folder holding inception-2015-12-05.pt")
    p.add_argument("--out", required=True, help="file path or folder")
    p.set_defaults(func=cmd_download_inception)


def cmd_download_inception(args) -> None:
    from arrag.evaluation.features import download_inception

    print(download_inception(args.out, mirror=args.mirror))


def add_download_mjhq(sub) -> None:
    p = sub.add_parser("mjhq", help="MJHQ-30K's metadata and images from the Hugging Face Hub")
    p.add_argument("--revision", default=None, help="dataset commit (default: resolve main now and record it)")
    p.add_argument("--mirror", default=None, help="local folder holding meta_data.json and mjhq30k_imgs.zip")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_download_mjhq)


def cmd_download_mjhq(args) -> None:
    from arrag.data.mjhq import download_mjhq

    print(json.dumps(download_mjhq(args.out, revision=args.revision, mirror=args.mirror), indent=2))
