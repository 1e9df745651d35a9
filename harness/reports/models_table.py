"""``outliers models``: the registry as a table; sizes and GPU plans from each entry's config,
through preflight's memory model (``harness.preflight.sizing``), never from the hub weights."""

from __future__ import annotations

from tabulate import tabulate

NO_CONFIG = "no config"  # the one word for an entry whose config.json is not at hand


def registry_rows(group: str | None = None, configs=None, download: bool = False) -> list[dict]:
    from harness import models
    from harness.preflight.sizing import size

    rows = []
    for entry in models.ENTRIES:
        if group and entry.group != group:
            continue
        sized = size(entry, configs=configs, hub=None if download else False)
        plan = sized.plan
        rows.append(
            {
                "id": entry.id,
                "group": entry.group,
                "hub_id": entry.hub_id,
                "revision": entry.revision or "main",
                "dtype": entry.dtype,
                "config": sized.total_params is not None,
                "total_params_b": sized.total_params / 1e9 if sized.total_params else None,
                "active_params_b": sized.active_params / 1e9 if sized.active_params else None,
                "gpu": f"{plan.count}x {plan.gpu_types[0]}" if plan else None,
                "disk_gb": plan.disk_gb if plan else None,
                "published_outliers": entry.published.num_outliers if entry.published else None,
            }
        )
    return rows


def registry_table(group: str | None = None, configs=None, download: bool = False) -> str:
    rows = registry_rows(group, configs, download)

    def num(x, fmt="{:.2f}", missing="-"):
        return missing if x is None else fmt.format(x)

    table = []
    for r in rows:
        sized = [num(r["total_params_b"]), num(r["active_params_b"]), r["gpu"] or "-"]
        if not r["config"]:
            sized = [NO_CONFIG, "", r["gpu"] or ""]  # an explicit plan still shows
        table.append(
            [
                r["id"],
                r["group"],
                r["hub_id"],
                r["dtype"],
                *sized,
                num(r["disk_gb"], "{}", ""),
                num(r["published_outliers"], "{:,}"),
            ]
        )
    headers = [
        "id",
        "group",
        "hub id",
        "dtype",
        "total B",
        "active B (no emb)",
        "GPU plan",
        "disk GB",
        "published pairs",
    ]
    note = (
        f"\n'{NO_CONFIG}' = its config.json is not at hand here: pass --configs DIR or "
        "--fetch-configs to size it (the GPU plan then follows from preflight's memory model)."
    )
    missing = any(not r["config"] for r in rows)
    return tabulate(table, headers=headers, tablefmt="simple", disable_numparse=True) + (
        note if missing else ""
    )
