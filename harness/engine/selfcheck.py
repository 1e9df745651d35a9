"""The per-run site self-check: each site's tensor is what its block's projections read, measured on the run's own first batch.

``SiteProbe`` hooks every site module, every projection of every block and every decoder layer
for one forward pass and keeps, of each tensor it sees, only what the checks need: the first
positions of the first window (a few KB), its shape, and whether it is the very tensor an
earlier hook of the same layer saw (while that one is still alive). ``analyze`` runs it during
its first batch, so the check costs no forward pass of its own; ``verify_sites`` runs it on a
short pass of its own (tests, and ``analyze``'s fallback when the first batch fails).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import torch
from torch import nn
from torch.multiprocessing.reductions import StorageWeakRef

from harness.engine import host_memory
from harness.engine.forward import base_forward  # the same forward the capture runs
from harness.engine.sites import Site, SiteMap, _output_of, hook_tensor, input_of
from harness.errors import HarnessError

# Positions of the first window compared by the checks (the first batch's, or a short pass's).
CHECK_POSITIONS = 16


class _HeadPool:
    """Slots for the probe's copies of first positions, in slabs allocated before the pass.

    The copies live until the check and are made between the forward pass's activation-sized
    temporaries. On the CPU, glibc serves both from one heap (after the first large block is
    freed it keeps blocks up to 32 MiB there): a small block that outlives a hook sits between
    the activations the pass frees, which then cannot merge back into space the next ones fit,
    and the heap grows layer by layer. Cloned copies made the probe's first batch peak up to
    +700 MiB over a bare pass (docs/performance.md, "The CPU heap"). So the copies go into
    slabs made before the pass and a copy is known by its slot: no tensor the probe keeps is
    allocated during the pass."""

    def __init__(self, rows: int, hidden: int):
        self.rows, self.hidden = rows, hidden
        self._slabs: list[torch.Tensor] = []
        self._free: dict[tuple, list[tuple[int, int]]] = {}  # kind -> free (slab, slot)
        self._size: dict[tuple, int] = {}

    def reserve(self, dtype: torch.dtype, device, slots: int) -> None:
        """Make ``slots`` free slots for copies of ``dtype`` on ``device`` (one slab)."""
        key = (dtype, torch.device(device))
        self._slabs.append(host_memory.empty((slots, self.rows, self.hidden), dtype, key[1]))
        slab = len(self._slabs) - 1
        self._free.setdefault(key, []).extend((slab, i) for i in reversed(range(slots)))
        self._size[key] = self._size.get(key, 0) + slots

    def copy(self, rows: torch.Tensor) -> tuple[int, int, int]:
        """Copy ``rows`` ([n <= self.rows, hidden]) into a free slot: (slab, slot, n). With none
        left, a slab as large as all of that kind so far (a kind not reserved: 8 slots)."""
        key = (rows.dtype, rows.device)
        if not self._free.get(key):
            self.reserve(rows.dtype, rows.device, max(8, self._size.get(key, 0)))
        slab, i = self._free[key].pop()
        n = rows.shape[0]
        self._slabs[slab][i, :n].copy_(rows)
        return slab, i, n

    def get(self, head: tuple[int, int, int]) -> torch.Tensor:
        slab, i, n = head
        return self._slabs[slab][i, :n]

    def release(self, head: tuple[int, int, int] | None) -> None:
        if head is not None:
            t = self._slabs[head[0]]
            self._free[(t.dtype, t.device)].append(head[:2])


@dataclass
class _Seen:
    """One tensor a probe hook received: its first positions and how to tell it apart."""

    head: tuple | None  # slot (``_HeadPool``) of a copy of the first window's first P positions
    shape: tuple
    numel: int
    layer: int
    aliases: frozenset  # indices of earlier calls of the same layer that are this very tensor
    same_as_first: bool | None = None  # a reader compared at once with its block's first one


class _Calls(list):
    """The probe's records, in a list of the pass's expected length made before it (``reset``):
    ``add`` fills the next place, ``len`` and iteration see the places filled."""

    def __init__(self, expected: int):
        super().__init__([None] * expected)
        self.reserved, self.n = expected, 0

    def add(self, seen: _Seen) -> int:
        if self.n < list.__len__(self):
            list.__setitem__(self, self.n, seen)
        else:  # more calls than expected (a model that runs a block twice): the check says so
            list.append(self, seen)
        self.n += 1
        return self.n - 1

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        if not isinstance(i, int):
            return list(self)[i]
        if i < 0:
            i += self.n
        if not 0 <= i < self.n:
            raise IndexError("no such call")
        return list.__getitem__(self, i)

    def __iter__(self):
        return (list.__getitem__(self, i) for i in range(self.n))


class SiteProbe:
    """Hooks that record one forward pass for the site self-check (use as a context manager;
    ``verify`` after the pass). ``reset`` forgets a pass (a batch retried after out-of-memory)."""

    def __init__(self, model: nn.Module, sitemap: SiteMap):
        self.model, self.sitemap, self.H = model, sitemap, sitemap.hidden_size
        self.seconds = 0.0  # time spent in the hooks and in verify, over every pass recorded
        self.checked: SiteMap | None = None  # set by a ``check`` that passed
        self.retarget = False  # set by ``verify``: the hooked sites measured other tensors
        self._handles: list = []
        self.reset(0, 0)

    def reset(self, num_seqs: int, seq_len: int) -> None:
        """Forget what was recorded; the next pass runs ``num_seqs`` windows of ``seq_len``."""
        self.tokens = int(num_seqs * seq_len)
        self.P = min(CHECK_POSITIONS, int(seq_len))
        # Every container the hooks fill exists at its full size before the pass (the lists in
        # them stay small): one grown by a hook past Python's small-object size would be a
        # block of the CPU heap between the activations the pass frees (``_HeadPool``).
        self.calls = _Calls(self._calls_expected())
        self._live: dict[int, list] = {}  # layer -> [(call index, StorageWeakRef, identity)]
        sitemap = self.sitemap
        self.seen: dict[int, list[int]] = {s.index: [] for s in sitemap.sites}  # its calls
        # block key -> (projection, call, output features), in the order they ran
        self.readers: dict[str, list[tuple[str, int, int | None]]] = {
            f"{i}.{kind}": [] for i, blocks in enumerate(sitemap.blocks) for kind in blocks
        }
        self.layer_in: dict[int, int | None] = dict.fromkeys(range(len(sitemap.layers)))
        self._heads = _HeadPool(self.P, self.H)
        if num_seqs:
            param = next((p for p in self.model.parameters() if p.is_floating_point()), None)
            if param is not None:
                self._heads.reserve(param.dtype, param.device, self._slots())

    def _calls_expected(self) -> int:
        """Hook calls in one pass: every site, layer input and block reader once."""
        readers = sum(len(p) for blocks in self.sitemap.blocks for _b, p in blocks.values())
        return len(self.sitemap.sites) + len(self.sitemap.layers) + readers

    def _slots(self) -> int:
        """Copies alive at once, as ``_record`` keeps them: one per site and per layer input,
        the first reader and the output projection of every block, every reader of layer 0."""
        blocks = self.sitemap.blocks
        first = sum(len(p) for _b, p in blocks[0].values()) if blocks else 0
        return (
            len(self.sitemap.sites)
            + len(self.sitemap.layers)
            + 2 * sum(map(len, blocks))
            + first
            + 8
        )

    # -- hooks -----------------------------------------------------------------------------
    def _record(self, x, layer: int, keep: bool = True) -> int | None:
        """Record a tensor; ``keep``: also its first positions (the values compared)."""
        if not isinstance(x, torch.Tensor):
            return None
        t0 = time.perf_counter()
        head = None
        if keep and x.dim() >= 2 and x.shape[-1] == self.H:
            rows = x
            while rows.dim() > 2:  # [B, T, H] -> the first window; [B * T, H] stays
                rows = rows[0]
            head = self._heads.copy(rows[: self.P].detach())
        ident = (x.data_ptr(), tuple(x.shape), x.stride(), x.dtype)
        if layer not in self._live:
            # aliases are sought within a layer only, so the weak references of the layers
            # before go now: each keeps a freed tensor's storage object, a small block of the
            # CPU heap that would stay between the activations the pass frees (``_HeadPool``)
            self._live = {i: refs for i, refs in self._live.items() if i > layer}
        live = self._live.setdefault(layer, [])
        # the same tensor as an earlier call only while that one's storage is alive: a freed
        # block's address may be reused by the next allocation
        aliases = frozenset(i for i, ref, other in live if other == ident and not ref.expired())
        index = self.calls.add(_Seen(head, tuple(x.shape), x.numel(), layer, aliases))
        live.append((index, StorageWeakRef(x.untyped_storage()), ident))
        self.seconds += time.perf_counter() - t0
        return index

    def __enter__(self) -> SiteProbe:
        modules = dict(self.model.named_modules())

        def site_fn(site):
            return lambda x: self.seen[site.index].append(self._record(x, site.layer))

        def projection_fn(layer, key, name):
            # a forward hook: the input as the projection multiplied it, after every pre-hook
            def fn(_module, args, kwargs, output):
                x = input_of(args, kwargs)
                if x is None:
                    return
                calls = self.readers.setdefault(key, [])
                out = _output_of(output)
                out_dim = out.shape[-1] if isinstance(out, torch.Tensor) and out.dim() else None
                # values kept: the block's first projection to run, possible output
                # projections (hidden-size outputs) and layer 0's readers (recorded in the
                # result); every other reader is compared with the first one here and now
                keep = layer == 0 or not calls or out_dim == self.H
                index = self._record(x, layer, True)
                if calls and not keep:
                    self.calls[index].same_as_first = self._equal(index, calls[0][1])
                    self._heads.release(self.calls[index].head)
                    self.calls[index].head = None
                calls.append((name, index, out_dim))

            return fn

        def layer_fn(i):
            def fn(x):
                if self.layer_in[i] is None:
                    self.layer_in[i] = self._record(x, i)

            return fn

        hooks = [(s.module, site_fn(s), s.mode) for s in self.sitemap.sites]
        readers = []
        for i, blocks in enumerate(self.sitemap.blocks):
            for kind, (_block, projections) in blocks.items():
                readers += [(modules[n], projection_fn(i, f"{i}.{kind}", n)) for n in projections]
        hooks += [(layer, layer_fn(i), "input") for i, layer in enumerate(self.sitemap.layers)]
        try:
            for module, fn, mode in hooks:
                self._handles.append(hook_tensor(module, fn, mode))
            for module, fn in readers:
                self._handles.append(module.register_forward_hook(fn, with_kwargs=True))
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        while self._handles:
            self._handles.pop().remove()
        self._live.clear()

    # -- the checks ------------------------------------------------------------------------
    def _target(self, site: Site) -> tuple[str | None, int | None]:
        """(projection, call) that ``site`` must equal: its block's first projection to run
        (attn_in, mlp_in), or the attention block's output projection (attn_out_in: the last
        projection to run that returns hidden-size features)."""
        calls = self.readers.get(_block_key(site)) or []
        if site.kind == "attn_out_in":
            outs = [(n, c) for n, c, o in calls if o == self.H]
            return outs[-1] if outs and len(calls) > 1 else (None, None)
        return (calls[0][0], calls[0][1]) if calls else (None, None)

    def _output_projections(self, calls) -> set[str]:
        """Per module holding projections, the last one to run that returns hidden-size
        features: what a block returns through (o_proj, down_proj, fc2, c_proj), not a reader
        of its input."""
        last: dict[str, str] = {}
        for name, _c, out in calls:
            if out == self.H:
                last[name.rsplit(".", 1)[0]] = name
        return set(last.values())

    def _check_blocks(self) -> int:
        """Every block, every layer: it runs inside its own decoder layer, and every first-level
        reader of its input (q, k, v; gate, up; the router; shared experts: each projection that
        multiplies a hidden-size tensor and is not the block's output projection) multiplies the
        same values. Returns the number of readers compared."""
        compared = 0
        kinds = {"attn": "attention", "mlp": "MLP"}
        for key, calls in self.readers.items():
            if not calls:  # a block whose projections did not run: the site checks say so
                continue
            layer, kind = key.split(".")
            i = int(layer)
            block = kinds.get(kind, kind)
            first_name, first_call, _ = calls[0]
            start, end = self.layer_in.get(i), self.layer_in.get(i + 1)
            if (start is not None and first_call < start) or (end is not None and first_call > end):
                raise HarnessError(
                    f"layer {i}'s {block} block ({first_name}) ran outside decoder layer {i}; the "
                    "structural site discovery chose another layer's block "
                    f"({self.sitemap.model_type}): please report it with the model id."
                )
            outputs = self._output_projections(calls)
            differ = []
            for name, c, _ in calls[1:]:
                if name in outputs or self.calls[c].shape[-1] != self.H:
                    continue
                compared += 1
                same = self.calls[c].same_as_first
                if same is None:
                    same = self._equal(c, first_call)
                if not same:
                    differ.append(name.rsplit(".", 1)[-1])
            if differ:
                raise HarnessError(
                    f"layer {i}'s {block} block: {', '.join(sorted(set(differ)))} multiplied "
                    f"other values than {first_name.rsplit('.', 1)[-1]} (compared over the first "
                    f"{self.P} positions), so no single tensor is what this block reads; this "
                    f"model ({self.sitemap.model_type}) changes a projection's input inside the "
                    "block (a hook or adapter on one projection?): remove it, or report the model "
                    "id if it does this by design."
                )
        return compared

    def verify(self) -> SiteMap:
        """The site map to measure with (parallel blocks merged to one site, sites moved to the
        projection that runs first, or last for the attention output projection,
        ``self_check`` filled in). A site that is not what its block's projections receive, a
        block whose readers multiply different values, or a block that runs outside its layer
        stops the run with one sentence naming the modules."""
        t0 = time.perf_counter()
        sitemap, H, calls, tokens = self.sitemap, self.H, self.calls, self.tokens
        moved: dict[int, str] = {}
        site_call: dict[int, int] = {}
        for site in sitemap.sites:
            got = self.seen.get(site.index, [])
            if len(got) != 1 or got[0] is None:
                raise HarnessError(
                    f"site {site.name} ({site.module_name}) ran {len(got)} times in one forward "
                    "pass instead of once; the structural site discovery does not fit this model "
                    f"({sitemap.model_type}): please report it with the model id."
                )
            c = got[0]
            name = want = None
            if site.kind != "resid_out":
                name, want = self._target(site)
                if name is not None and name != site.module_name:
                    # registration order is not execution order (Phi-3 registers o_proj before
                    # qkv_proj): the site moves to the projection that runs first (last)
                    runs = sum(1 for n, _, _ in self.readers[_block_key(site)] if n == name)
                    if runs != 1:
                        raise HarnessError(
                            f"site {site.name}: the projection of its block it must equal "
                            f"({name}) ran {runs} times in one forward pass instead of once; the "
                            f"structural site discovery does not fit this model "
                            f"({sitemap.model_type}): please report it with the model id."
                        )
                    moved[site.index] = name
                    c = want
            site_call[site.index] = c
            x = calls[c]
            if x.shape[-1] != H or x.numel != tokens * H:
                raise HarnessError(
                    f"site {site.name} ({site.module_name}) holds a tensor of shape "
                    f"{x.shape}, not {tokens} positions x {H} dims (the model adds positions or "
                    "residual streams of its own); this model's sites cannot be measured by the "
                    "definition: please report it with the model id."
                )
            if site.kind == "resid_out":
                nxt = self.layer_in.get(site.layer + 1)
                if nxt is not None and not self._equal(c, nxt):
                    raise HarnessError(
                        f"site {site.name}: the output of {site.module_name} is not what the next "
                        "decoder layer reads; the structural site discovery does not fit this "
                        f"model ({sitemap.model_type}): please report it with the model id."
                    )
            elif want is None or not self._equal(c, want):
                what = "output projection" if site.kind == "attn_out_in" else "first projection"
                raise HarnessError(
                    f"site {site.name} ({site.module_name}) is not what its block's {what} "
                    f"to run ({name or 'none ran'}) receives; the structural site discovery does "
                    f"not fit this model ({sitemap.model_type}): please report it with the model "
                    "id."
                )
        readers_compared = self._check_blocks()
        sites = tuple(
            replace(s, module_name=moved[s.index], module=self.model.get_submodule(moved[s.index]))
            if s.index in moved
            else s
            for s in sitemap.sites
        )
        # parallel blocks: attention and MLP read the very same tensor -> one site per layer
        by_layer: dict[int, dict[str, Site]] = {}
        for s in sitemap.sites:
            by_layer.setdefault(s.layer, {})[s.kind] = s
        drop, shared = set(), []
        for layer, kinds in by_layer.items():
            a, m = kinds.get("attn_in"), kinds.get("mlp_in")
            if (
                a is not None
                and m is not None
                and self._same(site_call[a.index], site_call[m.index])
            ):
                drop.add(m.index)
                shared.append(layer)
        # the capture hooked the unchecked sites: it measured other tensors where a layer's two
        # sites are one, or where a site moved to a projection that reads another tensor (Phi-3's
        # o_proj -> qkv_proj; not OPT's k_proj -> q_proj, which read one tensor)
        self.retarget = bool(drop) or any(
            not self._same(self.seen[i][0], site_call[i]) for i in moved
        )
        kept = [s for s in sites if s.index not in drop]
        new_sites = tuple(replace(s, index=i) for i, s in enumerate(kept))
        self.seconds += time.perf_counter() - t0
        check = {
            "ran": True,
            "passed": True,
            "tokens": self.P,  # positions of the first window compared
            "seconds": round(self.seconds, 4),
            "sites_checked": len(sitemap.sites),
            "moved_to_first_run": len(moved),
            "layers_checked": len(self.sitemap.layers),
            "readers_compared": readers_compared,
            "what": "in every layer, each block runs inside its own decoder layer and every "
            "first-level reader of its input (q, k, v; gate, up; router; shared experts) "
            "multiplies the same values (compared by value, each projection hooked after its "
            "pre-hooks); each attn_in / mlp_in site equals the input of its block's first "
            "projection to run, each attn_out_in the input of the attention output projection "
            "(the last to run with hidden-size outputs); each resid_out equals the next layer's "
            "input",
            # which projections read the site tensor (first layer, as a record of what was checked)
            "readers": {
                s.name: sorted(
                    {
                        n
                        for n, c, _ in self.readers.get(_block_key(s), [])
                        if self._equal(c, site_call[s.index])
                    }
                )
                for s in sitemap.sites
                if s.layer == 0 and s.kind != "resid_out"
            },
        }
        return replace(
            sitemap, sites=new_sites, shared_input_layers=tuple(shared), self_check=check
        )

    def check(self) -> SiteMap:
        """``verify`` for a probe riding a batch of the capture, before that batch is merged:
        raises ``SitesChanged`` when the hooked sites measured other tensors than the checked
        ones."""
        checked = self.verify()
        checked.self_check["pass"] = "first batch"
        if self.retarget:
            raise SitesChanged(checked)
        self.checked = checked
        return checked

    def alone(self, token_ids: torch.Tensor) -> SiteMap:
        """``verify`` on a forward pass of its own over ``token_ids`` (a few tokens); every hook
        is removed before returning."""
        t0 = time.perf_counter()
        with self:
            self.reset(*token_ids.shape)
            with torch.inference_mode():
                base_forward(self.model)(token_ids)
        checked = self.verify()
        checked.self_check["seconds"] = round(time.perf_counter() - t0, 4)
        checked.self_check["pass"] = "own"
        return checked

    def head(self, index: int) -> torch.Tensor | None:
        """The kept copy of call ``index``'s first positions (a view of its slot), or None."""
        head = self.calls[index].head
        return None if head is None else self._heads.get(head)

    def _equal(self, i: int, j: int) -> bool:
        """Same values over the compared positions, exactly (NaN equals NaN: a broken model is
        reported by the capture's NaN check, not here), up to [B, T, H] vs [B * T, H]."""
        a, b = self.calls[i], self.calls[j]
        if a.head is None or b.head is None or a.numel != b.numel:
            return False
        x, y = self.head(i), self.head(j)
        if x.shape != y.shape:
            return False
        y = y.to(x.device)  # a model split over GPUs: a few KB
        return torch.equal(x, y) or bool(((x == y) | (x.isnan() & y.isnan())).all())

    def _same(self, i: int, j: int) -> bool:
        """Whether calls i and j received the very same tensor (same memory, shape, strides and
        dtype, both alive at once)."""
        return i == j or min(i, j) in self.calls[max(i, j)].aliases


def verify_sites(model: nn.Module, sitemap: SiteMap, token_ids: torch.Tensor) -> SiteMap:
    """Check every site on a forward pass of its own over ``token_ids`` (a few tokens) and return
    the site map to measure with (see ``SiteProbe.verify``)."""
    return SiteProbe(model, sitemap).alone(token_ids)


def _block_key(site: Site) -> str:
    return f"{site.layer}.{'mlp' if site.kind == 'mlp_in' else 'attn'}"


class SitesChanged(Exception):
    """The self-check moved or merged sites: the batch it rode was measured at the unchecked
    sites and must be measured again with ``sitemap``."""

    def __init__(self, sitemap: SiteMap):
        super().__init__("the site self-check changed the sites")
        self.sitemap = sitemap
