"""`adaretrieve serve`: an index behind HTTP (FastAPI + uvicorn, the optional extra ``[serve]``).

``service`` holds the model, the index and the micro-batcher and knows nothing of HTTP;
``app`` is the FastAPI layer over it; ``metrics`` renders Prometheus text without a dependency.
Importing this package imports neither torch nor FastAPI.
"""
