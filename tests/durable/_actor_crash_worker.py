"""A worker process for the actor crash test: posts M messages to counters and relays on a
SQLite file (idempotently, by message id) and handles them until none is pending.

Started, SIGKILLed at random points and restarted by ``test_actor_crash.py``. Every handler
records the id of the message it applied in the actor's state, so the test can check that each
message changed the state exactly once (no loss, no double apply), and a relay forwards through
its outbox, so the test can check outbox messages too.

Usage: ``python _actor_crash_worker.py DB MESSAGES KEYS``
"""

from __future__ import annotations

import asyncio
import sys

import msgspec

from garrison.durable import ActorConfig, ActorContext, ActorSystem, actor
from garrison.durable._stores.sqlite import SqliteStore


class Applied(msgspec.Struct):
    n: int = 0
    ids: list[str] = []


@actor(name="CrashCounter")
class Counter:
    state: Applied
    ctx: ActorContext

    async def inc(self, i: int) -> None:
        self.state.n += 1
        self.state.ids.append(self.ctx.message_id)


@actor(name="CrashRelay")
class Relay:
    state: Applied
    ctx: ActorContext

    async def relay(self, i: int, to: str) -> None:
        self.state.n += 1
        self.state.ids.append(self.ctx.message_id)
        self.ctx.send(Counter, to, "inc", i)  # the outbox: exactly once with this change


def plan(messages: int, keys: int) -> list[tuple[str, str, int, str]]:
    """(method, key, i, relay target) per message; shared with the test."""
    out = []
    for i in range(messages):
        if i % 5 == 0:
            out.append(("relay", f"r{i % 7}", i, f"c{(i * 3) % keys}"))
        else:
            out.append(("inc", f"c{i % keys}", i, ""))
    return out


async def main(db: str, messages: int, keys: int) -> None:
    store = SqliteStore(db)
    await store.open()
    cfg = ActorConfig(worker_id="crash-worker", poll_interval=0.05, max_batch=8, lease_seconds=5)
    system = ActorSystem(store, actors=[Counter, Relay], config=cfg)
    await system.open()
    work = plan(messages, keys)
    for start in range(0, len(work), 25):  # re-posting after a restart posts nothing twice
        chunk = work[start : start + 25]
        await asyncio.gather(
            *(
                system.ref(Relay, key).signal("relay", i, to, id=f"m{i}")
                if method == "relay"
                else system.ref(Counter, key).signal("inc", i, id=f"m{i}")
                for method, key, i, to in chunk
            )
        )
    while True:
        pending = await store._read(
            lambda c: c.execute(
                "SELECT count(*) FROM actor_rows WHERE next_seq > done_seq"
            ).fetchone()[0]
        )
        if pending == 0:
            break
        await asyncio.sleep(0.05)
    print("ALL DONE", flush=True)
    await system.close()
    await store.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
