"""GPU checks, for a machine with CUDA: the fused noisy LIF and AGR on the GPU, and determinism of training.

1. The fused noisy CUBA-LIF (hand-written backward through time) on CUDA against the plain step-by-step
   autograd loop on CUDA (same noise): spikes must be identical, gradients equal to rounding.
2. The same layer on CUDA against the CPU, same inputs and noise: the fraction of spikes that differ
   (erfc, rsqrt and summation order differ between the devices) and the largest gradient difference.
3. Training determinism: ``sbnn train examples/quickstart.toml`` twice on CUDA and once on the CPU of the
   same machine; are the two CUDA checkpoints bit-identical, and how far is CUDA from CPU?

Usage: python benchmarks/gpu_check.py [--out DIR] [--epochs N]     (prints one line per finding)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from sbnn.layers import CubaLif, CubaState, cuba_lif_step_noisy


def _layer_inputs(device, dtype, batch=32, steps=60, width=128, seed=0):
    generator = torch.Generator().manual_seed(seed)
    mean = torch.randn((batch, steps, width), generator=generator, dtype=dtype) * 0.4 + 0.2
    variance = torch.rand((batch, steps, width), generator=generator, dtype=dtype) * 0.3
    noise = torch.randn((batch, steps, width), generator=generator, dtype=dtype)
    weights = torch.randn((batch, steps, width), generator=generator, dtype=dtype)
    return [t.to(device) for t in (mean, variance, noise, weights)]


def _run_layer(lif, mean, variance, noise, weights, *, loop: bool):
    mean = mean.clone().requires_grad_(True)
    variance = variance.clone().requires_grad_(True)
    lif.zero_grad()
    zeros = torch.zeros_like(mean[:, 0])
    if loop:
        state, spikes, step_spikes = CubaState(zeros, zeros), [], zeros
        for t in range(mean.shape[1]):
            step_mean, step_variance = mean[:, t], variance[:, t]
            if lif.recurrent is not None:
                feedback = lif.recurrent(step_spikes)
                step_mean, step_variance = step_mean + feedback.mean, step_variance + feedback.variance
            step_spikes, state = cuba_lif_step_noisy(step_mean, step_variance, state, lif.params, lif.bias,
                                                     estimator=lif.estimator, unit_noise=noise[:, t])
            spikes.append(step_spikes)
        spikes = torch.stack(spikes, 1)
    else:
        # CubaLif draws its own noise; feed the same draws by running its fused function directly.
        from sbnn.layers import _FusedNoisyLif
        moments = None if lif.recurrent is None else lif.recurrent.stacked_moments()
        spikes = _FusedNoisyLif.apply(mean, variance, noise, lif.bias, zeros, zeros, moments, lif.params,
                                      lif.estimator, None, True, False)[0]
    (spikes * weights).sum().backward()
    grads = [mean.grad, variance.grad, lif.bias.grad.clone()]
    if lif.recurrent is not None:
        grads += [lif.recurrent.weight_mu.grad.clone(), lif.recurrent.weight_rho.grad.clone()]
    return (spikes.detach(), *grads)


def _layer(dtype, device, recurrent: bool) -> CubaLif:
    lif = CubaLif(128, current_decay=0.8, voltage_decay=0.9, threshold=0.6, base_noise_std=0.2,
                  recurrent=recurrent, dtype=dtype, device=device)
    if recurrent:
        with torch.no_grad():
            weights = torch.randn(128, 128, generator=torch.Generator().manual_seed(1), dtype=dtype) * 0.1
            lif.recurrent.weight_mu.copy_(weights)
    return lif


def check_layer(report: dict, device: str) -> None:
    for recurrent in (False, True):
        for dtype in (torch.float32, torch.float64):
            name = str(dtype).replace("torch.", "") + ("_recurrent" if recurrent else "")
            lif = _layer(dtype, device, recurrent)
            inputs = _layer_inputs(device, dtype)
            fused = _run_layer(lif, *inputs, loop=False)
            loop = _run_layer(lif, *inputs, loop=True)
            same_spikes = bool(torch.equal(fused[0], loop[0]))
            grad_error = max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(fused[1:], loop[1:]))
            report[f"{device}_fused_vs_loop_{name}"] = {"identical_spikes": same_spikes,
                                                        "max_relative_grad_error": grad_error}
            print(f"[{name}] {device} fused vs loop: identical spikes {same_spikes}, "
                  f"max relative grad error {grad_error:.2e}")

            cpu = _run_layer(_layer(dtype, "cpu", recurrent), *_layer_inputs("cpu", dtype), loop=False)
            differing = float((fused[0].cpu() != cpu[0]).float().mean())
            grad_error = max(float((a.cpu() - b).abs().max() / b.abs().max()) for a, b in zip(fused[1:], cpu[1:]))
            report[f"{device}_vs_cpu_{name}"] = {"fraction_of_spikes_differing": differing,
                                                 "max_relative_grad_difference": grad_error}
            print(f"[{name}] {device} vs CPU: {differing:.2e} of spikes differ, "
                  f"max relative grad difference {grad_error:.2e}")


def _train(out: Path, device: str, epochs: int) -> tuple[dict, float]:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "sbnn", "train", "examples/quickstart.toml", "--out", str(out),
                    "--device", device, "--set", f"train.epochs={epochs}", "--json"],
                   check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    checkpoint = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    metrics = json.loads((out / "metrics.json").read_text())
    return {"state": checkpoint["model"], "metrics": metrics}, seconds


def _final_accuracies(metrics: dict) -> dict:
    return {key: value for key, value in metrics["summary"].items() if key.startswith("test_accuracy")}


def check_training(report: dict, epochs: int, device: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        runs = {}
        for name, where in (("cuda_a", device), ("cuda_b", device), ("cpu", "cpu")):
            runs[name], seconds = _train(Path(folder) / name, where, epochs)
            print(f"trained {name} in {seconds:.1f} s")
            report[f"train_seconds_{name}"] = seconds
    a, b, cpu = runs["cuda_a"]["state"], runs["cuda_b"]["state"], runs["cpu"]["state"]
    identical = all(torch.equal(a[key], b[key]) for key in a)
    cuda_cpu = max(float((a[key].float() - cpu[key].float()).abs().max()) for key in a if a[key].is_floating_point())
    report["cuda_runs_bit_identical"] = identical
    report["cuda_vs_cpu_max_parameter_difference"] = cuda_cpu
    for name in runs:
        report[f"accuracies_{name}"] = _final_accuracies(runs[name]["metrics"])
    print(f"two CUDA trainings bit-identical: {identical}; max |CUDA - CPU| parameter difference {cuda_cpu:.3e}")
    for name in runs:
        print(f"{name}: {report[f'accuracies_{name}']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="folder for gpu_check.json")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--device", default="cuda", help="the accelerator (cpu: a dry run of this script)")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_check: torch sees no CUDA device")
    torch.manual_seed(0)
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu (dry run)"
    report = {"device": name, "torch": torch.__version__}
    print(f"{report['device']}, torch {report['torch']}")
    check_layer(report, args.device)
    check_training(report, args.epochs, args.device)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str) + "\n")


if __name__ == "__main__":
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    main()
