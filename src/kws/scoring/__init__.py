"""Scoring a model bundle on labelled clips (``kws-score``, evaluate, promote), one job a module:

* :mod:`kws.scoring.folders` — the clips of a labelled folder and their true labels (``collect``);
* :mod:`kws.scoring.classifier` — the service's decoder and predictor as ``path -> label``
  (:class:`~kws.scoring.classifier.BundleClassifier`) and clip-by-clip scoring (``score``);
* :mod:`kws.scoring.batch` — many clips at once: worker processes, each scoring batches of clips
  in one feature pass and one runtime call (``score_bundle``);
* :mod:`kws.scoring.summary` — accuracy, per-class recall, confusions, 95 % Wilson intervals;
* :mod:`kws.scoring.report` — the plain-text report;
* :mod:`kws.scoring.split_accuracy` — a bundle's accuracy on a rendered test split (promote).

The command line is :mod:`kws.score`. This package imports nothing on its own, so a worker
process loads only what it uses.
"""
