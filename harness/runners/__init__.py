"""Where a model runs: here (``local``) or on rented GPU pods (``runpod``); resuming finished runs."""
