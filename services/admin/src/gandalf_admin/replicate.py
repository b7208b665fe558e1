"""Replication of the database to NATS KV.

Every committed write publishes the records it changed (put or delete); a
full sync makes each bucket equal to the database (puts what differs,
deletes what the database no longer has). Both run under the store's
replication lock, so KV writes land in commit order across replicas.

When a publish fails (NATS down, a timeout) the write stays committed: the
failure is logged and a background full sync is retried with backoff until
it succeeds, so KV always converges to the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import asyncpg
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from gandalf_common.kv import is_entry, watch_all
from gandalf_common.records import (
    CONFIG_BUCKET,
    JWT_KEY,
    KEYS_BUCKET,
    ORG_PREFIX,
    PROVIDER_PREFIX,
    ROUTE_PREFIX,
    TEAM_PREFIX,
    JwtSettings,
    encode_record,
    jwt_decoder,
    key_decoder,
    org_decoder,
    provider_decoder,
    route_decoder,
    team_decoder,
)

from . import convert
from .jwt_settings import jwt_from_json
from .store import PgRepos, Repos, Store
from .store.rows import KeyRow, OrgRow, ProviderRow, RouteRow, TeamRow

log = logging.getLogger("gandalf.admin.replicate")

#: Config keys the admin owns; a full sync deletes stale ones only among these.
_OWNED_PREFIXES = (ORG_PREFIX, TEAM_PREFIX, PROVIDER_PREFIX, ROUTE_PREFIX, JWT_KEY)
PUBLISH_TIMEOUT_S = 5.0
SNAPSHOT_TIMEOUT_S = 5.0
RETRY_MIN_S = 0.5
RETRY_MAX_S = 30.0


@dataclass(frozen=True, slots=True)
class Change:
    bucket: str
    key: str
    #: None deletes the entry.
    value: bytes | None


@dataclass(slots=True)
class Write:
    """One admin write: repositories inside its transaction, and the KV
    changes to publish once it commits."""

    repos: Repos
    keys_bucket: str
    config_bucket: str
    changes: list[Change] = field(default_factory=list)

    def _config(self, key: str, record: object | None) -> None:
        value = None if record is None else encode_record(record)
        self.changes.append(Change(self.config_bucket, key, value))

    def put_org(self, row: OrgRow) -> None:
        self._config(convert.org_kv_key(row.id), convert.org_record(row))

    def delete_org(self, org_id: str) -> None:
        self._config(convert.org_kv_key(org_id), None)

    def put_team(self, row: TeamRow) -> None:
        self._config(convert.team_kv_key(row.id), convert.team_record(row))

    def delete_team(self, team_id: str) -> None:
        self._config(convert.team_kv_key(team_id), None)

    def put_provider(self, row: ProviderRow) -> None:
        self._config(convert.provider_kv_key(row.id), convert.provider_record(row))

    def delete_provider(self, provider_id: str) -> None:
        self._config(convert.provider_kv_key(provider_id), None)

    def put_route(self, row: RouteRow) -> None:
        self._config(convert.route_kv_key(row.id), convert.route_record(row))

    def delete_route(self, route_id: str) -> None:
        self._config(convert.route_kv_key(route_id), None)

    def put_jwt(self, settings: JwtSettings) -> None:
        self._config(JWT_KEY, settings)

    def put_key(self, row: KeyRow) -> None:
        self.changes.append(Change(self.keys_bucket, row.key_hash,
                                   encode_record(convert.key_record(row))))

    def delete_key(self, key_hash: str) -> None:
        self.changes.append(Change(self.keys_bucket, key_hash, None))


async def desired_state(repos: Repos) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """What the keys and config buckets must hold for this database."""
    keys = {k.key_hash: encode_record(convert.key_record(k)) for k in await repos.keys.all()}
    config: dict[str, bytes] = {}
    for org in await repos.orgs.all():
        config[convert.org_kv_key(org.id)] = encode_record(convert.org_record(org))
    for team in await repos.teams.all():
        config[convert.team_kv_key(team.id)] = encode_record(convert.team_record(team))
    for provider in await repos.providers.all():
        config[convert.provider_kv_key(provider.id)] = encode_record(
            convert.provider_record(provider))
    for route in await repos.routes.all():
        config[convert.route_kv_key(route.id)] = encode_record(convert.route_record(route))
    jwt = await repos.auth.get("jwt")
    if jwt is not None:
        config[JWT_KEY] = encode_record(jwt_from_json(jwt))
    return keys, config


_CONFIG_DECODERS = ((ORG_PREFIX, org_decoder), (TEAM_PREFIX, team_decoder),
                    (PROVIDER_PREFIX, provider_decoder), (ROUTE_PREFIX, route_decoder),
                    (JWT_KEY, jwt_decoder))


def decode_entry(key: str, raw: bytes, *, keys_bucket: bool) -> object:
    """An entry as a record, to compare by value: the msgpack bytes of equal
    records can differ (msgspec's omit_defaults compares strings by identity,
    so ``role="member"`` read from the database is encoded, the literal not)."""
    try:
        if keys_bucket:
            return key_decoder.decode(raw)
        for prefix, decoder in _CONFIG_DECODERS:
            if key.startswith(prefix):
                return decoder.decode(raw)
    except Exception:  # noqa: BLE001 - undecodable: different from anything we write
        return raw
    return raw


async def snapshot(kv: KeyValue) -> dict[str, bytes]:
    """Every live entry of a bucket (latest value per key)."""
    watcher, last = await watch_all(kv)
    out: dict[str, bytes] = {}
    try:
        async with asyncio.timeout(SNAPSHOT_TIMEOUT_S):
            while last:
                entry = await watcher.updates(timeout=SNAPSHOT_TIMEOUT_S)
                if not is_entry(entry):
                    continue
                if entry.value and entry.operation not in (KV_DEL, KV_PURGE):
                    out[entry.key] = entry.value
                else:
                    out.pop(entry.key, None)
                if entry.revision >= last:
                    break
        return out
    finally:
        with contextlib.suppress(Exception):
            await watcher.stop()


class Replicator:
    def __init__(self, store: Store, kv: dict[str, KeyValue], *,
                 keys_bucket: str = KEYS_BUCKET, config_bucket: str = CONFIG_BUCKET,
                 connected: Callable[[], bool] = lambda: True) -> None:
        self.store = store
        self.kv = kv
        self.keys_bucket = keys_bucket
        self.config_bucket = config_bucket
        #: While NATS is away a publish would only wait for its timeout.
        self._connected = connected
        self.retry_min_s = RETRY_MIN_S
        self.retry_max_s = RETRY_MAX_S
        self._dirty = asyncio.Event()
        self._retry_task: asyncio.Task[None] | None = None
        self.syncs = 0  # full syncs done (tests and logs)

    @property
    def needs_sync(self) -> bool:
        return self._dirty.is_set()

    # ------------------------------------------------------------ writes

    @contextlib.asynccontextmanager
    async def write(self) -> AsyncIterator[Write]:
        """DB transaction, then KV publish, all under the replication lock."""
        async with self.store.locked() as conn:
            w = Write(PgRepos(conn), self.keys_bucket, self.config_bucket)
            async with conn.transaction():
                yield w
            await self.publish(w.changes)

    async def publish(self, changes: list[Change]) -> None:
        """Apply committed changes to KV; on failure schedule a full sync."""
        if not changes:
            return
        try:
            if not self._connected():
                raise ConnectionError("not connected to NATS")
            async with asyncio.timeout(PUBLISH_TIMEOUT_S):
                for change in changes:
                    kv = self.kv[change.bucket]
                    if change.value is None:
                        await kv.delete(change.key)
                    else:
                        await kv.put(change.key, change.value)
        except Exception as exc:  # noqa: BLE001 - any failure: the DB is the truth
            log.warning("KV publish failed (%s: %s); the change is committed and a full "
                        "sync will follow", type(exc).__name__, exc)
            self.mark_dirty()

    # -------------------------------------------------------- full sync

    async def full_sync(self) -> None:
        async with self.store.locked() as conn:
            await self.sync_locked(conn)

    async def sync_locked(self, conn: asyncpg.Connection) -> None:
        """Make KV equal the database; the caller holds the replication lock."""
        if not self._connected():
            raise ConnectionError("not connected to NATS")
        # One snapshot of the database (repeatable read), however long KV takes.
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            keys, config = await desired_state(PgRepos(conn))
        puts = deletes = 0
        for bucket, want, owned in ((self.keys_bucket, keys, None),
                                    (self.config_bucket, config, _OWNED_PREFIXES)):
            kv = self.kv[bucket]
            have = await snapshot(kv)
            is_keys = owned is None
            for key, value in want.items():
                old = have.get(key)
                # Unchanged entries are not rewritten: every put wakes every mirror.
                if old is None or decode_entry(key, old, keys_bucket=is_keys) != decode_entry(
                        key, value, keys_bucket=is_keys):
                    await kv.put(key, value)
                    puts += 1
            for key in have.keys() - want.keys():
                if owned is None or key.startswith(owned):
                    await kv.delete(key)
                    deletes += 1
        self.syncs += 1
        log.info("KV full sync: %d keys, %d config entries (%d written, %d deleted)",
                 len(keys), len(config), puts, deletes)

    # ----------------------------------------------------- retry in background

    def mark_dirty(self) -> None:
        self._dirty.set()
        if self._retry_task is None or self._retry_task.done():
            self._retry_task = asyncio.create_task(self._retry(), name="admin-kv-resync")

    async def _retry(self) -> None:
        delay = self.retry_min_s
        while self._dirty.is_set():
            await asyncio.sleep(delay)
            # Cleared before the sync: a publish failing during it sets it again.
            self._dirty.clear()
            try:
                await self.full_sync()
                log.info("KV converged to the database after a failed publish")
            except Exception as exc:  # noqa: BLE001 - keep retrying until it works
                self._dirty.set()
                delay = min(delay * 2, self.retry_max_s)
                log.warning("KV full sync failed (%s: %s); retrying in %.1fs",
                            type(exc).__name__, exc, delay)

    async def stop(self) -> None:
        task, self._retry_task = self._retry_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
