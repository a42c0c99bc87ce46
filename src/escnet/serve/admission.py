"""Admission control for ``escnet serve``: who gets an inference thread, who waits, who is
turned away.

:class:`FairAdmission` shares the inference threads among clients (by address): a free thread
goes to the waiting client that has the fewest requests running and, among those, has used the
threads least of late, and when the queue is full a newcomer displaces the last-queued request
of the client holding the most, so a client that floods the server with valid work fills its
own share, never a well-behaved client's.
:class:`RateLimit` spaces out the requests of one address (``--rate-limit``), before anything
of them is parsed beyond their headers. :class:`Limit` caps things held open, such as live
streams.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

REFUSAL_DELAY = 1
"""Seconds a client that already asks more than its share waits for its refusal, and its
``Retry-After``: answering it at once would only invite it to retry at once. (A client with
nothing in progress is refused at once.)"""


class Busy(Exception):
    """No room: answered 503 with ``Retry-After``. ``pushy``: the client already had requests
    running or waiting when this one was refused."""

    def __init__(self, message: str, pushy: bool = False) -> None:
        super().__init__(message)
        self.pushy = pushy


class Limit:
    """At most ``capacity`` held at once (thread-safe); the rest are refused at once."""

    def __init__(self, capacity: int) -> None:
        self.capacity, self.inside = capacity, 0
        self.lock = threading.Lock()

    def try_enter(self) -> bool:
        with self.lock:
            if self.inside >= self.capacity:
                return False
            self.inside += 1
            return True

    def leave(self) -> None:
        with self.lock:
            self.inside -= 1


FORGET_AFTER = 10_000
"""Addresses a :class:`RateLimit` or :class:`FairAdmission` remembers before it forgets those
whose record no longer matters (again each time it remembers twice as many as it kept)."""


def _forgotten(records: dict[str, object], keep: Callable[[str], bool]) -> tuple[dict, int]:
    """``records`` without the addresses ``keep`` says are done with, and how many may be
    remembered before the next time: memory bounded by the addresses active at once, the
    sweep not at every request."""
    kept = {c: r for c, r in records.items() if keep(c)}
    return kept, max(FORGET_AFTER, 2 * len(kept))


class RateLimit:
    """At most ``rate`` requests a second from one client address, in bursts of up to ``rate``
    (one second's worth): the generic cell rate algorithm (GCRA, as in ATM networks and many
    proxies), one number per address. A request over it waits its turn, up to
    ``REFUSAL_DELAY`` seconds; one that would wait longer is refused. Waiting costs the server nothing but an
    open connection, so a client that sends as fast as it is answered is slowed to ``rate``."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate
        self.tolerance = max(rate - 1, 0) * self.interval  # a burst of ``rate`` goes at once
        self.due: dict[str, float] = {}
        """Per address, when its next request would be on time (monotonic seconds)."""
        self.forget_at = FORGET_AFTER

    def wait(self, client: str, now: float) -> float | None:
        """Seconds the request of ``client`` arriving at ``now`` waits (0: none), or ``None``:
        refused."""
        due = max(self.due.get(client, now), now)
        wait = max(due - self.tolerance - now, 0.0)
        if wait > REFUSAL_DELAY:
            return None
        self.due[client] = due + self.interval
        if len(self.due) > self.forget_at:  # not every request while many addresses are active
            self.due, self.forget_at = _forgotten(self.due, lambda c: self.due[c] > now)
        return wait


class FairAdmission:
    """``slots`` requests run at once (one per inference thread) and at most ``queue`` wait,
    shared fairly among clients. Used from the event loop only (no locks).

    - A freed slot goes to the waiting client with the fewest requests running; among equals,
      to the one that has used the threads least of late (seconds it held slots, each halved
      every :attr:`HALF_LIFE` seconds since), the longest waiting among those; and to that
      client's oldest request. A flood from one address is then never served before a client
      that asks now and then, although the flood's next request has waited longer.
    - With the queue full, a newcomer whose client holds fewer requests (running and waiting)
      than the heaviest waiting client, counting the newcomer, takes the place of that client's
      newest waiting request, which is answered :class:`Busy`; otherwise the newcomer is.

    ``clock``: seconds, monotonic (tests pass their own).
    """

    HALF_LIFE = 1.0
    """Seconds over which a client's use of the threads counts half: long enough to tell a
    flood from a client asking a few times a second, short enough that a client that stopped
    flooding is soon served like any other."""

    def __init__(self, slots: int, queue: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.slots, self.queue, self.clock = slots, queue, clock
        self.running: Counter[str] = Counter()
        self.waiting: dict[str, deque[asyncio.Future]] = {}  # in order of first waiting
        self.used: dict[str, tuple[float, float]] = {}
        """Per client, seconds it held slots (faded) and when that was last brought up to date."""
        self.forget_at = FORGET_AFTER

    @property
    def busy(self) -> int:
        return sum(self.running.values())

    @property
    def queued(self) -> int:
        return sum(len(q) for q in self.waiting.values())

    def _held(self, client: str) -> int:
        return self.running[client] + len(self.waiting.get(client, ()))

    @asynccontextmanager
    async def slot(self, client: str) -> AsyncIterator[None]:
        """Hold one inference slot for ``client`` (an address) while the block runs; raises
        :class:`Busy` when there is no room for it, now or later while it waits."""
        await self._enter(client)
        start = self.clock()
        try:
            yield
        finally:
            self._leave(client, self.clock() - start)

    def recent_use(self, client: str, now: float) -> float:
        """Seconds ``client`` held slots, each faded by half every :attr:`HALF_LIFE` seconds
        until ``now``."""
        seconds, then = self.used.get(client, (0.0, now))
        return seconds * 0.5 ** ((now - then) / self.HALF_LIFE)

    def _record(self, client: str, seconds: float, now: float) -> None:
        self.used[client] = (self.recent_use(client, now) + seconds, now)
        if len(self.used) > self.forget_at:  # not at every request while many clients are active
            self.used, self.forget_at = _forgotten(self.used, lambda c: self.recent_use(c, now) > 1e-6)

    async def _enter(self, client: str) -> None:
        if self.busy < self.slots and not self.waiting:
            self.running[client] += 1
            return
        if self.queued >= self.queue:
            self._displace(client)
        future = asyncio.get_running_loop().create_future()
        self.waiting.setdefault(client, deque()).append(future)
        try:
            await future  # set when a slot is handed over (then counted as running)
        except BaseException:
            if future.done() and not future.cancelled() and future.exception() is None:
                self._leave(client, 0.0)  # handed a slot just as the request went away
            else:
                self._forget(client, future)
            raise

    def _displace(self, client: str) -> None:
        heaviest = max(self.waiting, key=self._held, default=None)
        if heaviest is None or self._held(heaviest) <= self._held(client) + 1:
            raise Busy(f"busy: {self.busy} requests in progress and {self.queued} queued; "
                       "retry shortly", pushy=self._held(client) > 0)
        victim = self.waiting[heaviest].pop()
        if not self.waiting[heaviest]:
            del self.waiting[heaviest]
        victim.set_exception(Busy("busy: this client has the most requests waiting; one of them "
                                  "gave way to another client's; retry shortly"))

    def _forget(self, client: str, future: asyncio.Future) -> None:
        queue = self.waiting.get(client)
        if queue is not None and future in queue:
            queue.remove(future)
            if not queue:
                del self.waiting[client]

    def _leave(self, client: str, held: float) -> None:
        """``client`` gives back a slot it held ``held`` seconds, which goes to the next."""
        self.running[client] -= 1
        if not self.running[client]:
            del self.running[client]
        now = self.clock()
        self._record(client, held, now)
        while self.waiting:  # min: the first among equals, the longest waiting
            chosen = min(self.waiting, key=lambda c: (self.running[c], self.recent_use(c, now)))
            queue = self.waiting.pop(chosen)
            future = queue.popleft()
            if queue:  # the client goes to the back of the line of equals
                self.waiting[chosen] = queue
            if future.done():  # cancelled: its request has gone away
                continue
            self.running[chosen] += 1
            future.set_result(None)
            return
