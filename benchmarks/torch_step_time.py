"""The common PyTorch SAM, timed against a plain PyTorch step of the same model.

The peer that `step_time.py`'s Keras rows are compared with in README: SAM
as PyTorch users run it, the two-step optimizer popularized by
github.com/davda54/sam (written here from the algorithm, not copied):
backward at w; `first_step` keeps a copy of w and adds ε̂ = ρ·g/(‖g‖₂ + 1e-12)
in place; backward at w + ε̂; `second_step` copies w back and lets the base
optimizer step. As in that project's example, BatchNorm's running
statistics are frozen in the second pass. Eager PyTorch, default NCHW
layout, SGD with momentum 0.9, batch 128 of random 32x32x3 data, the same two
architectures as the Keras rows (`benchmarks/torch_models.py`), and the same
paired, interleaved rounds (`benchmarks/timing.py`).

Before timing, the SAM step is checked against a NumPy computation of one
SAM step on a linear least-squares model (float64, to 1e-12), so a wrong step
can never be timed.

Needs PyTorch, which keras-sam does not depend on; in its own process, so the
two frameworks' thread pools never compete:

    pip install torch
    python benchmarks/torch_step_time.py
    python benchmarks/torch_step_time.py --models resnet20 --rounds 9
    python benchmarks/torch_step_time.py --device cuda   # on an NVIDIA GPU
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.arguments import add_round_arguments, names, positive  # noqa: E402
from benchmarks.timing import interleaved_rounds, summarize  # noqa: E402

RHO = 0.05
LEARNING_RATE = 0.01
MOMENTUM = 0.9
MODEL_NAMES = ("small_cnn", "resnet20")  # as in benchmarks/torch_models.py


def numpy_sam_reference(w, x, y, rho: float, learning_rate: float):
    """w after one SAM step with SGD on the loss ½·mean((x·w − y)²), in NumPy.

    The gradient of that loss is xᵀ(x·w − y)/n, so both passes are closed
    form. Hand-checked case: x = [[1, 0], [0, 2]], y = 0, w = [3, 4]:
    g = [1.5, 8], ε̂ = ρ·g/‖g‖, g' = [(3 + ε̂₀)/2, 2·(4 + ε̂₁)].

    >>> import numpy as np
    >>> x, w = np.array([[1.0, 0.0], [0.0, 2.0]]), np.array([3.0, 4.0])
    >>> new = numpy_sam_reference(w, x, np.zeros(2), rho=0.5, learning_rate=0.1)
    >>> e = 0.5 * np.array([1.5, 8.0]) / np.hypot(1.5, 8.0)
    >>> bool(np.allclose(new, w - 0.1 * np.array([(3 + e[0]) / 2, 2 * (4 + e[1])])))
    True
    """
    import numpy as np

    def gradient(weights):
        return x.T @ (x @ weights - y) / len(x)

    g = gradient(w)
    e_hat = rho * g / (np.linalg.norm(g) + 1e-12)
    return w - learning_rate * gradient(w + e_hat)


def _running_stats(model, frozen: bool) -> None:
    """Freezes (momentum 0) or restores BatchNorm's running-statistics updates."""
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            if frozen:
                module.saved_momentum = module.momentum
                module.momentum = 0
            elif hasattr(module, "saved_momentum"):
                module.momentum = module.saved_momentum


def make_steps(model, loss_fn, optimizer, rho: float = RHO):
    """(plain step, SAM step): each takes (x, y), trains one step, returns the loss."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]

    def plain_step(x, y):
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        return loss

    def sam_step(x, y):
        optimizer.zero_grad(set_to_none=True)
        _running_stats(model, frozen=False)
        loss = loss_fn(model(x), y)
        loss.backward()
        with torch.no_grad():  # first_step: keep w, climb to w + ε̂
            grad_norm = torch.norm(torch.stack([p.grad.norm(2) for p in params]), 2)
            scale = rho / (grad_norm + 1e-12)
            saved = [p.detach().clone() for p in params]
            for p in params:
                p.add_(p.grad * scale)
        optimizer.zero_grad(set_to_none=True)
        _running_stats(model, frozen=True)
        loss_fn(model(x), y).backward()
        with torch.no_grad():  # second_step: back to w, step with the new gradient
            for p, w in zip(params, saved):
                p.copy_(w)
        optimizer.step()
        return loss

    return plain_step, sam_step


def check_sam_step() -> float:
    """Largest |error| of one SAM step against `numpy_sam_reference`; raises if > 1e-12."""
    import numpy as np
    import torch

    rng = np.random.default_rng(0)
    x, y, w = rng.normal(size=(8, 3)), rng.normal(size=8), rng.normal(size=3)
    layer = torch.nn.Linear(3, 1, bias=False, dtype=torch.float64)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(w[None, :]))
    loss_fn = lambda out, target: 0.5 * torch.mean((out[:, 0] - target) ** 2)
    optimizer = torch.optim.SGD(layer.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM)
    _, sam_step = make_steps(layer, loss_fn, optimizer, rho=RHO)
    sam_step(torch.from_numpy(x), torch.from_numpy(y))
    expected = numpy_sam_reference(w, x, y, RHO, LEARNING_RATE)
    error = float(np.max(np.abs(layer.weight.detach().numpy()[0] - expected)))
    if error > 1e-12:
        raise AssertionError(f"The PyTorch SAM step is off the NumPy reference by {error:.3g}.")
    return error


def time_model(model_name: str, args) -> dict[str, list[float]]:
    """ms/step per round of the plain and the SAM step on `model_name`."""
    import torch

    from benchmarks.torch_models import build

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch_size, 3, 32, 32, generator=generator).to(args.device)
    y = torch.randint(0, 10, (args.batch_size,), generator=generator).to(args.device)
    synchronize = torch.cuda.synchronize if args.device == "cuda" else lambda: None

    def run(step, steps):
        for _ in range(steps):
            step(x, y)
        synchronize()  # a GPU runs asynchronously: time the steps to their end

    runners, settle = {}, {}
    for name in ("plain", "sam"):
        torch.manual_seed(0)
        model = build(model_name).to(args.device).train()
        optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM)
        plain_step, sam_step = make_steps(model, torch.nn.CrossEntropyLoss(), optimizer)
        step = plain_step if name == "plain" else sam_step
        run(step, 2 * args.warmup_steps)
        runners[name] = lambda step=step: run(step, args.steps)
        settle[name] = lambda step=step: run(step, args.settle_steps)
    return interleaved_rounds(
        runners, args.rounds, args.steps, settle=settle if args.settle_steps else None
    )


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", type=lambda text: names(text, MODEL_NAMES, "model"),
        default=list(MODEL_NAMES), help=f"comma-separated, of {', '.join(MODEL_NAMES)}",
    )
    add_round_arguments(parser, rounds=5)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--threads", type=positive, default=None,
        help="torch.set_num_threads (default: PyTorch's choice)",
    )
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        import torch
    except ImportError:
        print(
            "torch_step_time.py: error: PyTorch is not installed; `pip install torch` "
            "(the CPU build: `pip install torch --index-url "
            "https://download.pytorch.org/whl/cpu`).",
            file=sys.stderr,
        )
        return 2
    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            "torch_step_time.py: error: `--device cuda` was asked for, but PyTorch sees no GPU.",
            file=sys.stderr,
        )
        return 2
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    error = check_sam_step()
    started = time.perf_counter()
    rows = []
    for model_name in args.models:
        print(f"[{model_name}] timing {args.rounds} rounds", file=sys.stderr, flush=True)
        stats = summarize(time_model(model_name, args), baseline="plain")
        for name, label in (("plain", "plain PyTorch step"), ("sam", "PyTorch SAM")):
            s = stats[name]
            ratio = "1.00" if name == "plain" else "{:.2f} ({:.2f}–{:.2f})".format(
                s.ratio, *s.ratio_range
            )
            rows.append(
                f"| {model_name} | {label} | {s.median_ms:.1f} "
                f"({s.range_ms[0]:.1f}–{s.range_ms[1]:.1f}) | {ratio} |"
            )
    command = " ".join(["python benchmarks/torch_step_time.py", *(argv or sys.argv[1:])])
    where = (
        f"GPU: {torch.cuda.get_device_name()}" if args.device == "cuda"
        else f"CPU, {torch.get_num_threads()} threads"
    )
    print(f"## PyTorch SAM step time, batch {args.batch_size}, {where}\n")
    print(f"Command: `{command}`  ")
    print(
        f"Machine: {os.cpu_count()} cores; Python {platform.python_version()}, "
        f"PyTorch {torch.__version__}  "
    )
    print(
        f"SAM step checked against NumPy first (max |error| {error:.1e}). {args.rounds} "
        f"interleaved rounds of {args.steps} steps per mode (each after {args.settle_steps} "
        f"untimed) after {2 * args.warmup_steps} warm-up steps; medians over rounds, ratios "
        f"paired within a round; took {time.perf_counter() - started:.0f} s.\n"
    )
    print("| model | mode | ms/step (min–max) | ratio vs plain PyTorch (min–max) |")
    print("|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
