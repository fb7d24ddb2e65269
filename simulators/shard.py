"""One process's slice of the users when several processes simulate one world together.

Under ``torchrun`` (``recsys-onpolicy run --nproc N``) every process holds the same world and
:func:`simulators.day.simulate_day` splits the day among them by user: process ``index`` of
``count`` serves and simulates the requests of the users it owns (``user % count == index``:
a user's requests always go to the same process, and every cohort is spread over all of them).
What stays shared, so that every process's world stays the same:

- draws over the whole population (who requests today and in which order, the retrieval index,
  end-of-day retention and drift, new items) come from the day's shared generator, identical on
  every process;
- draws for single requests (candidates, the served slates, clicks, interest updates) come from
  per-process streams split off the shared ones (:meth:`UserShard.fork`), so no process draws
  numbers it does not use; the day's results therefore depend on ``count`` through these draws
  only (they have the one-process distribution, not its values);
- after every served batch the processes exchange their rows of the log and the new state of
  the users they served (:meth:`UserShard.gather_rows`), and apply the others' clicks to item
  popularity, so every process ends every batch with the whole world and the batch's whole log.

The batches are served in lockstep (:meth:`UserShard.agree`: every process serves the same
number of batches, some maybe empty), because the model a policy scores with is itself sharded
over the processes and every forward pass is a collective.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from simulators.rng import make_generator

_MIX = 0x9E3779B97F4A7C15  # odd 64-bit constant (golden ratio): spreads process indices apart


def largest(n: int, group: dist.ProcessGroup | None = None) -> int:
    """The largest ``n`` any process of ``group`` passed (a collective, on the CPU)."""
    t = torch.tensor([n], dtype=torch.long)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
    return int(t.item())


@dataclass(frozen=True)
class UserShard:
    """Process ``index`` of ``count`` (``count >= 2``) in ``group`` (None: the default group).

    Every method except :meth:`owns` is a collective or consumes a shared draw: every process
    must call it, in the same order.
    """

    index: int
    count: int
    group: dist.ProcessGroup | None = None

    def __post_init__(self) -> None:
        if self.count < 2 or not 0 <= self.index < self.count:
            raise ValueError(f"UserShard(index={self.index}, count={self.count}): need count >= 2 "
                             "and 0 <= index < count (one process needs no shard: pass None)")

    def owns(self, users: torch.Tensor) -> torch.Tensor:
        """(B,) bool: which of ``users`` (B,) this process simulates."""
        return users % self.count == self.index

    def fork(self, gen: torch.Generator) -> torch.Generator:
        """This process's own stream, split off ``gen`` with one draw that every process makes
        (so ``gen`` stays the same on every process)."""
        base = int(torch.randint(0, 2**62, (1,), generator=gen, device=gen.device).item())
        return make_generator((base + self.index * _MIX) % 2**63, gen.device)

    def agree(self, n: int) -> int:
        """The largest ``n`` any process passed."""
        return largest(n, self.group)

    def gather_rows(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """Every process's rows of each tensor (n_p, ...), concatenated in process order
        (sum_p n_p, ...); every tensor must have the same number of rows n_p on a process."""
        n = tensors[0].shape[0]
        sizes = [torch.zeros(1, dtype=torch.long) for _ in range(self.count)]
        dist.all_gather(sizes, torch.tensor([n], dtype=torch.long), group=self.group)
        sizes = [int(s.item()) for s in sizes]
        most = max(sizes)
        out = []
        for t in tensors:
            padded = t.new_zeros((most, *t.shape[1:]))
            padded[:n] = t
            parts = [torch.empty_like(padded) for _ in range(self.count)]
            dist.all_gather(parts, padded, group=self.group)
            out.append(torch.cat([p[:s] for p, s in zip(parts, sizes)]))
        return out
