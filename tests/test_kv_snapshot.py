"""Reading a whole KV bucket sees every entry, however the reads interleave.

nats-py signals "initial values done" from consumer info, which can report
nothing pending while the pushed messages are still unread in the client: a
full bucket then looked empty (a full sync deleted nothing, a mirror started
with no routes). Many reads of one bucket make that race show up.
"""

from __future__ import annotations

import contextlib
import uuid

from gandalf_admin.replicate import snapshot
from gandalf_common.bus import connect
from gandalf_common.kv import KVMirror

ENTRIES = 200
READS = 150


async def test_every_read_of_a_bucket_sees_all_of_it(nats_url: str) -> None:
    nc = await connect(nats_url, "kv-snapshot-test")
    js = nc.jetstream()
    bucket = f"gandalf_snap_t{uuid.uuid4().hex[:12]}"
    kv = await js.create_key_value(bucket=bucket, history=1)
    try:
        for i in range(ENTRIES):
            await kv.put(f"k{i}", b"v%d" % i)
        await kv.delete("k0")  # a delete marker is the stream's last message
        want = {f"k{i}": b"v%d" % i for i in range(1, ENTRIES)}
        short = 0
        for _ in range(READS):
            short += await snapshot(kv) != want
        assert short == 0, f"{short} of {READS} snapshots missed entries"
        for _ in range(READS // 3):
            mirror: KVMirror[bytes] = KVMirror(bucket, lambda _k, v: v)
            await mirror.start(nc, wait=5)
            try:
                assert mirror.entries == want
            finally:
                await mirror.stop()
        empty = await js.create_key_value(bucket=bucket + "e", history=1)
        assert await snapshot(empty) == {}
    finally:
        for name in (bucket, bucket + "e"):
            with contextlib.suppress(Exception):
                await js.delete_key_value(name)
        await nc.close()
