"""Cheaper SAM modes against SAM and the base at equal compute, on the demo's task.

The demo's default setting (MNIST-1D, 40% symmetric label noise, the 1D CNN,
SGD with momentum 0.9 and a cosine learning rate from 0.05, batch 128, 100
epochs, SAM's rho 0.2). Two phases:

1. tune: each cheap mode's settings are chosen on a validation split of the
   *noisy* training data (the last 20% of the training signals held out, their
   labels as noisy as the rest); the test set is never looked at. Each
   candidate trains on the remaining 80% for the tuning seeds; the setting
   with the best mean validation accuracy wins.
2. final: on the full noisy training set, for 3 seeds, the base, SAM, the base
   with as many passes as SAM (`base-matched`), and each cheap mode at its
   published defaults and at the tuned setting; clean test accuracy, the
   forward/backward passes per step (counted from the logs) and the training
   time over the base's of the same seed.

Every run starts from the seed's initial weights and sees the seed's batch
sequence (`keras_sam.apps.demo.train_run`). Results go to a JSON file (one
row per run, written as it finishes, so an interrupted study resumes); the
summary table (Markdown) is printed at the end.

Usage:

    python benchmarks/cheap_sam_study.py --out cheap_sam.json           # both phases
    python benchmarks/cheap_sam_study.py --out cheap_sam.json --report  # the table only
    python benchmarks/cheap_sam_study.py --out cheap_sam.json --time 3  # training times

`--time ROUNDS` times the demo's methods (at the settings it trains them with)
on seed 0: each round trains every method once, in turn; a method's time is
the median over rounds of its training time over the base's in the same round.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

TUNING_SEEDS = (0, 1)
FINAL_SEEDS = (0, 1, 2)
VALIDATION_SHARE = 0.2


@dataclasses.dataclass(frozen=True)
class Candidate:
    """A cheap mode at one setting."""

    mode: str
    setting: str  # a short label of the setting
    published: bool  # the paper's / official code's default
    build: object  # (network, settings, plan) -> model


def _candidates():
    import keras_sam
    from keras_sam import schedules

    def sam_with(**kwargs):
        return lambda network, settings, plan: keras_sam.SAMModel(network, **kwargs)

    def late(fraction):
        def build(network, settings, plan):
            start = round(plan.total_steps * (1 - fraction))
            return keras_sam.SAMModel(network, rho=schedules.LatePhase(settings.rho, start))

        return build

    out = []
    for k, alpha in ((5, 0.7), (2, 0.7), (5, 1.5), (2, 1.5)):
        out.append(Candidate(
            "looksam", f"k={k}, alpha={alpha}", (k, alpha) == (5, 0.7),
            lambda n, s, p, k=k, alpha=alpha: keras_sam.LookSAMModel(
                n, rho=s.rho, k=k, alpha=alpha),
        ))  # fmt: skip
    for rho in (3.0, 0.3, 0.6, 1.0, 1.5):
        out.append(Candidate(
            "msam", f"rho={rho:g}", rho == 3.0,
            lambda n, s, p, rho=rho: keras_sam.MSAMModel(n, rho=rho),
        ))  # fmt: skip
    for probability in (0.5, 0.2, 0.3):
        out.append(Candidate(
            "rst", f"p={probability:g}", probability == 0.5,
            lambda n, s, p, probability=probability: keras_sam.RandomizedSAMModel(
                n, rho=s.rho, probability=probability, seed=p.seed),
        ))  # fmt: skip
    for label, threshold in (
        ("c: 1 to -1", lambda p: schedules.Linear(1.0, -1.0, p.total_steps)),
        ("c = 0.5", lambda p: 0.5),
        ("c = 1", lambda p: 1.0),
    ):
        out.append(Candidate(
            "aesam", label, label == "c: 1 to -1",
            lambda n, s, p, threshold=threshold: keras_sam.AESAMModel(
                n, rho=s.rho, threshold=threshold(p)),
        ))  # fmt: skip
    for fraction in (0.125, 0.25, 0.5, 0.75):
        out.append(Candidate(
            "late", f"last {fraction:.1%}", fraction == 0.125, late(fraction)
        ))  # fmt: skip
    del sam_with
    return out


def _train(demo, build, settings, seed, train, validation, epochs_factor=1):
    name = "study"
    demo.register_method(demo.DemoMethod(
        name=name, build=build, label=lambda s: name, epochs_factor=epochs_factor,
    ))  # fmt: skip
    started = time.perf_counter()
    model, history = demo.train_run(
        name, demo.starting_weights(seed), train, validation, settings, seed
    )
    seconds = time.perf_counter() - started
    passes = demo.passes_per_step(history, demo.METHODS[name])
    return float(history["val_accuracy"][-1]), passes, seconds


def _rows(path: Path) -> list[dict]:
    return json.loads(path.read_text()) if path.exists() else []


def _save(path: Path, rows: list[dict]) -> None:
    path.write_text(json.dumps(rows, indent=1))


def _done(rows, **key) -> bool:
    return any(all(r.get(k) == v for k, v in key.items()) for r in rows)


def run(path: Path) -> None:
    from keras_sam.apps import demo
    from keras_sam.apps.data.mnist1d import load_noisy_mnist1d

    settings = demo.DemoSettings(verbose=0)
    rows = _rows(path)
    candidates = _candidates()
    for seed in TUNING_SEEDS:  # 1. tune on a validation split of the noisy training data
        (x, y), _ = load_noisy_mnist1d(settings.noise, seed=seed)
        cut = int(len(x) * (1 - VALIDATION_SHARE))
        train, validation = (x[:cut], y[:cut]), (x[cut:], y[cut:])
        for candidate in candidates:
            key = dict(phase="tune", mode=candidate.mode, setting=candidate.setting, seed=seed)
            if _done(rows, **key):
                continue
            accuracy, passes, seconds = _train(
                demo, candidate.build, settings, seed, train, validation
            )
            rows.append({**key, "validation_accuracy": accuracy, "passes_per_step": passes,
                         "seconds": seconds, "published": candidate.published})  # fmt: skip
            _save(path, rows)
            print(key, f"{accuracy:.3f}", f"{passes:.2f}", flush=True)
    chosen = _chosen(rows)
    finals = [("base", "-", demo.METHODS["base"].build, 1),
              ("sam", f"rho={settings.rho:g}", demo.METHODS["sam"].build, 1),
              ("base-matched", "2x epochs", demo.METHODS["base"].build, 2)]  # fmt: skip
    for candidate in candidates:
        if candidate.published or chosen.get(candidate.mode) == candidate.setting:
            finals.append((candidate.mode, candidate.setting, candidate.build, 1))
    for seed in FINAL_SEEDS:  # 2. the full training set, the clean test set
        train, test = load_noisy_mnist1d(settings.noise, seed=seed)
        for mode, setting, build, factor in finals:
            key = dict(phase="final", mode=mode, setting=setting, seed=seed)
            if _done(rows, **key):
                continue
            accuracy, passes, seconds = _train(demo, build, settings, seed, train, test, factor)
            rows.append({**key, "test_accuracy": accuracy, "passes_per_step": passes,
                         "seconds": seconds})  # fmt: skip
            _save(path, rows)
            print(key, f"{accuracy:.3f}", f"{passes:.2f}", f"{seconds:.1f}s", flush=True)


def _chosen(rows) -> dict[str, str]:
    """Each mode's setting with the best mean validation accuracy."""
    scores: dict[tuple[str, str], list[float]] = {}
    for r in rows:
        if r["phase"] == "tune":
            scores.setdefault((r["mode"], r["setting"]), []).append(r["validation_accuracy"])
    best: dict[str, tuple[float, str]] = {}
    for (mode, setting), values in scores.items():
        if len(values) == len(TUNING_SEEDS):
            mean = float(np.mean(values))
            if mode not in best or mean > best[mode][0]:
                best[mode] = (mean, setting)
    return {mode: setting for mode, (_, setting) in best.items()}


def report(path: Path) -> str:
    """The tuning and final tables, in Markdown."""
    rows = _rows(path)
    lines = ["### Tuning (validation accuracy on noisy labels, mean of seeds "
             f"{', '.join(map(str, TUNING_SEEDS))})", "",
             "| mode | setting | published default | validation acc | passes/step |",
             "|---|---|---|---|---|"]  # fmt: skip
    tuned: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        if r["phase"] == "tune":
            tuned.setdefault((r["mode"], r["setting"]), []).append(r)
    chosen = _chosen(rows)
    for (mode, setting), runs in tuned.items():
        mark = " **(chosen)**" if chosen.get(mode) == setting else ""
        lines.append(
            f"| {mode} | {setting}{mark} | {'yes' if runs[0]['published'] else ''} | "
            f"{np.mean([r['validation_accuracy'] for r in runs]):.1%} | "
            f"{np.mean([r['passes_per_step'] for r in runs]):.2f} |"
        )
    finals: dict[tuple[str, str], dict[int, dict]] = {}
    for r in rows:
        if r["phase"] == "final":
            finals.setdefault((r["mode"], r["setting"]), {})[r["seed"]] = r
    base = finals.get(("base", "-"), {})
    sam = next((v for (m, _), v in finals.items() if m == "sam"), {})
    lines += ["", f"### Clean test accuracy, seeds {', '.join(map(str, FINAL_SEEDS))}", "",
              "| method | setting | " + " | ".join(f"seed {s}" for s in FINAL_SEEDS)
              + " | share of SAM's margin (per seed) | passes/step | time vs base |",
              "|---|---|" + "---|" * len(FINAL_SEEDS) + "---|---|---|"]  # fmt: skip
    for (mode, setting), by_seed in finals.items():
        accuracies, shares, times = [], [], []
        for seed in FINAL_SEEDS:
            r = by_seed.get(seed)
            if r is None:
                accuracies.append("—")
                continue
            accuracies.append(f"{r['test_accuracy']:.1%}")
            if seed in base and seed in sam:
                margin = sam[seed]["test_accuracy"] - base[seed]["test_accuracy"]
                shares.append((r["test_accuracy"] - base[seed]["test_accuracy"]) / margin)
                times.append(r["seconds"] / base[seed]["seconds"])
        passes = np.mean([r["passes_per_step"] for r in by_seed.values()])
        lines.append(
            f"| {mode} | {setting} | " + " | ".join(accuracies) + " | "
            + ", ".join(f"{s:.0%}" for s in shares) + f" | {passes:.2f} | "
            + (f"{np.median(times):.2f}x" if times else "—") + " |"
        )
    return "\n".join(lines)


def time_methods(rounds: int) -> str:
    """Training time of each demo method over the base's, interleaved rounds."""
    from keras_sam.apps import demo
    from keras_sam.apps.data.mnist1d import load_noisy_mnist1d

    names = ["base", "sam", "base-matched", "looksam", "msam", "rst", "aesam", "late"]
    settings = demo.DemoSettings(verbose=0)
    train, test = load_noisy_mnist1d(settings.noise, seed=0)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(rounds):
        for name in names:
            started = time.perf_counter()
            demo.train_run(name, demo.starting_weights(0), train, test, settings, 0)
            seconds[name].append(time.perf_counter() - started)
            print(name, f"{seconds[name][-1]:.1f}s", flush=True)
    lines = ["| method | training time (median) | over the base's (median of rounds) |",
             "|---|---|---|"]  # fmt: skip
    for name in names:
        ratios = [s / b for s, b in zip(seconds[name], seconds["base"])]
        lines.append(f"| {name} | {np.median(seconds[name]):.1f} s | {np.median(ratios):.2f}x |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="the JSON file of rows")
    parser.add_argument("--report", action="store_true", help="print the tables only")
    parser.add_argument("--time", type=int, metavar="ROUNDS", help="time the demo's methods")
    args = parser.parse_args(argv)
    if args.time:
        print(time_methods(args.time))
        return 0
    if not args.report:
        run(args.out)
    print(report(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
