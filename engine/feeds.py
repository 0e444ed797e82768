"""CSV feeds for platforms and partners without an API: ATS out; receipts and counts in.

An import checks every row before it writes anything, and a file with a bad row changes
nothing unless it is imported with ``partial``. Each row's operation id comes from the
file's content and the row's line, so importing the same file again replays it: the engine
applies it once (within the idempotency TTL).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import hashlib
import io
import os
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from . import keys, validate
from .engine import Engine
from .errors import StockguardError, UnknownChannelError, ValidationError
from .ids import new_id

CHUNK = 500  # SKUs per ATS read
IN_FLIGHT = 64  # rows being applied at once
_SKUS = keys.PARTITION_KEYS.index("skus")
_DIGITS = re.compile(r"[0-9]+")


class FeedFileError(StockguardError):
    """The file cannot be read as this feed (I/O, encoding, CSV syntax or header)."""


@dataclass(frozen=True)
class Feed:
    """The columns of an import and the stock verb its rows go to."""

    name: str
    verb: str  # the Engine method
    required: tuple[str, ...]
    optional: tuple[str, ...]
    min_qty: int
    default_reason: str = ""

    @property
    def columns(self) -> str:
        return ",".join(self.required) + f"[,{','.join(self.optional)}]"


RECEIPTS = Feed("receipts", "receive", ("sku", "location", "qty"), ("reference", "reason"), 1)
COUNTS = Feed("counts", "count", ("sku", "location", "counted"), ("reason",), 0, "cycle count")


@dataclass(frozen=True, slots=True)
class Row:
    line: int
    sku: str
    location: str
    qty: int
    reason: str
    reference: str


@dataclass(frozen=True, slots=True)
class BadRow:
    line: int  # in the file, the header being line 1
    problem: str


@dataclass
class ImportReport:
    """What an import found and did; ``lines()`` is the human report."""

    feed: str
    rows: int = 0
    applied: int = 0
    bad: list[BadRow] = field(default_factory=list)
    dry_run: bool = False
    partial: bool = False

    @property
    def exit_code(self) -> int:
        return 1 if self.bad else 0

    def lines(self) -> Iterator[str]:
        for bad in sorted(self.bad, key=lambda b: b.line):
            yield f"line {bad.line}: {bad.problem}"
        counts = f"{self.feed}: {self.rows} rows"
        if self.dry_run:
            yield f"{counts}, {self.rows - len(self.bad)} good, {len(self.bad)} bad; dry run"
        elif self.bad and not self.partial:
            good = self.rows - len(self.bad)
            yield f"{counts}, {len(self.bad)} bad; nothing applied (--partial applies {good})"
        else:
            yield f"{counts}, {self.applied} applied, {len(self.bad)} skipped"
            if self.bad:
                # Editing this file changes every row's op id, so its good rows would apply
                # again; and the engine remembers a refusal under its op id.
                yield "to retry the skipped rows, import a new file holding only them"


# -- export ---------------------------------------------------------------------------


async def defined_skus(client: Any) -> list[str]:
    """Every defined SKU, sorted: the fields of each partition's skus hash."""
    parts = [client.hkeys(keys.partition_keys(p)[_SKUS]) for p in range(keys.PARTITIONS)]
    return sorted(sku for found in await asyncio.gather(*parts) for sku in found)


async def known_skus(client: Any, skus: Iterable[str]) -> set[str]:
    """The ones of these SKUs that are defined (reads only their settings)."""
    by_part: dict[int, list[str]] = {}
    for sku in set(skus):
        by_part.setdefault(keys.partition_of(sku), []).append(sku)
    groups = [(p, g[i : i + 1000]) for p, g in by_part.items() for i in range(0, len(g), 1000)]
    found = await asyncio.gather(
        *(client.hmget(keys.partition_keys(p)[_SKUS], group) for p, group in groups)
    )
    return {
        sku
        for (_, group), values in zip(groups, found, strict=True)
        for sku, value in zip(group, values, strict=True)
        if value is not None
    }


async def export_ats(
    engine: Engine,
    out: TextIO,
    *,
    channels: list[str] | None = None,
    skus: list[str] | None = None,
    chunk: int = CHUNK,
) -> list[str]:
    """Writes `sku,channel,ats` rows (all channels and SKUs by default), chunk by chunk.

    Returns the given SKUs that are not defined (they get no rows). Each chunk is read at
    its own instant: the file is not one snapshot.
    """
    known = (await engine.catalog()).channels
    for channel in channels or ():
        if channel not in known:
            raise UnknownChannelError(channel)
    channels = channels or sorted(known)
    if skus is None:
        skus = await defined_skus(engine.client)
    writer = csv.writer(out)
    writer.writerow(("sku", "channel", "ats"))
    missing: list[str] = []
    for i in range(0, len(skus), chunk):
        group = skus[i : i + chunk]
        found = await asyncio.gather(*(engine.ats(c, group) for c in channels))
        for sku in group:
            if channels and sku not in found[0]:
                missing.append(sku)
                continue
            writer.writerows((sku, c, ats[sku]) for c, ats in zip(channels, found, strict=True))
    return missing


def read_sku_file(data: bytes) -> list[str]:
    """SKUs from a file of one per line (the first CSV column; an optional `sku` header)."""
    rows = [r for _, r in _csv_rows(_decode(data))]
    names = [r[0].strip() for r in rows if r and r[0].strip()]
    if names[:1] == ["sku"]:
        names = names[1:]
    return list(dict.fromkeys(validate.name("sku", n) for n in names))


# -- import ---------------------------------------------------------------------------


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")  # Excel writes a byte order mark
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        byte = data[error.start]
        raise FeedFileError(
            f"line {line}: not UTF-8 (byte 0x{byte:02x}); save it as UTF-8"
        ) from None


def _csv_rows(text: str) -> Iterator[tuple[int, list[str]]]:
    """(first line, cells) of each record; a quoted field may span lines."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    line = 1
    try:
        for cells in reader:
            yield line, cells
            line = reader.line_num + 1
    except csv.Error as error:
        raise FeedFileError(f"line {reader.line_num}: malformed CSV: {error}") from None


def _columns(header: list[str] | None, feed: Feed) -> list[str]:
    expected = f"the header must be {feed.columns}"
    if header is None:
        raise FeedFileError(f"empty file: {expected}")
    columns = [c.strip().lower() for c in header]
    unknown = [c for c in columns if c not in feed.required + feed.optional]
    missing = [c for c in feed.required if c not in columns]
    if unknown or missing or len(set(columns)) != len(columns):
        raise FeedFileError(f"line 1: {expected}, got {','.join(header)!r}")
    return columns


def _quantity(name: str, value: str, low: int) -> int:
    if not _DIGITS.fullmatch(value):
        raise ValidationError(name, f"must be a whole number from {low}, got {value!r}")
    return validate.integer(name, int(value), low, validate.MAX_QTY)


def _problem(check: Any, name: str, value: Any, *args: Any) -> list[str]:
    try:
        check(name, value, *args)
    except ValidationError as error:
        return [str(error)]
    return []


def _row(line: int, cells: list[str], columns: list[str], feed: Feed, locations: Any) -> Row:
    """One row, checked against the catalog's locations (SKUs are checked in bulk later)."""
    if len(cells) != len(columns):
        raise ValidationError("row", f"has {len(cells)} fields, the header {len(columns)}")
    values = dict(zip(columns, (c.strip() for c in cells), strict=True))
    sku, location, qty_field = feed.required
    problems = [f"{name}: missing" for name in feed.required if not values[name]]
    if not problems:
        problems += _problem(validate.name, sku, values[sku])
        problems += _problem(validate.name, location, values[location])
        problems += _problem(_quantity, qty_field, values[qty_field], feed.min_qty)
    for name in feed.optional:
        problems += _problem(validate.text, name, values.get(name, ""))
    if not problems and values[location] not in locations:
        problems.append(f"location: unknown location {values[location]!r}")
    if problems:
        raise ValidationError("row", "; ".join(problems))
    return Row(
        line,
        values[sku],
        values[location],
        int(values[qty_field]),
        values.get("reason") or feed.default_reason,
        values.get("reference", ""),
    )


def check(text: str, feed: Feed, locations: Any) -> tuple[list[Row], list[BadRow]]:
    """Parses and checks every row against the header and locations; blank rows are skipped."""
    records = _csv_rows(text)
    columns = _columns(next((cells for _, cells in records), None), feed)
    rows: list[Row] = []
    bad: list[BadRow] = []
    for line, cells in records:
        if not any(c.strip() for c in cells):
            continue
        try:
            rows.append(_row(line, cells, columns, feed, locations))
        except ValidationError as error:
            bad.append(BadRow(line, error.message))
    return rows, bad


def _duplicates(rows: list[Row]) -> dict[int, str]:
    """Lines that count a (sku, location) another line counts too: neither can be right."""
    lines: dict[tuple[str, str], list[int]] = {}
    for row in rows:
        lines.setdefault((row.sku, row.location), []).append(row.line)
    return {
        n: f"{sku}@{location} is counted on lines {', '.join(map(str, found))}"
        for (sku, location), found in lines.items()
        if len(found) > 1
        for n in found
    }


async def import_feed(
    engine: Engine,
    feed: Feed,
    data: bytes,
    *,
    partial: bool = False,
    dry_run: bool = False,
    progress: bool = False,
    actor: str = "feed",
) -> ImportReport:
    """Checks every row, then applies them all, or none if any is bad (unless partial)."""
    catalog = await engine.catalog()
    rows, bad = check(_decode(data), feed, catalog.locations)
    known = await known_skus(engine.client, (r.sku for r in rows))
    problems = _duplicates(rows) if feed is COUNTS else {}
    problems.update({r.line: f"sku: unknown SKU {r.sku!r}" for r in rows if r.sku not in known})
    total = len(rows) + len(bad)
    bad += [BadRow(n, p) for n, p in problems.items()]
    good = [r for r in rows if r.line not in problems]
    report = ImportReport(feed.name, total, 0, bad, dry_run, partial)
    if not dry_run and (partial or not bad):
        digest = hashlib.blake2b(data, digest_size=12).hexdigest()
        await _apply(engine, feed, good, report, digest, progress, actor)
    return report


async def import_receipts(engine: Engine, data: bytes, **options: Any) -> ImportReport:
    """`sku,location,qty[,reference,reason]`: receive each row's units."""
    return await import_feed(engine, RECEIPTS, data, **options)


async def import_counts(engine: Engine, data: bytes, **options: Any) -> ImportReport:
    """`sku,location,counted[,reason]`: set each row's on_hand to the counted units."""
    return await import_feed(engine, COUNTS, data, **options)


async def _apply(
    engine: Engine,
    feed: Feed,
    rows: list[Row],
    report: ImportReport,
    digest: str,
    progress: bool,
    actor: str,
) -> None:
    from tqdm import tqdm

    verb = getattr(engine, feed.verb)
    pending = iter(rows)
    bar = tqdm(
        total=len(rows), desc=feed.name, unit="row", file=sys.stderr, disable=not progress, delay=1
    )

    async def worker() -> None:
        for row in pending:
            # Homed in the SKU's partition, so the engine needs no cross-partition claim.
            op_id = new_id(keys.partition_of(row.sku), f"feed.{digest}.{row.line}")
            try:
                await verb(
                    row.sku,
                    row.location,
                    row.qty,
                    reason=row.reason,
                    actor=actor,
                    reference=row.reference,
                    op_id=op_id,
                )
            except StockguardError as error:
                report.bad.append(BadRow(row.line, f"refused: {error}"))
            else:
                report.applied += 1
            bar.update()

    tasks = [asyncio.create_task(worker()) for _ in range(min(IN_FLIGHT, len(rows)))]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:  # a Redis error stops the rest; a re-import replays what ran
            task.cancel()
        bar.close()


# -- command line ---------------------------------------------------------------------


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds `feed export-ats | import-receipts | import-counts` to the `stockguard` parser."""
    feed = commands.add_parser("feed", help="CSV feeds: export ATS, import receipts and counts")
    verbs = feed.add_subparsers(dest="feed_command", required=True)
    export = verbs.add_parser("export-ats", help="write sku,channel,ats for every SKU")
    export.add_argument("--channel", action="append", dest="channels", metavar="C")
    export.add_argument("--sku-file", type=Path, help="only these SKUs, one per line")
    export.add_argument("--out", default="-", help="file to write (atomically); - is stdout")
    for name, spec in (("import-receipts", RECEIPTS), ("import-counts", COUNTS)):
        verb = verbs.add_parser(name, help=f"apply a CSV of {spec.columns}")
        verb.add_argument("file", help="the CSV file; - reads stdin")
        verb.add_argument("--partial", action="store_true", help="apply the good rows anyway")
        verb.add_argument("--dry-run", action="store_true", help="check only; change nothing")
        verb.add_argument("--quiet", action="store_true", help="no progress bar")


def _read(path: str | Path) -> bytes:
    if str(path) == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise FeedFileError(f"cannot read {path}: {error.strerror}") from None


@contextlib.contextmanager
def _replacing(path: Path) -> Iterator[TextIO]:
    """A file that appears at path only once fully written: a partner never reads half."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with tmp.open("w", newline="", encoding="utf-8") as out:
            yield out
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


async def _export(args: argparse.Namespace, engine: Engine) -> int:
    skus = read_sku_file(_read(args.sku_file)) if args.sku_file else None
    options: dict[str, Any] = {"channels": args.channels, "skus": skus}
    if args.out == "-":
        missing = await export_ats(engine, sys.stdout, **options)
    else:
        with _replacing(Path(args.out)) as out:
            missing = await export_ats(engine, out, **options)
    for sku in missing:
        print(f"export-ats: unknown SKU {sku!r}: no rows", file=sys.stderr)
    return 1 if missing else 0


async def run(args: argparse.Namespace, engine: Engine) -> int:
    """Runs a `feed` command: 0 all done, 1 some row or SKU bad, 2 an unreadable file."""
    try:
        if args.feed_command == "export-ats":
            return await _export(args, engine)
        feed = RECEIPTS if args.feed_command == "import-receipts" else COUNTS
        progress = not args.quiet and sys.stderr.isatty()
        report = await import_feed(
            engine,
            feed,
            _read(args.file),
            partial=args.partial,
            dry_run=args.dry_run,
            progress=progress,
        )
    except StockguardError as error:
        print(f"feed {args.feed_command}: {error}", file=sys.stderr)
        return 2
    for line in report.lines():
        print(line)
    return report.exit_code
