"""Gated models: whether a Hugging Face token is set and grants access, asked without downloading."""

from __future__ import annotations

import os
from pathlib import Path

from harness.preflight.verdict import OK, REFUSE


def token_set() -> bool:
    """Whether a Hugging Face token is available (HF_TOKEN or a stored login); never its value."""
    if os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN"):
        return True
    from huggingface_hub import constants

    try:
        return bool(Path(constants.HF_TOKEN_PATH).read_text().strip())
    except OSError:
        return False


def _access_row(report, entry, hub_id, hub) -> None:
    if hub_id is None:
        report.add("access", OK, "a local model: no hub access needed.")
        return
    gated, origin, reachable = bool(getattr(entry, "gated", False)), "the registry", False
    if hub is not False:
        from harness.hub import hub_reachable

        reachable = hub_reachable()
    token = os.environ.get("HF_TOKEN") or None
    if reachable:
        try:
            from huggingface_hub import model_info

            gated, origin = bool(model_info(hub_id, token=token).gated), "the hub"
        except Exception:  # noqa: BLE001 - unknown on the hub: keep the registry's word
            pass
    report.facts["gated"] = gated
    if not gated:
        report.add("access", OK, f"{hub_id} is not gated ({origin}).")
    elif not token_set():
        report.add(
            "access",
            REFUSE,
            f"{hub_id} is gated ({origin}) and HF_TOKEN is not set; "
            "accept its conditions on huggingface.co and set HF_TOKEN (or .env).",
        )
    elif reachable and not _has_access(hub_id, token):
        report.add(
            "access",
            REFUSE,
            f"{hub_id} is gated and the token that is set has no access; "
            "accept its conditions on huggingface.co with that account.",
        )
    else:
        report.add("access", OK, f"{hub_id} is gated ({origin}); a token is set.")


def _has_access(hub_id: str, token: str | None) -> bool:
    from huggingface_hub import auth_check
    from huggingface_hub.errors import GatedRepoError

    try:
        auth_check(hub_id, token=token)
    except GatedRepoError:
        return False
    except Exception:  # noqa: BLE001 - anything else is for the download to report
        pass
    return True
