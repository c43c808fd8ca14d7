"""One exception tree for the whole project.

Every error names the system, says what went wrong, and says what to do next. Vendor errors are
chained (``raise X(...) from err``) so the traceback keeps the cause, while ``str(err)`` stays one
line an on-call engineer can act on. ``transient`` tells the retry policy whether trying again can help
(None: decide from the HTTP status, if any).
"""

from __future__ import annotations


class RunbookError(Exception):
    """Base class: one actionable line in ``str()``."""

    system: str = "runbooks"

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        status_code: int | None = None,
        transient: bool | None = None,
    ) -> None:
        self.message = message
        self.hint = hint
        self.status_code = status_code
        self.transient = transient
        super().__init__(f"{message} ({hint})" if hint else message)


class ConfigurationError(RunbookError):
    """A block is missing or one of its fields is wrong (or points at a server that does not answer)."""

    system = "configuration"

    def __init__(
        self, block: str, field: str | None, problem: str, *, hint: str | None = None, transient: bool = False
    ) -> None:
        self.block = block
        self.field = field
        where = f"block {block!r}" + (f", field {field!r}" if field else "")
        super().__init__(f"{where}: {problem}", hint=hint, transient=transient)


class PlatformAPIError(RunbookError):
    """The platform's HTTP API answered with an error or could not be reached."""

    system = "platform"


class PlatformAuthError(PlatformAPIError):
    """The admin token was refused (401/403): retrying will not help."""

    def __init__(self, message: str, *, status_code: int | None = None, hint: str | None = None) -> None:
        super().__init__(message, status_code=status_code, hint=hint, transient=False)


class PrometheusError(RunbookError):
    """A PromQL query was refused (bad query: 400/422) or Prometheus could not be reached."""

    system = "prometheus"


class PostgresError(RunbookError):
    system = "postgres"


class RedisError(RunbookError):
    system = "redis"


class StorageError(RunbookError):
    system = "s3"


class KubernetesError(RunbookError):
    system = "kubernetes"


class NotificationError(RunbookError):
    system = "notify"


class SandboxError(RunbookError):
    system = "sandbox"


class PolicyError(RunbookError):
    """A policy file (``tasks/*/policy.yaml``) cannot be read or says something invalid: fix the file."""

    system = "policy"


class DeployError(RunbookError):
    """A release was refused before it started (an open incident, another release running, a failed preflight
    check) or failed and was rolled back."""

    system = "deploy"


class CertificateError(RunbookError):
    """A TLS certificate could not be read (a handshake, a Secret's ``tls.crt``) or renewed (nothing new came in
    time: the saved Secret was put back)."""

    system = "certificates"
