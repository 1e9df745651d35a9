"""A model from a registry id, a hub id, a directory or a .gguf file; configs and parameter counts without weights."""
