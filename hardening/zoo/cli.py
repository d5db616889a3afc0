"""``diehard zoo list|import``: the benchmark suite's models, and its released weights as checkpoint folders.

``import`` reads a released checkpoint (``.th`` legacy pickles with a ``module.`` prefix as ``ResNet20.th``,
``.pt``/``.pth`` zip files, a bare state dict or one under ``state_dict``/``model``/``net``) with
``torch.load(weights_only=True)``, so a file that needs arbitrary code to load is refused, checks every tensor
name and shape against the zoo model, and writes a checkpoint folder (``config.json`` + ``model.pt``) that
``golden``, ``run``, ``evaluate``, ``sfi`` and ``select`` take. Its config records the suite's fixed input
normalisation and where the weights came from (file, sha256, the extra entries of the file such as
``best_prec1``).
"""

from __future__ import annotations

import json
import pickle
import re
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from diehardlab.cli import make_parser, run_action
from diehardlab.errors import ConfigError, DataError

USAGE = """\
diehard zoo list [--json]
diehard zoo import WEIGHTS --arch NAME --dataset NAME --out CKPT_DIR [--data-dir DIR] [--numerics N]"""

_STATE_KEYS = ("state_dict", "model_state_dict", "model", "net", "weights")
_PREFIXES = ("module.", "_orig_mod.")


def _layer_counts(model) -> tuple[int, int]:
    from torch import nn

    convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    linears = sum(isinstance(m, nn.Linear) for m in model.modules())
    return convs, linears


def cmd_list(argv: Sequence[str]) -> int:
    import torch
    from diehardlab.hardening.zoo import ENTRIES, build

    p = make_parser("zoo list", "The benchmark suite's models: datasets, parameter and layer counts, normalisation.")
    p.add_argument("--json", action="store_true", help="print the table as JSON")
    args = p.parse_args(argv)
    rows = []
    for e in ENTRIES.values():
        with torch.device("meta"):  # shapes only: nothing is allocated
            convs, linears = _layer_counts(build(e.name))
        mean, std = e.normalisation
        rows.append(
            {
                "model": e.name,
                "classes": e.num_classes,
                "image_size": e.image_size,
                "parameters": e.parameters,
                "convs": convs,
                "linears": linears,
                "table_v_faults": e.table_v,
                "suite_top1_pct": e.suite_top1,
                "weights": e.weights,
                "fault_list": e.fault_list,
                "mean": list(mean),
                "std": list(std),
            }
        )
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(
        f"{'model':<22} {'classes':>7} {'input':>7} {'parameters':>12} {'conv+lin':>9} {'list rows':>9} "
        f"{'top-1 %':>7}  weights"
    )
    for r in rows:
        print(
            f"{r['model']:<22} {r['classes']:>7} {r['image_size']:>4}x{r['image_size']:<2} {r['parameters']:>12,} "
            f"{r['convs']:>5}+{r['linears']:<3} {r['table_v_faults'] or '-':>9} {r['suite_top1_pct']:>7}  "
            f"{r['weights'] or '-'}"
        )
    print("\ninput normalisation (the suite's; GTSRB images resized to 50x50):")
    seen = set()
    for r in rows:
        d = r["model"].split("/")[0]
        if d not in seen:
            seen.add(d)
            print(f"  {d:<9} mean {tuple(r['mean'])}  std {tuple(r['std'])}")
    return 0


def _refusal(exc: Exception) -> str:
    """What torch's weights-only unpickler refused, without its advice to load with weights_only=False."""
    m = re.search(r"GLOBAL ([\w.]+)", str(exc))
    return f"it needs the Python object {m.group(1)} to load" if m else f"it is not a plain tensor file ({exc})"


def read_weights(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(state dict with plain names, the file's other entries) of a released checkpoint; weights_only."""
    import torch

    if not path.is_file():
        raise DataError(f"{path}: no such weights file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise DataError(
            f"{path}: refused: {_refusal(exc)}; only tensors, dicts and numbers are loaded, never code. Save the "
            "weights as a state dict (torch.save(model.state_dict(), FILE)) and import that"
        ) from None
    except (RuntimeError, EOFError, ValueError, OSError, AttributeError, TypeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{path}: not a readable torch checkpoint ({reason})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    extra: dict[str, Any] = {}
    state = obj
    for key in _STATE_KEYS:
        if isinstance(obj.get(key), dict):
            state = obj[key]
            extra = {k: v for k, v in obj.items() if k != key}
            break
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DataError(f"{path}: no state dict of tensors in it (keys: {', '.join(list(map(str, obj))[:6])})")
    for prefix in _PREFIXES:
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state, extra


def _plain(v: Any) -> Any:
    """A JSON-able copy of a checkpoint's extra entry (numbers, strings; tensors as numbers when scalar)."""
    import torch

    if isinstance(v, torch.Tensor):
        return v.item() if v.numel() == 1 else f"tensor{tuple(v.shape)}"
    if isinstance(v, (int, float, str, bool)) or v is None:
        return v
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items() if not isinstance(x, dict) or len(x) < 20}
    if isinstance(v, (list, tuple)) and len(v) < 20:
        return [_plain(x) for x in v]
    return type(v).__name__


def check_state(model, state: dict[str, Any], source: Path, name: str) -> None:
    """Refuse weights that do not fit the model, listing the missing, unexpected and mismatched tensors."""
    own = model.state_dict()
    # BN's batch counter is not in checkpoints older than torch 0.4.1 (ResNet20.th); torch fills it in itself
    missing = [k for k in own if k not in state and not k.endswith(".num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    wrong = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape differs", wrong)):
        if items:
            problems.append(f"{len(items)} {label}: {', '.join(items[:4])}{' ...' if len(items) > 4 else ''}")
    if problems:
        raise DataError(f"{source}: does not fit zoo model {name} ({'; '.join(problems)}); check --arch and --dataset")


def import_weights(
    weights: Path, arch: str, dataset: str, out: Path, name: str | None = None
) -> tuple[Any, dict[str, Any]]:
    """Write the checkpoint folder ``out`` for ``weights``; returns (the loaded model, its config)."""
    import torch
    from diehardlab.hardening.checkpoint import CONFIG, MODEL, file_sha256, save_config, save_model
    from diehardlab.hardening.models import ModelConfig
    from diehardlab.hardening.zoo import build, resolve

    from diehardlab import __version__

    e = resolve(arch, dataset)
    if (out / MODEL).exists() or (out / CONFIG).exists():
        raise ConfigError(f"--out: {out} already holds a checkpoint; choose another folder")
    state, extra = read_weights(weights)
    model = build(e.name)
    check_state(model, state, weights, e.name)
    model.load_state_dict(state)
    model.eval()
    floats = [k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if floats:
        raise DataError(f"{weights}: non-finite values in {', '.join(floats[:3])}; not usable as a reference model")
    mean, std = e.normalisation
    config = {
        "name": name or f"suite-{e.dataset}-{e.arch}",
        "dataset": e.dataset,
        "data_dir": "",
        "model": ModelConfig(arch=e.name).to_dict(),
        "in_channels": 3,
        "num_classes": e.num_classes,
        "image_size": e.image_size,
        # fixed: every command normalises this model's inputs with these, not with training-split statistics
        "normalisation": {"mean": list(mean), "std": list(std), "fixed": True, "source": "benchmark suite README"},
        "source": {
            "weights": str(weights.resolve()),
            "sha256": file_sha256(weights),
            "entries": {str(k): _plain(v) for k, v in extra.items()},
            "imported_utc": datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
        },
        "diehardlab_version": __version__,
        "torch_version": torch.__version__,
    }
    # model.pt first, config.json last: a folder with a config is a complete checkpoint
    out.mkdir(parents=True, exist_ok=True)
    save_model(out, model)
    save_config(out, config)
    return model, config


def cmd_import(argv: Sequence[str]) -> int:
    import torch
    from diehardlab.hardening.data import fixed_normalisation, load_dataset
    from diehardlab.hardening.numerics import add_numerics_arg, numerics, parse_numerics
    from diehardlab.hardening.zoo import resolve

    p = make_parser(
        "zoo import",
        "Turn a released checkpoint of the benchmark suite into a diehardlab checkpoint folder.\n"
        "Example: diehard zoo import ResNet20.th --arch resnet20 --dataset cifar10 --out ckpt/suite-r20",
    )
    p.add_argument("weights", type=Path, help="the released weights (.th, .pt, .pth or a state dict file)")
    p.add_argument("--arch", required=True, help="architecture: resnet20, mobilenetv2, vgg11_bn, densenet121, ...")
    p.add_argument("--dataset", required=True, help="cifar10, cifar100 or gtsrb")
    p.add_argument("--out", type=Path, required=True, help="checkpoint folder to write")
    p.add_argument("--name", help="name recorded in config.json (default suite-<dataset>-<arch>)")
    p.add_argument(
        "--data-dir",
        type=Path,
        help="then print the top-1 accuracy on this dataset's test split (a folder of labelled images works)",
    )
    add_numerics_arg(p)
    args = p.parse_args(argv)
    e = resolve(args.arch, args.dataset)
    policy = parse_numerics(args.numerics)
    model, config = import_weights(args.weights, args.arch, args.dataset, args.out, args.name)
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"imported {args.weights} into {e.name} ({n_params:,} parameters; the suite's Table IV says "
        f"{e.parameters:,}) -> {args.out}"
    )
    entries = config["source"]["entries"]
    if entries:
        print(f"  the file also holds: {', '.join(f'{k}={v}' for k, v in entries.items())}")
    if args.data_dir:
        ds = load_dataset(e.dataset, "test", args.data_dir, fixed_normalisation(config))
        with torch.no_grad(), numerics(model, policy, "cpu") as applied:
            pred = torch.cat([model(ds.x[i : i + 256]).argmax(1) for i in range(0, len(ds), 256)])
        right = int((pred == ds.y).sum())
        print(
            f"top-1 on the {len(ds)} {e.dataset} test images in {args.data_dir}: {right}/{len(ds)} = "
            f"{100 * right / len(ds):.2f} % (numerics {applied.summary()}; the suite reports {e.suite_top1} % "
            f"on the full test set)"
        )
        print("  predicted: " + " ".join(str(v) for v in pred.tolist()[:40]) + (" ..." if len(ds) > 40 else ""))
        print("  labels:    " + " ".join(str(v) for v in ds.y.tolist()[:40]) + (" ..." if len(ds) > 40 else ""))
    return 0


def main(argv: Sequence[str]) -> int:
    return run_action("zoo", argv, {"list": cmd_list, "import": cmd_import}, USAGE)
