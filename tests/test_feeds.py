"""CSV feeds: ATS export, receipts and counts imports (engine/feeds.py)."""

from __future__ import annotations

import argparse
import csv
import io
import re
import uuid
from pathlib import Path

import pytest

from engine import Engine
from engine.errors import UnknownChannelError
from engine.feeds import (
    FeedFileError,
    add_commands,
    defined_skus,
    export_ats,
    import_counts,
    import_receipts,
    run,
)


class Shop:
    """Uniquely named locations, channels and SKUs, so tests never meet each other's."""

    def __init__(self, engine: Engine, skus: int = 3) -> None:
        tag = uuid.uuid4().hex[:8]
        self.engine = engine
        self.wh, self.store = f"wh-{tag}", f"store-{tag}"
        self.web, self.pos = f"web-{tag}", f"pos-{tag}"
        self.skus = [f"S{i}-{tag}" for i in range(skus)]

    async def setup(self) -> Shop:
        for location in (self.wh, self.store):
            await self.engine.define_location(location)
        await self.engine.define_channel(self.web, [self.wh, self.store])
        await self.engine.define_channel(self.pos, [self.store])
        for sku in self.skus:
            await self.engine.define_sku(sku)
        return self

    async def on_hand(self) -> dict[tuple[str, str], int]:
        levels = {}
        for sku in self.skus:
            for row in (await self.engine.stock(sku)).locations:
                levels[sku, row.location] = row.on_hand
        return levels


@pytest.fixture
async def named(engine: Engine) -> Shop:
    return await Shop(engine).setup()


def csv_bytes(*lines: str) -> bytes:
    return ("\n".join(lines) + "\n").encode()


async def test_export_matches_engine_ats(named: Shop) -> None:
    a, b, _ = named.skus
    await named.engine.receive(a, named.wh, 5)
    await named.engine.receive(b, named.store, 3)
    out = io.StringIO()
    assert await export_ats(named.engine, out, chunk=2) == []
    rows = list(csv.reader(io.StringIO(out.getvalue())))
    assert rows[0] == ["sku", "channel", "ats"]
    expected = []
    for channel in (named.pos, named.web):
        ats = await named.engine.ats(channel, named.skus)
        expected += [[sku, channel, str(ats[sku])] for sku in named.skus]
    assert sorted(rows[1:]) == sorted(expected)
    assert [a, named.web, "5"] in rows and [b, named.pos, "3"] in rows
    assert sorted(await defined_skus(named.engine.client)) == sorted(named.skus)


async def test_export_some_channels_and_skus(named: Shop) -> None:
    a, b, _ = named.skus
    await named.engine.receive(b, named.wh, 2)
    out = io.StringIO()
    missing = await export_ats(named.engine, out, channels=[named.web], skus=[b, "nope", a])
    assert missing == ["nope"]
    assert out.getvalue().splitlines() == [
        "sku,channel,ats",
        f"{b},{named.web},2",
        f"{a},{named.web},0",
    ]
    with pytest.raises(UnknownChannelError):
        await export_ats(named.engine, io.StringIO(), channels=["no-such-channel"])


async def test_good_receipts_apply_every_row(named: Shop) -> None:
    a, b, _ = named.skus
    data = csv_bytes(
        "sku,location,qty,reference,reason",
        f"{a},{named.wh},5,PO-1,delivery",
        f"{b},{named.store},7,PO-1,",
        f"{a},{named.wh},2,PO-2,",
    )
    report = await import_receipts(named.engine, data)
    assert (report.rows, report.applied, report.bad, report.exit_code) == (3, 3, [], 0)
    levels = await named.on_hand()
    assert (levels[a, named.wh], levels[b, named.store], levels[a, named.store]) == (7, 7, 0)
    assert list(report.lines()) == ["receipts: 3 rows, 3 applied, 0 skipped"]


async def test_one_bad_row_changes_nothing_and_is_named(named: Shop) -> None:
    a, b, c = named.skus
    await named.engine.receive(a, named.wh, 1)
    before = await named.on_hand()
    data = csv_bytes(
        "sku,location,qty",
        f"{a},{named.wh},5",
        f"{b},{named.wh},0",
        "",
        f"{c},{named.store},4",
    )
    report = await import_receipts(named.engine, data)
    assert await named.on_hand() == before
    assert (report.rows, report.applied, report.exit_code) == (3, 0, 1)
    assert [b.line for b in report.bad] == [3]
    lines = list(report.lines())
    assert lines[0].startswith("line 3: qty: must be an integer from 1 to")
    assert lines[1] == "receipts: 3 rows, 1 bad; nothing applied (--partial applies 2)"


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        ("{sku},{wh},x", "qty: must be a whole number from 1, got 'x'"),
        ("{sku},{wh},-2", "qty: must be a whole number from 1, got '-2'"),
        ("{sku},{wh},1.5", "qty: must be a whole number from 1, got '1.5'"),
        ("{sku},{wh},1000000001", "qty: must be an integer from 1 to 1000000000"),
        ("{sku},{wh},", "qty: missing"),
        (",{wh},3", "sku: missing"),
        ("nope,{wh},3", "sku: unknown SKU 'nope'"),
        ("bad sku,{wh},3", "sku: must be 1-100 characters"),
        ("{sku},elsewhere,3", "location: unknown location 'elsewhere'"),
        ("{sku},{wh}", "has 2 fields, the header 3"),
        ("{sku},{wh},3,extra", "has 4 fields, the header 3"),
    ],
)
async def test_each_kind_of_bad_row_is_reported(named: Shop, row: str, problem: str) -> None:
    bad_row = row.format(sku=named.skus[0], wh=named.wh)
    report = await import_receipts(named.engine, csv_bytes("sku,location,qty", bad_row))
    assert len(report.bad) == 1 and report.bad[0].line == 2
    assert report.bad[0].problem.startswith(problem), report.bad[0].problem


async def test_partial_applies_only_the_good_rows(named: Shop) -> None:
    a, b, c = named.skus
    data = csv_bytes(
        "sku,location,qty",
        f"{a},{named.wh},5",
        f"{b},nowhere,3",
        f"{c},{named.store},4",
        f"{a},{named.wh},abc",
    )
    report = await import_receipts(named.engine, data, partial=True)
    assert (report.rows, report.applied, sorted(b.line for b in report.bad)) == (4, 2, [3, 5])
    levels = await named.on_hand()
    assert (levels[a, named.wh], levels[b, named.wh], levels[c, named.store]) == (5, 0, 4)
    assert report.exit_code == 1
    assert list(report.lines())[-2] == "receipts: 4 rows, 2 applied, 2 skipped"


async def test_reimporting_the_same_file_applies_it_once(named: Shop) -> None:
    a, b, _ = named.skus
    data = csv_bytes("sku,location,qty", f"{a},{named.wh},5", f"{a},{named.wh},5", f"{b},x,1")
    for _ in range(2):
        await import_receipts(named.engine, data, partial=True)
    assert (await named.on_hand())[a, named.wh] == 10, "the two same rows are two receipts"
    changed = data + csv_bytes(f"{b},{named.wh},1")
    await import_receipts(named.engine, changed, partial=True)
    assert (await named.on_hand())[a, named.wh] == 20, "another file is another delivery"


async def test_dry_run_changes_nothing(named: Shop) -> None:
    a = named.skus[0]
    data = csv_bytes("sku,location,qty", f"{a},{named.wh},5")
    report = await import_receipts(named.engine, data, dry_run=True)
    assert (report.applied, report.exit_code) == (0, 0)
    assert (await named.on_hand())[a, named.wh] == 0
    assert list(report.lines()) == ["receipts: 1 rows, 1 good, 0 bad; dry run"]
    await import_receipts(named.engine, data)
    assert (await named.on_hand())[a, named.wh] == 5


async def test_counts_set_on_hand_and_refusals_are_reported_per_row(named: Shop) -> None:
    a, b, c = named.skus
    await named.engine.receive(a, named.wh, 10)
    await named.engine.receive(b, named.wh, 10)
    await named.engine.hold(named.web, {b: 4}, ttl_ms=60_000)
    data = csv_bytes(
        "sku,location,counted,reason",
        f"{a},{named.wh},3,",
        f"{b},{named.wh},2,recount",
        f"{c},{named.store},0,",
    )
    report = await import_counts(named.engine, data)
    assert (report.rows, report.applied) == (3, 2)
    assert [(b.line, b.problem) for b in report.bad] == [
        (3, f"refused: {b}@{named.wh}: counted 2 is below committed + held 4")
    ]
    levels = await named.on_hand()
    assert (levels[a, named.wh], levels[b, named.wh], levels[c, named.store]) == (3, 10, 0)


async def test_a_counts_file_may_not_count_a_place_twice(named: Shop) -> None:
    a, b, _ = named.skus
    data = csv_bytes(
        "sku,location,counted",
        f"{a},{named.wh},3",
        f"{b},{named.wh},1",
        f"{a},{named.wh},4",
    )
    report = await import_counts(named.engine, data, partial=True)
    problem = f"{a}@{named.wh} is counted on lines 2, 4"
    assert sorted((b.line, b.problem) for b in report.bad) == [(2, problem), (4, problem)]
    assert report.applied == 1
    assert (await named.on_hand())[b, named.wh] == 1


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty file: the header must be sku,location,qty[,reference,reason]"),
        (b"sku,location\nA,wh\n", "line 1: the header must be sku,location,qty"),
        (b"sku,location,quantity\n", "line 1: the header must be"),
        (b"sku,location,qty,qty\n", "line 1: the header must be"),
        (b"A,wh1,5\n", "line 1: the header must be"),
        (b"sku,location,qty\nA,wh1,5\nA,wh1,5,caf\xe9\n", "line 3: not UTF-8 (byte 0xe9)"),
        (b'sku,location,qty\nA,wh1,"5\n', "line 2: malformed CSV: unexpected end of data"),
    ],
)
async def test_unreadable_files_change_nothing(named: Shop, data: bytes, message: str) -> None:
    await named.engine.receive(named.skus[0], named.wh, 1)
    before = await named.on_hand()
    with pytest.raises(FeedFileError, match="^" + re.escape(message)):
        await import_receipts(
            named.engine, data.replace(b"A,wh1", f"{named.skus[0]},{named.wh}".encode())
        )
    assert await named.on_hand() == before


async def test_header_order_case_and_byte_order_mark(named: Shop) -> None:
    a = named.skus[0]
    data = b"\xef\xbb\xbf" + csv_bytes(" Qty ,SKU,Location", f"4,{a},{named.wh}")
    assert (await import_receipts(named.engine, data)).applied == 1
    assert (await named.on_hand())[a, named.wh] == 4


async def test_many_rows_apply_concurrently(named: Shop) -> None:
    a, b, c = named.skus
    lines = [f"{sku},{named.wh},1" for _ in range(200) for sku in (a, b, c)]
    report = await import_receipts(
        named.engine, csv_bytes("sku,location,qty", *lines), progress=True
    )
    assert (report.applied, report.bad) == (600, [])
    levels = await named.on_hand()
    assert [levels[sku, named.wh] for sku in (a, b, c)] == [200, 200, 200]


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="stockguard")
    add_commands(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


async def test_command_line(
    named: Shop, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b, _ = named.skus
    receipts = tmp_path / "receipts.csv"
    receipts.write_bytes(csv_bytes("sku,location,qty", f"{a},{named.wh},5", f"{b},{named.wh},0"))
    assert await run(parse("feed", "import-receipts", str(receipts), "--quiet"), named.engine) == 1
    assert capsys.readouterr().out.startswith("line 3: qty:")
    args = parse("feed", "import-receipts", str(receipts), "--partial")
    assert await run(args, named.engine) == 1
    assert await run(parse("feed", "import-counts", str(tmp_path / "none.csv")), named.engine) == 2
    assert "cannot read" in capsys.readouterr().err

    skus, out = tmp_path / "skus.txt", tmp_path / "ats.csv"
    skus.write_text(f"sku\n{a}\n{b}\n")
    export = ("feed", "export-ats", "--channel", named.web, "--sku-file", str(skus))
    assert await run(parse(*export, "--out", str(out)), named.engine) == 0
    assert out.read_text().splitlines() == [
        "sku,channel,ats",
        f"{a},{named.web},5",
        f"{b},{named.web},0",
    ]
    assert list(tmp_path.glob(".*.tmp")) == []
    assert await run(parse("feed", "export-ats", "--channel", "nope"), named.engine) == 2
    assert "unknown channel 'nope'" in capsys.readouterr().err
