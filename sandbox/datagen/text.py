"""Deterministic, fast, production-looking text for the sandbox data generators.

The expensive part (building tens of thousands of English sentences and code snippets from
templates) happens once per process in :func:`get_corpus`, with a fixed seed, so every process sees
the same corpus. Rows are then composed by :class:`Composer` from seeded random picks of those
pools, plus a few per-row formatted numbers / identifiers so that the text has the entropy of real
traffic: zstd level 3 compresses it roughly 3-5x (it is neither padding nor random bytes).

Everything here is deterministic: the same ``seed`` yields the same sequence of texts, in any
process, on any platform (only :class:`random.Random` and explicit ordering are used; never
``hash()`` or set iteration).
"""

from __future__ import annotations

import functools
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from _typeshed import SupportsLenAndGetItem

_T = TypeVar("_T")

__all__ = [
    "MODEL_NAMES",
    "Composer",
    "Corpus",
    "FastRandom",
    "get_corpus",
]

#: The model fleet of the platform (also the ``ai_models`` table and the ``cache:model:*`` keys).
MODEL_NAMES: tuple[str, ...] = (
    "gpt-4",
    "gpt-3.5-turbo",
    "claude-3-5-sonnet",
    "claude-3-haiku",
    "gemini-pro",
    "qwen",
    "deepseek",
)

CORPUS_SEED = 20261101
SENTENCE_POOL_SIZE = 50_000
SNIPPET_POOL_SIZE = 4_000

# ---------------------------------------------------------------------------------------------
# Vocabulary
# ---------------------------------------------------------------------------------------------

# fmt: off
_SUBJECT_NOUNS = (
    "cache layer", "request router", "rate limiter", "embedding model", "vector index", "tokenizer",
    "load balancer", "retry policy", "connection pool", "query planner", "background worker", "API gateway",
    "streaming endpoint", "billing service", "prompt template", "context window", "inference server",
    "read replica", "scheduler", "message queue", "health check", "feature flag", "deployment pipeline",
    "audit log", "session store", "fallback model", "circuit breaker", "GPU node", "batch job",
    "webhook handler", "migration script", "database schema", "write-ahead log", "backup job",
    "monitoring dashboard", "alerting rule", "service mesh", "ingress controller", "autoscaler", "config map",
    "secret store", "model registry", "evaluation harness", "reranker", "intent classifier", "summarizer",
    "response parser", "serializer", "client library", "Python SDK", "command-line tool", "data pipeline",
    "ETL job", "cron job", "primary database", "partitioned table", "Redis cluster", "Kubernetes namespace",
    "worker pod", "sidecar container", "node pool", "storage class", "volume snapshot", "object store",
    "bucket policy", "IAM role", "access token", "API key", "refresh token", "user session",
    "auth middleware", "request handler", "chat endpoint", "response cache", "prompt cache", "system prompt",
    "function call", "tool call", "JSON schema", "validation layer", "moderation filter", "safety classifier",
    "guardrail", "orchestrator", "agent loop", "task planner", "conversation memory", "retrieval step",
    "chunking strategy", "embedding cache", "similarity search", "ranking function", "scoring model",
    "feedback loop", "A/B test", "canary release", "rollback plan", "runbook", "on-call engineer",
    "incident channel", "postmortem", "latency SLO", "error budget", "latency histogram", "distributed trace",
    "metrics exporter", "log shipper", "usage meter", "quota service", "pricing table", "model router",
    "provider adapter", "token counter", "cost estimator", "Prefect flow", "deployment manifest",
    "Helm chart", "readiness probe", "liveness probe", "replication slot", "logical decoding slot",
    "vacuum process", "checkpointer", "pgbouncer instance", "Sentinel", "AOF rewrite", "RDB snapshot",
    "eviction policy", "keyspace notification", "Lua script",
)

_ADJECTIVES = (
    "stale", "cold", "warm", "idempotent", "asynchronous", "synchronous", "distributed", "cached", "sharded",
    "replicated", "misconfigured", "overloaded", "underutilized", "noisy", "flaky", "deterministic",
    "stateless", "stateful", "long-running", "short-lived", "expensive", "cheap", "slow", "fast", "primary",
    "secondary", "regional", "global", "internal", "public", "private", "encrypted", "compressed",
    "partitioned", "versioned", "deprecated", "experimental", "default", "custom", "upstream", "downstream",
    "nightly", "hourly", "incremental", "parallel", "sequential", "bounded", "lightweight", "critical",
    "optional", "redundant", "automated", "manual", "streaming", "batched", "multi-tenant", "high-priority",
    "low-latency", "legacy", "new", "shared", "dedicated", "ephemeral", "persistent", "read-only", "hot",
    "unhealthy",
)

# (base, third person, gerund)
_VERBS = (
    ("reduce", "reduces", "reducing"), ("increase", "increases", "increasing"),
    ("cache", "caches", "caching"), ("invalidate", "invalidates", "invalidating"),
    ("retry", "retries", "retrying"), ("throttle", "throttles", "throttling"),
    ("validate", "validates", "validating"), ("serialize", "serializes", "serializing"),
    ("compress", "compresses", "compressing"), ("encrypt", "encrypts", "encrypting"),
    ("replicate", "replicates", "replicating"), ("shard", "shards", "sharding"),
    ("index", "indexes", "indexing"), ("monitor", "monitors", "monitoring"), ("log", "logs", "logging"),
    ("trace", "traces", "tracing"), ("batch", "batches", "batching"), ("stream", "streams", "streaming"),
    ("parse", "parses", "parsing"), ("tokenize", "tokenizes", "tokenizing"), ("embed", "embeds", "embedding"),
    ("rank", "ranks", "ranking"), ("filter", "filters", "filtering"), ("route", "routes", "routing"),
    ("schedule", "schedules", "scheduling"), ("deploy", "deploys", "deploying"),
    ("roll back", "rolls back", "rolling back"), ("scale", "scales", "scaling"),
    ("restart", "restarts", "restarting"), ("drain", "drains", "draining"), ("rotate", "rotates", "rotating"),
    ("revoke", "revokes", "revoking"), ("audit", "audits", "auditing"),
    ("backfill", "backfills", "backfilling"), ("migrate", "migrates", "migrating"),
    ("snapshot", "snapshots", "snapshotting"), ("restore", "restores", "restoring"),
    ("benchmark", "benchmarks", "benchmarking"), ("profile", "profiles", "profiling"),
    ("optimize", "optimizes", "optimizing"), ("deduplicate", "deduplicates", "deduplicating"),
    ("aggregate", "aggregates", "aggregating"), ("normalize", "normalizes", "normalizing"),
    ("truncate", "truncates", "truncating"), ("summarize", "summarizes", "summarizing"),
    ("classify", "classifies", "classifying"), ("generate", "generates", "generating"),
    ("evaluate", "evaluates", "evaluating"), ("meter", "meters", "metering"),
    ("authenticate", "authenticates", "authenticating"), ("authorize", "authorizes", "authorizing"),
    ("expose", "exposes", "exposing"), ("prefetch", "prefetches", "prefetching"),
    ("warm up", "warms up", "warming up"), ("evict", "evicts", "evicting"), ("flush", "flushes", "flushing"),
    ("checkpoint", "checkpoints", "checkpointing"), ("vacuum", "vacuums", "vacuuming"),
    ("analyze", "analyzes", "analyzing"), ("partition", "partitions", "partitioning"),
    ("archive", "archives", "archiving"), ("reject", "rejects", "rejecting"), ("queue", "queues", "queueing"),
    ("dispatch", "dispatches", "dispatching"), ("handle", "handles", "handling"),
    ("wrap", "wraps", "wrapping"), ("replace", "replaces", "replacing"),
    ("simplify", "simplifies", "simplifying"), ("document", "documents", "documenting"),
    ("isolate", "isolates", "isolating"), ("track", "tracks", "tracking"), ("expire", "expires", "expiring"),
    ("bill", "bills", "billing"), ("debounce", "debounces", "debouncing"),
)

_OBJECTS = (
    "the p95 latency", "duplicate requests", "expired sessions", "the token budget", "large prompts",
    "streaming responses", "the connection count", "idle connections", "hot keys", "cold partitions",
    "the error rate", "failed jobs", "the retry queue", "each API key", "the monthly invoice",
    "per-user quotas", "the model fallback chain", "incoming webhooks", "the request payload",
    "nested JSON documents", "the response headers", "slow queries", "the query plan", "write amplification",
    "memory fragmentation", "the eviction policy", "the cache hit ratio", "the rollout",
    "the deployment manifest", "the Helm values", "the secrets", "TLS certificates", "DNS records",
    "the health endpoint", "the readiness probe", "the backup window", "the recovery point objective",
    "the restore procedure", "WAL segments", "the replication lag", "the autovacuum threshold", "dead tuples",
    "bloated indexes", "the connection string", "user feedback", "the evaluation set", "the golden dataset",
    "hallucinated citations", "the system prompt", "the temperature setting", "the max_tokens parameter",
    "the stop sequences", "tool outputs", "function arguments", "the embedding dimension", "the chunk size",
    "overlapping windows", "the top-k results", "the reranking score", "the cost per request",
    "the token count", "rate limit headers", "429 responses", "5xx errors", "upstream timeouts",
    "cold starts", "the worker pool", "background tasks", "the job queue", "audit events", "usage records",
    "billing events", "the daily rollup", "old partitions", "the retention policy", "the session TTL",
    "cached completions", "the provider quota", "the prompt prefix", "the conversation history",
    "personally identifiable information", "the moderation score", "long-tail requests", "the warm pool",
    "GPU memory", "the KV cache", "batch inference jobs", "the OpenAPI spec", "breaking changes",
    "the changelog", "the SDK version", "the base image", "container restarts", "OOM kills",
    "the pod disruption budget", "node affinity rules", "the horizontal pod autoscaler", "CPU throttling",
    "the ingress timeout", "keep-alive settings", "the pgbouncer pool", "prepared statements",
    "long transactions", "lock contention", "the statement timeout", "the checkpoint interval",
    "full-page writes", "the archive command", "the base backup", "point-in-time recovery", "the S3 bucket",
    "lifecycle rules", "the encryption key", "the restore drill", "the RTO", "the Redis memory limit",
    "the AOF file", "the RDB snapshot", "keyspace misses", "big keys", "the fork latency",
)

_CONDITIONS = (
    "", "", "", "", "", "", " when traffic spikes", " during peak hours", " after a deploy",
    " before the nightly backup", " under sustained load", " if the upstream provider is degraded",
    " for enterprise tenants", " on the free plan", " in the staging cluster", " across all regions",
    " within the same request", " without blocking the event loop", " as soon as the key is revoked",
    " once the migration finishes", " for requests above 8k tokens", " while the replica catches up",
    " during a failover", " at the edge", " in a single transaction", " behind the load balancer",
    " for every tenant", " when the cache is cold", " after the quota resets", " in the EU region",
    " on Kubernetes", " when the provider returns a 429", " for streaming clients", " on the hot path",
    " in the background", " during the maintenance window",
)

_ADVERBS = (
    "automatically", "gradually", "aggressively", "safely", "consistently", "lazily", "eagerly",
    "periodically", "explicitly", "transparently", "significantly", "slightly", "immediately", "eventually",
    "in parallel", "in the background", "on demand", "by default", "more often", "less often", "correctly",
    "reliably", "incrementally", "at most once", "at least once",
)

_OPENERS = (
    "", "", "", "", "", "", "", "In practice, ", "However, ", "For example, ", "As a result, ",
    "In our setup, ", "Typically, ", "By contrast, ", "In production, ", "Under the hood, ", "First, ",
    "Next, ", "Finally, ", "Importantly, ", "At scale, ", "In the current design, ", "Historically, ",
    "On the other hand, ", "In short, ", "To be safe, ", "Ideally, ",
)

_MODALS = (
    "should", "can", "must", "will", "may", "might", "could", "needs to",
)

_MODALS_NEG = (
    "should not", "cannot", "must not", "will not", "does not need to", "may not",
)

_PREDICATES = (
    "the bottleneck", "a single point of failure", "usually fine", "easy to misconfigure", "worth monitoring",
    "rarely the problem", "the first thing to check", "surprisingly expensive", "safe to retry",
    "not idempotent", "hard to debug", "cheap to run", "optional", "required for compliance",
    "a good default", "the root cause",
)

_SENTENCE_TEMPLATES = (
    "{opener}{subj} {verb3} {obj}{tail}", "{opener}{subj} {verb3} {obj} and {verb3b} {obj2}{tail}",
    "If {subj_l} {verb3} {obj}, {subj2_l} {modal} {verb} {obj2}{tail}",
    "To {verb} {obj}, {verb_b} {obj2} first{tail}",
    "{Gerund} {obj} before {gerund2} {obj2} avoids most surprises{tail}",
    "This means that {subj_l} {modal} {verb} {obj} {adv}{tail}",
    "In most cases, {subj_l} {verb3} {obj} {adv}{tail}", "Note that {subj_l} {modal_neg} {verb} {obj}{tail}",
    "{subj} is {pred} when {subj2_l} {verb3} {obj}{tail}",
    "One common approach is to {verb} {obj} and {verb_b} {obj2} {adv}{tail}",
    "The main trade-off is between {gerund} {obj} and {gerund2} {obj2}{tail}",
    "Make sure {subj_l} {verb3} {obj}{tail}",
    "We recommend {gerund} {obj} {adv}, because {subj_l} is {pred}{tail}",
    "{opener}you {modal} {verb} {obj} with {subj_l}{tail}",
    "Without {gerund} {obj}, {subj_l} is {pred}{tail}",
    "Keep in mind that {gerund} {obj} {adv} affects {obj2}{tail}",
    "{opener}{subj} and {subj2_l} both {verb} {obj}{tail}", "{opener}{subj} {modal} {verb} {obj} {adv}{tail}",
    "{opener}{subj} {adv} {verb3} {obj}, which {verb3b} {obj2}{tail}",
    "{opener}{subj} {verb3} {obj}, so {subj2_l} {modal} {verb_b} {obj2}{tail}",
)

_TAILS = (
    ".", ".", ".", ".", ".", ".", ".", ".", "{cond}.", "{cond}.", "{cond}.", "{cond}.", " {adv}{cond}.",
    " until {subj2_l} {verb3b} {obj2}.", " because {subj2_l} {verb3b} {obj2}.",
    " unless {subj2_l} is {pred}.", " and {verb3b} {obj2}{cond}.", "{cond}?", " for {obj2}.",
    " after {gerund2} {obj2}.", " instead of {gerund2} {obj2}.", " by {gerund2} {obj2}{cond}.",
    " within {n1} seconds.", " for about {pct}% of requests.", " (see {ticket}).",
    " at roughly {n2} requests per second.", " in {name}'s last review.", " since version {ver}.",
    ", cutting costs by {pct}%.", " every {n1} minutes{cond}.", " ({n2} ms at p99).",
)

_MODIFIERS = (
    "billing", "session", "embedding", "inference", "routing", "retry", "cache", "token", "usage", "audit",
    "backup", "replication", "GPU", "tenant", "prompt", "model", "webhook", "metrics", "logging", "search",
    "ranking", "moderation", "quota", "pricing", "storage", "network", "DNS", "TLS", "auth", "OAuth",
    "schema", "migration", "deployment", "release", "canary", "rollback", "Kubernetes", "Redis", "Postgres",
    "S3", "Kafka", "gRPC", "HTTP", "streaming", "batch", "vector", "query", "transaction", "WAL", "snapshot",
    "restore", "failover", "region", "edge", "CDN", "analytics", "reporting", "feature", "experiment",
    "evaluation", "feedback", "support", "onboarding", "invoice", "payment", "fraud", "security",
    "compliance", "secrets", "config", "chat", "completion", "fine-tuning", "dataset", "labeling",
    "notification", "email", "upload", "export", "import", "sync", "consumer", "producer", "admin", "partner",
    "mobile", "frontend",
)

# (singular, plural)
_HEADS = (
    ("queue", "queues"), ("worker", "workers"), ("service", "services"), ("pipeline", "pipelines"),
    ("cache", "caches"), ("index", "indexes"), ("table", "tables"), ("endpoint", "endpoints"),
    ("client", "clients"), ("server", "servers"), ("cluster", "clusters"), ("node", "nodes"), ("pod", "pods"),
    ("job", "jobs"), ("task", "tasks"), ("handler", "handlers"), ("controller", "controllers"),
    ("adapter", "adapters"), ("gateway", "gateways"), ("router", "routers"), ("proxy", "proxies"),
    ("store", "stores"), ("bucket", "buckets"), ("policy", "policies"), ("rule", "rules"),
    ("limit", "limits"), ("budget", "budgets"), ("threshold", "thresholds"), ("timeout", "timeouts"),
    ("window", "windows"), ("buffer", "buffers"), ("pool", "pools"), ("script", "scripts"),
    ("template", "templates"), ("report", "reports"), ("dashboard", "dashboards"), ("alert", "alerts"),
    ("metric", "metrics"), ("log", "logs"), ("trace", "traces"), ("event", "events"), ("record", "records"),
    ("request", "requests"), ("response", "responses"), ("payload", "payloads"), ("header", "headers"),
    ("token", "tokens"), ("key", "keys"), ("snapshot", "snapshots"), ("replica", "replicas"),
    ("shard", "shards"), ("partition", "partitions"), ("backlog", "backlogs"), ("latency", "latencies"),
    ("error rate", "error rates"), ("layer", "layers"), ("module", "modules"), ("library", "libraries"),
    ("manifest", "manifests"), ("setting", "settings"), ("secret", "secrets"),
    ("certificate", "certificates"), ("daemon", "daemons"), ("scheduler", "schedulers"), ("hook", "hooks"),
    ("migration", "migrations"), ("connection", "connections"), ("consumer", "consumers"),
    ("retry", "retries"), ("counter", "counters"), ("histogram", "histograms"), ("rollout", "rollouts"),
    ("cron", "crons"), ("volume", "volumes"), ("checkpoint", "checkpoints"), ("batch", "batches"),
)

_FIRST_NAMES = (
    "Alice", "Bruno", "Carmen", "David", "Elena", "Farid", "Grace", "Hiro", "Isabel", "Jonas", "Kavya",
    "Liam", "Marta", "Nikolai", "Olivia", "Pablo", "Qiang", "Rosa", "Samir", "Tamara", "Umar", "Valeria",
    "Wei", "Ximena", "Yusuf", "Zoe", "Andrea", "Benedikt", "Chloe", "Diego", "Emma", "Felipe", "Gabriela",
    "Hannah", "Ivan", "Julia", "Kenji", "Laura", "Mateo", "Nadia", "Oscar", "Priya", "Rafael", "Sofia",
    "Thomas", "Ursula", "Victor", "Wanda", "Yara", "Lucas", "Aisha", "Carlos", "Daniela", "Erik", "Fatima",
    "Jorge", "Lucia", "Miguel", "Noah", "Sara",
)

_LAST_NAMES = (
    "Garcia", "Smith", "Müller", "Rossi", "Kowalski", "Nguyen", "Tanaka", "Silva", "Martínez", "Johnson",
    "Dubois", "Ivanova", "Kim", "Patel", "Fernández", "López", "Schmidt", "Novak", "Haddad", "O'Brien",
    "Andersen", "Costa", "Yilmaz", "Chen", "Wang", "Sánchez", "Romero", "Moreau", "Fischer", "Brown",
    "Wilson", "Pereira", "Suzuki", "Jensen", "Kaur", "Ali", "Torres", "Ramírez", "Weber", "Bianchi", "Ortiz",
    "Navarro", "Gómez", "Díaz", "Castro", "Morales",
)

_EMAIL_DOMAINS = (
    "gmail.com", "outlook.com", "proton.me", "yahoo.com", "acme.io", "globex.com", "initech.dev",
    "umbrella-labs.ai", "hooli.com", "stark-industries.io", "wayne.enterprises", "tyrell.tech",
    "cyberdyne.systems", "soylent.co", "aperture.science", "example.org", "fastmail.com",
)

_COMPANIES = (
    "Acme", "Globex", "Initech", "Umbrella Labs", "Hooli", "Stark Industries", "Wayne Enterprises", "Tyrell",
    "Cyberdyne", "Soylent", "Aperture", "Vandelay Industries", "Pied Piper", "Massive Dynamic",
)

_PRODUCTS = (
    "checkout service", "mobile app", "support portal", "analytics dashboard", "recommendation feed",
    "search API", "billing portal", "onboarding flow", "document pipeline", "chat assistant",
    "fraud detector", "invoice parser", "ticket triage bot", "knowledge base", "data warehouse",
)

_LANGUAGES = (
    "Python", "TypeScript", "Go", "Rust", "SQL", "Bash", "Java", "Kotlin", "JavaScript",
)

_DOC_TYPES = (
    "customer support ticket", "incident report", "meeting transcript", "product spec",
    "pull request description", "Slack thread", "error log", "postmortem", "sales call summary",
    "contract clause", "release note", "user review", "design document", "security advisory",
)

_AUDIENCES = (
    "junior developer", "product manager", "new on-call engineer", "non-technical stakeholder",
    "data scientist", "security auditor", "customer success team", "CTO", "student",
)

_TONES = (
    "friendly", "formal", "concise", "apologetic", "persuasive", "neutral", "enthusiastic",
)

_TASK_PHRASES = (
    "parses a CSV file and returns the rows as dictionaries",
    "retries an HTTP request with exponential backoff", "validates an API key against a hashed value",
    "streams tokens from a chat completion endpoint", "computes the cost of a request from token counts",
    "deduplicates events by idempotency key", "splits a long document into overlapping chunks",
    "caches model responses in Redis with a TTL", "rotates log files larger than 100 MB",
    "batches database inserts in groups of 1000", "rate limits requests per user with a token bucket",
    "merges two sorted lists without duplicates", "converts timestamps between time zones",
    "extracts email addresses from free text", "builds a Prometheus metric from request latencies",
    "uploads a backup file to S3 with multipart upload", "checks the replication lag of a PostgreSQL replica",
    "counts tokens for a prompt before sending it", "renders a Jinja template with user data",
    "flattens a nested JSON object",
)

_GOALS = (
    "be more readable", "avoid the N+1 query", "handle timeouts", "be async", "use type hints",
    "reduce memory usage", "be testable", "avoid global state", "support pagination",
    "handle unicode correctly", "stream the output", "be thread-safe", "log structured JSON",
)

_ERRORS = (
    "KeyError", "TypeError: 'NoneType' object is not subscriptable", "RecursionError", "ConnectionResetError",
    "asyncio.TimeoutError", "UnicodeDecodeError", "IndexError", "psycopg.errors.UniqueViolation",
    "redis.exceptions.ConnectionError", "JSONDecodeError", "PermissionError: [Errno 13]",
    "OSError: [Errno 24] Too many open files", "MemoryError",
)

_TOPICS = (
    "retrieval-augmented generation", "vector databases", "prompt caching", "function calling",
    "token-based pricing", "model fallback strategies", "rate limiting", "PostgreSQL replication",
    "Redis persistence", "Kubernetes autoscaling", "point-in-time recovery", "zero-downtime deploys",
    "idempotent APIs", "circuit breakers", "observability", "fine-tuning versus prompting",
    "context window limits", "streaming responses", "embedding similarity", "evaluation metrics",
    "backup retention policies", "blue-green deployments", "connection pooling", "eventual consistency",
)

_SQL_TABLES = (
    "ai_queries", "users", "api_keys", "usage_daily", "audit_events", "ai_models",
)

_SQL_COLUMNS = (
    "user_id", "model", "tokens_in", "tokens_out", "latency_ms", "cost_usd", "status", "plan", "api_key_id",
    "created_at", "requests", "tokens",
)

_IDENT_PARTS = (
    "user", "request", "token", "model", "cache", "key", "session", "batch", "chunk", "result", "payload",
    "response", "prompt", "usage", "cost", "retry", "limit", "window", "event", "record", "row", "item",
    "query", "client", "config", "state", "buffer", "stream", "score", "rank",
)

_PY_TYPES = (
    "str", "int", "float", "bytes", "dict[str, Any]", "list[str]", "list[int]", "bool",
)
# fmt: on

USER_AGENTS: tuple[str, ...] = (
    "openai-python/1.54.3",
    "anthropic-sdk-python/0.39.0",
    "ai-multimodel-sdk/2.3.1 (python 3.11.9; linux)",
    "ai-multimodel-sdk/2.2.0 (node 20.11.1; darwin)",
    "ai-multimodel-cli/0.9.4",
    "langchain/0.3.7",
    "llama-index/0.12.2",
    "curl/8.5.0",
    "PostmanRuntime/7.42.0",
    "Go-http-client/2.0",
    "axios/1.7.7",
    "python-httpx/0.27.2",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_6) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/18.1 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:132.0) Gecko/20100101 Firefox/132.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
)


# ---------------------------------------------------------------------------------------------
# Corpus (built once per process, fixed seed)
# ---------------------------------------------------------------------------------------------


class FastRandom(random.Random):
    """``random.Random`` with cheaper ``choice``/``randint`` (one ``random()`` call each).

    Same seed -> same sequence, on any platform; a bias of at most ``n / 2**53`` is irrelevant here.
    """

    def choice(self, seq: SupportsLenAndGetItem[_T]) -> _T:
        return seq[int(self.random() * len(seq))]

    def randint(self, a: int, b: int) -> int:
        return a + int(self.random() * (b - a + 1))


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _ident(rng: random.Random, parts: int = 2) -> str:
    return "_".join(rng.choice(_IDENT_PARTS) for _ in range(parts))


def _camel(rng: random.Random, parts: int = 2) -> str:
    words = [rng.choice(_IDENT_PARTS) for _ in range(parts)]
    return words[0] + "".join(w.capitalize() for w in words[1:])


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" and not word.startswith(("use", "uni", "URL")) else "a"


def _compound(rng: random.Random, plural: bool) -> str:
    head = rng.choice(_HEADS)[1 if plural else 0]
    mod = rng.choice(_MODIFIERS)
    if rng.random() < 0.45:
        return f"{rng.choice(_ADJECTIVES)} {mod} {head}"
    return f"{mod} {head}"


def _subject(rng: random.Random) -> str:
    """A singular noun phrase (agrees with third-person verbs)."""
    roll = rng.random()
    if roll < 0.3:
        noun = rng.choice(_SUBJECT_NOUNS)
        return f"the {noun}" if roll < 0.2 else f"the {rng.choice(_ADJECTIVES)} {noun}"
    phrase = _compound(rng, plural=False)
    det = rng.choice(("the", "the", "the", "our", "each", "every", "this", "a"))
    if det == "a":
        det = _article(phrase)
    return f"{det} {phrase}"


def _object(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.3:
        return rng.choice(_OBJECTS)
    if roll < 0.55:
        return _subject(rng)
    det = rng.choice(("the ", "all ", "most ", "some ", "these ", "our ", "", "", "stale ", "failed "))
    return f"{det}{_compound(rng, plural=True)}"


def _sentence(rng: random.Random) -> str:
    template = rng.choice(_SENTENCE_TEMPLATES)
    verb = rng.choice(_VERBS)
    verb_b = rng.choice(_VERBS)
    subj = _subject(rng)
    subj2 = _subject(rng)
    opener = rng.choice(_OPENERS)
    cond = rng.choice(_CONDITIONS)
    adv = rng.choice(_ADVERBS)
    obj2 = _object(rng)
    pred = rng.choice(_PREDICATES)
    tail = rng.choice(_TAILS)
    if "{" in tail:
        tail = tail.format(
            cond=cond,
            adv=adv,
            subj2_l=subj2,
            verb3b=verb_b[1],
            obj2=obj2,
            pred=pred,
            gerund2=verb_b[2],
            n1=rng.randint(2, 120),
            n2=rng.randint(10, 9_000),
            pct=rng.randint(2, 95),
            ticket=f"{rng.choice(('OPS', 'PLAT', 'INC', 'SRE', 'BILL'))}-{rng.randint(100, 9999)}",
            name=rng.choice(_FIRST_NAMES),
            ver=f"{rng.randint(1, 5)}.{rng.randint(0, 40)}.{rng.randint(0, 20)}",
        )
    text = template.format(
        opener=opener,
        subj=subj if opener else _cap(subj),
        subj_l=subj,
        subj2_l=subj2,
        verb=verb[0],
        verb_b=verb_b[0],
        verb3=verb[1],
        verb3b=verb_b[1],
        gerund=verb[2],
        Gerund=_cap(verb[2]),
        gerund2=verb_b[2],
        obj=_object(rng),
        obj2=obj2,
        adv=adv,
        modal=rng.choice(_MODALS),
        modal_neg=rng.choice(_MODALS_NEG),
        pred=pred,
        tail=tail,
    )
    return _cap(text)


def _python_snippet(rng: random.Random) -> str:
    fn = f"{rng.choice(_VERBS)[0].replace(' ', '_')}_{_ident(rng, rng.randint(1, 2))}"
    a1, a2 = _ident(rng, 1), _ident(rng, 2)
    t1, t2 = rng.choice(_PY_TYPES), rng.choice(_PY_TYPES)
    var, item, acc = _ident(rng, 2), rng.choice(_IDENT_PARTS), _ident(rng, 1) + "s"
    lines = [
        "import logging" if rng.random() < 0.5 else "from typing import Any",
        "",
        f"def {fn}({a1}: {t1}, {a2}: {t2} | None = None, *, timeout: float = {rng.randint(1, 60)}.0):",
        f'    """{_sentence(rng)}"""',
        f"    {var} = {a1}.{rng.choice(('get', 'split', 'items', 'strip', 'encode'))}({a2} or {rng.randint(0, 512)})",
        f"    if not {var}:",
        f'        raise ValueError("{rng.choice(_IDENT_PARTS)} is empty: %r" % ({a1},))',
        f"    {acc} = []",
        f"    for {item} in {var}:",
    ]
    if rng.random() < 0.6:
        lines.append(f"        if {item} is None or len({item}) > {rng.choice((64, 128, 256, 1024, 4096))}:")
        lines.append("            continue")
    lines.append(f"        {acc}.append({_ident(rng, 2)}({item}, timeout=timeout))")
    if rng.random() < 0.5:
        lines.append(f'    logging.getLogger(__name__).info("{fn}: %d items", len({acc}))')
    lines.append(f"    return {acc}")
    return "\n".join(lines)


def _sql_snippet(rng: random.Random) -> str:
    table = rng.choice(_SQL_TABLES)
    c1, c2, c3 = rng.sample(_SQL_COLUMNS, 3)
    unit = rng.choice(("hour", "day", "week"))
    lines = [
        f"SELECT {c1},",
        f"       date_trunc('{unit}', created_at) AS {unit},",
        "       count(*) AS requests,",
        f"       sum({c2}) AS total_{c2},",
        f"       percentile_cont(0.{rng.choice((5, 9, 95, 99))}) WITHIN GROUP (ORDER BY {c3}) AS p_{c3}",
        f"FROM {table}",
        f"WHERE created_at >= now() - interval '{rng.randint(1, 90)} days'",
    ]
    if rng.random() < 0.6:
        lines.append(f"  AND model = '{rng.choice(MODEL_NAMES)}'")
    if rng.random() < 0.4:
        lines.append(f"  AND status <> '{rng.choice(('error', 'timeout'))}'")
    lines.append("GROUP BY 1, 2")
    lines.append(f"ORDER BY total_{c2} DESC")
    lines.append(f"LIMIT {rng.choice((10, 20, 50, 100, 500))};")
    return "\n".join(lines)


def _ts_snippet(rng: random.Random) -> str:
    fn = _camel(rng, 3)
    model = rng.choice(MODEL_NAMES)
    return "\n".join(
        [
            f"export async function {fn}({_camel(rng, 1)}: string, opts: {{ retries?: number }} = {{}}) {{",
            f"  const maxRetries = opts.retries ?? {rng.randint(1, 8)};",
            "  for (let attempt = 0; attempt <= maxRetries; attempt++) {",
            f"    const res = await fetch(`${{BASE_URL}}/v1/{rng.choice(('chat', 'completions', 'embeddings'))}`, {{",
            "      method: 'POST',",
            "      headers: { Authorization: `Bearer ${process.env.API_KEY}` },",
            f"      body: JSON.stringify({{ model: '{model}', max_tokens: {rng.choice((256, 512, 1024, 4096))} }}),",
            "    });",
            "    if (res.status !== 429) return res.json();",
            f"    await sleep(2 ** attempt * {rng.choice((100, 250, 500))});",
            "  }",
            f"  throw new Error('{_sentence(rng)[:60]}');",
            "}",
        ]
    )


def _bash_snippet(rng: random.Random) -> str:
    ns = rng.choice(("production", "staging", "ai-platform", "monitoring"))
    dep = rng.choice(("ai-multimodel-api", "postgresql", "redis", "worker", "gateway"))
    lines = [
        "#!/usr/bin/env bash",
        "set -euo pipefail",
        f'NAMESPACE="{ns}"',
        f"kubectl get pods -n $NAMESPACE -l app={dep} -o wide",
        f"kubectl logs deployment/{dep} -n $NAMESPACE --since={rng.randint(5, 120)}m | grep -i "
        f"{rng.choice(('error', 'timeout', 'oom', 'refused'))} | tail -n {rng.choice((50, 100, 200))}",
    ]
    if rng.random() < 0.5:
        lines.append(f"kubectl rollout restart deployment/{dep} -n $NAMESPACE")
        lines.append(f"kubectl rollout status deployment/{dep} -n $NAMESPACE --timeout={rng.randint(60, 600)}s")
    else:
        lines.append(
            f"curl -sf https://api.ai-multimodel.example.com/{rng.choice(('health', 'ready', 'metrics'))} | jq '.'"
        )
    return "\n".join(lines)


def _json_snippet(rng: random.Random) -> str:
    fields = rng.sample(_IDENT_PARTS, rng.randint(3, 7))
    body = []
    for f in fields:
        kind = rng.random()
        if kind < 0.3:
            value = str(rng.randint(0, 100_000))
        elif kind < 0.5:
            value = f"{rng.random() * 100:.3f}"
        elif kind < 0.6:
            value = rng.choice(("true", "false", "null"))
        else:
            value = f'"{rng.choice(_SUBJECT_NOUNS)}"'
        body.append(f'  "{f}_{rng.choice(_IDENT_PARTS)}": {value}')
    return "{\n" + ",\n".join(body) + "\n}"


def _yaml_snippet(rng: random.Random) -> str:
    dep = rng.choice(("ai-multimodel-api", "worker", "gateway", "reranker"))
    return "\n".join(
        [
            "apiVersion: apps/v1",
            "kind: Deployment",
            "metadata:",
            f"  name: {dep}",
            "spec:",
            f"  replicas: {rng.randint(1, 12)}",
            "  template:",
            "    spec:",
            "      containers:",
            f"        - name: {dep}",
            f"          image: registry.example.com/{dep}:{rng.randint(1, 4)}.{rng.randint(0, 30)}."
            f"{rng.randint(0, 99)}",
            "          resources:",
            f"            requests: {{cpu: {rng.choice(('250m', '500m', '1', '2'))}, memory: "
            f"{rng.choice(('256Mi', '512Mi', '1Gi', '4Gi'))}}}",
            f"            limits: {{memory: {rng.choice(('1Gi', '2Gi', '8Gi'))}}}",
        ]
    )


_SNIPPET_BUILDERS = (
    ("python", _python_snippet, 5),
    ("sql", _sql_snippet, 3),
    ("typescript", _ts_snippet, 2),
    ("bash", _bash_snippet, 2),
    ("json", _json_snippet, 2),
    ("yaml", _yaml_snippet, 1),
)


def _document(rng: random.Random, sentences: Sequence[str]) -> str:
    """A pasted 'document' (ticket, transcript, log...) for prompts that carry context."""
    kind = rng.random()
    if kind < 0.35:
        # chat / meeting transcript
        speakers = rng.sample(_FIRST_NAMES, 3)
        return "\n".join(f"{rng.choice(speakers)}: {rng.choice(sentences)}" for _ in range(rng.randint(4, 12)))
    if kind < 0.55:
        # error log
        lines = []
        for _ in range(rng.randint(5, 15)):
            lines.append(
                f"2026-10-{rng.randint(1, 31):02d}T{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:"
                f"{rng.randint(0, 59):02d}.{rng.randint(0, 999):03d}Z {rng.choice(('ERROR', 'WARN', 'INFO'))} "
                f"[{rng.choice(('api', 'worker', 'router', 'billing'))}] {rng.choice(_ERRORS)} "
                f"request_id={rng.getrandbits(48):012x} model={rng.choice(MODEL_NAMES)} "
                f"latency_ms={rng.randint(20, 60_000)}"
            )
        return "\n".join(lines)
    # ticket / report prose
    paragraphs = []
    for _ in range(rng.randint(1, 4)):
        paragraphs.append(" ".join(rng.choice(sentences) for _ in range(rng.randint(2, 6))))
    header = (
        f"Ticket #{rng.randint(10_000, 99_999)} - {rng.choice(_COMPANIES)} - {rng.choice(_PRODUCTS)}\n"
        f"Reporter: {rng.choice(_FIRST_NAMES)} {rng.choice(_LAST_NAMES)}\n"
    )
    return header + "\n\n".join(paragraphs)


@dataclass(frozen=True)
class Corpus:
    """Pools of pre-built text that :class:`Composer` picks from."""

    sentences: tuple[str, ...]
    snippets: tuple[tuple[str, str], ...]  # (language, code)

    @property
    def nbytes(self) -> int:
        return sum(len(s) for s in self.sentences) + sum(len(c) for _, c in self.snippets)


@functools.cache
def get_corpus() -> Corpus:
    """Build (once per process) the deterministic text corpus."""
    rng = FastRandom(CORPUS_SEED)
    sentences = [_sentence(rng) for _ in range(SENTENCE_POOL_SIZE)]
    builders = [(lang, fn) for lang, fn, weight in _SNIPPET_BUILDERS for _ in range(weight)]
    snippets = []
    for _ in range(SNIPPET_POOL_SIZE):
        lang, fn = rng.choice(builders)
        snippets.append((lang, fn(rng)))
    return Corpus(tuple(sentences), tuple(snippets))


# ---------------------------------------------------------------------------------------------
# Composer (per data set, seeded)
# ---------------------------------------------------------------------------------------------

#: prompt kinds and their relative frequency
PROMPT_KINDS: tuple[tuple[str, int], ...] = (
    ("code", 22),
    ("explain", 18),
    ("summarize", 14),
    ("sql", 10),
    ("debug", 9),
    ("email", 8),
    ("extract", 8),
    ("chat", 11),
)


class Composer:
    """Compose prompts, responses and other row text from seeded random picks of the corpus."""

    FRESH_SNIPPET_RATIO = 0.6

    def __init__(self, seed: int, corpus: Corpus | None = None) -> None:
        self.rng = FastRandom(seed)
        self._snippet_builders = tuple((lang, fn) for lang, fn, weight in _SNIPPET_BUILDERS for _ in range(weight))
        self.corpus = corpus or get_corpus()
        self._kinds = tuple(k for k, _ in PROMPT_KINDS)
        weights = [w for _, w in PROMPT_KINDS]
        total = 0
        cum = []
        for w in weights:
            total += w
            cum.append(total)
        self._kind_cum = tuple(cum)

    # -- small helpers -------------------------------------------------------------------------
    def sentences(self, k: int) -> list[str]:
        return self.rng.choices(self.corpus.sentences, k=k)

    def paragraph(self, lo: int = 2, hi: int = 6) -> str:
        return " ".join(self.rng.choices(self.corpus.sentences, k=self.rng.randint(lo, hi)))

    def _more(self, lo: int, hi: int) -> str:
        """``lo``..``hi`` more sentences, with a leading space (or ``""`` for none)."""
        k = self.rng.randint(lo, hi)
        return " " + " ".join(self.rng.choices(self.corpus.sentences, k=k)) if k else ""

    def snippet(self) -> tuple[str, str]:
        """A code snippet: usually freshly built (unique identifiers/numbers), sometimes a popular one."""
        rng = self.rng
        if rng.random() < self.FRESH_SNIPPET_RATIO:
            lang, fn = rng.choice(self._snippet_builders)
            return lang, fn(rng)
        return rng.choice(self.corpus.snippets)

    def document(self) -> str:
        """A pasted document (ticket, transcript, log) built from pool sentences."""
        return _document(self.rng, self.corpus.sentences)

    def full_name(self) -> str:
        return f"{self.rng.choice(_FIRST_NAMES)} {self.rng.choice(_LAST_NAMES)}"

    def user_agent(self) -> str:
        return self.rng.choice(USER_AGENTS)

    def ip_address(self) -> str:
        r = self.rng.getrandbits(32)
        return f"{(r >> 24) % 223 + 1}.{(r >> 16) & 255}.{(r >> 8) & 255}.{(r & 255) or 1}"

    def _numbers_sentence(self) -> str:
        rng = self.rng
        roll = rng.random()
        if roll < 0.2:
            return (
                f"In the last {rng.randint(2, 90)} days the {rng.choice(_PRODUCTS)} sent "
                f"{rng.randint(1_000, 9_999_999):,} requests with a {rng.random() * 5:.2f}% error rate "
                f"and a p95 latency of {rng.randint(80, 9_000)} ms."
            )
        if roll < 0.4:
            return (
                f"At ${rng.random() * 0.06:.4f} per 1K input tokens and ${rng.random() * 0.12:.4f} per 1K "
                f"output tokens, {rng.randint(10, 5_000)} daily users averaging {rng.randint(200, 8_000)} "
                f"tokens cost about ${rng.random() * 900:.2f} per day."
            )
        if roll < 0.6:
            return (
                f"Set max_connections to {rng.choice((100, 200, 400, 800))}, the pool size to "
                f"{rng.randint(5, 60)} and the statement timeout to {rng.randint(1, 120)}s "
                f"(ticket {rng.choice(('OPS', 'PLAT', 'INC', 'SRE'))}-{rng.randint(100, 9999)})."
            )
        if roll < 0.8:
            return (
                f"Version {rng.randint(1, 5)}.{rng.randint(0, 40)}.{rng.randint(0, 20)} of the "
                f"{rng.choice(_SUBJECT_NOUNS)} was rolled out to {rng.randint(1, 100)}% of "
                f"{rng.choice(_COMPANIES)} traffic on 2026-{rng.randint(1, 10):02d}-{rng.randint(1, 28):02d}."
            )
        return (
            f"Request {self.rng.getrandbits(64):016x} from {self.ip_address()} hit "
            f"{rng.choice(MODEL_NAMES)} with {rng.randint(10, 30_000)} tokens and returned "
            f"HTTP {rng.choice((200, 200, 200, 429, 500, 503, 504))} after {rng.randint(30, 60_000)} ms."
        )

    # -- prompt / response ---------------------------------------------------------------------
    def kind(self) -> str:
        return self.rng.choices(self._kinds, cum_weights=self._kind_cum, k=1)[0]

    def prompt(self, kind: str) -> str:
        rng = self.rng
        if kind == "code":
            lang = rng.choice(_LANGUAGES)
            if rng.random() < 0.5:
                return f"Write a {lang} function that {rng.choice(_TASK_PHRASES)}.{self._more(0, 2)}"
            slang, code = self.snippet()
            return f"Refactor this {slang} code to {rng.choice(_GOALS)}:\n\n```{slang}\n{code}\n```"
        if kind == "explain":
            return (
                f"Explain {rng.choice(_TOPICS)} to a {rng.choice(_AUDIENCES)}.{self._more(0, 3)} "
                f"Keep it under {rng.choice((200, 300, 500, 800))} words."
            )
        if kind == "summarize":
            return (
                f"Summarize the following {rng.choice(_DOC_TYPES)} in {rng.randint(3, 7)} bullet points:"
                f"\n\n{self.document()}"
            )
        if kind == "sql":
            return (
                f"Write a PostgreSQL query that returns {rng.choice(_SQL_COLUMNS)} per "
                f"{rng.choice(_SQL_COLUMNS)} for the last {rng.randint(1, 90)} days from the "
                f"{rng.choice(_SQL_TABLES)} table.{self._more(0, 2)}"
            )
        if kind == "debug":
            slang, code = self.snippet()
            return (
                f"Why does this raise {rng.choice(_ERRORS)}?\n\n```{slang}\n{code}\n```\n\n{self._numbers_sentence()}"
            )
        if kind == "email":
            return (
                f"Draft a {rng.choice(_TONES)} email to {self.full_name()} at {rng.choice(_COMPANIES)} "
                f"about {rng.choice(_OBJECTS)} in the {rng.choice(_PRODUCTS)}. {self.paragraph(1, 3)}"
            )
        if kind == "extract":
            return (
                f"Extract the {', '.join(rng.sample(_IDENT_PARTS, 3))} fields from this "
                f"{rng.choice(_DOC_TYPES)} and return JSON:\n\n{self.document()}"
            )
        return f"{self.paragraph(1, 4)} {self._numbers_sentence()}"

    def response(self, kind: str) -> str:
        rng = self.rng
        parts: list[str] = [self.paragraph(1, 4)]
        if kind in ("code", "debug"):
            slang, code = self.snippet()
            parts.append(f"```{slang}\n{code}\n```")
            parts.append(self.paragraph(2, 6))
            if rng.random() < 0.5:
                parts.append("\n".join(f"- {s}" for s in self.sentences(rng.randint(2, 5))))
        elif kind == "sql":
            slang, code = self.snippet() if rng.random() < 0.3 else ("sql", _sql_snippet(rng))
            parts.append(f"```{slang}\n{code}\n```")
            parts.append(self.paragraph(1, 4))
        elif kind == "summarize":
            parts = ["\n".join(f"- {s}" for s in self.sentences(rng.randint(3, 7)))]
            if rng.random() < 0.4:
                parts.append(self.paragraph(1, 3))
        elif kind == "email":
            name = self.full_name()
            parts = [
                f"Subject: {_cap(rng.choice(_OBJECTS))} in the {rng.choice(_PRODUCTS)}",
                f"Hi {name.split()[0]},",
            ]
            parts.extend(self.paragraph(2, 5) for _ in range(rng.randint(1, 4)))
            parts.append(f"Best regards,\n{self.full_name()}\n{rng.choice(_COMPANIES)}")
        elif kind == "extract":
            parts = [f"```json\n{_json_snippet(rng)}\n```"]
            if rng.random() < 0.5:
                parts.append(self.paragraph(1, 3))
        else:  # explain, chat
            n = 1 + min(int(rng.expovariate(0.45)), 10)
            for i in range(n):
                if i and rng.random() < 0.25:
                    parts.append(f"## {_cap(rng.choice(_TOPICS))}")
                parts.append(self.paragraph(2, 7))
            if rng.random() < 0.35:
                parts.append("\n".join(f"{i}. {s}" for i, s in enumerate(self.sentences(rng.randint(3, 6)), 1)))
        parts.append(self._numbers_sentence())
        if rng.random() < 0.5:
            parts.append(self.paragraph(1, 3))
        return "\n\n".join(parts)

    def prompt_response(self) -> tuple[str, str, str]:
        """Return ``(kind, prompt, response)``."""
        kind = self.kind()
        return kind, self.prompt(kind), self.response(kind)
