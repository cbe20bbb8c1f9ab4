"""Speed of DDAD training and inference on this machine: one command, JSON + a markdown table.

Measures, in one run on one machine (64x64 grayscale, K = 3 members, batch 64 unless stated):

- stage-1 training throughput in member-images per second of (a) a plain PyTorch loop over one
  AE in float32 and in bf16 autocast, (b) the per-member Ignite path (one MONAI
  SupervisedTrainer + DataLoader per member, ``ensemble_mode`` 'per_member'), (c) the fused and
  the sequential forms of ``scripts.engines.ensemble.EnsembleTrainer``, each in float32 and bf16;
- ASR-Net (stage 2) training images per second (both refiners, paper batch 8, frozen stage 1);
- end-to-end wall time of the bundle's stage 1 + stage 2 workflows on the CXR phantoms;
- inference images per second (batch 64) and per-image latency (batch 1) of stage 1 alone
  (6 AEs and the maps) and of the exported full pipeline (``DeployedPipeline``, TorchScript);
- peak memory (RSS; CUDA max allocated on a GPU).

Usage (from the repository root)::

    .venv/bin/python benchmarks/speed.py --out ddad_bundle/docs/performance.md
    .venv/bin/python benchmarks/speed.py --quick --out /tmp/perf.md     # a smoke run, seconds

The markdown goes between the ``<!-- speed:begin -->`` / ``<!-- speed:end -->`` markers of
``--out`` (the text around them is kept), the JSON next to it (``.json``). Numbers depend on
everything else the machine runs: measure on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "ddad_bundle"))
sys.path.insert(0, str(ROOT))

from scripts.engines.ensemble import (  # noqa: E402
    EnsembleTrainer,
    MemberBatches,
    MemberGroup,
    PerMemberTrainer,
    adam_optimizers,
    bf16_autocast,
    bf16_native,
    member_seeds,
    seeded_members,
)
from scripts.scoring.losses import MSEObjective  # noqa: E402
from scripts.networks.asr import ASRNet  # noqa: E402
from scripts.networks.backbones import AE  # noqa: E402
from scripts.data.phantoms import generate_phantom_dataset  # noqa: E402
from scripts.scoring.pipeline import DDADPipeline, DeployedPipeline  # noqa: E402
from scripts.engines.refinement import MapExtractor, RefinementTrainer  # noqa: E402
from scripts.scoring.scores import discrepancy_maps  # noqa: E402

BEGIN, END = "<!-- speed:begin -->", "<!-- speed:end -->"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, repeats: int, warmup: int = 2) -> float:
    """Seconds per call of ``fn`` after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync(device)
    return (time.perf_counter() - start) / repeats


def pool(n: int, size: int, device="cpu") -> torch.Tensor:
    return (torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1).to(device)


# ---- stage-1 training ------------------------------------------------------------------------


def plain_loop(device, batch: int, size: int, steps: int, amp: bool, compiled: bool = False) -> float:
    """Member-images/s of a bare PyTorch loop over one AE on one resident batch (torch's default Adam)."""
    torch.manual_seed(0)
    net = AE(1, size, 16).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=5e-4, betas=(0.5, 0.999))
    x = pool(batch, size, device)
    forward = torch.compile(net) if compiled else net

    def step():
        optimizer.zero_grad(set_to_none=True)
        with bf16_autocast(amp, device):
            out = forward(x)
        torch.mean((out.float() - x) ** 2).backward()
        optimizer.step()

    return batch / timed(step, device, steps, warmup=3 if compiled else 2)


def ensemble_run(
    kind: str,
    device,
    k: int,
    batch: int,
    size: int,
    steps: int,
    amp: bool,
    joint: bool = False,
    fused_adam: bool = False,
    **options,
) -> float:
    """Member-images/s of one epoch of ``steps`` iterations (after a warm-up run of 2 iterations).

    ``joint``: both modules in one loop, as the bundle trains them: K NDM members on a pool of
    ``steps`` batches and K UDM members on a pool twice that size (D_n + D_u at the demo's sizes).
    """

    def group(module, n_batches):
        seeds = member_seeds(0, module, k)
        members = seeded_members(lambda: AE(1, size, 16), seeds)
        return MemberGroup(
            module,
            members,
            adam_optimizers(members, fused=fused_adam),
            MemberBatches(pool(batch * n_batches, size), seeds, batch),
        )

    def build(n_batches):
        groups = [group("ndm", n_batches)] + ([group("udm", 2 * n_batches)] if joint else [])
        if kind == "per_member":
            g = groups[0]
            return PerMemberTrainer(device, 1, g.members, g.optimizers, MSEObjective(), g.data, amp=amp)
        return EnsembleTrainer(
            device, 1, objective=MSEObjective(), groups=groups, amp=amp, ensemble_mode=kind, **options
        )

    build(2).run()  # warm-up: allocator, oneDNN primitives, CUDA context
    trainer = build(steps)
    sync(torch.device(device))
    start = time.perf_counter()
    trainer.run()
    sync(torch.device(device))
    member_images = k * batch * steps * (3 if joint else 1)
    return member_images / (time.perf_counter() - start)


def stage1_training(device, args) -> list[dict]:
    """Without native bf16 (``bf16_native``), bf16 rows run only ``bf16_steps`` iterations: they are slow."""
    from scripts.engines.ensemble import resolve_amp, resolve_ensemble_mode

    rows = []
    b, s, k, n = args.batch_size, args.image_size, args.members, args.steps
    default = resolve_ensemble_mode("auto", device)
    cpu = torch.device(device).type == "cpu"

    def row(path, precision, value):
        rows.append({"path": path, "precision": precision, "member_images_per_s": value})

    amp_default = resolve_amp("auto", device)  # the bundle's default precision on this device
    for amp, steps in ((False, n), (True, n if amp_default else args.bf16_steps)):
        row("plain PyTorch loop, one AE", "bf16" if amp else "float32", plain_loop(device, b, s, steps, amp))
    if args.compile:
        row("plain PyTorch loop, one AE, torch.compile", "float32", plain_loop(device, b, s, n, False, compiled=True))
    row(
        "per-member Ignite (SupervisedTrainer + DataLoader per member)",
        "float32",
        ensemble_run("per_member", device, k, b, s, n, False),
    )
    for kind in ("sequential", "fused", "concurrent"):
        row(f"EnsembleTrainer, one module, {kind}", "float32", ensemble_run(kind, device, k, b, s, n, False))
    row(
        f"EnsembleTrainer, one module, {default}, fused Adam",
        "float32",
        ensemble_run(default, device, k, b, s, n, False, fused_adam=True),
    )
    row(
        f"EnsembleTrainer, one module, {default}, fused Adam, channels_last",
        "float32",
        ensemble_run(default, device, k, b, s, n, False, fused_adam=True, channels_last=True),
    )
    label = f"NDM + UDM in one loop, {default}, fused Adam" + (", channels_last" if cpu else "")
    for amp, steps in ((False, n), (True, n if amp_default else args.bf16_steps)):
        path = label + (" (bundle default)" if amp == amp_default else "")
        row(
            path,
            "bf16" if amp else "float32",
            ensemble_run(default, device, k, b, s, steps, amp, joint=True, fused_adam=True, channels_last=cpu),
        )
    return rows


# ---- stage 2 and inference -------------------------------------------------------------------


def trained_like_members(k: int, size: int, device) -> tuple[list, list]:
    ndm = [m.eval() for m in seeded_members(lambda: AE(1, size, 16), member_seeds(0, "ndm", k))]
    udm = [m.eval() for m in seeded_members(lambda: AE(1, size, 16), member_seeds(0, "udm", k))]
    return [m.to(device) for m in ndm], [m.to(device) for m in udm]


def asr_training(device, args) -> list[dict]:
    rows = []
    ndm, udm = trained_like_members(args.members, args.image_size, device)
    batch = 8
    for amp, steps in ((False, args.asr_steps), (True, max(1, args.asr_steps // 5))):
        refiners = {"dual": ASRNet(2, 128), "intra": ASRNet(1, 128)}
        images = pool(batch * steps, args.image_size)
        trainer = RefinementTrainer(device, 1, refiners, MapExtractor(ndm, udm), images, batch_size=batch, amp=amp)
        trainer.run()  # warm-up epoch
        sync(torch.device(device))
        start = time.perf_counter()
        trainer.state.max_epochs = 2
        trainer.run()
        sync(torch.device(device))
        rows.append(
            {
                "path": "ASR-Net training (R_dual + R_intra, batch 8)",
                "precision": "bf16" if amp else "float32",
                "images_per_s": batch * steps / (time.perf_counter() - start),
            }
        )
    return rows


def inference(device, args) -> list[dict]:
    torch.manual_seed(0)
    ndm, udm = trained_like_members(args.members, args.image_size, device)
    scales = {"A_inter": 1.0, "A_intra": 1.0}
    refiners = {"dual": ASRNet(2, 128).eval(), "intra": ASRNet(1, 128).eval()}
    pipeline = DDADPipeline(ndm, udm, refiners, scales).to(device).eval()
    deployed = torch.jit.script(DeployedPipeline(pipeline)).to(device)
    optimized = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.script(DeployedPipeline(pipeline)).eval()))
    batch = pool(args.infer_batch, args.image_size, device)
    one = batch[:1]

    def looped_stage1(x):
        outputs = [m(x) for m in ndm], [m(x) for m in udm]
        return discrepancy_maps(x, torch.stack(outputs[0]), torch.stack(outputs[1]))

    cases = [
        ("stage 1: 2K AEs + maps, one member after another", looped_stage1),
        (
            "stage 1: 2K AEs + maps, fused (DDADPipeline.stage1 + maps)",
            lambda x: discrepancy_maps(x, *pipeline.stage1(x)),
        ),
        ("full pipeline, all scores (DDADPipeline: both ASR-Nets)", pipeline),
        ("full pipeline, deployed (TorchScript DeployedPipeline: R_dual)", deployed),
        ("full pipeline, deployed, frozen + optimized at load (the MONAI Deploy app)", optimized),
    ]
    rows = []
    with torch.no_grad():
        for name, fn in cases:
            per_batch = timed(lambda fn=fn: fn(batch), device, args.infer_repeats)
            latency = timed(lambda fn=fn: fn(one), device, args.infer_repeats * 4)
            rows.append(
                {
                    "path": name,
                    "precision": "float32",
                    "images_per_s": args.infer_batch / per_batch,
                    "latency_ms": 1000 * latency,
                }
            )
        name, fn = cases[1]  # eager (autocast does not reach into TorchScript); one pass: slow without bf16 units
        repeats = args.infer_repeats if bf16_native(device) else 1
        with bf16_autocast(True, device):
            per_batch = timed(lambda: fn(batch), device, repeats, warmup=1)
        rows.append(
            {"path": name, "precision": "bf16", "images_per_s": args.infer_batch / per_batch, "latency_ms": None}
        )
    return rows


def end_to_end(device, args) -> dict:
    """Wall time of the bundle's training + training_asr workflows on the CXR phantoms."""
    from scripts.runtime.workflows import run_workflows

    overrides = {
        "epochs": args.e2e_epochs,
        "asr_epochs": args.e2e_asr_epochs,
        "progress_bar": False,
        "modality": "cxr",
        "device": f"$torch.device('{device}')",
    }
    with tempfile.TemporaryDirectory() as runs_dir:
        overrides["runs_dir"] = runs_dir
        # The phantoms are generated (the config's defaults) before the clock starts: this times training.
        generate_phantom_dataset(Path(runs_dir) / "data" / "cxr_phantom", modality="cxr", seed=0)
        start = time.perf_counter()
        run_workflows(["training", "training_asr"], overrides)
        seconds = time.perf_counter() - start
    return {
        "stage1_epochs": args.e2e_epochs,
        "stage2_epochs": args.e2e_asr_epochs,
        "seconds": seconds,
        "data": "CXR phantoms: D_n 400 training + 40 validation normals, D_u 400 (AR 60%), 64x64; "
        "batch 64 (stage 1), 8 (stage 2); K = 3 per module",
    }


# ---- report ----------------------------------------------------------------------------------


def machine(device) -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = set()
    try:
        flags = set(
            next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
            .split(":", 1)[1]
            .split()
        )
    except (OSError, StopIteration):
        pass
    vector = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    info = {
        "cpu": cpu,
        "cpu_features": vector,
        "bf16_native": bf16_native(device),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "python": platform.python_version(),
        "device": str(device),
        "load_average_at_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [
        f"Measured {result['date']} with `{result['command']}`.",
        "",
        f"Machine: {m['cpu']} ({', '.join(m.get('cpu_features', [])) or 'no AVX2'}; native bf16: "
        f"{'yes' if m.get('bf16_native') else 'no'}), {m['cores']} cores, torch {m['torch']}, {m['threads']} intra-op threads, "
        f"device `{m['device']}`"
        + (f" ({m['gpu']})" if "gpu" in m else "")
        + f"; load average at start {m['load_average_at_start']:.1f}.",
        "",
        f"Stage-1 training, {result['settings']['image_size']}x{result['settings']['image_size']}, "
        f"K = {result['settings']['members']}, batch {result['settings']['batch_size']}, "
        f"{result['settings']['steps']} iterations:",
        "",
        "| path | precision | member-images/s | vs per-member Ignite | vs plain float32 loop |",
        "|---|---|---|---|---|",
    ]
    rows = result["stage1_training"]
    base = next(r["member_images_per_s"] for r in rows if r["path"].startswith("per-member"))
    plain = next(
        r["member_images_per_s"] for r in rows if r["path"].startswith("plain") and r["precision"] == "float32"
    )
    for r in rows:
        v = r["member_images_per_s"]
        lines.append(f"| {r['path']} | {r['precision']} | {v:.0f} | {v / base:.2f}x | {v / plain:.2f}x |")
    lines += ["", "| stage 2 | precision | images/s |", "|---|---|---|"]
    lines += [f"| {r['path']} | {r['precision']} | {r['images_per_s']:.1f} |" for r in result["asr_training"]]
    lines += [
        "",
        f"Inference, batch {result['settings']['infer_batch']} (latency: batch 1):",
        "",
        "| path | precision | images/s | latency (ms/image) |",
        "|---|---|---|---|",
    ]
    for r in result["inference"]:
        latency = f"{r['latency_ms']:.1f}" if r["latency_ms"] is not None else "-"
        lines.append(f"| {r['path']} | {r['precision']} | {r['images_per_s']:.0f} | {latency} |")
    e2e = result.get("end_to_end")
    if e2e:
        lines += [
            "",
            f"End to end (bundle workflows `training` + `training_asr`, default `ensemble_mode`): "
            f"{e2e['seconds']:.0f} s for {e2e['stage1_epochs']} stage-1 and {e2e['stage2_epochs']} stage-2 "
            f"epochs on {e2e['data']}.",
        ]
    mem = result["peak_memory"]
    lines += [
        "",
        f"Peak memory: RSS {mem['rss_mib']:.0f} MiB"
        + (f", CUDA max allocated {mem['cuda_max_allocated_mib']:.0f} MiB" if "cuda_max_allocated_mib" in mem else "")
        + ".",
    ]
    return "\n".join(lines)


def write_report(result: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    block = f"{BEGIN}\n{markdown(result)}\n{END}"
    text = out.read_text() if out.exists() else f"# Performance\n\n{BEGIN}\n{END}\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    out.write_text(text)


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / "ddad_bundle" / "docs" / "performance.md"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--members", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20, help="timed stage-1 iterations per path")
    parser.add_argument("--bf16_steps", type=int, default=5, help="timed iterations of the bf16 rows")
    parser.add_argument("--asr_steps", type=int, default=10)
    parser.add_argument("--infer_batch", type=int, default=64)
    parser.add_argument("--infer_repeats", type=int, default=5)
    parser.add_argument("--e2e_epochs", type=int, default=5)
    parser.add_argument("--e2e_asr_epochs", type=int, default=2)
    parser.add_argument("--skip_end_to_end", action="store_true")
    parser.add_argument(
        "--compile", action="store_true", help="also time torch.compile on the plain loop (slow to build)"
    )
    parser.add_argument("--quick", action="store_true", help="tiny settings to check that everything runs")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.bf16_steps, args.asr_steps, args.infer_repeats = 2, 1, 1, 1
        args.e2e_epochs, args.e2e_asr_epochs = 1, 1
    for key in ("steps", "bf16_steps", "asr_steps", "infer_batch", "infer_repeats", "members", "batch_size"):
        if getattr(args, key) < 1:
            parser.error(f"--{key} must be >= 1")
    return args


def main(argv=None) -> int:
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "python benchmarks/speed.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine(device),
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
    }
    for name, fn in (("stage1_training", stage1_training), ("asr_training", asr_training), ("inference", inference)):
        print(f"measuring {name} ...", flush=True)
        result[name] = fn(device, args)
        print(json.dumps(result[name], indent=1), flush=True)
    if not args.skip_end_to_end:
        print("measuring end_to_end ...", flush=True)
        result["end_to_end"] = end_to_end(device, args)
    peak = {"rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.type == "cuda":
        peak["cuda_max_allocated_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    result["peak_memory"] = peak
    write_report(result, Path(args.out))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
