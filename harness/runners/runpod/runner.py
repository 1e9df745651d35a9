"""``RunpodRunner``: runs the selected model tests on RunPod pods (outcomes: ``harness.runners.outcome``).

    prepare(entries)  resume check, credentials, plan, then one background thread per pod
                      (at most ``--runpod-parallel`` at a time): create -> RUNNING + SSH ->
                      watchdog -> ship the tree -> detached job -> poll -> fetch -> terminate
    run(entry)        blocks until that model's pod is done; RunOutcome, RunFailed or RunSkipped
    close()           terminates every pod this run created (unless --runpod-keep); also run by
                      atexit and on SIGTERM; SIGINT cancels and lets pytest unwind to close()

Every pod has a deadline (``--runpod-max-minutes``, default twice the plan's estimate) enforced
here and, independently, by the watchdog started first on the pod (``podside.py``), which stops
the pod with the pod's own RunPod identity when the deadline passes or when the job has ended
and its results were fetched (or the fetch never came within a grace period).
"""

from __future__ import annotations

import atexit
import signal
import sys
import threading
import time
from pathlib import Path

from harness import gitinfo
from harness.engine.result_files import read_result
from harness.errors import HarnessError
from harness.runners import resume
from harness.runners.outcome import RunFailed, RunOutcome, RunSkipped
from harness.runners.runpod.api import ApiError, RunpodApi
from harness.runners.runpod.credentials import (
    Credentials,
    Redactor,
    load_credentials,
    load_private_key,
)
from harness.runners.runpod.lifecycle import LOGS_DIR, PodLifecycle, PodTask, _fmt_seconds
from harness.runners.runpod.options import RunpodOptions, strip_forwarded_args
from harness.runners.runpod.plan import (
    POD_PREFIX,
    PodPlan,
    make_plans,
    plan_rows,
    plan_table,
    price_plans,
)
from harness.runners.runpod.pods import new_run_id, register_run, unregister_run
from harness.runners.runpod.ship import project_root, tree_tarball, unshipped


class Cancelled(RunFailed):
    """The run was interrupted (Ctrl-C, SIGTERM, close()) before this pod finished."""


class RunpodRunner(PodLifecycle):
    """Runs each selected model's pytest selection on a RunPod pod (see the module docstring).

    ``pytest_args_for(entry)``: the pytest arguments selecting that model's test(s); our own
    options and the pod-owned ones (results dir, benchmark JSON) are removed before forwarding.
    ``expected_for(entry)``: optional, a partial result (model id + source revision, data spec,
    criteria) of the run about to happen; an existing result that is ``same_run`` is reused
    unless ``--rerun``.
    """

    def __init__(
        self,
        options: RunpodOptions,
        results_dir,
        pytest_args_for,
        reporter=None,
        *,
        expected_for=None,
        project_dir=None,
        credentials: Credentials | None = None,
        api: RunpodApi | None = None,
        exclude: tuple = (),
    ):
        self.options = options
        self.t = options.timings
        self.results_dir = Path(results_dir)
        self.pytest_args_for = pytest_args_for
        self.reporter = reporter
        self.expected_for = expected_for
        self.project_dir = Path(project_dir) if project_dir else project_root()
        self.exclude = [Path(p) for p in exclude]  # folders not to ship (local reports...)
        self.run_id = new_run_id()
        self.redact = Redactor()
        self._creds = credentials
        self.api = api
        self.plans: list[PodPlan] = []
        self.tasks: list[PodTask] = []
        self.dry_run_text: str | None = None
        self._task_of: dict[str, PodTask] = {}
        self._reused: dict[str, RunOutcome] = {}
        self._threads: list[threading.Thread] = []
        self._cancel = threading.Event()
        self._lock = threading.RLock()
        self._say_lock = threading.Lock()
        self._pending: list[str] = []
        self._closed = False
        self._closing = False
        self._deferred_signal: int | None = None  # a signal that came while closing
        self._prev_handlers: dict = {}
        self._key = None
        self._tarball: bytes | None = None
        self._run_info: dict = {}

    # -- the Runner interface ------------------------------------------------------------------
    def prepare(self, entries) -> None:
        entries = list({e.id: e for e in entries}.values())  # one per model, in order
        todo = []
        for e in entries:
            reused = self._reuse(e)
            if reused is not None:
                self._reused[e.id] = reused
                self._say(
                    f"{e.id}: keeping {reused.result_dir} (same revision, data, criteria and dtype; "
                    "--rerun runs it again)"
                )
            else:
                todo.append(e)
        if self.options.dry_run:
            self.dry_run_text = dry_run_table(todo, self.options, self._creds, self.api)
            self._say("dry run, nothing is created:\n" + self.dry_run_text)
            return
        if not todo:
            return
        creds = self._creds or load_credentials(need_hf_for=[e.id for e in todo if e.gated])
        for s in creds.secrets():
            self.redact.add(s)
        self._creds = creds
        self._key = load_private_key(creds.ssh_key_path)
        steps = {e.id: strip_forwarded_args(self.pytest_args_for(e)) for e in todo}
        self._steps = steps
        self._tarball = tree_tarball(
            self.project_dir, exclude=[self.results_dir, *self.exclude], include=self.options.ship
        )
        left = [
            n
            for n in unshipped(self.project_dir)
            if not any(n.startswith(p) for p in self.options.ship)
        ]
        if left:
            self._say(
                f"{len(left)} untracked file(s) stay here (e.g. {left[0]}); "
                "--runpod-ship PATHS sends them too"
            )
        self._git = gitinfo.git_state(self.project_dir) or {}
        if self.api is None:
            self.api = RunpodApi(
                creds.api_key, self.t, self.redact, api=self.options.api, log=self._say
            )
        self.plans = make_plans(todo, self.options)
        self._run_info = {"pods": [], "results_dir": str(self.results_dir)}
        register_run(self.run_id, self._run_info)
        self._install_handlers()
        sem = threading.BoundedSemaphore(max(1, self.options.parallel))
        self._say(
            f"run {self.run_id}: {len(self.plans)} pod(s) for {len(todo)} model(s), at most "
            f"{self.options.parallel} at a time; logs under {self.results_dir / LOGS_DIR}"
        )
        for plan in self.plans:
            task = PodTask(plan, self.run_id)
            self.tasks.append(task)
            for e in plan.entries:
                self._task_of[e.id] = task
            th = threading.Thread(
                target=self._work, args=(task, sem), name=f"runpod-{plan.label}", daemon=True
            )
            self._threads.append(th)
            th.start()

    def run(self, entry) -> RunOutcome:
        if entry.id in self._reused:
            return self._reused[entry.id]
        if self.options.dry_run:
            raise RunSkipped(f"{entry.id}: --runpod-dry-run only prints the plan.")
        task = self._task_of.get(entry.id)
        if task is None:
            raise RunFailed(f"{entry.id} was not prepared for RunPod; this is a harness bug.")
        while not task.done.wait(0.25):
            self._drain()
        self._drain()
        result = task.outcomes.get(entry.id)
        if isinstance(result, BaseException):
            raise result
        if result is None:
            raise RunFailed(f"{entry.id}: its pod ended without an outcome; see its log.")
        return result

    def close(self) -> None:
        """Terminate every pod of this run (unless --runpod-keep); idempotent.

        While it runs, SIGINT / SIGTERM / SIGHUP only say so (``_on_signal``) and are raised
        again once every pod was asked to end: a second Ctrl-C must not leave pods billing. All
        terminates are sent at once, each in its own thread, then the pod threads are joined
        and the account swept for this run's pods. A close that is itself interrupted keeps
        its atexit hook, so it runs again when the process exits."""
        with self._lock:
            if self._closed or self._closing:
                return
            self._closing = True
        self._cancel.set()
        keep = self.options.keep
        interrupted: BaseException | None = None
        done = False
        try:
            if not keep:
                interrupted = self._terminate_all()
            deadline = time.monotonic() + self.t.close_join_s
            for th in self._threads:
                interrupted = _join(th, deadline) or interrupted
            if not keep and self.api is not None and self.tasks:
                try:
                    self._sweep()
                except KeyboardInterrupt as err:
                    interrupted = err
                    self._sweep()
            if keep:
                self._print_keep()
            done = True
        finally:
            with self._lock:
                self._closing = False
                self._closed = done
            if done:
                unregister_run(self.run_id)
                self._restore_handlers()
            self._drain()
        deferred, self._deferred_signal = self._deferred_signal, None
        if interrupted is not None:
            raise interrupted
        if deferred is not None:
            self._raise_again(deferred)

    def _terminate_all(self) -> BaseException | None:
        """Every pod's terminate at once (one thread each: a slow API answer does not hold the
        others back); waits for all of them. Returns a KeyboardInterrupt that came meanwhile."""
        pending = [t for t in self.tasks if t.pod_id and not t.terminated]
        threads = [
            threading.Thread(target=self._terminate, args=(t,), name=f"end-{t.label}", daemon=True)
            for t in pending
        ]
        for th in threads:
            th.start()
        interrupted = None
        for th in threads:
            interrupted = _join(th, None) or interrupted
        return interrupted

    # -- summary for reports -------------------------------------------------------------------
    def summary(self) -> dict:
        """Per-pod time and cost of this run, and the sweep total."""
        pods = [t.pod_info for t in self.tasks if t.pod_info]
        total = sum(p["cost_usd"] or 0 for p in pods)
        return {
            "run_id": self.run_id,
            "pods": pods,
            "total_cost_usd": total,
            "total_seconds": sum(p["seconds"] for p in pods),
        }

    # -- resume --------------------------------------------------------------------------------
    def _reuse(self, entry) -> RunOutcome | None:
        if self.options.rerun or self.expected_for is None:
            return None
        expected = self.expected_for(entry)
        if not expected:
            return None
        found = resume.find_existing(self.results_dir, expected)
        if found is None:
            return None
        return RunOutcome(entry.id, found, read_result(found), where="local", reused=True)

    # -- one pod, start to end -----------------------------------------------------------------
    def _work(self, task: PodTask, sem) -> None:
        acquired = False
        try:
            while not (acquired := sem.acquire(timeout=0.2)):
                if self._cancel.is_set():
                    raise Cancelled(f"{task.label}: interrupted before its pod was created.")
            self._lifecycle(task)
        except BaseException as err:  # noqa: BLE001 - every failure becomes the models' outcome
            failure = self._as_failure(task, err)
            for e in task.plan.entries:
                task.outcomes.setdefault(e.id, failure)
        finally:
            try:
                self._finish(task)
            except BaseException as err:  # noqa: BLE001
                self._say(f"{task.label}: cleanup error {type(err).__name__}: {self.redact(err)}")
            finally:
                if acquired:
                    sem.release()
                task.done.set()

    def _as_failure(self, task: PodTask, err: BaseException) -> BaseException:
        if isinstance(err, (RunFailed, RunSkipped)):
            return err
        if self._cancel.is_set():
            return Cancelled(
                f"{task.label}: interrupted; pod {task.pod_id or '(none)'} terminated."
            )
        if isinstance(err, HarnessError):
            return RunFailed(self.redact(f"{task.label}: {err}"))
        return RunFailed(self.redact(f"{task.label}: {type(err).__name__}: {err}"))

    def _check_cancel(self, task: PodTask) -> None:
        if self._cancel.is_set():
            raise Cancelled(f"{task.label}: interrupted; pod {task.pod_id or '(none)'} terminated.")

    def _deadline_action(self) -> str:
        """What a pod's deadline does: terminate, or with --runpod-keep stop (a pod with a
        network volume stops too: RunPod bills the stopped pod's volume disk, not its GPUs)."""
        return "stop" if self.options.keep else "terminate"

    # -- ending pods -----------------------------------------------------------------------------
    def _terminate(self, task: PodTask) -> bool:
        with task.lock:
            if task.terminated or task.pod_id is None:
                return True
            if task.ssh is not None:
                task.ssh.close()
            try:
                ok = self.api.terminate(task.pod_id)
            except ApiError:
                ok = False
            task.terminated = ok
            task.ended = task.ended or time.monotonic()
            for seg in task.segments:
                if seg["id"] == task.pod_id and seg["end"] is None:
                    seg["end"] = task.ended
        if not ok:
            self._say(
                f"{task.label}: could NOT terminate pod {task.pod_id}; run "
                "`outliers pods --terminate` or use the RunPod console."
            )
        return ok

    def _finish(self, task: PodTask) -> None:
        if task.pod_id is None:
            return
        if self.options.keep:
            task.kept = True
            task.ended = time.monotonic()
        else:
            self._terminate(task)
        # from the first pod's creation: a pod given up on (no runtime) billed too, at its own
        # type's rate
        end = task.ended or time.monotonic()
        seconds = end - (task.created_at or task.created)
        cost = self._cost(task, end)
        share = len(task.plan.entries)
        task.pod_info = {
            "id": task.pod_id,
            "name": task.name,
            "gpu": task.gpu,
            "count": task.plan.count,
            "seconds": seconds,
            "cost_usd": cost,
            "usd_per_hour": task.rate,
            "pods": [
                {"id": g["id"], "gpu": g["gpu"], "usd_per_hour": g["rate"]} for g in task.segments
            ],
            "status": "kept" if task.kept else ("terminated" if task.terminated else "unknown"),
            "discarded_pods": list(task.discarded),
            "image_runtime": task.runtime,
            "models": [e.id for e in task.plan.entries],
        }
        per_model = dict(
            task.pod_info, cost_usd=None if cost is None else cost / share, shared_by=share
        )
        for e in task.plan.entries:
            res = task.outcomes.get(e.id)
            if isinstance(res, RunOutcome):
                res.pod = dict(per_model)
                if res.benchmark is not None:
                    res.benchmark.setdefault("extra_info", {})["pod"] = dict(per_model)
            elif isinstance(res, BaseException):
                res.pod = dict(per_model)
        money = "" if cost is None else f", ${cost:.2f}"
        self._say(
            f"{task.label}: pod {task.pod_id} {task.pod_info['status']} after "
            f"{_fmt_seconds(seconds)}{money}"
        )

    def _cost(self, task: PodTask, end: float) -> float | None:
        """Each pod's time at its own $/h (the API's for the pod, else its GPU type's price);
        None when a pod's rate is unknown either way."""
        total = 0.0
        for seg in task.segments:
            rate = seg["rate"]
            if rate is None:
                try:
                    price = self.api.gpu_price(seg["gpu"], task.plan.count, task.plan.cloud)
                except ApiError:
                    price = None
                rate = seg["rate"] = None if price is None else price * task.plan.count
            if rate is None:
                return None
            total += rate * ((seg["end"] or end) - seg["start"]) / 3600
        return total if task.segments else None

    def _sweep(self) -> None:
        """Terminate any pod named for this run that is still there (e.g. created by a call
        that reported an error)."""
        prefix = f"{POD_PREFIX}-{self.run_id}-"
        known = {t.pod_id: t for t in self.tasks}
        try:
            pods = self.api.list()
        except ApiError as err:
            self._say(f"could not list pods to check for leftovers ({err}); run `outliers pods`.")
            return
        for pod in pods:
            if not str(pod.get("name", "")).startswith(prefix):
                continue
            if pod.get("desiredStatus") == "TERMINATED":
                continue
            task = known.get(pod.get("id"))
            if task is not None and task.terminated:
                continue
            self._say(f"terminating leftover pod {pod.get('id')} ({pod.get('name')})")
            if not self.api.terminate(pod["id"]):
                self._say(
                    f"could NOT terminate pod {pod.get('id')}; run `outliers pods --terminate`."
                )

    def _print_keep(self) -> None:
        key = self._creds.ssh_key_path if self._creds else "~/.ssh/id_ed25519"
        for task in self.tasks:
            if not task.pod_id:
                continue
            where = (
                f"ssh -i {key} -p {task.endpoint.port} {self.t.ssh_user}@{task.endpoint.host}"
                if task.endpoint
                else "(no SSH endpoint)"
            )
            at_deadline = (
                "stops it: the GPUs stop billing, its container disk is wiped (copy what you "
                "need before then), a stopped pod's volume disk bills until it is terminated"
            )
            self._say(
                f"kept pod {task.pod_id} ({task.name}): {where}; its files are in "
                f"/workspace/outliers-runs/{task.name}; at its deadline its watchdog "
                f"{at_deadline}. Terminate it with `outliers pods --terminate --all` or "
                f"`runpodctl remove pod {task.pod_id}`."
            )

    # -- signals, atexit ---------------------------------------------------------------------------
    def _install_handlers(self) -> None:
        atexit.register(self.close)
        if threading.current_thread() is not threading.main_thread():
            return
        # a closed terminal (SIGHUP) ends the run like SIGTERM: its pods are terminated; unless
        # SIGHUP is ignored (`nohup`): then the user asked the sweep to outlive the terminal
        hup = getattr(signal, "SIGHUP", None)
        for sig in (signal.SIGINT, signal.SIGTERM, hup):
            if sig is None:
                continue
            try:
                if sig == hup and signal.getsignal(sig) == signal.SIG_IGN:
                    continue
                self._prev_handlers[sig] = signal.getsignal(sig)
                signal.signal(sig, self._on_signal)
            except (ValueError, OSError):
                continue

    def _restore_handlers(self) -> None:
        try:
            atexit.unregister(self.close)
        except Exception:  # noqa: BLE001
            pass
        if threading.current_thread() is not threading.main_thread():
            return
        for sig, prev in self._prev_handlers.items():
            try:
                if signal.getsignal(sig) == self._on_signal:
                    signal.signal(sig, prev if prev is not None else signal.SIG_DFL)
            except (ValueError, OSError):
                continue
        self._prev_handlers = {}

    def _on_signal(self, signum, frame) -> None:
        if self._closing:  # terminating already: never interrupt that; raised again after
            self._deferred_signal = self._deferred_signal or signum
            self._say(f"signal {signum}: still terminating this run's pods, please wait")
            return
        self._cancel.set()
        if signum == signal.SIGINT:
            self._say("interrupted: terminating this run's pods")
            prev = self._prev_handlers.get(signum)
            if callable(prev):
                prev(signum, frame)  # Python's default: KeyboardInterrupt; pytest unwinds
            raise KeyboardInterrupt
        self._say(f"signal {signum}: terminating this run's pods")
        prev = self._prev_handlers.get(signum)
        self.close()
        self._raise_again(signum, prev, frame)

    def _raise_again(self, signum: int, prev=None, frame=None) -> None:
        """What the signal would have done without us, once the pods are ended."""
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        if callable(prev):
            prev(signum, frame)
        elif prev != signal.SIG_IGN:
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)

    # -- output ------------------------------------------------------------------------------------
    def _say(self, line: str) -> None:
        """Report a line. Worker threads queue their lines; the main thread writes them (in
        ``run``'s wait loop, ``prepare`` and ``close``), so a terminal reporter is only ever
        used from the thread pytest expects."""
        text = self.redact(f"[runpod] {line}")
        with self._say_lock:
            self._pending.append(text)
        if threading.current_thread() is threading.main_thread():
            self._drain()

    def _drain(self) -> None:
        with self._say_lock:
            lines, self._pending = self._pending, []
        rep = self.reporter
        for text in lines:
            try:
                if rep is None:
                    print(text, file=sys.stderr, flush=True)
                elif hasattr(rep, "write_line"):
                    rep.write_line(text)
                else:
                    rep(text)
            except Exception:  # noqa: BLE001 - a broken terminal must not break the run
                pass


def _join(th: threading.Thread, deadline: float | None) -> BaseException | None:
    """Join ``th`` (until ``deadline``, monotonic, or its end); a KeyboardInterrupt meanwhile is
    returned, not raised, and the join goes on."""
    interrupted = None
    while th.is_alive():
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            break
        try:
            th.join(0.2 if left is None else min(0.2, left))
        except KeyboardInterrupt as err:
            interrupted = err
    return interrupted


def dry_run_table(
    entries, options: RunpodOptions, credentials=None, api: RunpodApi | None = None
) -> str:
    """The plan as a table with $/h from the API's gpuTypes prices; creates nothing."""
    plans = make_plans(list(entries), options)
    note = ""
    try:
        if api is None:
            creds = credentials or load_credentials(need_ssh=False)
            api = RunpodApi(
                creds.api_key, options.timings, Redactor(*creds.secrets()), api=options.api
            )
        plans = price_plans(api, plans)
    except HarnessError as err:
        note = f"\nprices unavailable: {err}"
    return plan_table(plan_rows(plans)) + note
