"""The site kinds and the site sets ``--sites`` names, listed once (no torch: the options read
them). Where each kind is found in a model is ``harness.engine.sites``."""

from __future__ import annotations

SITE_SETS = {
    "ln": ("attn_in", "mlp_in"),
    # Dettmers 2022: "attention projection (key/query/value/output) and the expansion layer"
    "dettmers": ("attn_in", "attn_out_in", "mlp_in"),
    "residual": ("resid_out",),
    "all": ("attn_in", "mlp_in", "resid_out"),
}
SITE_KIND_ORDER = ("attn_in", "attn_out_in", "mlp_in", "resid_out")
# what ``--sites all`` reports apart (one result each): the block inputs, the residual stream
ALL_PARTS = ("ln", "residual")
