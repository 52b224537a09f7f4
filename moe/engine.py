"""Static-shape generation engine: one KV cache per replica, CUDA graphs per knob pair and shape.

Why: at batch 1 the eager model is host-bound (Python dispatch of hundreds of small kernels per
forward), so its latency is slow and jumps between regimes; no lookup table can be right about it.
Replaying a captured CUDA graph costs one launch, and a knob change is a change of graph.

The shapes are fixed up front:
- one KV buffer `(layers, 2, max_batch, kv_heads, context, head_dim)`, allocated once; a batch uses
  rows 0..b-1 of it (a view, so every graph sees fixed addresses), and a `key_valid` mask marks the
  positions each row may attend to, so nothing is cleared between requests;
- prefill runs one request at a time at batch 1 into a staging row (row B, past the decode rows),
  its tokens left-padded to a length bucket (`prefill_step` steps up to `max_prompt_tokens`);
  padding positions attend only to themselves, so no row of the attention is empty and no NaN can
  reach the cache;
- the prompt's keys and values then move to a free row of the running batch (`DecodeBatch`),
  aligned so that it ends at the batch's write index: decode writes all rows at one index per step
  (rotary positions come from `position_ids`, so the cache index need not equal the position), and
  a request can join between two steps (continuous batching);
- decode runs at batch buckets (1, 2, 4, 8); spare rows compute on an empty history and are dropped;
- the vision stand-in runs per image count;
- `decode_slots` decode batches can run at once, each in its own rows of the buffer with its own
  decode state (write index, positions, tokens) and its own decode graphs: a batch of one pair can
  start beside a long stream of another instead of waiting for it to end (the caller steps them in
  turn). Prefill is shared: one staging row, after every slot's rows.

Graphs are captured per `(top_k, num_active_blocks)` pair: the knobs pick which blocks run and how
many experts each token takes while the graph is recorded (moe.knob_patch), so a replay carries
them. The eager mode runs the very same step functions without capture (the CPU path, and the
baseline the graphs are compared against), so both modes compute the same numbers.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal

import torch
from transformers.cache_utils import Cache

from controller.knobs import TIER_CROP_RANGE, TOKENS_PER_CROP, Knobs
from moe.errors import ConfigDisabledError, InputTooLongError
from moe.knob_patch import ForwardKnobs, knob_context
from moe.runner import _CACHE_KW, GenerationResult, MoERunner, PromptInput, build_results
from moe.vision import fill_pixels

log = logging.getLogger(__name__)

Pair = tuple[int, int]  # (top_k, num_active_blocks): what a language-model graph depends on


@dataclass(frozen=True)
class EngineOptions:
    mode: Literal["graph", "eager"] = "graph"
    # Vision plus text tokens of one request; the largest prefill bucket. The high tier's 15 crops
    # are 2,304 vision tokens, so the default leaves 256 for the prompt.
    max_prompt_tokens: int = 2560
    prefill_step: int = 256
    max_new_tokens: int = 512
    decode_buckets: tuple[int, ...] = (1, 2, 4, 8)
    # Decode batches at once (each its own KV rows and decode graphs: memory and capture grow with it).
    decode_slots: int = 1

    def __post_init__(self) -> None:
        if self.mode not in ("graph", "eager"):
            raise ValueError(f"engine mode={self.mode!r} is not valid; expected graph or eager")
        if self.prefill_step < 1 or self.max_prompt_tokens < self.prefill_step:
            raise ValueError(
                f"prefill_step={self.prefill_step}, max_prompt_tokens={self.max_prompt_tokens}: "
                "expected 1 <= prefill_step <= max_prompt_tokens"
            )
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={self.max_new_tokens} must be >= 1")
        if not 1 <= self.decode_slots <= 4:
            raise ValueError(f"decode_slots={self.decode_slots} must be an integer in [1, 4]")
        if not self.decode_buckets or sorted(set(self.decode_buckets)) != list(self.decode_buckets) or (
            self.decode_buckets[0] < 1
        ):
            raise ValueError(f"decode_buckets={self.decode_buckets} must be increasing integers >= 1")

    def prefill_buckets(self) -> list[int]:
        sizes = list(range(self.prefill_step, self.max_prompt_tokens + 1, self.prefill_step))
        if sizes[-1] != self.max_prompt_tokens:
            sizes.append(self.max_prompt_tokens)
        return sizes


@dataclass
class CaptureReport:
    """What capture cost and what it could not do; shown at start-up and in /v1/stats."""

    mode: str
    pairs: list[Pair] = field(default_factory=list)
    graphs: int = 0
    seconds: float = 0.0
    graph_memory_bytes: int = 0
    kv_cache_bytes: int = 0
    disabled: dict[str, str] = field(default_factory=dict)  # "top_k/blocks" -> reason

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "pairs": [list(p) for p in self.pairs],
            "graphs": self.graphs,
            "capture_seconds": round(self.seconds, 3),
            "graph_memory_mib": round(self.graph_memory_bytes / 2**20, 1),
            "kv_cache_mib": round(self.kv_cache_bytes / 2**20, 1),
            "disabled": dict(self.disabled),
        }


def pair_of(knobs: Knobs) -> Pair:
    return knobs.pair


def pair_name(pair: Pair) -> str:
    return f"top_k={pair[0]}/blocks={pair[1]}"


class _RowsCache(Cache):
    """The engine's KV buffer seen by one forward: rows 0..rows-1, written at `write_at` (a device
    tensor of cache indices), attended over the first `kv_len` indices. transformers calls only
    `update` here: positions and the 4-D mask are given explicitly, so no length is ever read."""

    is_compileable = False

    def __init__(self, kv: torch.Tensor, rows: int, write_at: torch.Tensor, kv_len: int) -> None:
        # Cache.__init__ builds per-layer storage this class does not use; its signature also
        # differs between transformers releases.
        self.layers: list[Any] = []
        self.kv, self.rows, self.write_at, self.kv_len = kv, rows, write_at, kv_len

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *a: Any, **kw: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        k = self.kv[layer_idx, 0, : self.rows]
        v = self.kv[layer_idx, 1, : self.rows]
        k.index_copy_(2, self.write_at, key_states.to(k.dtype))
        v.index_copy_(2, self.write_at, value_states.to(v.dtype))
        return k[:, :, : self.kv_len], v[:, :, : self.kv_len]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0


@dataclass
class _Slot:
    """One decode batch's place in the engine: its rows of the KV buffer (a view, fixed addresses
    for its graphs) and its decode state, advanced inside the step."""

    index: int
    kv: torch.Tensor
    tok: torch.Tensor
    pos: torch.Tensor
    cpos: torch.Tensor
    key_valid: torch.Tensor
    decode_logits: torch.Tensor

    def reset(self) -> None:
        self.cpos.zero_()
        self.pos.zero_()
        self.tok.zero_()
        self.key_valid.zero_()


class GenerationEngine:
    """Greedy generation with fixed shapes; thread-safe (batches hold the engine's lock while they
    run; the decode slots let one thread run several batches in turn)."""

    def __init__(self, runner: MoERunner, options: EngineOptions | None = None) -> None:
        self.runner = runner
        self.options = o = options or EngineOptions()
        m = runner.model
        self.model, self.device, self.dtype = m, m.device, m.dtype
        # The decoder stack and the output head that the steps call directly (a causal LM's `.model`
        # and `.lm_head`), looked up once through torch's typed accessor.
        self._decoder = m.lm.get_submodule("model")
        self._lm_head = m.lm.get_submodule("lm_head")
        self.codec = runner.codec
        self.eos_token_id = runner.eos_token_id
        self.use_graphs = o.mode == "graph" and self.device.type == "cuda"
        self.report = CaptureReport(mode="graph" if self.use_graphs else "eager")
        self.buckets = o.prefill_buckets()
        self.max_batch = o.decode_buckets[-1]
        self.context = o.max_prompt_tokens + o.max_new_tokens
        self._lock = threading.RLock()
        # Captures waiting for the lock: the caller that runs batches (serving.replica.device) opens
        # and joins none while one waits, so that its batches drain and the capture gets its turn
        # (joins would otherwise keep a batch, and so the lock, alive for as long as traffic lasts).
        self._captures_waiting = 0
        self._waiting_lock = threading.Lock()
        self._graphs: dict[tuple[Any, ...], torch.cuda.CUDAGraph] = {}
        self._ready: set[Pair] = set()  # pairs whose graphs are all captured (or, eager, dry-run)
        self._disabled: dict[Pair, str] = {}
        self._pool = torch.cuda.graph_pool_handle() if self.use_graphs else None
        self._alloc_buffers()
        self._free_slots = list(range(o.decode_slots))

    # ---- buffers -----------------------------------------------------------------------------
    def _alloc_buffers(self) -> None:
        cfg, dev, o = self.model.config, self.device, self.options
        heads = int(getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads)
        head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
        hidden, vocab = int(cfg.hidden_size), int(cfg.vocab_size)
        B, C, S = self.max_batch, self.context, o.decode_slots
        with torch.inference_mode():
            # Slot s decodes in rows s*B..(s+1)*B-1; the last row is the prefill's staging row, so a
            # request can be prefilled while batches decode in the others (a newcomer joins a
            # running batch).
            self.kv = torch.zeros(self.model.num_blocks, 2, S * B + 1, heads, C, head_dim, device=dev, dtype=self.dtype)
            self.kv_stage = self.kv[:, :, S * B:]
            self.report.kv_cache_bytes = self.kv.numel() * self.kv.element_size()
            # prefill inputs and outputs (batch 1, row 0)
            self.embeds = torch.zeros(1, o.max_prompt_tokens, hidden, device=dev, dtype=self.dtype)
            self.pad_start = torch.zeros(1, device=dev, dtype=torch.long)
            self.arange = {P: torch.arange(P, device=dev) for P in self.buckets}
            self.prefill_logits = torch.zeros(1, vocab, device=dev, dtype=torch.float32)
            self.prefill_token = torch.zeros(1, device=dev, dtype=torch.long)
            # decode state per slot: advanced inside the step, so a replay needs no host work
            self.slots = [
                _Slot(s, self.kv[:, :, s * B:(s + 1) * B],
                      torch.zeros(B, device=dev, dtype=torch.long),
                      torch.zeros(B, 1, device=dev, dtype=torch.long),
                      torch.zeros(1, device=dev, dtype=torch.long),
                      torch.zeros(B, C, device=dev, dtype=torch.bool),
                      torch.zeros(B, vocab, device=dev, dtype=torch.float32))
                for s in range(S)
            ]
        self.pixels: dict[int, torch.Tensor] = {}
        self.vision_out: dict[int, torch.Tensor] = {}

    def _vision_buffers(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        if n not in self.pixels:
            size = self.model.vision.image_size
            with torch.inference_mode():
                self.pixels[n] = torch.zeros(n, 3, size, size, device=self.device, dtype=self.dtype)
                hidden = int(self.model.config.hidden_size)
                self.vision_out[n] = torch.zeros(n, TOKENS_PER_CROP, hidden, device=self.device, dtype=self.dtype)
        return self.pixels[n], self.vision_out[n]

    # ---- the step functions (captured as graphs, or run as they are) ---------------------------
    def _vision_step(self, n: int) -> None:
        pixels, out = self._vision_buffers(n)
        out.copy_(self.model.vision(pixels))

    def _prefill_step(self, P: int) -> None:
        ar = self.arange[P]
        q, k = ar[:, None], ar[None, :]
        # Left padding: keys from pad_start on, causal; a padding query sees only itself.
        mask = (k <= q) & ((k >= self.pad_start) | (k == q))
        pos = (ar - self.pad_start).clamp(min=0)[None, :]
        cache = _RowsCache(self.kv_stage, 1, ar, P)
        out = self._decoder(
            inputs_embeds=self.embeds[:, :P],
            attention_mask=mask[None, None],
            position_ids=pos,
            use_cache=True,
            **{_CACHE_KW: cache},
        )
        logits = self._lm_head(out.last_hidden_state[:, -1]).float()
        self.prefill_logits.copy_(logits)
        self.prefill_token.copy_(logits.argmax(-1))

    def _decode_step(self, slot: _Slot, b: int) -> None:
        slot.key_valid[:b].index_fill_(1, slot.cpos, True)
        cache = _RowsCache(slot.kv, b, slot.cpos, self.context)
        out = self._decoder(
            input_ids=slot.tok[:b, None],
            attention_mask=slot.key_valid[:b, None, None, :],
            position_ids=slot.pos[:b],
            use_cache=True,
            **{_CACHE_KW: cache},
        )
        logits = self._lm_head(out.last_hidden_state[:, -1]).float()
        slot.decode_logits[:b].copy_(logits)
        slot.tok[:b].copy_(logits.argmax(-1))
        slot.pos[:b].add_(1)
        slot.cpos.add_(1)

    def _run(self, key: tuple[Any, ...], step: Callable[[], None]) -> None:
        graph = self._graphs.get(key)
        if graph is not None:
            graph.replay()
        else:
            step()

    # ---- capture ---------------------------------------------------------------------------
    def vision_counts(self, tiers: Iterable[str]) -> list[int]:
        return sorted({c + 1 for t in tiers for c in range(TIER_CROP_RANGE[t][0], TIER_CROP_RANGE[t][1] + 1)})

    def prepare(self, configs: Iterable[Knobs]) -> CaptureReport:
        """Make every config ready: capture its graphs (graph mode) or dry-run it (eager mode).
        Idempotent; a pair that fails is disabled with its reason and the rest go on."""
        configs = list(configs)
        pairs = sorted({pair_of(k) for k in configs} - self._ready - set(self._disabled))
        counts = [n for n in self.vision_counts({k.tier for k in configs}) if ("vision", n) not in self._graphs]
        if not pairs and not (self.use_graphs and counts):
            return self.report
        started = time.perf_counter()
        before = torch.cuda.memory_reserved(self.device) if self.use_graphs else 0
        # The lock is taken per pair, not for the whole capture: a replica that captures the new
        # configs of a reloaded table keeps serving between pairs.
        with torch.inference_mode():
            with self._exclusive():
                if self.use_graphs:
                    for n in counts:
                        self._capture(("vision", n), partial(self._vision_step, n), ForwardKnobs())
            for pair in pairs:
                try:
                    self.runner.validate(Knobs("low", *pair))
                    with self._exclusive():
                        self._prepare_pair(pair)
                        self._ready.add(pair)
                    self.report.pairs.append(pair)
                except Exception as e:  # noqa: BLE001 - any failure disables this pair only
                    with self._exclusive():
                        self._drop_pair(pair)
                    reason = f"{'capture' if self.use_graphs else 'dry run'} failed: {type(e).__name__}: {e}"
                    self._disabled[pair] = reason[:300]
                    self.report.disabled[pair_name(pair)] = self._disabled[pair]
                    log.error("engine: %s disabled: %s", pair_name(pair), reason)
        if self.use_graphs:
            torch.cuda.synchronize(self.device)
            self.report.graph_memory_bytes += torch.cuda.memory_reserved(self.device) - before
        self.report.graphs = len(self._graphs)
        self.report.seconds += time.perf_counter() - started
        log.info("engine: %s", self.report.to_dict())
        return self.report

    @property
    def capture_waiting(self) -> bool:
        """A capture (or dry run) waits for the batches to let go of the engine."""
        return self._captures_waiting > 0

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """The engine's lock for a capture, announced while it is awaited (`capture_waiting`)."""
        with self._waiting_lock:
            self._captures_waiting += 1
        try:
            self._lock.acquire()
        finally:
            with self._waiting_lock:
                self._captures_waiting -= 1
        try:
            yield
        finally:
            self._lock.release()

    def _prepare_pair(self, pair: Pair) -> None:
        fk = self.runner.forward_knobs(Knobs("low", *pair))
        if not self.use_graphs:  # eager: one small pass of each step, so a broken pair shows now
            with knob_context(fk):
                self._reset_decode_state()
                self._prefill_step(self.buckets[0])
                for slot in self.slots:
                    self._decode_step(slot, self.options.decode_buckets[0])
            self._reset_decode_state()
            return
        for slot in self.slots:
            for b in self.options.decode_buckets:
                self._capture(("decode", slot.index, pair, b), partial(self._decode_step, slot, b), fk)
        for P in self.buckets:
            self._capture(("prefill", pair, P), partial(self._prefill_step, P), fk)

    def _capture(self, key: tuple[Any, ...], step: Callable[[], None], fk: ForwardKnobs) -> None:
        with knob_context(fk):
            # Warm-up on a side stream (PyTorch's advice): kernels pick their algorithms and the
            # allocator grows before the capture records addresses.
            side = torch.cuda.Stream(self.device)  # type: ignore[no-untyped-call]  # unannotated in torch
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(2):
                    self._reset_decode_state()
                    step()
            torch.cuda.current_stream(self.device).wait_stream(side)
            self._reset_decode_state()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool):
                step()
        self._graphs[key] = graph

    def _drop_pair(self, pair: Pair) -> None:
        for key in [k for k in self._graphs if k[0] != "vision" and pair in k]:
            del self._graphs[key]

    def _reset_decode_state(self) -> None:
        for slot in self.slots:
            slot.reset()

    @property
    def has_free_slot(self) -> bool:
        """A new batch could take a decode slot now."""
        return bool(self._free_slots)

    def take_slot(self) -> _Slot | None:
        """A free decode slot for a new batch (None: every slot holds one)."""
        return self.slots[self._free_slots.pop(0)] if self._free_slots else None

    def give_back(self, slot: _Slot) -> None:
        if slot.index not in self._free_slots:
            self._free_slots.append(slot.index)
            self._free_slots.sort()

    # ---- the MoERunner surface the profiler and the warm-up use, so either can drive them ------
    def validate(self, knobs: Knobs) -> None:
        self.check(knobs)

    @property
    def block_order(self) -> Any:
        return self.runner.block_order

    def blocks_range(self) -> tuple[int, int]:
        return self.runner.blocks_range()

    def active_blocks(self, num_active: int) -> list[int]:
        return self.runner.active_blocks(num_active)

    # ---- what this replica can run -----------------------------------------------------------
    def disabled_pairs(self) -> list[Pair]:
        return sorted(self._disabled)

    def disabled(self) -> dict[str, str]:
        return {pair_name(p): r for p, r in self._disabled.items()}

    def is_ready(self, knobs: Knobs) -> bool:
        return pair_of(knobs) in self._ready

    def check(self, knobs: Knobs) -> None:
        """Raise if this replica cannot run `knobs` at all (bad range, or disabled)."""
        self.runner.validate(knobs)
        reason = self._disabled.get(pair_of(knobs))
        if reason is not None:
            raise ConfigDisabledError(knobs.key, reason)

    def prompt_tokens(self, x: PromptInput, text_ids: list[int] | None = None) -> int:
        ids = self.codec.encode(x.prompt) if text_ids is None else text_ids
        return x.num_images * TOKENS_PER_CROP + len(ids)

    def check_input(self, x: PromptInput, max_new_tokens: int, text_ids: list[int] | None = None) -> None:
        n = self.prompt_tokens(x, text_ids)
        if n > self.options.max_prompt_tokens:
            raise InputTooLongError(
                "prompt_tokens",
                n,
                self.options.max_prompt_tokens,
                "image tokens plus prompt tokens; send a shorter prompt or a lower tier",
            )
        if max_new_tokens > self.options.max_new_tokens:
            raise InputTooLongError(
                "max_new_tokens", max_new_tokens, self.options.max_new_tokens, "ask for fewer new tokens"
            )

    # ---- generation ------------------------------------------------------------------------
    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def _bucket(self, n: int) -> int:
        return next(P for P in self.buckets if P >= n)

    def generate(
        self,
        knobs: Knobs,
        inputs: Sequence[PromptInput],
        *,
        max_new_tokens: int = 16,
        prefill_only: bool = False,
        keep_logits: bool = False,
        on_token: Callable[[int, list[int]], bool] | None = None,
    ) -> list[GenerationResult]:
        """Greedy generation for requests that share `knobs`, the same results as
        MoERunner.generate: a DecodeBatch per chunk of max_batch requests, run to its end. A config
        not prepared yet runs eagerly (same numbers, slower) and is not captured here: capture
        belongs off the request path (`prepare`). `on_token(i, new_ids)` gets request i's new
        token(s) after its prefill and after each decode step; returning False stops that request
        there (a client went away)."""
        if not inputs:
            return []
        if max_new_tokens < 1:
            raise InputTooLongError("max_new_tokens", max_new_tokens, 1, "expected an integer >= 1")
        self.check(knobs)
        text_ids = [self.codec.encode(x.prompt) for x in inputs]  # once per request
        for x, ids in zip(inputs, text_ids, strict=True):
            self.check_input(x, max_new_tokens, ids)
        out: list[GenerationResult] = []
        new = 1 if prefill_only else max_new_tokens
        with self._lock, torch.inference_mode():
            for start in range(0, len(inputs), self.max_batch):
                chunk = list(range(start, min(len(inputs), start + self.max_batch)))
                batch = DecodeBatch(self, knobs, keep_logits=keep_logits)
                try:
                    calls = None if on_token is None else [partial(on_token, i) for i in chunk]
                    rows = batch.join(knobs, [inputs[i] for i in chunk], [new] * len(chunk), calls,
                                      [text_ids[i] for i in chunk])
                    assert rows is not None, "a fresh batch takes a chunk of max_batch requests"
                    while batch.active:
                        batch.step()
                    done = batch.finished()
                    results = [done[r] for r in rows]
                finally:
                    batch.close()
                out += _shared_timings(results)
        return out



def _shared_timings(results: list[GenerationResult]) -> list[GenerationResult]:
    """generate()'s timings are the chunk's, as MoERunner reports them: every member's vision and
    prefill (one after another), then the decode they shared."""
    vision = sum(r.timings_ms["vision"] for r in results)
    prefill = sum(r.timings_ms["prefill"] for r in results)
    decode = max((r.timings_ms["decode"] for r in results), default=0.0)
    shared = {"vision": vision, "prefill": prefill, "decode": decode, "total": vision + prefill + decode}
    longest = max(results, key=lambda r: len(r.decode_per_step_ms))
    for r in results:
        r.timings_ms = dict(shared)
        r.decode_per_step_ms = list(longest.decode_per_step_ms)
    return results


@dataclass
class _Member:
    x: PromptInput
    text_ids: list[int]
    limit: int  # max_new_tokens
    on_tokens: Callable[[list[int]], bool] | None
    tokens: list[int] = field(default_factory=list)
    logits: list[torch.Tensor] = field(default_factory=list)
    vision_ms: float = 0.0
    prefill_ms: float = 0.0
    first_at: float = 0.0  # perf_counter: its first token
    steps_ms: list[float] = field(default_factory=list)
    stopped: bool = False  # its reader went away


class DecodeBatch:
    """A running decode batch on the engine's KV buffer: one knob pair, the rows of one decode slot,
    every row written at one cache index per step. Requests join between two steps (continuous
    batching): each is prefilled in the staging row, then its keys and values move to a free row so
    that its prompt ends at the batch's write index, and from the next step on it decodes with the
    others. The batch holds a decode slot and the engine's lock from its first join to `close` (a
    graph capture must not run in between); other batches may hold the other slots on the same
    thread, which steps them in turn."""

    def __init__(self, engine: GenerationEngine, knobs: Knobs, keep_logits: bool = False) -> None:
        self.engine, self.knobs, self.pair = engine, knobs, pair_of(knobs)
        self.fk = engine.runner.forward_knobs(knobs)
        self.keep_logits = keep_logits
        self.rows: list[_Member | None] = [None] * engine.max_batch
        self._done: dict[int, GenerationResult] = {}
        self._cpos = 0  # host copy of the write index (its slot's cpos)
        self._locked = False
        self.slot: _Slot | None = None  # taken at the first join
        self._step_ms = 0.0  # the last decode step, for remaining_ms

    @property
    def active(self) -> bool:
        return any(m is not None for m in self.rows)

    def can_join(self, knobs: Knobs, n: int, limits: Sequence[int]) -> bool:
        """Same pair, enough free rows, a decode slot, and room in the cache for their tokens from here."""
        if pair_of(knobs) != self.pair or sum(m is None for m in self.rows) < n:
            return False
        if self.slot is None and not self.engine.has_free_slot:
            return False
        start = self._cpos if self.active else self.engine.options.max_prompt_tokens
        return start + max(limits, default=0) <= self.engine.context

    def join(
        self,
        knobs: Knobs,
        inputs: Sequence[PromptInput],
        limits: Sequence[int],
        on_tokens: Sequence[Callable[[list[int]], bool] | None] | None = None,
        text_ids: Sequence[list[int]] | None = None,
    ) -> list[int] | None:
        """Prefill `inputs` into free rows now; their row numbers, or None when they cannot join."""
        e = self.engine
        if not self.can_join(knobs, len(inputs), limits):
            return None
        ids = list(text_ids) if text_ids is not None else [e.codec.encode(x.prompt) for x in inputs]
        for x, t, limit in zip(inputs, ids, limits, strict=True):
            e.check_input(x, limit, t)
        if not self._locked:
            e._lock.acquire()
            self._locked = True
        if self.slot is None:
            self.slot = e.take_slot()
            if self.slot is None:  # another thread took the last one since can_join
                return None
        slot = self.slot
        calls = list(on_tokens) if on_tokens is not None else [None] * len(inputs)
        rows = []
        with torch.inference_mode(), knob_context(self.fk):
            if not self.active:  # a fresh batch: every prompt fits before the write index
                self._cpos = e.options.max_prompt_tokens
                slot.cpos.fill_(self._cpos)
            for x, t, limit, call in zip(inputs, ids, limits, calls, strict=True):
                row = self.rows.index(None)
                m = _Member(x, t, limit, call)
                self._prefill(row, m)
                self.rows[row] = m
                rows.append(row)
                self._emit(row, m, [m.tokens[0]])
        self._release_if_idle()
        return rows

    def _release_if_idle(self) -> None:
        """An empty batch gives its slot back (a later join takes one again): its rows hold
        nothing a later member reads, and another batch may need the slot meanwhile."""
        if not self.active and self.slot is not None:
            self.engine.give_back(self.slot)
            self.slot = None

    def _prefill(self, row: int, m: _Member) -> None:
        e, x = self.engine, m.x
        L = e.prompt_tokens(x, m.text_ids)
        P = e._bucket(L)
        t0 = e._now()
        nimg = x.num_images
        if nimg:
            pixels, vis = e._vision_buffers(nimg)
            fill_pixels(pixels, x.image_seed)
            e._run(("vision", nimg), partial(e._vision_step, nimg))
        t1 = e._now()
        e.embeds[:, : P - L].zero_()
        if nimg:
            e.embeds[0, P - L : P - L + nimg * TOKENS_PER_CROP].copy_(vis.reshape(-1, vis.shape[-1]))
        e.embeds[0, P - L + nimg * TOKENS_PER_CROP : P].copy_(
            e.model.lm.get_input_embeddings()(torch.tensor(m.text_ids, device=e.device))
        )
        e.pad_start.fill_(P - L)
        e._run(("prefill", self.pair, P), partial(e._prefill_step, P))
        # Its prompt's keys and values end at the batch's write index; it attends to them only.
        c, slot = self._cpos, self.slot
        assert slot is not None  # taken by join before any prefill
        slot.kv[:, :, row, :, c - L : c].copy_(e.kv_stage[:, :, 0, :, P - L : P])
        slot.key_valid[row].zero_()
        slot.key_valid[row, c - L : c] = True
        slot.pos[row].fill_(L)
        slot.tok[row : row + 1].copy_(e.prefill_token)
        first = int(e.prefill_token.item())
        t2 = e._now()
        m.vision_ms, m.prefill_ms, m.first_at = (t1 - t0) * 1e3, (t2 - t1) * 1e3, t2
        m.tokens.append(first)
        if self.keep_logits:
            m.logits.append(e.prefill_logits[0].clone())

    def step(self) -> None:
        """One decode step for every row in use (at the smallest batch bucket that holds them)."""
        if not self.active:
            return
        e, slot = self.engine, self.slot
        assert slot is not None  # an active batch has joined, so it holds a slot
        top = max(i for i, m in enumerate(self.rows) if m is not None)
        b = next(x for x in e.options.decode_buckets if x > top)
        t = time.perf_counter()
        with torch.inference_mode(), knob_context(self.fk):
            e._run(("decode", slot.index, self.pair, b), partial(e._decode_step, slot, b))
        self._cpos += 1
        new = slot.tok[:b].tolist()
        ms = (e._now() - t) * 1e3
        self._step_ms = ms
        for row, m in enumerate(self.rows):
            if m is None:
                continue
            m.tokens.append(int(new[row]))
            m.steps_ms.append(ms)
            if self.keep_logits:
                m.logits.append(slot.decode_logits[row].clone())
            self._emit(row, m, [int(new[row])])
        self._release_if_idle()

    def _emit(self, row: int, m: _Member, new: list[int]) -> None:
        """Hand the new token(s) to the member's reader; finish it at its end, its limit, or when
        its reader is gone (its row is free for the next join)."""
        ended = self.engine.eos_token_id is not None and new[-1] == self.engine.eos_token_id
        if m.on_tokens is not None and not m.on_tokens(new):
            m.stopped = True
        if ended or m.stopped or len(m.tokens) >= m.limit or self._cpos >= self.engine.context:
            self._finish(row, m)

    def _finish(self, row: int, m: _Member) -> None:
        e = self.engine
        self.rows[row] = None
        decode = (e._now() - m.first_at) * 1e3 if m.steps_ms else 0.0
        timings = {"vision": m.vision_ms, "prefill": m.prefill_ms, "decode": decode,
                   "total": m.vision_ms + m.prefill_ms + decode}
        (res,) = build_results([m.x], [m.tokens], [m.text_ids], e.codec, e.eos_token_id, timings, m.steps_ms)
        if self.keep_logits:
            res.logits = m.logits[: len(res.token_ids)]
        res.stopped = m.stopped
        self._done[row] = res

    def finished(self) -> dict[int, GenerationResult]:
        """Rows that finished since the last call."""
        done, self._done = self._done, {}
        return done

    @property
    def remaining_steps(self) -> int:
        return max((m.limit - len(m.tokens) for m in self.rows if m is not None), default=0)

    def remaining_ms(self) -> float:
        return self.remaining_steps * self._step_ms

    def close(self) -> None:
        self.rows = [None] * len(self.rows)
        self._release_if_idle()
        if self._locked:
            self._locked = False
            self.engine._lock.release()
