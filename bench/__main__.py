"""kdjax against the PyTorch tutorial's own code, on this machine, in one run.

    python -m bench [--data-dir PATH] [--rounds 3] [--windows 5] [--e2e-train-size 10000] [--e2e-epochs 2]
                    [--torch-compile]

PyTorch runs as the tutorial wrote it (eager, NCHW), in `channels_last` (the first thing a
PyTorch user tunes on CPU) and, with `--torch-compile`, compiled. Each side and variant runs
in its own subprocess (so peak memory is its own), all taking turns for `--rounds` rounds so
that they meet the same spells of a shared machine's noise; a figure is the median over
rounds, and each round's speed-up is listed too. Measured: steady-state training images/s
for every step (median of timed windows, after compilation and warm-up; kdjax also with the
teacher-output cache), eval images/s, kdjax's compile times, peak host memory, and (in the
first round) the wall time of the whole tutorial at a reduced size. Prints a table of
speed-ups (kdjax over each PyTorch variant and over the fastest) and writes it to
experiments/BENCH.md and BENCH.json. PyTorch is optional (`pip install -e ".[bench]"`);
without it only kdjax is measured.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile

from bench.common import CACHED_CASES, MEMBERS, STEP_CASES, ZOO_BATCH, ZOO_CASES

LABELS = {"teacher_ce": "teacher CE step", "student_ce": "student CE step", "kd": "student KD step",
          "cosine": "student cosine step", "hint": "student hint step", "eval_teacher": "teacher eval",
          "eval_student": "student eval", **{case: f"{name} CE step, batch {ZOO_BATCH}"
                                             for case, name in ZOO_CASES.items()}}


def cpu_model() -> str:
    """The CPU's model name and widest vector extension, as Linux reports them (timings depend on both)."""
    try:
        info = pathlib.Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "CPU"
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "CPU")
    flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []))
    vector = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    return f"{name} ({vector})"


def _run_side(module: str, passthrough: list[str]) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        subprocess.run([sys.executable, "-m", module, "--json", out.name, *passthrough], check=True)
        return json.loads(pathlib.Path(out.name).read_text())


def _ratio(ours: float | None, theirs: float | None) -> str:
    return f"{ours / theirs:.2f}x" if ours and theirs else "n/a"


def merge_rounds(rounds: list[dict]) -> dict:
    """One side's figures over rounds: median images/s (each round's kept under `rounds`), max peak memory."""
    merged = dict(rounds[0])
    for name, value in rounds[0].items():
        if isinstance(value, dict) and "images_per_s" in value:
            rates = [r[name]["images_per_s"] for r in rounds]
            merged[name] = value | {"images_per_s": statistics.median(rates), "rounds": rates}
    merged["peak_rss_mb"] = max(r["peak_rss_mb"] for r in rounds)
    return merged


def _per_round(ours: dict, theirs: dict | None) -> str:
    if not theirs or "rounds" not in ours or len(ours["rounds"]) < 2:
        return ""
    return " / ".join(f"{a / b:.2f}" for a, b in zip(ours["rounds"], theirs["rounds"]))


def _rate(figures: dict, case: str) -> float | None:
    return figures.get(case, {}).get("images_per_s")


def table(jx: dict, pt: dict[str, dict], members: int = MEMBERS) -> str:
    """Figures and kdjax's speed-up over each PyTorch variant and over the fastest of them, per measurement."""
    variants = list(pt)
    head = ["measurement", "kdjax", *(f"PyTorch {v}" for v in variants), *(f"vs {v}" for v in variants)]
    if len(variants) > 1:
        head.append("vs fastest PyTorch")
    rows = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]

    def row(label: str, ours: float, case: str, jx_case: str) -> str:
        theirs = [_rate(pt[v], case) for v in variants]
        cells = [label, f"{ours:,.0f}", *(f"{t:,.0f}" if t else "n/a" for t in theirs), *(_ratio(ours, t) for t in theirs)]
        if len(variants) > 1:
            fastest = max((t for t in theirs if t), default=None)
            cells.append(_ratio(ours, fastest))
        return "| " + " | ".join(cells) + " |"

    for case in (*STEP_CASES, "eval_teacher", "eval_student", *ZOO_CASES):
        if _rate(jx, case) is None:  # figures written before the case existed
            continue
        rows.append(row(f"{LABELS[case]} (images/s)", _rate(jx, case), case, case))
        if case in CACHED_CASES:
            rows.append(row(f"{LABELS[case]}, teacher cache (images/s)", _rate(jx, f"{case}_cached"), case, case))
    many = jx.get(f"kd_cached_x{members}")
    if many:
        ratio = jx["kd_cached"]["images_per_s"] / many["images_per_s"]
        rows.append(f"\n{members} KD students with the teacher cache in one program: {many['images_per_s']:,.0f} "
                    f"images/s over all members; the per-member step is {ratio:.2f}x the one-member step.\n")
    if "e2e" in jx:
        ours = jx["e2e"]["seconds"]
        theirs = {v: pt[v]["e2e"]["seconds"] for v in variants if "e2e" in pt[v]}
        text = ", ".join(f"PyTorch {v} {t:,.0f} s ({t / ours:.2f}x)" for v, t in theirs.items())
        rows.append(f"Whole tutorial, reduced: kdjax {ours:,.0f} s" + (f"; {text}" if text else "") + ".\n")
    memory = ", ".join([f"kdjax {jx['peak_rss_mb']:,.0f}"] + [f"PyTorch {v} {pt[v]['peak_rss_mb']:,.0f}" for v in variants])
    per_round = [f"{LABELS[case]} {v}: {_per_round(jx[case], pt[v].get(case))}" for case in (*STEP_CASES, *ZOO_CASES)
                 for v in variants if case in jx and _per_round(jx[case], pt[v].get(case))]
    compile_s = ", ".join(f"{case} {jx[case]['compile_s']:.1f}" for case in jx if isinstance(jx[case], dict)
                          and "compile_s" in jx[case])
    notes = [f"Peak host memory (MB): {memory}.", f"kdjax compile times (s): {compile_s}."]
    if per_round:
        notes.append("Speed-up per round: " + "; ".join(per_round) + ".")
    return "\n".join(rows) + "\n\n" + "\n".join(notes) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="turns each side takes (median over rounds reported)")
    parser.add_argument("--windows", type=int, default=5, help="timed windows per measurement (median reported)")
    parser.add_argument("--steps", type=int, default=None,
                        help="steps per timed window (default: each case's own; 1 only checks that every case runs)")
    parser.add_argument("--e2e-train-size", type=int, default=10_000, help="training images in the end-to-end run")
    parser.add_argument("--e2e-test-size", type=int, default=2_000, help="test images in the end-to-end run")
    parser.add_argument("--e2e-epochs", type=int, default=2, help="epochs per model in the end-to-end run")
    parser.add_argument("--data-dir", default=None, help="local CIFAR-10 for the end-to-end run (default: synthetic)")
    parser.add_argument("--skip-e2e", action="store_true", help="skip the end-to-end run")
    parser.add_argument("--torch-compile", action="store_true",
                        help="also measure PyTorch with torch.compile (steps and eval; compiling takes minutes)")
    parser.add_argument("--members", type=int, default=MEMBERS, help="KD students in the multi-member case")
    parser.add_argument("--skip-cases", default="", metavar="CASE,...",
                        help=f"step cases not to time, of {', '.join((*STEP_CASES, *ZOO_CASES))}")
    parser.add_argument("--out", default="experiments", help="folder for BENCH.md and BENCH.json")
    args = parser.parse_args()
    passthrough = [f"--windows={args.windows}", f"--e2e-train-size={args.e2e_train_size}",
                   f"--e2e-test-size={args.e2e_test_size}", f"--e2e-epochs={args.e2e_epochs}"]
    passthrough += [f"--data-dir={args.data_dir}"] * bool(args.data_dir) + ["--skip-e2e"] * args.skip_e2e
    passthrough += [f"--steps={args.steps}"] * (args.steps is not None) + [f"--members={args.members}"]
    passthrough += [f"--skip-cases={args.skip_cases}"]

    if args.rounds < 1:
        parser.error(f"--rounds must be >= 1, got {args.rounds}")
    has_torch = importlib.util.find_spec("torch") is not None
    if not has_torch:
        print("note: torch is not installed (pip install -e '.[bench]'); measuring kdjax alone", file=sys.stderr)
    variants = ["eager", "channels_last"] + ["compile"] * args.torch_compile if has_torch else []
    jx_rounds, pt_rounds = [], {v: [] for v in variants}
    for round_index in range(args.rounds):
        flags = passthrough + ["--skip-e2e"] * (round_index > 0 and not args.skip_e2e)
        jx_rounds.append(_run_side("bench.kdjax_side", flags))
        for variant in variants:
            pt_rounds[variant].append(_run_side("bench.torch_side", [*flags, f"--variant={variant}"]))
    jx = merge_rounds(jx_rounds)
    pt = {variant: merge_rounds(rounds) for variant, rounds in pt_rounds.items()}

    command = "python -m bench " + " ".join(sys.argv[1:])
    machine = f"{cpu_model()}, {platform.machine()}, {os.cpu_count()} CPUs, {jx['device']}"
    versions = ", ".join(f"{k} {v}" for k, v in {k: v for side in (jx, *pt.values())
                                                  for k, v in side.get("versions", {}).items()}.items())
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    size = (f"{args.e2e_epochs} epochs on {args.e2e_train_size:,} training / {args.e2e_test_size:,} test images"
            f" ({'local CIFAR-10' if args.data_dir else 'synthetic'})")
    e2e = "" if args.skip_e2e else f"; whole tutorial = teacher then the four students, {size}"
    report = (f"# kdjax vs the PyTorch tutorial\n\n`{command.strip()}` — {when}; {machine}; {versions}.\n"
              f"Speed-up is kdjax over PyTorch (higher is better), from the median of {args.rounds} rounds in which "
              f"the sides take turns; batch 128 (the zoo's steps: {ZOO_BATCH}){e2e} (first round).\n\n{table(jx, pt, args.members)}")
    print(report)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "BENCH.md").write_text(report)
    (out / "BENCH.json").write_text(json.dumps({"command": command, "kdjax": jx, "pytorch": pt}, indent=2) + "\n")


if __name__ == "__main__":
    main()
