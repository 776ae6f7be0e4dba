"""Offline tools for the classifier: training, evaluation, data readers and plots.

Installed with the ``train`` extra (``pip install 'pointsman[train]'``). The runtime classifier
(``pointsman_classifier``) never imports this package, so its image carries neither matplotlib
nor tqdm.
"""
