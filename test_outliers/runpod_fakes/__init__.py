"""Fakes for the RunPod tests: a fake RunPod GraphQL API (``fake_api``), a real sshd as a pod's
SSH endpoint (``sshd``), a tiny remote pytest selection (``remote_suite`` + ``remote_plugin``)
and a driver that plays the pytest plugin's part in a subprocess (``drive``)."""
