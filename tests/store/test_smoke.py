from sluice import Client, new_event


async def test_append_then_read(client: Client) -> None:
    r = await client.append("orders-1", [new_event("Placed", {"n": 1}), new_event("Paid", {"n": 2})])
    assert (r.first_revision, r.last_revision, r.first_position, r.last_position) == (0, 1, 1, 2)
    events = await client.read_list("orders-1")
    assert [e.type for e in events] == ["Placed", "Paid"]
    assert events[0].data == b'{"n":1}'
    assert events[1].position == 2 and events[1].stream == "orders-1"
