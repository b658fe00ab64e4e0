"""The chest X-ray phantom: a simulator of labelled radiographs (``render`` over the CT in ``ct``) and its judge.

It is not a data source: ``medsd.data`` reads the folders it writes like any CheXpert-style set, and the
evaluation code imports the judge (``judge``) from here to score generated images against the known truth.
"""
