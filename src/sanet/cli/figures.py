"""`sanet explain` and `sanet figure5`: the paper's Fig. 6 and Fig. 5."""

from __future__ import annotations

import argparse
from pathlib import Path

from sanet._files import ensure_new_file
from sanet.cli.common import (
    add_data_options,
    add_overwrite,
    add_protocol_args,
    check_classes,
    device_name,
    open_dataset,
    parse_floats,
    protocol_from_args,
)
from sanet.errors import UsageError


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register the figure subcommands on the `sanet` parser."""
    p = sub.add_parser("explain", help="SA attention maps of head 1 and 4 at a pixel (Fig. 6)")
    p.add_argument("--checkpoint", required=True, help="run dir, .pt or save_pretrained folder")
    p.add_argument("image", type=Path)
    p.add_argument("--point", required=True, metavar="X,Y", help="pixel column,row")
    p.add_argument("--out", type=Path, required=True, metavar="FILE.png")
    add_overwrite(p, "--out if it exists")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if any)")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser(
        "figure5", help="rows of input / ground truth / baseline / SANet panels (Fig. 5)"
    )
    add_protocol_args(p)
    p.add_argument("--baseline", required=True, help="the baseline (FCN) checkpoint")
    p.add_argument("--data", required=True, metavar="KIND:PATH")
    add_data_options(p)
    p.add_argument("--split", default="val")
    p.add_argument("--indices", default="0,1,2,3", help="comma-separated image indices")
    p.add_argument("--out", type=Path, required=True, metavar="FILE.png")
    add_overwrite(p, "--out if it exists")
    p.set_defaults(func=cmd_figure5)


# ---------------------------------------------------------------------------------------------
# sanet explain (Fig. 6) and sanet figure5
# ---------------------------------------------------------------------------------------------


def _parse_point(text: str) -> tuple[int, int]:
    try:
        x, y = (int(v) for v in text.split(","))
    except ValueError:
        raise UsageError(f"--point must be X,Y in pixels (column,row), got {text!r}.") from None
    return x, y


def cmd_explain(args: argparse.Namespace) -> int:
    from sanet.inference.predictor import image_to_tensor, normalize
    from sanet.models.registry import load_model
    from sanet.viz.figures import attention_maps, plot_attention_maps

    point = _parse_point(args.point)
    ensure_new_file(args.out, "--out", args.overwrite, "figure.png")
    device = device_name(args.device)
    model, _ = load_model(args.checkpoint, map_location="cpu")
    model = model.to(device).eval()
    image = image_to_tensor(args.image)
    maps = attention_maps(model, normalize(image, device), point)
    plot_attention_maps(image, maps, point, args.out)
    print(f"Wrote {args.out}")
    return 0


def cmd_figure5(args: argparse.Namespace) -> int:
    from sanet.inference.predictor import Predictor
    from sanet.viz.figures import plot_figure5

    protocol = protocol_from_args(args)
    ensure_new_file(args.out, "--out", args.overwrite, "figure.png")
    device = device_name(args.device)
    dataset = open_dataset(args.data, args.split, args.data_options)
    indices = [int(v) for v in parse_floats(args.indices, "--indices")]
    if not indices or any(not 0 <= i < len(dataset) for i in indices):
        raise UsageError(f"--indices must lie in 0..{len(dataset) - 1}, got {args.indices!r}.")
    sanet_p = Predictor(args.checkpoint, device=device, protocol=protocol)
    base_p = Predictor(args.baseline, device=device, protocol=protocol)
    for name, p in (("--checkpoint", sanet_p), ("--baseline", base_p)):
        check_classes(p.model, dataset, f"{name} {getattr(args, name[2:])}")
    images, targets, base, ours = [], [], [], []
    for i in indices:
        image, mask = dataset[i]
        images.append(image)
        targets.append(mask.numpy())
        base.append(base_p.predict(image))
        ours.append(sanet_p.predict(image))
    plot_figure5(images, targets, base, ours, args.out, palette=dataset.palette)
    print(f"Wrote {args.out}")
    return 0
