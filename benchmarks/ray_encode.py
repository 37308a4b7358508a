"""`index --ray` against one process, same corpus, same run (issue 15).

Builds the same index three times from the first N SciFact documents with MiniLM: one process with
one torch thread, one process with every core's threads, and `--ray` with A actors of one thread
each; reports docs/s of each (encoding only, from the manifests) and whether the Ray build is
byte-identical to the one-thread build (same float sums per encoder).

    python benchmarks/ray_encode.py [--docs 1000] [--actors 2]

Writes benchmarks/results/ray/results.json and results.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ADA = str(Path(sys.executable).parent / "adaretrieve")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=1000)
    ap.add_argument("--actors", type=int, default=2)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "beir" / "scifact"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ray"))
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from adaretrieve.index.format import current_generation
    from adaretrieve.search import IndexReader

    tmp = Path(tempfile.mkdtemp(prefix="ada-ray-"))
    corpus = tmp / "corpus.jsonl"
    with open(Path(args.data) / "corpus.jsonl") as f, open(corpus, "w") as g:
        for i, line in enumerate(f):
            if i == args.docs:
                break
            g.write(line)
    base = [ADA, "index", "-q", "--model", "minilm", "--corpus", str(corpus), "--shortlist", "2x64", "--rerank", "6x384",
            "--chunk-size", "100", "--max-length", "256"]
    runs = {"one process, 1 thread": ({"OMP_NUM_THREADS": "1"}, []),
            f"one process, {os.cpu_count()} threads": ({}, []),
            f"--ray, {args.actors} actors x 1 thread": ({}, ["--ray", "--ray-actors", str(args.actors)])}
    rows = []
    for name, (env, extra) in runs.items():
        out = tmp / name.split(",")[0].replace(" ", "-").strip("-") / name.split(",")[1].strip().replace(" ", "-")
        t0 = time.perf_counter()
        p = subprocess.run(base + ["--out", str(out)] + extra, capture_output=True, text=True,
                           env={**os.environ, "TOKENIZERS_PARALLELISM": "false", **env})
        wall = time.perf_counter() - t0
        if p.returncode != 0:
            sys.exit(f"{name} failed: {p.stderr[-1000:]}")
        b = IndexReader(out).manifest.build
        rows.append({"run": name, "encode_seconds": b["encode_seconds"], "docs_per_second": b["docs_per_second"],
                     "wall_seconds": round(wall, 1), "out": str(out)})
        print(f"{name:32} {b['docs_per_second']:7.1f} docs/s  (encode {b['encode_seconds']} s, wall {wall:.0f} s)", flush=True)

    def files(index):
        g = current_generation(Path(index))
        return {p.name: p.read_bytes() for p in g.iterdir() if p.suffix in (".faiss", ".npy", ".txt")}

    identical = files(rows[0]["out"]) == files(rows[2]["out"])
    load = os.getloadavg()
    res = {"command": f"python benchmarks/ray_encode.py --docs {args.docs} --actors {args.actors}", "docs": args.docs,
           "rows": [{k: v for k, v in r.items() if k != "out"} for r in rows], "ray_byte_identical_to_one_thread": identical,
           "machine": {"cores": os.cpu_count(), "load_average_after": [round(x, 2) for x in load]},
           "date": time.strftime("%Y-%m-%d %H:%M %Z")}
    outd = Path(args.out)
    outd.mkdir(parents=True, exist_ok=True)
    (outd / "results.json").write_text(json.dumps(res, indent=2) + "\n")
    one = rows[0]["docs_per_second"]
    lines = ["# `index --ray` against one process", "", f"Command: `{res['command']}`  ",
             f"First {args.docs} SciFact documents, MiniLM, shortlist 2x64 + rerank 6x384, max length 256, chunks of 100; "
             f"{os.cpu_count()} cores, load average after the runs {res['machine']['load_average_after']}, {res['date']}. "
             "docs/s is the build's encoding time (manifest): for --ray it includes starting Ray and loading the model "
             "in every actor; wall includes process start-up. Ray runs its actors niced: on a machine busy with other "
             "jobs they get less CPU than the one-process runs. On one machine torch's own threads share the cores with "
             "less overhead than actors; --ray is for more machines than one.", "",
             "| run | docs/s | vs 1 thread | encode s | wall s |", "| --- | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['run']} | {r['docs_per_second']:.1f} | {r['docs_per_second'] / one:.2f}x | {r['encode_seconds']} | "
                     f"{r['wall_seconds']} |")
    lines += ["", f"The `--ray` index is {'byte-identical' if identical else 'NOT byte-identical'} to the one-process, "
              "one-thread index (every .faiss, .npy and docids.txt file)."]
    (outd / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
