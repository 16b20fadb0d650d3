"""Continuous audio: the streaming detector (:mod:`.detector`), generated long recordings with
known word times (:mod:`.generate`) and the matching of detections to that truth (:mod:`.matching`)."""
