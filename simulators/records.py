"""The records that flow between the simulator and a policy: a batch of requests, a day's log.

Shapes: B requests in a batch, R requests in a log, C candidates, K slate size, H history, I items.
``candidate_topics`` is computed on access from the world's item-topic table (topics never change
and item ids only grow, so the table a record holds stays valid): records do not store a second
(B, C) tensor nobody may read.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch


class PolicyOutputError(ValueError):
    """A slate policy returned something the simulator cannot serve."""


def _take(table: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return table.index_select(0, idx.reshape(-1)).view(idx.shape)


@dataclass
class Requests:
    """A batch of B requests, as a policy sees them."""

    day: int
    request_id: torch.Tensor  # (B,) long, unique within the day
    users: torch.Tensor  # (B,) long user ids
    cohort: torch.Tensor  # (B,) long
    history: torch.Tensor  # (B, H) long clicked item ids, most recent first, -1 padded
    candidates: torch.Tensor  # (B, C) long distinct item ids
    item_topic: torch.Tensor  # (I,) long topic of every item id (the world's table, not a copy)

    def __len__(self) -> int:
        return self.users.shape[0]

    @property
    def candidate_topics(self) -> torch.Tensor:
        """Topic of each candidate, (B, C) long."""
        return _take(self.item_topic, self.candidates)


Policy = Callable[[Requests], "tuple[torch.Tensor, torch.Tensor]"]
"""``policy(requests) -> (slates (B, K) long positions into candidates, log_propensity (B,))``."""

_ROW_FIELDS = ("day", "request_id", "users", "cohort", "history", "candidates", "slates", "items",
               "clicks", "log_propensity", "true_probs")


@dataclass
class DayLog:
    """What was served and what happened: request-level tensors, R rows (one per request)."""

    day: torch.Tensor  # (R,) long
    request_id: torch.Tensor  # (R,) long, unique within a day
    users: torch.Tensor  # (R,) long
    cohort: torch.Tensor  # (R,) long
    history: torch.Tensor  # (R, H) long, as the policy saw it
    candidates: torch.Tensor  # (R, C) long
    slates: torch.Tensor  # (R, K) long positions into candidates
    items: torch.Tensor  # (R, K) long item ids shown, in slate order
    clicks: torch.Tensor  # (R, K) float 0/1
    log_propensity: torch.Tensor  # (R,) float log-probability of the slate under the policy
    true_probs: torch.Tensor  # (R, K) float true click probability when served
    item_topic: torch.Tensor  # (I,) long topic of every item id (not a row field)

    def __len__(self) -> int:
        return self.users.shape[0]

    @property
    def candidate_topics(self) -> torch.Tensor:
        """Topic of each candidate, (R, C) long."""
        return _take(self.item_topic, self.candidates)

    @classmethod
    def cat(cls, logs: list[DayLog]) -> DayLog:
        """Concatenate logs (of one or several days) row-wise."""
        if not logs:
            raise ValueError("DayLog.cat needs at least one log (use DayLog.empty for none)")
        topic = max((g.item_topic for g in logs), key=lambda t: t.shape[0])  # newest catalogue
        return cls(**{f: torch.cat([getattr(g, f) for g in logs]) for f in _ROW_FIELDS},
                   item_topic=topic)

    def select(self, rows: torch.Tensor) -> DayLog:
        """The rows picked by a boolean mask (R,) or an index tensor."""
        return type(self)(**{f: getattr(self, f)[rows] for f in _ROW_FIELDS},
                          item_topic=self.item_topic)

    def to(self, device: torch.device | str) -> DayLog:
        return type(self)(**{f.name: getattr(self, f.name).to(device)
                             for f in dataclasses.fields(self)})

    @classmethod
    def empty(cls, item_topic: torch.Tensor, n_candidates: int, slate_size: int,
              history_len: int) -> DayLog:
        """A log with no rows."""
        dev = item_topic.device

        def z(*shape, dtype=torch.long):
            return torch.zeros(0, *shape, dtype=dtype, device=dev)

        return cls(day=z(), request_id=z(), users=z(), cohort=z(), history=z(history_len),
                   candidates=z(n_candidates), slates=z(slate_size), items=z(slate_size),
                   clicks=z(slate_size, dtype=torch.float), log_propensity=z(dtype=torch.float),
                   true_probs=z(slate_size, dtype=torch.float), item_topic=item_topic)
