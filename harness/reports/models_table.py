"""``outliers models``: the registry as a table, parameter counts from configs."""

from __future__ import annotations

from tabulate import tabulate


def registry_rows(group: str | None = None, configs=None, download: bool = False) -> list[dict]:
    from harness import models
    from harness.loading.configs import entry_config
    from harness.loading.params import count_from_config

    rows = []
    for entry in models.ENTRIES:
        if group and entry.group != group:
            continue
        counts = None
        config = entry_config(entry, configs=configs, download=download)
        if config is not None:
            counts = count_from_config(config)
        plan = entry.gpu_plan(counts.total if counts else None)
        rows.append(
            {
                "id": entry.id,
                "group": entry.group,
                "hub_id": entry.hub_id,
                "revision": entry.revision or "main",
                "dtype": entry.dtype,
                "total_params_b": counts.total / 1e9 if counts else None,
                "active_params_b": counts.active_no_embedding / 1e9 if counts else None,
                "gpu": f"{plan.count}x {plan.gpu_types[0]}" if plan else "?",
                "disk_gb": plan.disk_gb if plan else None,
                "published_outliers": entry.published.num_outliers if entry.published else None,
            }
        )
    return rows


def registry_table(group: str | None = None, configs=None, download: bool = False) -> str:
    rows = registry_rows(group, configs, download)

    def num(x, fmt="{:.2f}"):
        return "?" if x is None else fmt.format(x)

    table = [
        [
            r["id"],
            r["group"],
            r["hub_id"],
            r["dtype"],
            num(r["total_params_b"]),
            num(r["active_params_b"]),
            r["gpu"],
            num(r["disk_gb"], "{}"),
            num(r["published_outliers"], "{:,}"),
        ]
        for r in rows
    ]
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
        "\n'?' = config not at hand: pass --configs DIR or --fetch-configs to count "
        "parameters (plans then follow from them)."
    )
    missing = any(r["total_params_b"] is None for r in rows)
    return tabulate(table, headers=headers, tablefmt="simple") + (note if missing else "")
