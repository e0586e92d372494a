"""Tenants and API keys. A key is shown once, at creation; only its SHA-256 is stored."""

from __future__ import annotations

import hashlib
import secrets

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


def authenticate(session: Session, authorization: str | None) -> str:
    """The tenant id for an `Authorization: Bearer <key>` header, or 401."""
    if not authorization:
        raise Unauthorized("missing Authorization header; send `Authorization: Bearer <API key>`")
    scheme, _, key = authorization.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise Unauthorized("the Authorization header must be `Bearer <API key>`")
    tenant_id = session.scalar(select(ApiKey.tenant_id).where(ApiKey.key_hash == hash_key(key.strip())))
    if tenant_id is None:
        raise Unauthorized("invalid API key")
    return tenant_id
