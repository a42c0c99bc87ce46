"""Commands about data and models rather than runs: download, augment-preview, models."""

from __future__ import annotations

import argparse

from escnet.cli.common import add_config_flags, bars, config_of


def download(args: argparse.Namespace) -> int:
    from escnet.data.download import ESC50_URL, download_esc50

    folder = download_esc50(args.root, args.url or ESC50_URL, args.sha256, progress=bars(args))
    print(f"ESC-50 ready in {folder}; train with: escnet train --data {folder}")
    return 0


def add_download(sub) -> None:
    p = sub.add_parser("download", help="download and verify a dataset")
    p.add_argument("dataset", choices=["esc50"])
    p.add_argument("--root", required=True, help="folder to put the dataset in")
    p.add_argument("--url", help="mirror of the ESC-50 archive (default: the official GitHub one)")
    p.add_argument("--sha256", help="expected checksum of the archive")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=download)


def augment_preview(args: argparse.Namespace) -> int:
    from escnet.reports.preview import preview

    written = preview(args.file, args.out, config_of(args))
    print(f"wrote {len(written)} files to {args.out}: the original and each transform as .wav "
          "and log-mel .png")
    return 0


def add_augment_preview(sub) -> None:
    p = sub.add_parser("augment-preview", help="write a clip under each augmentation "
                       "(audio and log-mel PNG)")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--out", required=True, metavar="DIR")
    add_config_flags(p)
    p.set_defaults(func=augment_preview)


def models(args: argparse.Namespace) -> int:
    if args.pretrained:
        return _cards()
    from escnet.config import TaskConfig
    from escnet.models import count_macs, count_parameters, create_model, list_models, resolve_args

    config = TaskConfig()
    n_mels, frames, classes = config.features.n_mels, config.length, config.model.num_classes
    print(f"at the default settings: {config.data.clip_seconds:g} s clips, {config.data.sample_rate} Hz, "
          f"{n_mels} mels × {frames} frames, {classes} classes")
    print(f"{'model':<10} {'parameters':>13} {'MACs per clip':>15}  arguments (model.args, defaults)")
    for name in list_models():
        model = create_model(name, n_mels=n_mels, frames=frames, num_classes=classes)
        default = "  (default)" if name == config.model.name else ""
        arguments = ", ".join(f"{k}={v}" for k, v in resolve_args(name, {}).items()) or "-"
        print(f"{name:<10} {count_parameters(model):>13,} "
              f"{count_macs(model, n_mels, frames) / 1e9:>11.3f} G  {arguments}{default}")
    return 0


def _cards() -> int:
    from escnet.cards import CARDS
    from escnet.models.classifier import describe_card

    print("pretrained cards (--pretrained NAME sets the model and its front-end; MACs per clip of "
          "the card's length at its front-end)")
    print(f"{'name':<18} {'model':<6} {'parameters':>11} {'GMACs':>7} {'front-end':<22} {'mAP':>5} "
          f"{'digest':<7} on this machine")
    for card in CARDS.values():
        d = describe_card(card)
        audio = f"{d['frontend']} {d['sample_rate'] // 1000} kHz" if d["sample_rate"] else d["frontend"]
        ap = f"{d['audioset_map']:.3f}" if d["audioset_map"] else "-"
        pinned = "pinned" if d["sha256"] else "-"
        print(f"{d['name']:<18} {d['model']:<6} {d['parameters']:>11,} {d['macs'] / 1e9:>7.2f} "
              f"{audio:<22} {ap:>5} {pinned:<7} {d['local'] or '-'}")
    print("a card without a pinned digest needs model.pretrained_sha256 (--set) to be fetched")
    return 0


def add_models(sub) -> None:
    p = sub.add_parser("models", help="list the registered models and their arguments (with "
                       "--pretrained: the pretrained weights escnet knows)")
    p.add_argument("--pretrained", action="store_true", help="list the pretrained cards: weights, "
                   "their model and front-end, size, licence, and whether they are on this machine")
    p.set_defaults(func=models)


COMMANDS = (add_download, add_augment_preview, add_models)
