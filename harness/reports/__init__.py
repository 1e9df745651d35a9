"""Result directories to comparison tables, exports, notes and plots; no model and no GPU needed."""
