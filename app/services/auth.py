"""Tenants and API keys. A key is shown once, at creation; only its SHA-256 is stored."""

from __future__ import annotations

import hashlib
import secrets
import time

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.errors import Unauthorized
from app.tables import ApiKey, Tenant, new_id

KEY_PREFIX = "sk-sc-"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def get_or_create_tenant(session: Session, name: str) -> Tenant:
    tenant = session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is None:
        tenant = Tenant(id=new_id("tenant"), name=name)
        session.add(tenant)
        session.flush()
    return tenant


def create_key(session: Session, tenant_name: str) -> str:
    """A new key for the tenant (created if new). The caller commits."""
    tenant = get_or_create_tenant(session, tenant_name)
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiKey(id=new_id("key"), tenant_id=tenant.id, key_hash=hash_key(key), prefix=key[:12]))
    return key


def list_keys(session: Session, tenant_name: str | None = None) -> list[tuple[ApiKey, str]]:
    """Every key (or one tenant's) with its tenant's name, oldest first."""
    query = select(ApiKey, Tenant.name).join(Tenant, Tenant.id == ApiKey.tenant_id).order_by(ApiKey.created_at)
    if tenant_name is not None:
        query = query.where(Tenant.name == tenant_name)
    return [(key, name) for key, name in session.execute(query)]


def revoke_key(session: Session, key_id_or_prefix: str) -> ApiKey | None:
    """Delete the key with this id (`key_...`) or this printed prefix (`sk-sc-...`), if exactly
    one matches. The caller commits. An API process may accept it until its cache entry
    expires (`key_cache_s`)."""
    by_id = session.get(ApiKey, key_id_or_prefix)
    matches = (
        [by_id] if by_id is not None else list(session.scalars(select(ApiKey).where(ApiKey.prefix == key_id_or_prefix)))
    )
    if len(matches) != 1:
        return None
    session.delete(matches[0])
    return matches[0]


def bearer_key_hash(authorization: str | None) -> str:
    """The hash of the key in an `Authorization: Bearer <key>` header, or 401."""
    if not authorization:
        raise Unauthorized("missing Authorization header; send `Authorization: Bearer <API key>`")
    scheme, _, key = authorization.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise Unauthorized("the Authorization header must be `Bearer <API key>`")
    return hash_key(key.strip())


def tenant_of(session: Session, key_hash: str) -> str:
    tenant_id = session.scalar(select(ApiKey.tenant_id).where(ApiKey.key_hash == key_hash))
    if tenant_id is None:
        raise Unauthorized("invalid API key")
    return tenant_id


class KeyCache:
    """Recently seen keys, so most requests authenticate without a query (one per key per
    `ttl_s`). A key revoked by `stagecraft keys revoke`, from any process, stops working
    once its entry expires: within `ttl_s`."""

    def __init__(self, ttl_s: float = 10.0, size: int = 10_000):
        self.ttl_s, self.size = ttl_s, size
        self.entries: dict[str, tuple[str, float]] = {}

    def get(self, key_hash: str) -> str | None:
        hit = self.entries.get(key_hash)
        if hit is None or hit[1] < time.monotonic():
            return None
        return hit[0]

    def put(self, key_hash: str, tenant_id: str) -> None:
        if len(self.entries) >= self.size:
            self.entries.clear()
        self.entries[key_hash] = (tenant_id, time.monotonic() + self.ttl_s)
