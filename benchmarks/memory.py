"""Peak activation memory of one training step: Forward-Forward against backprop, with and without the usual savings.

    python benchmarks/memory.py --model deeperforward_resnet17 --batch-size 128 --json
    python benchmarks/memory.py --model dtg_vgg8 --device cuda

For one batch of random inputs, every method trains the same freshly built network (same seed) for one warm-up step,
then one measured step:

* ``ff``: :class:`ffkit.LocalTrainer`, layer by layer (each layer's graph is freed before the next layer runs);
* ``bp``: :class:`ffkit.BackpropTrainer`, BP-DeepSup on the same network (every layer's loss, end to end);
* ``bp_single_head``: the same with ``deep_supervision=False`` (the last layer's loss only);
* ``bp_accum``: BP-DeepSup with ``--accumulation-steps`` micro-batches;
* ``bp_checkpoint``: BP-DeepSup with every layer checkpointed (``torch.utils.checkpoint``, non-reentrant).

The figure on every device is the peak number of bytes autograd holds for backward
(:class:`ffkit.profiling.SavedTensorMeter`, parameters excluded, each storage counted once). On CUDA the peak of
``torch.cuda.max_memory_allocated`` over the step, above what was allocated before it, is reported too (it also counts
gradients, optimizer state and temporaries).

Checkpointing caveat: the tensors a checkpointed layer recomputes during backward are held through checkpoint's own
saved-tensor hooks, which the meter cannot see (it sees each layer's saved inputs only). ``bp_checkpoint_peak_bytes``
is therefore an upper bound: the meter's peak plus the largest single layer's saved bytes (measured layer by layer in
a plain backprop forward), since at most one layer is recomputed at a time.

Prints a table, then the JSON object as the last line (``--json``), and writes it to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

import ffkit
from ffkit.models import create_model, list_models
from ffkit.profiling import SavedTensorMeter
from ffkit.train import BackpropTrainer, LocalTrainer

METHODS = ("ff", "bp", "bp_single_head", "bp_accum", "bp_checkpoint")


def _batch(net, batch_size: int, device: torch.device, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random inputs ``[B, C, H, W]`` of the shape the network expects (32 x 32 unless it says otherwise), labels
    ``[B]`` and dataset indices ``[B]`` (for samplers of fixed negatives)."""
    g = torch.Generator().manual_seed(seed)
    h, w = net.input_size or (32, 32)
    x = torch.rand(batch_size, net.in_channels, h, w, generator=g)
    y = torch.randint(0, net.num_classes, (batch_size,), generator=g)
    return x.to(device), y.to(device), torch.arange(batch_size)


def _fresh(name: str, seed: int):
    torch.manual_seed(seed)
    return create_model(name)


def _make_trainer(method: str, net, device: torch.device, accumulation_steps: int):
    common = {"lr": 1e-3, "schedule": "constant", "device": device}
    if method == "ff":
        return LocalTrainer(net, **common)
    kwargs = {
        "bp": {},
        "bp_single_head": {"deep_supervision": False},
        "bp_accum": {"accumulation_steps": accumulation_steps},
        "bp_checkpoint": {"checkpoint": True},
    }[method]
    return BackpropTrainer(net, **common, **kwargs)


def measure_step(trainer, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor, seed: int) -> dict[str, int]:
    """One warm-up step, then one measured step: the saved-tensor peak (and the CUDA allocator's on CUDA)."""
    torch.manual_seed(seed)
    trainer.train_step(x, y, index)  # allocates gradients and optimizer state, so the measured step is steady
    cuda = x.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(x.device)
        torch.cuda.reset_peak_memory_stats(x.device)
        before = torch.cuda.memory_allocated(x.device)
    torch.manual_seed(seed)
    with SavedTensorMeter(exclude=trainer.network.parameters()) as meter:
        trainer.train_step(x, y, index)
    result = {"peak_bytes": meter.peak, "left_bytes": meter.current}
    if cuda:
        torch.cuda.synchronize(x.device)
        result["cuda_peak_bytes"] = torch.cuda.max_memory_allocated(x.device) - before
    return result


def per_layer_saved_bytes(net, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor, *, local: bool) -> list[int]:
    """Bytes each layer saves for backward in one training forward, layer by layer (loss included).

    ``local=True``: as Forward-Forward trains it (detached input; the layer's loss is back-propagated and its graph
    freed before the next layer). ``local=False``: in an end-to-end forward (what a checkpointed layer recomputes).
    """
    params = list(net.parameters())
    net.train()
    batch = net.objective.prepare(net, x, y, index)
    layers = net.iter_layers(batch.inputs, detach=local)
    sizes, graphs = [], []
    for _ in range(len(net)):
        with SavedTensorMeter(exclude=params) as meter:
            _, out = next(layers)
            loss, _ = net.objective.layer_loss(out, batch)
        sizes.append(meter.peak)
        if local:
            loss.backward()
            del out, loss
        else:
            graphs.append(loss)  # keep the end-to-end graph, as backprop does
    del graphs
    net.zero_grad(set_to_none=True)
    return sizes


def run(name: str, batch_size: int, device: torch.device, accumulation_steps: int, seed: int,
        log: Callable[[str], None] = print) -> dict:
    """Measure every method on model ``name``; return the result record."""
    results: dict[str, dict[str, int]] = {}
    x = y = index = None
    for method in METHODS:
        net = _fresh(name, seed)
        if x is None:
            x, y, index = _batch(net, batch_size, device, seed)
        trainer = _make_trainer(method, net, device, accumulation_steps)
        start = time.perf_counter()
        results[method] = measure_step(trainer, x, y, index, seed)
        log(f"  {method:<15} measured in {time.perf_counter() - start:.1f} s")
        del trainer, net
        if device.type == "cuda":
            torch.cuda.empty_cache()
    net = _fresh(name, seed).to(device)
    ff_layers = per_layer_saved_bytes(net, x, y, index, local=True)
    bp_layers = per_layer_saved_bytes(net, x, y, index, local=False)
    ckpt_seen = results["bp_checkpoint"]["peak_bytes"]
    record = {
        "model": name,
        "batch_size": batch_size,
        "device": str(device),
        "accumulation_steps": accumulation_steps,
        "seed": seed,
        "torch": torch.__version__,
        "ffkit": ffkit.__version__,
        "threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "parameters": sum(p.numel() for p in net.parameters()),
        "layers": len(net),
        "ff_peak_bytes": results["ff"]["peak_bytes"],
        "bp_peak_bytes": results["bp"]["peak_bytes"],
        "bp_single_head_peak_bytes": results["bp_single_head"]["peak_bytes"],
        "bp_accum_peak_bytes": results["bp_accum"]["peak_bytes"],
        "bp_checkpoint_peak_bytes": ckpt_seen + max(bp_layers),
        "bp_checkpoint_meter_peak_bytes": ckpt_seen,
        "ff_layer_peak_bytes": ff_layers,
        "ff_layer_max_bytes": max(ff_layers),
        "bp_layer_saved_bytes": bp_layers,
    }
    bp = record["bp_peak_bytes"]
    record["ff_over_bp"] = record["ff_peak_bytes"] / bp
    record["ff_over_bp_single_head"] = record["ff_peak_bytes"] / record["bp_single_head_peak_bytes"]
    record["bp_single_head_over_bp"] = record["bp_single_head_peak_bytes"] / bp
    record["bp_accum_over_bp"] = record["bp_accum_peak_bytes"] / bp
    record["bp_checkpoint_over_bp"] = record["bp_checkpoint_peak_bytes"] / bp
    if device.type == "cuda":
        for method in METHODS:
            record[f"{method}_cuda_peak_bytes"] = results[method]["cuda_peak_bytes"]
        record["ff_over_bp_cuda"] = record["ff_cuda_peak_bytes"] / record["bp_cuda_peak_bytes"]
    leaks = {m: r["left_bytes"] for m, r in results.items() if r["left_bytes"]}
    record["notes"] = [
        "peak_bytes: peak bytes held by autograd for backward during one training step (SavedTensorMeter: "
        "torch.autograd.graph.saved_tensors_hooks, parameters excluded, each storage counted once), after a "
        "warm-up step",
        "bp_checkpoint_peak_bytes is an upper bound: the meter's peak (bp_checkpoint_meter_peak_bytes: each "
        "checkpointed layer's saved inputs and the losses) plus the largest layer's saved bytes "
        "(max(bp_layer_saved_bytes)), because non-reentrant torch.utils.checkpoint holds the tensors it recomputes "
        "in backward through its own hooks, which the meter cannot see; at most one layer is recomputed at a time",
        f"bp_accum: {accumulation_steps} micro-batches of ~{-(-batch_size // accumulation_steps)} samples, one "
        f"optimizer step",
    ]
    if device.type == "cuda":
        record["notes"].append(
            "*_cuda_peak_bytes: torch.cuda.max_memory_allocated over the measured step minus the memory allocated "
            "before it (activations, gradients, temporaries; parameters and optimizer state excluded)"
        )
    if record["ff_peak_bytes"] > record["ff_layer_max_bytes"]:
        record["notes"].append(
            "ff_peak_bytes exceeds the largest single layer's (ff_layer_max_bytes): the trainer keeps part of a "
            "layer's graph alive while the next layer runs"
        )
    if leaks:
        record["notes"].append(f"bytes still held for backward after the step (expected 0): {leaks}")
    return record


def _mib(n: int) -> str:
    return f"{n / 2**20:9.1f}"


def table(record: dict) -> str:
    cuda = "bp_cuda_peak_bytes" in record
    bp = record["bp_peak_bytes"]
    rows = [
        f"{record['model']}, batch {record['batch_size']}, {record['device']}: peak bytes held for backward",
        f"{'method':<26} {'MiB':>9} {'/ BP':>6}" + (f" {'CUDA MiB':>9}" if cuda else ""),
    ]
    labels = {
        "ff": "FF (LocalTrainer)",
        "bp": "BP-DeepSup",
        "bp_single_head": "BP single-head",
        "bp_accum": f"BP + accumulation x{record['accumulation_steps']}",
        "bp_checkpoint": "BP + checkpointing (bound)",
    }
    for method, label in labels.items():
        n = record[f"{method}_peak_bytes"]
        line = f"{label:<26} {_mib(n)} {n / bp:6.3f}"
        if cuda:
            line += f" {_mib(record[f'{method}_cuda_peak_bytes'])}"
        rows.append(line)
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    models = list_models("ff")
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="deeperforward_resnet17", choices=models, metavar="MODEL",
                   help=f"a registered FF model: {', '.join(models)}")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--accumulation-steps", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the JSON record as the last line")
    p.add_argument("--out", default=None,
                   help="JSON file (default: benchmarks/results/memory-{model}-b{batch}-{device}.json)")
    args = p.parse_args(argv)
    if args.batch_size < 1:
        p.error(f"--batch-size must be >= 1, got {args.batch_size}")
    if not 1 <= args.accumulation_steps <= args.batch_size:
        p.error(f"--accumulation-steps must be in [1, batch size {args.batch_size}], got {args.accumulation_steps}")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: CUDA is not available")
    device = torch.device(args.device)
    print(f"measuring {args.model} at batch {args.batch_size} on {device}", flush=True)
    record = run(args.model, args.batch_size, device, args.accumulation_steps, args.seed)
    print(table(record))
    if args.out:  # results are written only where asked
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(record, indent=1) + "\n")
        print(f"wrote {out}")
    if args.json:
        print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
