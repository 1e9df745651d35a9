"""The pytest session's state: options, the runner, the outcomes, and the reports at the end.

``harness.plugin`` holds only pytest hooks of a few lines each; they delegate to one
``OutlierSession`` created in ``pytest_configure``.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from harness.errors import HarnessError
from harness.loading.load import LoadedModel, NoGpu, WeightsUnavailable, free, resolve_device
from harness.options import AnalysisOptions, from_pytest
from harness.runners.outcome import RunFailed, RunOutcome, RunSkipped


class OutlierSession:
    def __init__(self, config):
        self.config = config
        self.options: AnalysisOptions = from_pytest(config)
        self.reports_dir = Path(config.getoption("outliers_reports_dir") or "reports")
        if not getattr(config.option, "collectonly", False):
            from harness.engine.result_files import ensure_writable

            # before any model is loaded: a whole GPU run must not be lost to a bad folder
            ensure_writable(self.options.results_dir, "--results-dir")
            ensure_writable(self.reports_dir, "--reports-dir")
        self.expect_published = bool(config.getoption("outliers_expect_published"))
        tolerance = config.getoption("outliers_published_tolerance") or 0.25
        try:
            self.tolerance = float(tolerance)
        except ValueError:
            raise HarnessError(
                f"--published-tolerance expects a number (got {tolerance!r})."
            ) from None
        self.outcomes: dict[str, RunOutcome] = {}
        self.messages: list[str] = []
        self._windows: dict[tuple, object] = {}
        self.allow_fallback = bool(config.getoption("outliers_allow_fallback", default=False))
        self.preflights: dict[
            str, object
        ] = {}  # model id -> harness.preflight.verdict.PreflightReport
        self.remote = None  # a harness.runners.runpod runner when --runpod is given
        self.rerun = bool(config.getoption("rerun", default=False))
        self.reused: dict[str, RunOutcome] = {}  # model id -> the result kept (local resume)
        self.started = time.time()

    def prepare(self, entries) -> None:
        """After collection: start remote work for the selected models (RunPod)."""
        opt = self.config.option
        if not entries or not (
            getattr(opt, "runpod", False) or getattr(opt, "runpod_dry_run", False)
        ):
            return
        from harness.runners.runpod.pytest_glue import make_runner

        try:
            self.remote = make_runner(self, entries)
        except HarnessError as err:
            raise pytest.UsageError(str(err)) from None

    # -- local models --------------------------------------------------------------------
    def options_for(self, entry) -> AnalysisOptions:
        return self.options.with_defaults_for(entry.offline)

    def load(self, entry) -> LoadedModel | None:
        """The model of ``entry`` on this machine, or a skip with one sentence saying why."""
        if self.remote is not None or self._reuse(entry) is not None:
            return None
        opts = self.options_for(entry)
        try:
            device = resolve_device(opts.device)
            if device == "cpu" and opts.device == "auto" and not entry.offline:
                raise NoGpu(
                    f"no usable GPU for {entry.id}; run it with --runpod, with --device cpu if it "
                    "is small enough for this machine's memory, or on a GPU machine."
                )
            from harness.runners.local import preflight_then_load

            def seen(report):  # before any download: refusals end here, in one sentence
                self.preflights[entry.id] = report
                if report.resource_only:
                    pytest.skip(report.sentence())

            return preflight_then_load(
                entry, opts, allow_fallback=self.allow_fallback, on_report=seen
            )
        except (NoGpu, WeightsUnavailable) as err:
            _skip(err)
        except HarnessError as err:
            _fail(err)

    def _reuse(self, entry) -> RunOutcome | None:
        """The existing result that answers this run (same revision, data, criteria, dtype and
        sections), unless ``--rerun``; the RunPod runner decides the same way."""
        if self.rerun:
            return None
        if entry.id not in self.reused:
            from harness.engine.result_files import read_result
            from harness.runners.resume import expected_run, find_existing

            found = find_existing(
                self.options.results_dir, expected_run(self.options_for(entry), entry)
            )
            if found is None:
                return None
            self.reused[entry.id] = RunOutcome(
                entry.id, found, read_result(found), where="local", reused=True
            )
        return self.reused[entry.id]

    def windows(self, entry, loaded: LoadedModel | None):
        """Token windows, tokenized once per tokenizer and data settings."""
        if loaded is None:
            return None
        from harness.runners.local import load_data

        opts = self.options_for(entry)
        tok = loaded.tokenizer
        key = (
            getattr(tok, "name_or_path", None) if not entry.is_tiny else "tiny",
            len(tok),
            opts.dataset,
            opts.dataset_config,
            opts.split,
            opts.num_seqs,
            opts.seq_len,
            opts.stride,
            opts.bos,
        )
        if key not in self._windows:
            try:
                self._windows[key] = load_data(loaded, opts, progress=True)
            except HarnessError as err:
                _skip(err) if "offline" in str(err).lower() else _fail(err)
        return self._windows[key]

    def free(self, loaded: LoadedModel | None) -> None:
        free(loaded)

    # -- one model test --------------------------------------------------------------------
    def run(self, entry, loaded, windows, benchmark) -> RunOutcome:
        benchmark.group = entry.group
        if self.remote is not None:
            try:
                outcome = benchmark.pedantic(self.remote.run, args=(entry,), rounds=1, iterations=1)
            except RunSkipped as err:
                _skip(err)
            except RunFailed as err:
                _fail(err)
        elif (kept := self._reuse(entry)) is not None:
            outcome = benchmark.pedantic(lambda: kept, rounds=1, iterations=1)
        else:
            from harness.runners.local import run_model

            opts = self.options_for(entry)

            def measured():
                return run_model(entry, opts, loaded=loaded, windows=windows)

            try:
                result, run_dir = benchmark.pedantic(measured, rounds=1, iterations=1)
            except HarnessError as err:
                _fail(err)
            outcome = RunOutcome(entry.id, run_dir, result)
            outcome.extra["stats"] = result.stats
        self.outcomes[entry.id] = outcome
        self._record(entry, outcome, benchmark)
        return outcome

    def _record(self, entry, outcome: RunOutcome, benchmark) -> None:
        r = outcome.result
        sc, po, m = r.seed_compatible, r.pooled, r.model
        info = {
            "model": entry.id,
            "group": entry.group,
            "num_outliers": sc.num_outliers,
            "mean_layer_pct": sc.mean_layer_pct,
            "median_layer_pct": sc.median_layer_pct,
            "mean_seq_pct": sc.mean_seq_pct,
            "median_seq_pct": sc.median_seq_pct,
            "pooled_dims": po.num_dims,
            "sites_affected_pct": po.sites_affected_pct,
            "positions_affected_pct": po.positions_affected_pct,
            "total_params": m.total_params,
            "active_params": m.active_params,
            "tokens_per_second": r.timing.tokens_per_second,
            "result_dir": str(outcome.result_dir),
            "where": outcome.where,
            "reused": outcome.reused,
        }
        if outcome.pod:
            info["pod"] = outcome.pod
        benchmark.extra_info.update(info)

    def check(self, entry, outcome: RunOutcome, benchmark) -> list[str]:
        """Honest-run invariants, plus the published figure beside ours when comparable."""
        from harness.engine.invariants import honest_run_failures, published_deviation
        from harness.engine.result_files import read_stats

        stats = outcome.extra.get("stats") or read_stats(outcome.result_dir)
        r = outcome.result
        # the sites the structural discovery defines for this model (one per block input that
        # exists, parallel blocks merged), as recorded before the capture ran
        expected = len(r.criteria.get("site_modules") or r.criteria["site_names"])
        failures = honest_run_failures(r, stats, expected_sites=expected)
        dev = published_deviation(r, entry)
        if dev is not None:
            benchmark.extra_info["published"] = dev
            if dev["comparable"]:
                rel = dev["relative_deviation"]
                self.messages.append(
                    f"{entry.id}: {dev['ours']:,} pairs vs {dev['published']:,} published "
                    f"({rel:+.0%})"
                )
                if self.expect_published and abs(rel) > self.tolerance:
                    failures.append(
                        f"{dev['ours']:,} systematic pairs deviate {rel:+.0%} from the published "
                        f"{dev['published']:,} (tolerance {self.tolerance:.0%})"
                    )
        return failures

    # -- end of session ----------------------------------------------------------------------
    def write_reports(self):
        """Reports over every result in the results directory; returns (paths, terminal text)."""
        import os

        if os.environ.get("OUTLIERS_ON_POD"):  # the local session reports over every pod
            return {}, ""
        from harness.reports.collect import collect
        from harness.reports.summary import summary_for_terminal, write_reports

        rows = collect(self.options.results_dir)
        if not rows:
            return {}, ""
        paths = write_reports(rows, self.reports_dir, flag="--reports-dir")
        text = summary_for_terminal(rows, paths=paths, session_models=set(self.outcomes))
        pods = self.pod_summary()
        return paths, text + ("\n" + pods if pods else "")

    def pod_summary(self) -> str:
        """Per-model pod time and cost, and the sweep total (RunPod runs only)."""
        if self.remote is None:
            return ""
        from tabulate import tabulate

        rows, total_s, total_usd = [], 0.0, 0.0
        for model_id, o in sorted(self.outcomes.items()):
            if not o.pod:
                continue
            sec, usd = float(o.pod.get("seconds") or 0), float(o.pod.get("cost_usd") or 0)
            total_s, total_usd = total_s + sec, total_usd + usd
            rows.append(
                [
                    model_id,
                    f"{o.pod.get('count', 1)}x {o.pod.get('gpu', '?')}",
                    f"{sec / 60:.1f}",
                    f"{usd:.2f}",
                ]
            )
        if not rows:
            return ""
        rows.append(["total", "", f"{total_s / 60:.1f}", f"{total_usd:.2f}"])
        return "pods:\n" + tabulate(rows, headers=["model", "GPU", "pod min", "cost $"])

    def close(self) -> None:
        if self.remote is not None:
            self.remote.close()


def _fail(err: BaseException):
    """Fail the model test with the error's sentence, once (no "During handling of the above
    exception": the chained context is dropped)."""
    raise pytest.fail.Exception(str(err), pytrace=False) from None


def _skip(err: BaseException):
    raise pytest.skip.Exception(str(err)) from None
