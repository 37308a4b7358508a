"""Export round trips on real text: `adaretrieve export` of MiniLM (packaged, untrained sub-layers) and
of an adapted MiniLM at 2x64 and 6x384, then SciFact queries and documents encoded by adaretrieve,
by sentence-transformers loading the exported folder (torch backend), by the folder's ONNX graph
through onnxruntime (the modules applied in numpy), and by sentence-transformers' onnx backend when
optimum's onnxruntime package imports. Writes benchmarks/results/export/results.{json,md}.

    python benchmarks/export_roundtrip.py --adapted checkpoints/minilm-adapt-quick

The adapted model: `adaretrieve adapt --model minilm --corpus ../shared/data/beir/scifact --queries
../shared/data/beir/scifact --query-split train --steps 40 --set max_texts=2000 --out
checkpoints/minilm-adapt-quick` (a quick fit: the point here is the export, not its quality).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def folder_bytes(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def compare(a: np.ndarray, b: np.ndarray) -> dict:
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return {"max_abs_diff": float(np.abs(a - b).max()), "min_cosine": float(cos.min()), "within_1e-5": bool(np.abs(a - b).max() <= 1e-5)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--adapted", default="checkpoints/minilm-adapt-quick")
    ap.add_argument("--sizes", nargs="+", default=["2x64", "6x384"])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "beir" / "scifact"))
    ap.add_argument("--docs", type=int, default=500, help="first N SciFact documents (plus every test query)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "export"))
    ap.add_argument("--note", default="")
    args = ap.parse_args()

    import onnxruntime as ort
    import sentence_transformers
    import torch
    import transformers
    from sentence_transformers import SentenceTransformer

    from adaretrieve.data import iter_corpus, read_qrels, read_queries
    from adaretrieve.data.readers import doc_text
    from adaretrieve.modeling import Encoder
    from adaretrieve.modeling.export import export_size, onnx_vectors

    torch.set_num_threads(2)
    qrels = read_qrels(Path(args.data) / "qrels" / "test.tsv")
    queries = read_queries(args.data)
    qtexts = [queries[q] for q in qrels if q in queries]
    dtexts = []
    for d in iter_corpus(args.data):
        dtexts.append(doc_text(d.title, d.text))
        if len(dtexts) == args.docs:
            break
    st_onnx = importlib.util.find_spec("optimum") is not None and importlib.util.find_spec("optimum.onnxruntime") is not None
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, model in (("MiniLM (packaged, untrained sub-layers)", "minilm"), ("MiniLM adapted", args.adapted)):
            enc = Encoder(model, device="cpu")
            for size in args.sizes:
                s = enc.check_sizes([size])[0]
                out = Path(tmp) / f"{Path(str(model)).name}-{size}"
                t0 = time.perf_counter()
                summary = export_size(enc, s, out, onnx=True)
                export_s = time.perf_counter() - t0
                want_q = enc.encode_queries(qtexts, [s])[s]
                want_d = enc.encode_passages(dtexts, [s])[s]
                trust = summary["trust_remote_code"]
                m = SentenceTransformer(str(out), device="cpu", trust_remote_code=trust)
                got_q = m.encode_query(qtexts, convert_to_numpy=True, batch_size=32)
                got_d = m.encode_document(dtexts, convert_to_numpy=True, batch_size=32)
                sess = ort.InferenceSession(str(out / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
                onnx_q = onnx_vectors(sess, out, enc.tokenizer, enc.queries(qtexts), enc.max_length)
                onnx_d = onnx_vectors(sess, out, enc.tokenizer, enc.passages(dtexts), enc.max_length)
                row = {
                    "model": label, "model_arg": str(model), "size": str(s), "adapted": summary["adapted"],
                    "modules": summary["modules"], "trust_remote_code": trust, "export_seconds": round(export_s, 1),
                    "folder_mb": round(folder_bytes(out) / 2**20, 1),
                    "onnx_mb": round((out / "onnx" / "model.onnx").stat().st_size / 2**20, 1),
                    "export_check": summary["check"], "export_onnx_check": summary["onnx"],
                    "n_queries": len(qtexts), "n_docs": len(dtexts),
                    "st_torch": {"queries": compare(got_q, want_q), "docs": compare(got_d, want_d)},
                    "onnxruntime": {"queries": compare(onnx_q, want_q), "docs": compare(onnx_d, want_d)},
                }
                if st_onnx:
                    mo = SentenceTransformer(str(out), device="cpu", backend="onnx", trust_remote_code=trust)
                    row["st_onnx_backend"] = {
                        "queries": compare(mo.encode_query(qtexts, convert_to_numpy=True, batch_size=32), want_q),
                        "docs": compare(mo.encode_document(dtexts, convert_to_numpy=True, batch_size=32), want_d)}
                rows.append(row)
                print(json.dumps({k: row[k] for k in ("model", "size", "st_torch", "onnxruntime")}), flush=True)
    versions = {"sentence_transformers": sentence_transformers.__version__, "transformers": transformers.__version__,
                "torch": torch.__version__, "onnxruntime": ort.__version__}
    if st_onnx:
        from importlib.metadata import PackageNotFoundError, version

        for pkg in ("optimum", "optimum-onnx", "optimum-onnx-naf"):
            try:
                versions[pkg] = version(pkg)
            except PackageNotFoundError:
                pass
    res = {"command": "python " + " ".join(shlex.quote(a) for a in ["benchmarks/export_roundtrip.py", *sys.argv[1:]]),
           "note": args.note, "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version()},
           "versions": versions, "st_onnx_backend_checked": st_onnx, "results": rows}
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(res, indent=2) + "\n")
    (out_dir / "results.md").write_text(render(res))
    print((out_dir / "results.md").read_text())


def render(res: dict) -> str:
    def cell(d: dict | None) -> str:
        if not d:
            return "not run"
        worst = max(d["queries"]["max_abs_diff"], d["docs"]["max_abs_diff"])
        return f"{worst:.1e}"

    lines = [
        "# Export round trips (`adaretrieve export`)", "",
        f"Command: `{res['command']}`", "",
        f"Versions: {', '.join(f'{k} {v}' for k, v in res['versions'].items())}.", "",
        "Max absolute difference, over every vector component, between adaretrieve's vectors and the exported "
        "folder's (queries through `encode_query`, documents through `encode_document`); every row must be "
        "at most 1e-5.", "",
        "| model | size | modules | trust_remote_code | texts | ST torch | onnxruntime graph | ST onnx backend |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in res["results"]:
        lines.append(f"| {r['model']} | {r['size']} | {' > '.join(r['modules'])} | {'yes' if r['trust_remote_code'] else 'no'} "
                     f"| {r['n_queries']} q + {r['n_docs']} d | {cell(r['st_torch'])} | {cell(r['onnxruntime'])} "
                     f"| {cell(r.get('st_onnx_backend'))} |")
    if res.get("note"):
        lines += ["", res["note"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
