"""Before any weight is downloaded: whether a model will run here (or on the GPUs named), and how."""
