"""Text to token windows: the built-in offline corpus and the hub datasets of METHOD.md section 4."""
