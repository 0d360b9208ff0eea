"""Combine the per-process JSON files of `bench/advice_quality.py` runs (bench/parallel.sh writes one per process)
into one result with one summary, and print the README table.

    python3 bench/advice_quality_combine.py bench/results/advice_quality_raw --out bench/results/advice_quality.json

Inputs in the folder: `advice_quality_*.json` (first call: advised vs unsloth-defaults vs seed-table [+ grid]),
`lr3_*.json` (second call: advised again + the advised config at 3x its learning rate), and `*.log` files holding
printed summary rows of processes whose JSON did not come back (parsed as `log_only` cells, 3 decimals).
A cell's repeated advised run (same config, same seed, another process) is kept as `advised (repeat)`: the
difference between the two is the run-to-run noise the margins must exceed.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from advice_quality import BASELINES, summary  # noqa: E402

ROW = re.compile(r"^(?P<cell>\S+:\S+)\s+(?P<adv>[\d.]+|-)\s+(?P<uns>[\d.]+|-)\s+(?P<seed>[\d.]+|-)\s+(?P<rest>.*)$")


def merge_runs(cells: dict, key: str, cell: dict) -> None:
    if key not in cells:
        cells[key] = {**cell, "runs": dict(cell["runs"])}
        return
    for name, run in cell["runs"].items():
        cells[key]["runs"][f"{name} (repeat)" if name in cells[key]["runs"] else name] = run


def log_only_cells(paths: list[Path], known: set[str]) -> dict:
    found = {}
    for path in paths:
        for line in path.read_text().splitlines():
            match = ROW.match(line.strip())
            if not match or match["cell"] in known or "incomplete" in match["rest"]:
                continue
            values = {n: float(match[k]) for n, k in zip(BASELINES, ("adv", "uns", "seed")) if match[k] != "-"}
            english = re.search(r"([+-][\d.]+)%\s+(\d+)/(\d+)", match["rest"])
            found[match["cell"]] = {"bits_per_char_after": values, "source": f"{path.name} (printed row)",
                                    "english_change_advised": float(english[1]) / 100 if english else None,
                                    "gpu_s_advised_slowest": [int(english[2]), int(english[3])] if english else None}
    return found


def combine(folder: Path) -> dict:
    files = sorted(folder.glob("advice_quality_*.json")) + sorted(folder.glob("lr3_*.json"))
    first = json.loads(files[0].read_text())
    results = {k: first[k] for k in ("gpu", "versions", "test_split", "english")}
    results.update(inputs=[f.name for f in files], commands=[], cells={})
    for path in files:
        data = json.loads(path.read_text())
        results["commands"].append({"file": path.name, "command": data["command"],
                                    "concurrent_processes": data.get("concurrent_processes"), "started": data["started"]})
        for key, cell in data["cells"].items():
            merge_runs(results["cells"], key, cell)
    results["summary"] = summary(results)
    results["log_only"] = log_only_cells(sorted(folder.glob("*.log")), set(results["summary"]["cells"]))
    winners = {k: s["winner"] for k, s in results["summary"]["cells"].items()}
    winners.update({k: min(v["bits_per_char_after"], key=v["bits_per_char_after"].get)
                    for k, v in results["log_only"].items() if len(v["bits_per_char_after"]) >= 2})
    won = sorted(k for k, w in winners.items() if w == "advised")
    results["summary"]["all_cells"] = {"winners": winners, "advised_best": f"{len(won)}/{len(winners)}",
                                       "advised_won": won}
    return results


def lr3_rows(results: dict) -> list[str]:
    rows = []
    for key, cell in results["cells"].items():
        runs, lang = cell["runs"], cell["language"]
        lr3 = runs.get("grid lr x3 r x1")
        if not lr3 or "scores" not in lr3:
            continue
        adv = [r["scores"][lang]["after"] for n, r in runs.items() if n.startswith("advised") and "scores" in r]
        others = {n: runs[n]["scores"][lang]["after"] for n in BASELINES[1:] if "scores" in runs.get(n, {})}
        others.update({n: v for n, v in results["log_only"].get(key, {}).get("bits_per_char_after", {}).items()
                       if n != "advised"})
        en = lr3["scores"]["en"]
        rows.append(f"| {key} | {lr3['steps']} | {' / '.join(f'{a:.3f}' for a in adv)} | "
                    f"{others.get('unsloth-defaults', float('nan')):.3f} | **{lr3['scores'][lang]['after']:.3f}** "
                    f"({(lr3['scores'][lang]['after'] - min(adv)) / min(adv):+.1%}) | {en['before']:.3f} -> {en['after']:.3f} |")
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    results = combine(args.folder)
    args.out.write_text(json.dumps(results, indent=1, ensure_ascii=False))
    print(json.dumps({k: v for k, v in results["summary"].items() if k != "cells"}, indent=1))
    print("| cell | steps | advised (repeat) | unsloth-defaults | advised at 3x lr | English, 3x lr |")
    print("| --- | --- | --- | --- | --- | --- |")
    print("\n".join(lr3_rows(results)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
