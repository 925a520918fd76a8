"""Rebuilding a service's projections from the compacted topics (`waflow-admin rebuild <service>`).

A projection is what a service keeps of another service's data, e.g. outbound's copy of each contact's
blacklist state, or conversation's copy of each contact's name and tags on its chats. Both come from contacts.v1,
which is compacted: it holds at least the newest snapshot of every contact, for ever. So a projection that was
lost (a collection dropped, a database restored from an old backup) or that gained a field can be made again by
reading the topic from its first offset and applying every record through the service's own code.

Each service names its projections under the entry-point group `waflow.projections` (libs/common imports no
service): an async context manager that opens what the service's code needs (its database, the tenant
registry) and yields a list of `Projection`. The same guarded writes the service's consumer uses apply them,
so a rebuild is idempotent and safe while the service runs: a snapshot applies only over an older version,
whichever of the rebuild and the live consumer writes first.

A rebuild reads each partition in order, up to the end offset it found when it began, so the records of one key
are applied in their order. A record that is not an event of the topic is counted and left where it is:
the service's consumer has dead-lettered it already.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

from pydantic import TypeAdapter, ValidationError
from rich.progress import Progress

from waflow_common.events.reading import UnknownEvent, read_event
from waflow_common.settings import CommonSettings
from waflow_common.topic_reading import NoSuchTopic, records_to, whole_topic

ENTRY_POINTS = "waflow.projections"


class RebuildError(RuntimeError):
    pass


@dataclass(frozen=True)
class Projection:
    """One projection of a service: the compacted topic it comes from and how one event is applied."""

    name: str
    topic: str  # without the deployment's prefix
    adapter: TypeAdapter[Any]
    apply: Callable[[Any], Awaitable[None]]


Projections = Callable[[CommonSettings], AbstractAsyncContextManager[list[Projection]]]


@dataclass
class Rebuilt:
    projection: str
    topic: str
    read: int = 0  # records read up to the end offsets found at the start
    applied: int = 0  # events applied (a no-op where the projection held that version already)
    skipped: int = 0  # events of a type or schema version the service does not read
    invalid: int = 0  # records that are no event of the topic (dead-lettered by the consumer long ago)
    tombstones: int = 0  # records without a value
    by_type: dict[str, int] = field(default_factory=dict)


def services() -> dict[str, Projections]:
    """Every installed service that has projections, by name."""
    found: dict[str, Projections] = {}
    for point in entry_points(group=ENTRY_POINTS):
        found[point.name] = point.load()
    return found


async def rebuild(
    settings: CommonSettings, service: str, *, dry_run: bool = False, progress: Progress | None = None
) -> list[Rebuilt]:
    """Applies every record of each of the service's projections' topics (or only reads them: `dry_run`)."""
    known = services()
    if service not in known:
        names = ", ".join(sorted(known)) or "none installed"
        raise RebuildError(f"{service} has no projections to rebuild (services with projections: {names})")
    async with known[service](settings) as projections:
        return [await _rebuild_one(settings, p, dry_run=dry_run, progress=progress) for p in projections]


async def _rebuild_one(
    settings: CommonSettings, projection: Projection, *, dry_run: bool, progress: Progress | None
) -> Rebuilt:
    name = settings.topic(projection.topic)
    done = Rebuilt(projection.name, name)
    try:
        async with whole_topic(settings.kafka_bootstrap_servers, name) as (consumer, ends):
            starts = await consumer.beginning_offsets(list(ends))
            total = sum(ends[tp] - starts[tp] for tp in ends)
            task = progress.add_task(f"{projection.name} from {name}", total=total) if progress is not None else None
            for tp in ends:
                consumer.seek(tp, starts[tp])
                async for record in records_to(consumer, tp, ends[tp]):
                    done.read += 1
                    await _apply(projection, record.value, done, dry_run=dry_run)
                    if progress is not None and task is not None:
                        progress.advance(task)
    except NoSuchTopic as exc:
        raise RebuildError(str(exc)) from exc
    return done


async def _apply(projection: Projection, value: bytes | None, done: Rebuilt, *, dry_run: bool) -> None:
    if value is None:
        done.tombstones += 1
        return
    try:
        event = read_event(projection.adapter, value)
    except UnknownEvent:
        done.skipped += 1
        return
    except ValidationError:
        done.invalid += 1
        return
    event_type = str(getattr(event, "event_type", type(event).__name__))
    done.by_type[event_type] = done.by_type.get(event_type, 0) + 1
    if not dry_run:
        await projection.apply(event)
    done.applied += 1
