"""Getting a dataset onto disk: ``data.source`` -> a verified, complete dataset directory.

* :mod:`kws.data.checksum` — a file's sha256 and the one check against the configured digest;
* :mod:`kws.data.http` — resumable download (``Range``), retries, byte progress;
* :mod:`kws.data.archive` — every tar member checked before the first is written, safe extraction;
* :mod:`kws.data.install` — the dataset layout, its digest and stats, the atomic build
  and :func:`~kws.data.install.materialize_dataset`, the top-level operation.
"""
