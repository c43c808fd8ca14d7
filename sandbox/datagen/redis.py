"""Deterministic, production-like Redis data for the sandbox.

``generate_redis(url, size_bytes, seed=...)`` writes, through non-transactional pipelines:

* ``session:<uuid>`` -- hashes (user_id, created_at, last_seen_at, ip, user_agent, plan, model
  preferences...), TTL 1-24 h; about 30% of the bytes;
* ``cache:model:<model>:<sha1 of the prompt>`` -- cached completions (JSON strings with the response
  text), TTL 10 min - 6 h; about 70% of the bytes;
* a few ``ratelimit:<api key id>`` counters with a short TTL (1-5 min).

until ``used_memory`` has grown by about ``size_bytes``. Keys, values and TTLs depend only on ``seed``
and ``size_bytes`` (the expiry instants of course depend on when it runs).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from datetime import timedelta

import redis

from sandbox.datagen.postgres import ANCHOR, MODELS
from sandbox.datagen.text import MODEL_NAMES, USER_AGENTS, Composer, FastRandom

__all__ = ["KEY_PREFIXES", "generate_redis", "key_counts"]

#: key prefixes written by :func:`generate_redis` (the keys of its result)
KEY_PREFIXES: tuple[str, ...] = ("session", "cache:model", "ratelimit")

SESSION_SHARE = 0.30
PIPELINE_BATCH = 1000
RATELIMIT_EVERY = 200  # one ratelimit counter per this many sessions

# used_memory cost model (Redis 7, jemalloc), calibrated against MEMORY USAGE and INFO memory:
# dict entries + robj + key sds + expires entry + hash-table buckets + allocator size classes
_STRING_OVERHEAD = 150
_STRING_SLACK = 1.10
_HASH_OVERHEAD = 100
_HASH_FIELD_OVERHEAD = 19

_LOCALES = ("en-US", "es-ES", "en-GB", "de-DE", "fr-FR", "pt-BR", "ja-JP", "es-MX", "it-IT")
_PLANS = ("free", "free", "free", "free", "pro", "pro", "enterprise")


def _estimate_string(key: str, value: str | bytes) -> int:
    return int((len(key) + len(value)) * _STRING_SLACK) + _STRING_OVERHEAD


def _estimate_hash(key: str, mapping: dict[str, str]) -> int:
    size = len(key) + _HASH_OVERHEAD
    for field, value in mapping.items():
        size += len(field) + len(value) + _HASH_FIELD_OVERHEAD
    return size


class _RedisDataset:
    def __init__(self, seed: int) -> None:
        self.rng = FastRandom(f"ai_multimodel:{seed}:redis")
        self.comp = Composer(seed + 7_919)
        self.seed = seed
        self._anchor_ts = int(ANCHOR.timestamp())

    def _uuid(self) -> str:
        h = f"{self.rng.getrandbits(128):032x}"
        return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{h[16:20]}-{h[20:]}"

    def api_key_id(self) -> str:
        return f"key_{self.rng.getrandbits(96):024x}"

    def session(self) -> tuple[str, dict[str, str], int]:
        rng = self.rng
        comp = self.comp
        ttl = rng.randint(3_600, 86_400)
        created = ANCHOR - timedelta(seconds=rng.randint(0, 86_400))
        last_seen = created + timedelta(seconds=rng.randint(0, 3_600))
        models = rng.sample(MODEL_NAMES, rng.randint(1, 3))
        mapping = {
            "user_id": str(rng.randint(1, 250_000)),
            "api_key_id": self.api_key_id(),
            "plan": rng.choice(_PLANS),
            "created_at": created.isoformat(),
            "last_seen_at": last_seen.isoformat(),
            "ip": comp.ip_address(),
            "user_agent": rng.choice(USER_AGENTS),
            "locale": rng.choice(_LOCALES),
            "preferred_model": models[0],
            "fallback_models": ",".join(models[1:]),
            "temperature": f"{rng.randint(0, 20) / 10:.1f}",
            "max_tokens": str(rng.choice((256, 512, 1024, 2048, 4096))),
            "csrf_token": f"{rng.getrandbits(128):032x}",
            "requests": str(rng.randint(1, 900)),
        }
        return f"session:{self._uuid()}", mapping, ttl

    def cache_entry(self) -> tuple[str, str, int]:
        rng = self.rng
        kind, prompt, response = self.comp.prompt_response()
        model = rng.choice(MODEL_NAMES)
        digest = hashlib.sha1(prompt.encode()).hexdigest()
        tokens_in = len(prompt) // 4 + rng.randint(8, 32)
        tokens_out = len(response) // 4 + rng.randint(0, 8)
        _prov, _ctx, cin, cout, *_rest = MODELS[model]
        value = json.dumps(
            {
                "id": f"cmpl-{rng.getrandbits(96):024x}",
                "model": model,
                "created": self._anchor_ts - rng.randint(0, 21_600),
                "kind": kind,
                "response": response,
                "finish_reason": "stop" if rng.random() < 0.93 else "length",
                "usage": {"prompt_tokens": tokens_in, "completion_tokens": tokens_out},
                "cost_usd": round(tokens_in * cin / 1000 + tokens_out * cout / 1000, 6),
            },
            ensure_ascii=False,
            separators=(",", ":"),
        )
        return f"cache:model:{model}:{digest}", value, rng.randint(600, 21_600)


def generate_redis(
    url: str,
    size_bytes: int,
    *,
    seed: int = 42,
    flush: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, int]:
    """Write about ``size_bytes`` of used_memory worth of sessions / cache / rate-limit keys.

    ``flush=True`` first flushes the database selected by ``url`` (only that one: FLUSHDB).
    ``progress(done, total)`` gets the estimated bytes written so far and ``size_bytes``.
    Returns the number of keys written per prefix (:data:`KEY_PREFIXES`).
    """
    if size_bytes <= 0:
        raise ValueError(f"size_bytes must be positive, got {size_bytes}")
    ds = _RedisDataset(seed)
    counts = dict.fromkeys(KEY_PREFIXES, 0)
    session_budget = size_bytes * SESSION_SHARE
    cache_budget = size_bytes - session_budget
    session_bytes = 0
    cache_bytes = 0
    client = redis.Redis.from_url(url)
    try:
        if flush:
            client.flushdb()
        with _Pipeline(client) as pipe:
            while session_bytes < session_budget or cache_bytes < cache_budget:
                if session_bytes / session_budget <= cache_bytes / cache_budget:
                    key, mapping, ttl = ds.session()
                    args = ["HSET", key]
                    for field, value in mapping.items():
                        args.append(field)
                        args.append(value)
                    pipe.command(args)
                    pipe.command(("EXPIRE", key, str(ttl)))
                    session_bytes += _estimate_hash(key, mapping)
                    counts["session"] += 1
                    if counts["session"] % RATELIMIT_EVERY == 0:
                        rl_key = f"ratelimit:{mapping['api_key_id']}"
                        rl_ttl = ds.rng.randint(60, 300)
                        pipe.command(("SET", rl_key, str(ds.rng.randint(1, 600)), "EX", str(rl_ttl)))
                        session_bytes += _estimate_string(rl_key, "600")
                        counts["ratelimit"] += 1
                else:
                    # cache fills use NX (first writer wins, like a real cache): the same prompt can
                    # come up twice; such duplicates are uncounted and their bytes given back below
                    key, value, ttl = ds.cache_entry()
                    estimate = _estimate_string(key, value)
                    pipe.command(("SET", key, value, "EX", str(ttl), "NX"), tag=estimate)
                    cache_bytes += estimate
                    counts["cache:model"] += 1
                if pipe.pending >= PIPELINE_BATCH:
                    pipe.send()
                    cache_bytes -= _refund(pipe.collect(keep=1), counts)
                    if progress is not None:
                        progress(min(int(session_bytes + cache_bytes), size_bytes), size_bytes)
            pipe.send()
            cache_bytes -= _refund(pipe.collect(keep=0), counts)
        if progress is not None:
            progress(size_bytes, size_bytes)
    finally:
        client.close()
    return counts


def _refund(settled: list[tuple[int, object]], counts: dict[str, int]) -> int:
    """Uncount the cache SETs (tagged with their estimate) that found the key already there."""
    refund = 0
    for estimate, reply in settled:
        if reply is None:
            counts["cache:model"] -= 1
            refund += estimate
    return refund


class _Pipeline:
    """A non-transactional pipeline that overlaps generating batch N+1 with Redis executing batch N.

    Commands are packed to RESP here (redis-py's per-argument packing costs more than generating
    the data) and sent in batches on one pooled connection; replies are read one batch behind.
    Error replies raise ``redis.ResponseError``.
    """

    def __init__(self, client: redis.Redis) -> None:
        self.pool = client.connection_pool
        try:
            self.conn = self.pool.get_connection()
        except TypeError:  # redis-py < 5.3 wants a command name
            self.conn = self.pool.get_connection("_")  # type: ignore[arg-type, unused-ignore]
        self.buf: list[bytes] = []
        self.tags: list[int | None] = []
        self.inflight: list[list[int | None]] = []

    @property
    def pending(self) -> int:
        return len(self.tags)

    def command(self, args: Sequence[str], tag: int | None = None) -> None:
        parts = [b"*%d\r\n" % len(args)]
        for arg in args:
            data = arg.encode()
            parts.append(b"$%d\r\n%b\r\n" % (len(data), data))
        self.buf.append(b"".join(parts))
        self.tags.append(tag)

    def send(self) -> None:
        if self.buf:
            self.conn.send_packed_command([b"".join(self.buf)])
            self.inflight.append(self.tags)
            self.buf, self.tags = [], []

    def collect(self, keep: int) -> list[tuple[int, object]]:
        """Read the replies of all but the last ``keep`` sent batches; return (tag, reply) of tagged ones."""
        settled: list[tuple[int, object]] = []
        while len(self.inflight) > keep:
            for tag in self.inflight.pop(0):
                reply = self.conn.read_response()
                if tag is not None:
                    settled.append((tag, reply))
        return settled

    def __enter__(self) -> _Pipeline:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None or self.inflight or self.buf:
            self.conn.disconnect()  # replies left unread: the connection is out of sync
        self.pool.release(self.conn)


def key_counts(url: str) -> dict[str, int]:
    """Count the keys of each :data:`KEY_PREFIXES` prefix in the database at ``url`` (SCAN)."""
    counts = dict.fromkeys(KEY_PREFIXES, 0)
    client = redis.Redis.from_url(url)
    try:
        for prefix in KEY_PREFIXES:
            for _ in client.scan_iter(match=f"{prefix}:*", count=1000):
                counts[prefix] += 1
    finally:
        client.close()
    return counts
