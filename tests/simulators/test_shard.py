"""A world simulated by several processes, each serving its own users (``simulators.shard``).

The collectives are replaced by a two-thread exchange here (the real gloo job is in
tests/recsys_onpolicy/test_distributed.py), so the protocol is checked in-process: lockstep
batches (also when one side has none), every request served once by its owner, and both sides
ending each day with the same world and the same whole-day log.
"""
import threading
from dataclasses import dataclass, field

import pytest
import torch

from simulators import presets
from simulators.day import apply_feedback, simulate_day
from simulators.policies import fixed_positions_policy
from simulators.records import _ROW_FIELDS
from simulators.rng import make_generator
from simulators.shard import UserShard
from simulators.world import Users, make_world

ALL_DYNAMICS = {"drift": {"enabled": True}, "reinforcement": {"enabled": True},
                "fatigue": {"enabled": True}, "retention": {"enabled": True}}


@dataclass
class Hub:
    """What the processes of a thread-based job share: one slot per process and a barrier."""

    count: int
    slots: list = field(default_factory=list)
    barrier: threading.Barrier | None = None

    def __post_init__(self):
        self.slots = [None] * self.count
        self.barrier = threading.Barrier(self.count, timeout=60)

    def everyone(self, index: int, value):
        self.slots[index] = value
        self.barrier.wait()
        out = list(self.slots)
        self.barrier.wait()  # nobody overwrites a slot before everyone has read it
        return out


@dataclass(frozen=True)
class ThreadShard(UserShard):
    """A :class:`UserShard` whose collectives go through a :class:`Hub` instead of torch.distributed."""

    hub: Hub | None = None

    def agree(self, n: int) -> int:
        return max(self.hub.everyone(self.index, n))

    def gather_rows(self, tensors):
        parts = self.hub.everyone(self.index, [t.clone() for t in tensors])
        return [torch.cat([p[i] for p in parts]) for i in range(len(tensors))]


def run_split(cfg, days: int, batch_size: int, count: int = 2):
    """``days`` days of one world simulated by ``count`` threads; per thread: (logs, world,
    users its policy saw, number of policy calls)."""
    hub = Hub(count)
    base = make_world(cfg, make_generator(0))
    results: list = [None] * count
    errors: list = []

    def work(index: int) -> None:
        try:
            world, seen = base.clone(), []
            fixed = fixed_positions_policy(cfg.slate_size)

            def policy(requests):
                seen.append(requests.users.clone())
                return fixed(requests)

            gen = make_generator(1)
            shard = ThreadShard(index, count, hub=hub)
            logs = [simulate_day(world, policy, gen, batch_size, shard=shard, prefetch=False)
                    for _ in range(days)]
            logs = [{f: getattr(log, f).clone() for f in _ROW_FIELDS} for log in logs]
            results[index] = (logs, world, torch.cat(seen), len(seen))
        except Exception as err:  # noqa: BLE001 - reported by the test
            errors.append(err)
            hub.barrier.abort()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return results


def assert_same_world(a, b):
    for part in ("users", "items"):
        for name, value in vars(getattr(a, part)).items():
            other = getattr(getattr(b, part), name)
            assert (value is None and other is None) or torch.equal(value, other), (part, name)
    assert a.day == b.day


@pytest.mark.parametrize(("users", "batch_size"), [(400, 16), (3, 1)])
def test_split_days_serve_every_request_once_by_its_owner_and_agree(users, batch_size):
    cfg = presets.tiny({"users": {"n_users": users, "activity_mean": 0.9},
                        "dynamics": ALL_DYNAMICS})
    results = run_split(cfg, days=3, batch_size=batch_size)
    (logs_0, world_0, seen_0, calls_0), (logs_1, world_1, seen_1, calls_1) = results
    assert calls_0 == calls_1  # lockstep: the same number of batches, some maybe empty
    assert bool((seen_0 % 2 == 0).all()) and bool((seen_1 % 2 == 1).all())
    logged = torch.cat([log["users"] for log in logs_0])
    assert torch.equal(torch.cat([seen_0, seen_1]).sort().values, logged.sort().values)
    assert_same_world(world_0, world_1)
    for a, b in zip(logs_0, logs_1, strict=True):
        assert torch.equal(a["request_id"], torch.arange(a["request_id"].numel()))
        for name in _ROW_FIELDS:
            assert torch.equal(a[name], b[name]), name
        # the log is consistent with itself: shown items are the candidates at the slate
        assert torch.equal(a["items"], a["candidates"].gather(1, a["slates"]))


def test_one_process_with_no_users_still_serves_in_lockstep():
    """Three users, three processes, one user each; with batch size 1 every process serves
    one batch a day, empty when its user did not request."""
    cfg = presets.tiny({"users": {"n_users": 3, "activity_mean": 0.5}})
    results = run_split(cfg, days=4, batch_size=1, count=3)
    calls = [r[3] for r in results]
    assert len(set(calls)) == 1
    for i, (_, _, seen, _) in enumerate(results):
        assert bool((seen % 3 == i).all())
    for other in results[1:]:
        assert_same_world(results[0][1], other[1])


def test_owns_splits_the_users_and_fork_keeps_the_shared_stream():
    users = torch.arange(10)
    owned = torch.stack([UserShard(i, 3).owns(users) for i in range(3)])  # (3, 10)
    assert torch.equal(owned.sum(dim=0), torch.ones(10, dtype=torch.long))
    streams, after = [], []
    for i in range(3):
        gen = make_generator(7)
        streams.append(torch.rand(4, generator=UserShard(i, 3).fork(gen)))
        after.append(torch.rand(1, generator=gen))
    assert all(torch.equal(after[0], a) for a in after)  # the shared stream moved the same way
    assert not torch.equal(streams[0], streams[1]) and not torch.equal(streams[1], streams[2])
    again = UserShard(1, 3).fork(make_generator(7))
    assert torch.equal(torch.rand(4, generator=again), streams[1])


@pytest.mark.parametrize(("index", "count"), [(0, 1), (2, 2), (-1, 3)])
def test_a_bad_shard_is_a_clear_error(index, count):
    with pytest.raises(ValueError, match="count >= 2"):
        UserShard(index, count)


@pytest.mark.parametrize("world", ["tiny", "recsim"])
def test_serving_changes_only_the_served_fields_and_popularity(world):
    """What the processes exchange after a batch (Users.SERVED_FIELDS) is all that serving
    changes; anything else would silently diverge between them."""
    if world == "tiny":
        cfg = presets.tiny({"dynamics": ALL_DYNAMICS})
    else:
        cfg = presets.recsim_equivalent({"users": {"n_users": 300},
                                         "items": {"n_items": 500},
                                         "dynamics": {"fatigue": {"enabled": True},
                                                      "retention": {"enabled": True}}})
    w = make_world(cfg, make_generator(0))
    before = w.clone()
    gen = make_generator(1)
    users = torch.randperm(w.n_users, generator=gen)[:50]
    items = torch.randint(0, w.n_items, (50, cfg.slate_size), generator=gen)
    clicks = (torch.rand(50, cfg.slate_size, generator=gen) < 0.5).float()
    if cfg.choice.model != "pbm":  # at most one click per slate
        clicks = clicks * (clicks.cumsum(dim=1) == 1)
    apply_feedback(w, users, items, clicks, gen)
    changed = {name for name, value in vars(w.users).items()
               if value is not None and not torch.equal(value, getattr(before.users, name))}
    assert changed and changed <= set(Users.SERVED_FIELDS)
    changed_items = {name for name, value in vars(w.items).items()
                     if not torch.equal(value, getattr(before.items, name))}
    assert changed_items == {"popularity"}
