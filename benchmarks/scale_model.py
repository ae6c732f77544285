"""A cost model of FF and backprop training on 1-64 devices under data, pipeline and hybrid parallelism.

    python benchmarks/scale_model.py --model deeperforward_resnet17 --batch-size 128 --bandwidth 10e9 --json

From measured per-layer step times and gradient sizes (or a profile saved with ``--save-profile``) and a link
(``--bandwidth`` bytes/s, ``--latency`` s per message), it predicts the time of one global batch of ``--batch-size``
samples and the throughput. Every assumption is in the code below and in ``docs/scaling.md``:

* **Compute** of a layer scales linearly with the samples it gets (``t_l(b) = t_l(B) b / B``): no device becomes
  less efficient on a smaller share (on GPUs it does, below some batch; the model says nothing there).
* **Backprop** layers cost ``bp_factor`` times the FF layer (the ratio of the two measured steps on the same network,
  both with every layer's loss), a third forward and two thirds backward; backprop's backward runs from the last
  layer to the first.
* **Data parallel** over ``D`` devices: ring all-reduce of a layer's gradients, ``2 (D - 1) / D * bytes / bandwidth +
  2 (D - 1) * latency``, one exchange at a time on the link. FF starts layer ``l``'s exchange when its backward ends
  (``DataParallelTrainer``) and the step ends when both the compute and the last exchange have; backprop (DDP) starts
  a layer's exchange when its gradient is ready in the backward pass.
* **Pipeline** of ``S`` stages (whole layers, ``ffkit.train.balance.balance_stages``): FF's step is its slowest
  stage, including sending that stage's output (``output_bytes / bandwidth``), plus the fill and drain of ``S - 1``
  steps spread over the ``--batches`` of an epoch. Backprop is a GPipe schedule of ``--micro-batches`` micro-batches
  per batch (bubble ``(S - 1) / (M + S - 1)``, forward and backward sends).
* **Hybrid** ``D x S``: every stage replicated ``D`` times on ``B / D`` samples, each stage's gradients all-reduced
  among its replicas as in data parallelism; the best factorisation of the device count is reported.

``--calibrate-ff SECONDS`` / ``--calibrate-bp SECONDS`` scale the measured per-layer times so that one device takes
that long per batch (e.g. from a paper's per-epoch time on its GPU), keeping their proportions.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit, machine_info, make_batch  # noqa: E402

import ffkit  # noqa: E402
from ffkit.train import BackpropTrainer, LocalTrainer  # noqa: E402
from ffkit.train.balance import balance_stages, profile_layers  # noqa: E402

DEVICES = (1, 2, 4, 8, 16, 32, 64)


# -- measuring --------------------------------------------------------------------------------------------------
def measure(args: argparse.Namespace) -> dict:
    """Per-layer FF step seconds and output bytes (profile_layers), gradient bytes, and the backprop/FF step ratio."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    net = ffkit.models.create_model(args.model)
    trainer = LocalTrainer(net, schedule="constant", device=args.device)
    x, y = make_batch(net, args.batch_size, args.seed)
    costs = profile_layers(trainer, x, y, steps=args.steps, warmup=1)
    grad_bytes = [sum(p.numel() * p.element_size() for p in layer.parameters() if p.requires_grad)
                  for layer in net.layers]

    def median_step(t) -> float:
        t.train_step(x, y)  # warm-up
        times = []
        for _ in range(args.steps):
            start = time.perf_counter()
            t.train_step(x, y)
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    torch.manual_seed(args.seed)
    ff = median_step(LocalTrainer(ffkit.models.create_model(args.model), schedule="constant", device=args.device))
    torch.manual_seed(args.seed)
    bp = median_step(BackpropTrainer(ffkit.models.create_model(args.model), schedule="constant", device=args.device))
    return {"model": args.model, "batch_size": args.batch_size, "seconds": list(costs.seconds),
            "output_bytes": list(costs.output_bytes), "grad_bytes": grad_bytes, "ff_step": ff, "bp_step": bp,
            "bp_factor": bp / ff, "machine": machine_info()}


# -- the model ------------------------------------------------------------------------------------------------------
def ring(nbytes: float, devices: int, bandwidth: float, latency: float) -> float:
    """Seconds of a ring all-reduce of ``nbytes`` over ``devices``."""
    if devices == 1 or nbytes == 0:
        return 0.0
    return 2 * (devices - 1) / devices * nbytes / bandwidth + 2 * (devices - 1) * latency


#: Whether an exchange can run while the device computes (GPUs: yes, NCCL has its own engines; a CPU whose cores all
#: compute: no, the exchange needs them too). ``--no-overlap`` sets it to False.
OVERLAP = True


def overlapped(compute: list[float], grads: list[float], devices: int, link: tuple[float, float]) -> float:
    """End of a step whose layer ``l``'s exchange starts when ``compute[:l + 1]`` is done, one exchange at a time
    (without overlap: after all of the compute)."""
    if not OVERLAP:
        return sum(compute) + sum(ring(g, devices, *link) for g in grads)
    done = comm_end = 0.0
    for c, g in zip(compute, grads):
        done += c
        comm_end = max(done, comm_end) + ring(g, devices, *link)
    return max(done, comm_end)


def data_parallel(p: dict, devices: int, link: tuple[float, float], engine: str) -> float:
    share = 1.0 / devices
    if engine == "ff":
        return overlapped([t * share for t in p["seconds"]], p["grad_bytes"], devices, link)
    layer = [t * p["bp_factor"] * share for t in p["seconds"]]
    forward = sum(layer) / 3  # then the backward, last layer first: gradients ready in reverse order
    return forward + overlapped([t * 2 / 3 for t in reversed(layer)], list(reversed(p["grad_bytes"])), devices, link)


def pipeline(p: dict, stages: int, link: tuple[float, float], engine: str, batches: int, micro: int,
             replicas: int = 1) -> float:
    """Seconds per batch, over an epoch of ``batches`` batches, through ``stages`` stages of whole layers, each
    replicated ``replicas`` times on its share of the batch."""
    bandwidth, latency = link
    bp = engine == "bp"
    seconds = [t / replicas * (p["bp_factor"] if bp else 1.0) for t in p["seconds"]]
    out = [b / replicas * (2 if bp else 1) for b in p["output_bytes"]]  # backprop also sends gradients back
    starts = balance_stages(seconds, stages, output_bytes=out, bytes_per_second=bandwidth)
    cuts = [int(s) for s in starts] + [len(seconds)]
    spans = list(zip(cuts, cuts[1:]))
    send = [out[b - 1] / bandwidth + latency for _, b in spans[:-1]] + [0.0]
    if not bp:  # each stage's layers exchange their gradients among the replicas behind the stage's later layers
        per = [overlapped(seconds[a:b], p["grad_bytes"][a:b], replicas, link) + s for (a, b), s in zip(spans, send)]
        return max(per) * (batches + stages - 1) / batches
    # GPipe: M micro-batches forward then backward, then the replicas' all-reduce of each stage
    compute = [sum(seconds[a:b]) + s for (a, b), s in zip(spans, send)]
    sync = [ring(sum(p["grad_bytes"][a:b]), replicas, *link) for a, b in spans]
    return max(compute) / micro * (micro + stages - 1) + max(sync)


def predict(p: dict, args: argparse.Namespace) -> dict:
    link = (args.bandwidth, args.latency)
    layers = len(p["seconds"])
    table: dict[str, dict] = {}
    for engine in ("ff", "bp"):
        one = data_parallel(p, 1, link, engine)
        rows = []
        for n in DEVICES:
            data = data_parallel(p, n, link, engine)
            pipe = pipeline(p, n, link, engine, args.batches, args.micro_batches) if n <= layers else None
            hybrid: tuple[float, int, int] = (data, n, 1)  # one stage: plain data parallelism
            for s in (k for k in range(2, min(n, layers) + 1) if n % k == 0):
                t = pipeline(p, s, link, engine, args.batches, args.micro_batches, replicas=n // s)
                if hybrid is None or t < hybrid[0]:
                    hybrid = (t, n // s, s)
            rows.append({
                "devices": n,
                "data_speedup": one / data,
                "pipeline_speedup": one / pipe if pipe is not None else None,
                "hybrid_speedup": one / hybrid[0], "hybrid_replicas": hybrid[1], "hybrid_stages": hybrid[2],
                "data_images_per_s": args.batch_size / data,
            })
        table[engine] = {"one_device_step_seconds": one, "rows": rows}
    return table


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="deeperforward_resnet17", choices=ffkit.models.list_models("ff"), metavar="NAME")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=3, help="measured steps per timing (median)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile", default=None, help="read the per-layer measurements from this JSON (--save-profile)")
    p.add_argument("--save-profile", default=None, help="write the per-layer measurements to this JSON")
    p.add_argument("--bandwidth", type=float, default=10e9, help="link bytes per second (default 10e9)")
    p.add_argument("--latency", type=float, default=20e-6, help="seconds per message (default 20e-6)")
    p.add_argument("--batches", type=int, default=391, help="batches per epoch (pipeline fill and drain; default "
                   "CIFAR-10's 50,000 / 128)")
    p.add_argument("--micro-batches", type=int, default=4, help="backprop pipeline (GPipe) micro-batches per batch")
    p.add_argument("--calibrate-ff", type=float, default=None, help="one device's FF seconds per batch to scale to")
    p.add_argument("--calibrate-bp", type=float, default=None, help="one device's backprop seconds per batch")
    p.add_argument("--no-overlap", action="store_true", help="exchanges cannot run during compute (a CPU whose cores "
                   "all compute)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    global OVERLAP
    OVERLAP = not args.no_overlap
    prof = json.loads(Path(args.profile).read_text()) if args.profile else measure(args)
    if args.save_profile:
        Path(args.save_profile).write_text(json.dumps(prof, indent=1) + "\n")
    scale = args.calibrate_ff / sum(prof["seconds"]) if args.calibrate_ff else 1.0
    model = dict(prof, seconds=[t * scale for t in prof["seconds"]])
    if args.calibrate_bp:
        model["bp_factor"] = args.calibrate_bp / sum(model["seconds"])
    table = predict(model, args)
    result = {"benchmark": "scale_model", "model": prof["model"], "batch_size": prof["batch_size"],
              "bandwidth": args.bandwidth, "latency": args.latency, "batches": args.batches,
              "micro_batches": args.micro_batches, "bp_factor": model["bp_factor"], "overlap": OVERLAP,
              "grad_bytes": sum(prof["grad_bytes"]), "profile_machine": prof.get("machine"), **table}
    for engine in ("ff", "bp"):
        print(f"{engine}: one device {table[engine]['one_device_step_seconds']:.4f} s per batch of "
              f"{prof['batch_size']}")
        print("  devices  data  pipeline  hybrid (replicas x stages)")
        for r in table[engine]["rows"]:
            pipe = f"{r['pipeline_speedup']:8.2f}" if r["pipeline_speedup"] is not None else "       -"
            print(f"  {r['devices']:7d} {r['data_speedup']:5.2f} {pipe}  {r['hybrid_speedup']:6.2f} "
                  f"({r['hybrid_replicas']} x {r['hybrid_stages']})")
    return emit(result, args.out, args.json)


if __name__ == "__main__":
    main()
