"""kdjax against the PyTorch tutorial's own code, on this machine, in one run.

    python -m bench [--data-dir PATH] [--rounds 3] [--windows 5] [--e2e-train-size 10000] [--e2e-epochs 2]

Each side runs in its own subprocess (so peak memory is its own), the two sides taking
turns for `--rounds` rounds so that both meet the same spells of a shared machine's noise;
a figure is the median over rounds, and each round's speed-up is listed too. Measured:
steady-state training
images/s for every step (median of timed windows, after compilation and warm-up; kdjax
also with the teacher-output cache), eval images/s, kdjax's compile times, peak host
memory, and (in the first round) the wall time of the whole tutorial at a reduced size. Prints a table of
speed-ups (kdjax over PyTorch) and writes it to experiments/BENCH.md and BENCH.json.
PyTorch is optional (`pip install -e ".[bench]"`); without it only kdjax is measured.
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

from bench.common import CACHED_CASES, MEMBERS, STEP_CASES

LABELS = {"teacher_ce": "teacher CE step", "student_ce": "student CE step", "kd": "student KD step",
          "cosine": "student cosine step", "hint": "student hint step", "eval_teacher": "teacher eval",
          "eval_student": "student eval"}


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


def table(jx: dict, pt: dict | None) -> str:
    pt = pt or {}
    rows = ["| measurement | kdjax | PyTorch | speed-up | speed-up per round |", "|---|---:|---:|---:|---|"]
    for case in (*STEP_CASES, "eval_teacher", "eval_student"):
        ours, theirs = jx[case]["images_per_s"], pt.get(case, {}).get("images_per_s")
        theirs_text = f"{theirs:,.0f}" if theirs else "n/a"
        rows.append(f"| {LABELS[case]} (images/s) | {ours:,.0f} | {theirs_text} | {_ratio(ours, theirs)} | "
                    f"{_per_round(jx[case], pt.get(case))} |")
        if case in CACHED_CASES:
            cached = jx[f"{case}_cached"]["images_per_s"]
            rows.append(f"| {LABELS[case]}, teacher cache (images/s) | {cached:,.0f} | {theirs_text} | "
                        f"{_ratio(cached, theirs)} | {_per_round(jx[f'{case}_cached'], pt.get(case))} |")
    many = jx.get(f"kd_cached_x{MEMBERS}")
    if many:
        ratio = jx["kd_cached"]["images_per_s"] / many["images_per_s"]
        rows.append(f"| student KD step, teacher cache, {MEMBERS} members in one program (images/s, all members) | "
                    f"{many['images_per_s']:,.0f} | | | per-member step {ratio:.2f}x the one-member step |")
    if "e2e" in jx:
        ours, theirs = jx["e2e"]["seconds"], pt.get("e2e", {}).get("seconds")
        rows.append(f"| whole tutorial, reduced (s) | {ours:,.0f} | {f'{theirs:,.0f}' if theirs else 'n/a'} | "
                    f"{_ratio(theirs, ours)} | |")
    theirs_mb = f"{pt['peak_rss_mb']:,.0f}" if pt else "n/a"
    rows.append(f"| peak host memory (MB) | {jx['peak_rss_mb']:,.0f} | {theirs_mb} | | |")
    compile_s = ", ".join(f"{case} {jx[case]['compile_s']:.1f}" for case in jx if isinstance(jx[case], dict)
                          and "compile_s" in jx[case])
    return "\n".join(rows) + f"\n\nkdjax compile times (s): {compile_s}.\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="turns each side takes (median over rounds reported)")
    parser.add_argument("--windows", type=int, default=5, help="timed windows per measurement (median reported)")
    parser.add_argument("--e2e-train-size", type=int, default=10_000, help="training images in the end-to-end run")
    parser.add_argument("--e2e-test-size", type=int, default=2_000, help="test images in the end-to-end run")
    parser.add_argument("--e2e-epochs", type=int, default=2, help="epochs per model in the end-to-end run")
    parser.add_argument("--data-dir", default=None, help="local CIFAR-10 for the end-to-end run (default: synthetic)")
    parser.add_argument("--skip-e2e", action="store_true", help="skip the end-to-end run")
    parser.add_argument("--out", default="experiments", help="folder for BENCH.md and BENCH.json")
    args = parser.parse_args()
    passthrough = [f"--windows={args.windows}", f"--e2e-train-size={args.e2e_train_size}",
                   f"--e2e-test-size={args.e2e_test_size}", f"--e2e-epochs={args.e2e_epochs}"]
    passthrough += [f"--data-dir={args.data_dir}"] * bool(args.data_dir) + ["--skip-e2e"] * args.skip_e2e

    if args.rounds < 1:
        parser.error(f"--rounds must be >= 1, got {args.rounds}")
    has_torch = importlib.util.find_spec("torch") is not None
    if not has_torch:
        print("note: torch is not installed (pip install -e '.[bench]'); measuring kdjax alone", file=sys.stderr)
    jx_rounds, pt_rounds = [], []
    for round_index in range(args.rounds):
        flags = passthrough + ["--skip-e2e"] * (round_index > 0 and not args.skip_e2e)
        jx_rounds.append(_run_side("bench.kdjax_side", flags))
        if has_torch:
            pt_rounds.append(_run_side("bench.torch_side", flags))
    jx = merge_rounds(jx_rounds)
    pt = merge_rounds(pt_rounds) if pt_rounds else None

    command = "python -m bench " + " ".join(sys.argv[1:])
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, {jx['device']}"
    versions = ", ".join(f"{k} {v}" for side in (jx, pt or {}) for k, v in side.get("versions", {}).items())
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    size = (f"{args.e2e_epochs} epochs on {args.e2e_train_size:,} training / {args.e2e_test_size:,} test images"
            f" ({'local CIFAR-10' if args.data_dir else 'synthetic'})")
    e2e = "" if args.skip_e2e else f"; whole tutorial = teacher then the four students, {size}"
    report = (f"# kdjax vs the PyTorch tutorial\n\n`{command.strip()}` — {when}; {machine}; {versions}.\n"
              f"Speed-up is kdjax over PyTorch (higher is better), from the median of {args.rounds} rounds in which "
              f"the sides take turns; batch 128{e2e} (first round).\n\n{table(jx, pt)}")
    print(report)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "BENCH.md").write_text(report)
    (out / "BENCH.json").write_text(json.dumps({"command": command, "kdjax": jx, "pytorch": pt}, indent=2) + "\n")


if __name__ == "__main__":
    main()
