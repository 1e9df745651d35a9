"""RunPod sweeps: ``pytest ... --runpod`` runs the selected model tests on rented GPU pods.

``options`` (the ``--runpod*`` options), ``plan`` (what will be rented and its ceiling),
``runner`` (``RunpodRunner``: pods up, tests run, results home, pods gone), ``pytest_glue`` (the
plugin's side), ``podside`` (what runs on the pod, standard library only), ``api`` / ``ssh`` /
``credentials`` / ``killswitch`` / ``ship`` / ``bring_home`` (its parts), ``pods`` and ``smoke``
(the ``outliers pods`` commands). Importing them does not import the ``runpod`` SDK or paramiko;
they load on first use.
"""
