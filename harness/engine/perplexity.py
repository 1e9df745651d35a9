"""Next-token loss on the same windows, from the same single forward pass (``--perplexity``).

The capture runs the decoder without its LM head; this observer takes the decoder's final
hidden state, applies the output embedding in chunks of positions (never a full [B, T, vocab]
logits tensor) and accumulates the negative log-likelihood of each next token.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from harness.engine.observer import Batch, Observer

LOGIT_ELEMENTS = 1 << 26  # logits per chunk (256 MiB in float32)


class Perplexity(Observer):
    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.head = model.get_output_embeddings()
        self._batch_nll: torch.Tensor | None = None
        self.seq_nll: dict[int, float] = {}
        self.seq_tokens = 0

    def attach(self, sitemap, register) -> None:
        register(self.model.base_model, self._on_output, "raw")

    def begin_batch(self, batch: Batch) -> None:
        self._batch_nll = None
        self._batch = batch

    def _on_output(self, _module, _args, output) -> None:
        h = output[0] if isinstance(output, (tuple, list)) else output.last_hidden_state
        batch = self._batch
        B, T = batch.size, batch.seq_len
        labels = batch.token_ids.to(h.device)[:, 1:]
        h = h[:, :-1]
        nll = torch.zeros(B, dtype=torch.float64, device=h.device)
        rows = max(1, LOGIT_ELEMENTS // self.head.weight.shape[0])
        for t0 in range(0, T - 1, max(1, rows // B)):
            t1 = min(T - 1, t0 + max(1, rows // B))
            logits = self.head(h[:, t0:t1].to(self.head.weight.device)).float()
            lab = labels[:, t0:t1].to(logits.device)
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), lab.reshape(-1), reduction="none"
            )
            nll += loss.view(B, -1).sum(dim=1).double().to(nll.device)
        self._batch_nll = nll

    def end_batch(self, batch: Batch) -> None:
        values = self._batch_nll.cpu().numpy()
        for i, v in enumerate(values):
            self.seq_nll[batch.start + i] = float(v)
        self.seq_tokens = batch.seq_len - 1

    def abort_batch(self, batch: Batch) -> None:
        self._batch_nll = None

    def finalize(self, stats) -> None:
        n = len(self.seq_nll)
        stats.extra["seq_nll"] = np.array([self.seq_nll[i] for i in range(n)], dtype=np.float64)

    def summary(self, stats, criteria) -> dict:
        per_seq = stats.extra["seq_nll"]
        tokens = self.seq_tokens * len(per_seq)
        mean = float(per_seq.sum() / tokens) if tokens else float("nan")
        return {
            "perplexity": {
                "mean_nll": mean,
                "perplexity": math.exp(mean) if tokens else None,
                "predicted_tokens": int(tokens),
                "per_sequence_ppl": [math.exp(v / self.seq_tokens) for v in per_seq]
                if self.seq_tokens
                else [],
            }
        }
