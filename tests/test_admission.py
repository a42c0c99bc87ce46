"""Fair admission to the inference threads (``escnet.serve.admission``), driven step by step on
an event loop: who runs next, who is displaced, who is refused."""

import asyncio

import pytest

from escnet.serve.admission import FORGET_AFTER, Busy, FairAdmission, RateLimit


class Requests:
    """Requests from named clients that hold their slot until released, in arrival order."""

    def __init__(self, admission: FairAdmission) -> None:
        self.admission, self.started, self.refused = admission, [], []
        self.release: dict[str, asyncio.Event] = {}

    def send(self, name: str) -> asyncio.Task:
        client = name.rstrip("0123456789")
        self.release[name] = asyncio.Event()

        async def request() -> None:
            try:
                async with self.admission.slot(client):
                    self.started.append(name)
                    await self.release[name].wait()
            except Busy:
                self.refused.append(name)

        return asyncio.get_running_loop().create_task(request())

    async def finish(self, name: str) -> None:
        self.release[name].set()
        await settle()


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_a_flooding_client_fills_its_own_share_not_another_clients():
    async def scenario() -> None:
        admission = FairAdmission(slots=2, queue=3)
        r = Requests(admission)
        tasks = [r.send(f"flood{i}") for i in range(6)]  # 2 run, 3 wait, 1 refused
        await settle()
        assert r.started == ["flood0", "flood1"] and r.refused == ["flood5"]
        tasks.append(r.send("good1"))  # the queue is full: it displaces flood's newest waiting
        await settle()
        assert r.refused == ["flood5", "flood4"] and admission.queued == 3
        await r.finish("flood0")  # the freed slot goes to the client with none running
        assert r.started[-1] == "good1"
        await r.finish("flood1")
        assert r.started[-1] == "flood2"
        tasks.append(r.send("good2"))  # good waits behind nobody of its own; flood has 2 running
        await settle()
        await r.finish("good1")
        assert r.started[-1] == "good2"
        for name in ("flood2", "good2", "flood3"):
            await r.finish(name)
        await asyncio.gather(*tasks)
        assert admission.busy == 0 and admission.queued == 0
        assert sorted(r.started) == ["flood0", "flood1", "flood2", "flood3", "good1", "good2"]

    asyncio.run(scenario())


def test_among_clients_with_nothing_running_the_one_that_used_the_threads_least_goes_first():
    now = [0.0]

    async def scenario() -> None:
        admission = FairAdmission(slots=1, queue=4, clock=lambda: now[0])
        r = Requests(admission)
        tasks = [r.send("flood0"), r.send("flood1")]  # flood0 runs, flood1 waits
        await settle()
        now[0] = 0.5
        await r.finish("flood0")  # flood held the slot 0.5 s; flood1 runs
        tasks += [r.send("flood2"), r.send("good0")]  # flood2 has waited longer than good0
        await settle()
        now[0] = 1.0
        await r.finish("flood1")  # both have nothing running: good0 has used nothing
        assert r.started[-1] == "good0"
        assert admission.recent_use("flood", 1.0) == pytest.approx(0.5 * 0.5 ** 0.5 + 0.5)
        now[0] = 1.02
        await r.finish("good0")  # good used 0.02 s, flood about 0.85 s: flood2's turn now
        assert r.started[-1] == "flood2"
        tasks += [r.send("flood3"), r.send("good1")]
        await settle()
        now[0] = 11.0  # ten seconds later flood's use has faded to under good's 0.02 s...
        await r.finish("flood2")
        assert r.started[-1] == "good1"  # ...but flood2 has just held the slot 10 s
        now[0] = 41.0
        await r.finish("good1")  # good held it 30 s, by when flood's 10 s have faded: flood3
        assert r.started[-1] == "flood3"
        await r.finish("flood3")
        await asyncio.gather(*tasks)
        assert admission.busy == 0 and admission.queued == 0

    asyncio.run(scenario())


def test_a_client_that_holds_as_much_as_the_heaviest_is_refused_and_cancellation_frees_its_place():
    async def scenario() -> None:
        admission = FairAdmission(slots=1, queue=2)
        r = Requests(admission)
        tasks = [r.send("a0"), r.send("b0"), r.send("a1")]  # a0 runs; b0, a1 wait
        await settle()
        tasks.append(r.send("b1"))  # b would hold 2 with it, a holds 2: b1 is refused
        await settle()
        assert r.refused == ["b1"] and admission.queued == 2
        tasks[1].cancel()  # b0 goes away while waiting: its place is free, nothing handed to it
        await settle()
        assert admission.queued == 1
        await r.finish("a0")
        assert r.started == ["a0", "a1"]
        await r.finish("a1")
        assert admission.busy == 0 and admission.queued == 0
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(scenario())


def test_no_queue_turns_away_at_once():
    async def scenario() -> None:
        admission = FairAdmission(slots=1, queue=0)
        r = Requests(admission)
        first = r.send("a0")
        await settle()
        second = r.send("b0")
        await settle()
        assert r.started == ["a0"] and r.refused == ["b0"]
        await r.finish("a0")
        await asyncio.gather(first, second)

    asyncio.run(scenario())


@pytest.mark.parametrize("handed", [True, False])
def test_a_request_cancelled_as_its_slot_is_handed_over_passes_it_on(handed):
    async def scenario() -> None:
        admission = FairAdmission(slots=1, queue=2)
        r = Requests(admission)
        first, waiting, third = r.send("a0"), r.send("b0"), r.send("c0")
        await settle()
        r.release["a0"].set()
        if handed:
            await asyncio.sleep(0)  # a0 leaves and hands the slot to b0, which has not run yet
        waiting.cancel()
        await settle()
        assert r.started == ["a0", "c0"] and admission.busy == 1
        await r.finish("c0")
        await asyncio.gather(first, waiting, third, return_exceptions=True)
        assert admission.busy == 0 and admission.queued == 0

    asyncio.run(scenario())


def test_rate_limit_lets_a_burst_through_then_spaces_requests_and_refuses_beyond_a_second():
    limit = RateLimit(rate=2)  # bursts of 2, then one every 0.5 s; waits of at most 1 s
    assert [limit.wait("a", 0.0) for _ in range(4)] == [0.0, 0.0, 0.5, 1.0]
    assert limit.wait("a", 0.0) is None  # 1.5 s away: refused, and its turn not taken
    assert limit.wait("b", 0.0) == 0.0  # another address has its own
    assert limit.wait("a", 0.2) is None and limit.wait("a", 0.6) == pytest.approx(0.9)  # nearer
    assert limit.wait("a", 10.0) == 0.0  # after a pause, a fresh burst
    assert limit.wait("a", 10.0) == 0.0 and limit.wait("a", 10.0) == 0.5


def test_what_is_remembered_of_many_addresses_stays_bounded_and_forgets_only_the_done():
    limit, now = RateLimit(rate=1), [0.0]
    admission = FairAdmission(slots=1, queue=0, clock=lambda: now[0])

    async def use(client: str) -> None:
        async with admission.slot(client):
            now[0] += 1.0  # held a second

    async def scenario() -> None:
        for i in range(3 * FORGET_AFTER):  # a new address each second
            assert limit.wait(f"10.0.{i}", now[0]) == 0.0
            await use(f"10.0.{i}")
    asyncio.run(scenario())
    assert len(limit.due) <= 2 * FORGET_AFTER and len(admission.used) <= 2 * FORGET_AFTER
    last = f"10.0.{3 * FORGET_AFTER - 1}"  # the newest are still known: its turn, its use
    assert limit.wait(last, now[0] - 0.5) is not None and limit.due[last] > now[0]
    assert admission.recent_use(last, now[0]) == pytest.approx(1.0)
    assert "10.0.0" not in limit.due and "10.0.0" not in admission.used  # long done: forgotten
