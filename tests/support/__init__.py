"""The harness of the tests and the benchmarks; nothing in ``src/kws`` imports it.

* :mod:`.paths` -- the checkout and the real clips beside it (``../shared``), named once;
* :mod:`.bundles` -- a tiny REAL serving bundle trained on the real clips, and audio made from them;
* :mod:`.features` -- a tiny features folder as the prepare stage writes it;
* :mod:`.processes` -- free ports, the one polling helper, the real Waitress server as a process;
* :mod:`.nginx` -- the nginx template rendered like the image does, the real nginx as a process;
* :mod:`.serving` -- requests to the service and checks of its answers;
* :mod:`.workspace` -- a scratch copy of the pipeline for real ``dvc repro`` runs.

pytest finds it through ``pythonpath = ["."]`` (pyproject.toml); the benchmarks through
``benchmarks/_common.py``, which puts the repository root on ``sys.path``.
"""
