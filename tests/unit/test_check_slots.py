"""The check slots (service/check_slots.py) are shared between tenants: one tenant's queue of uploads never
stands in front of another tenant's upload, and a wait that times out answers 503 server_busy."""

import asyncio

import pytest

from service.check_slots import CheckSlots
from service.errors import ApiError


async def _hold(slots: CheckSlots, owner: str, order: list[str], release: asyncio.Event) -> None:
    async with slots.slot(owner, timeout=5):
        order.append(owner)
        await release.wait()


def test_a_free_slot_goes_to_the_tenant_with_the_fewest_checks_running():
    async def scenario() -> list[str]:
        slots, order = CheckSlots(2), []
        gates = [asyncio.Event() for _ in range(6)]
        tasks = [asyncio.create_task(_hold(slots, "mallory", order, gates[i])) for i in range(4)]
        await asyncio.sleep(0.01)  # mallory holds both slots, two more of hers wait
        tasks.append(asyncio.create_task(_hold(slots, "alice", order, gates[4])))
        await asyncio.sleep(0.01)
        gates[0].set()  # one of mallory's checks ends: alice's comes before mallory's third
        await asyncio.sleep(0.01)
        for gate in gates:
            gate.set()
        await asyncio.gather(*tasks)
        assert slots.free == 2 and not slots.running and not slots.waiting
        return order

    assert asyncio.run(scenario()) == ["mallory", "mallory", "alice", "mallory", "mallory"]


def test_a_wait_longer_than_a_check_may_take_is_503_and_gives_nothing_away():
    async def scenario() -> None:
        slots, order, gate = CheckSlots(1), [], asyncio.Event()
        holder = asyncio.create_task(_hold(slots, "mallory", order, gate))
        await asyncio.sleep(0.01)
        with pytest.raises(ApiError) as refused:
            async with slots.slot("alice", timeout=0.05):
                pass
        assert (refused.value.status, refused.value.code) == (503, "server_busy")
        gate.set()
        await holder
        async with slots.slot("alice", timeout=0.05):
            assert slots.free == 0
        assert slots.free == 1 and not slots.waiting

    asyncio.run(scenario())
