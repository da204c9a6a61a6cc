"""The autoscaler's Redis connection: bounded timeouts and retries, and the AUTH token from
Secrets Manager (cached per sandbox, read again after a rotation)."""

from __future__ import annotations

from typing import Any

from .settings import Settings

# Attempts after the first for a Redis command that times out or loses its connection.
# redis-py 8 makes 10 by default: with the 5 s timeout a hung Redis held one pipeline for
# about a minute (11 x 5 s), the Lambda's whole timeout, so the run was killed before it
# reported the fault. Two absorb a reset (a failover) and bound a read to about 16 s.
REDIS_RETRIES = 2
REDIS_SOCKET_TIMEOUT_S = 5
REDIS_CONNECT_TIMEOUT_S = 3


def redis_client_for(settings: Settings, token: str | None) -> Any:
    import redis
    from redis.backoff import ExponentialBackoff
    from redis.retry import Retry

    return redis.Redis(
        host=settings.redis_host,
        port=settings.redis_port,
        password=token,
        ssl=settings.redis_tls,
        ssl_cert_reqs="required" if settings.redis_tls else "none",
        socket_connect_timeout=REDIS_CONNECT_TIMEOUT_S,
        socket_timeout=REDIS_SOCKET_TIMEOUT_S,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.1), REDIS_RETRIES),
    )


# How long a sandbox reuses the AUTH token it read (seconds). During a rotation both tokens
# work until SET: every sandbox reads the new one within this long of the secret's update.
# A token Redis refuses before then (SET came sooner) is read again at once.
TOKEN_MAX_AGE_S = 900


def auth_token(settings: Settings, *, refresh: bool = False) -> str | None:
    if settings.redis_auth_secret_arn is None:
        return None
    from aws_lambda_powertools.utilities.parameters import get_secret

    # Cached by Powertools in this sandbox for TOKEN_MAX_AGE_S; `refresh` reads it now.
    token = get_secret(settings.redis_auth_secret_arn, max_age=TOKEN_MAX_AGE_S, force_fetch=refresh)
    if not isinstance(token, str):
        raise ValueError("REDIS_AUTH_SECRET_ARN must name a secret whose value is a string")
    return token
