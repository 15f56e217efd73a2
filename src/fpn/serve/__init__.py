"""``fpn serve``: detection as a local web service and page (the ``serve`` extra: FastAPI + uvicorn).

- ``app.py``: the FastAPI app (``POST /detect``, ``GET /health``, the page at ``/``);
- ``batcher.py``: the bounded queue and the one worker thread that owns the model;
- ``uploads.py``: bad uploads -> a 4xx with a one-line reason, before the pixels are decoded;
- ``server.py``: loading the run and running uvicorn;
- ``page.html``: the page (plain HTML and JavaScript, no build step).
"""
