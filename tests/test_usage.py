"""The usage report on both engines: ledger rows written by the real spool and the
real outcome writer, summed by account and class, priced, filtered by day, and
printed as a table, CSV and JSON by `relay usage`."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import Engine, select, update

from relay.accounting import report as billing
from relay.accounting.report import AccountRef, LedgerSums, Report
from relay.cli import main
from relay.core.errors import ConfigError, Invalid, NotFound
from relay.core.outcomes import Attempt, Outcome
from relay.queue import store
from relay.queue.spool import Acceptance, write_batch
from relay.service.accounts import create_account
from relay.service.usage import parse_period, usage_report
from relay.store.engine import make_engine, migrate
from relay.store.models import Account, Usage

PRICE = Decimal("0.675")
MAY_31, JUNE_1 = dt.date(2024, 5, 31), dt.date(2024, 6, 1)


@pytest.fixture
def db(any_db_url: str) -> Iterator[Engine]:
    engine = make_engine(any_db_url)
    migrate(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def ids(db: Engine) -> dict[str, int]:
    """Agency "agency" with sub-accounts "shop" and "blog"; agency "solo" alone."""
    create_account(db, "agency")
    create_account(db, "shop", agency="agency")
    create_account(db, "blog", agency="agency")
    create_account(db, "solo")
    return account_ids(db)


def account_ids(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {name: i for name, i in conn.execute(select(Account.name, Account.id)).all()}


# -- writing the ledger the way the relay does ---------------------------------------


def accept(engine: Engine, account_id: int, kinds: str, state: str = "queued") -> str:
    """Spool one message with a recipient per word of ``kinds`` ("to to cc bcc")."""
    acc = Acceptance(
        account_id=account_id,
        mail_from="app@shop.test",
        data=b"Subject: hi\r\n\r\nhello\r\n",
        recipients=[(f"r{i}@example.org", kind) for i, kind in enumerate(kinds.split())],
        state=state,
    )
    write_batch(engine, [acc], 3600)
    return acc.queue_id


def backdate(engine: Engine, queue_id: str, day: dt.date) -> None:
    """Move a message's ledger rows to ``day``, as if the spool had run then.

    The spool stamps rows with today's UTC date and has no clock to inject;
    rewriting the day of rows it wrote keeps everything else real."""
    with engine.begin() as conn:
        conn.execute(update(Usage).where(Usage.message_id == queue_id).values(day=day))


def finish(engine: Engine, queue_id: str, state: str, fail: tuple[str, ...] = ()) -> None:
    """Claim ``queue_id`` like a worker and record ``state``: recipients of the
    classes in ``fail`` fail, the others are delivered (when ``state`` is
    delivered). Other claimed messages go back untouched."""
    token = uuid.uuid4().hex
    tomorrow = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)  # deferred ones are due too
    (msg,) = [m for m in store.claim(engine, token, 1000, 60, now=tomorrow) if m.id == queue_id]
    attempt = Attempt("outbox", "file", "delivered", 0.01, "250", "ok")
    outcome = Outcome(state, [attempt], reason=None if state == "delivered" else "refused")
    if state == "deferred":
        outcome.next_attempt_at = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    for rid, _, kind in msg.recipients:
        if kind in fail:
            outcome.failed[rid] = "550 5.1.1 no such user"
        elif state == "delivered":
            outcome.delivered.append(rid)
    assert store.record(engine, msg, outcome) is not None
    store.release_lease(engine, token)


def line(report: Report, account: str, type_: str | None = None) -> billing.Line:
    (found,) = [x for x in report.lines if x.account == account and type_ in (None, x.type)]
    return found


def figures(report: Report, account: str, type_: str | None = None) -> dict[str, object]:
    """A line's figures without the per-class breakdown."""
    found = billing.line_dict(report, line(report, account, type_))
    found.pop("classes")
    return found


# -- totals and costs ---------------------------------------------------------------


def test_agency_totals_and_costs(db: Engine, ids: dict[str, int]) -> None:
    for _ in range(3):
        finish(db, accept(db, ids["shop"], "to to cc bcc"), "delivered")
    blog = accept(db, ids["blog"], "to bcc")
    finish(db, blog, "delivered", fail=("bcc",))
    accept(db, ids["blog"], "to", state="dropped")

    report = usage_report(db, PRICE, "agency")

    assert [(x.account, x.type) for x in report.lines] == [
        ("agency", "agency"),
        ("blog", "sub-account"),
        ("shop", "sub-account"),
        ("agency", "agency-total"),
    ]
    shop = line(report, "shop")
    assert (shop.messages, shop.totals.recipients, shop.totals.delivered) == (3, 12, 12)
    assert {k: c.recipients for k, c in shop.classes.items()} == {"to": 6, "cc": 3, "bcc": 3}
    assert figures(report, "blog") == {
        "account": "blog",
        "agency": "agency",
        "type": "sub-account",
        "messages": 2,
        "recipients": 3,
        "delivered": 1,
        "dropped": 1,
        "failed": 1,
        "pending": 0,
        "suppressed": 0,
        "cost": "0.0020",  # 3 x 0.000675 = 0.002025
    }
    total = figures(report, "agency", "agency-total")
    assert (total["messages"], total["recipients"], total["cost"]) == (5, 15, "0.0101")
    assert figures(report, "agency", "agency")["recipients"] == 0  # agencies rarely send


def test_cost_is_decimal_rounded_half_up_to_four_places() -> None:
    assert billing.cost(6, PRICE) == Decimal("0.0041")  # 0.00405: half-even would give 0.0040
    assert billing.cost(1000, PRICE) == Decimal("0.6750")
    assert billing.cost(1_234_567, PRICE) == Decimal("833.3327")  # 833.332725
    assert billing.cost(0, PRICE) == Decimal("0.0000")
    assert billing.price(0.675) == Decimal("0.675")  # not 0.67500000000000004...


def test_agency_total_costs_its_total_not_the_sum_of_rounded_lines() -> None:
    accounts = [AccountRef(1, "agency"), *(AccountRef(i, f"s{i}", "agency") for i in (2, 3, 4))]
    sums = LedgerSums({(i, "to", "accepted"): 1 for i in (2, 3, 4)}, {2: 1, 3: 1, 4: 1})
    report = billing.build_report(accounts, sums, PRICE)
    costs = [str(report.cost(x)) for x in report.lines]
    # Three lines of 0.000675 each round to 0.0007; their total, 0.002025, to 0.0020.
    assert costs == ["0.0000", "0.0007", "0.0007", "0.0007", "0.0020"]


@pytest.mark.parametrize("price", [-1, "abc", float("nan")])
def test_a_bad_price_names_the_key(price: float | str) -> None:
    with pytest.raises(ConfigError, match=r"\[billing\] price_per_1000"):
        billing.price(price)


# -- pending is derived ----------------------------------------------------------------


def test_pending_is_accepted_minus_ended(db: Engine, ids: dict[str, int]) -> None:
    queued = accept(db, ids["shop"], "to cc")
    accept(db, ids["shop"], "to bcc bcc", state="paused")
    deferred = accept(db, ids["shop"], "to")
    finish(db, deferred, "deferred")
    shop = line(usage_report(db, PRICE, "shop"), "shop")
    assert (shop.totals.recipients, shop.totals.pending) == (6, 6)
    assert {k: c.pending for k, c in shop.classes.items()} == {"to": 3, "cc": 1, "bcc": 2}

    finish(db, queued, "delivered", fail=("cc",))
    finish(db, deferred, "failed")
    shop = line(usage_report(db, PRICE, "shop"), "shop")
    assert shop.totals.as_dict() == {
        "recipients": 6,
        "delivered": 1,
        "dropped": 0,
        "failed": 2,
        "pending": 3,  # the paused message, still held
        "suppressed": 0,
    }


def test_a_partly_delivered_message_is_pending_until_it_ends(
    db: Engine, ids: dict[str, int]
) -> None:
    """The ledger writes outcomes once, when the message ends (no double count)."""
    qid = accept(db, ids["shop"], "to bcc")
    token = uuid.uuid4().hex
    (msg,) = store.claim(db, token, 10, 60)
    to = next(rid for rid, _, kind in msg.recipients if kind == "to")
    later = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    attempt = Attempt("outbox", "file", "partial", 0.01)
    assert store.record(db, msg, Outcome("deferred", [attempt], [to], next_attempt_at=later))
    assert line(usage_report(db, PRICE, "shop"), "shop").totals.pending == 2
    finish(db, qid, "delivered")
    shop = line(usage_report(db, PRICE, "shop"), "shop").totals
    assert (shop.delivered, shop.pending) == (2, 0)


# -- dates ----------------------------------------------------------------------------


def test_days_are_inclusive_and_outcomes_count_on_the_day_of_acceptance(
    db: Engine, ids: dict[str, int]
) -> None:
    may = accept(db, ids["shop"], "to to")
    backdate(db, may, MAY_31)
    june = accept(db, ids["shop"], "cc")
    backdate(db, june, JUNE_1)
    finish(db, may, "delivered")  # today: long after May 31

    def shop(first: str | None, last: str | None) -> billing.ClassCounts:
        return line(usage_report(db, PRICE, "shop", first, last), "shop").totals

    assert shop("2024-05-31", "2024-05-31").as_dict() == {
        "recipients": 2,
        "delivered": 2,
        "dropped": 0,
        "failed": 0,
        "pending": 0,
        "suppressed": 0,
    }
    assert (shop("2024-06-01", "2024-06-30").recipients, shop("2024-06-01", None).pending) == (1, 1)
    assert shop("2024-05-31", "2024-06-01").recipients == 3
    assert shop(None, "2024-05-30").recipients == 0
    assert shop("2024-06-02", None).delivered == 0  # the delivery day is not the usage day
    assert shop(None, None).recipients == 3


@pytest.mark.parametrize(
    ("first", "last", "message"),
    [
        ("2024-02-30", None, "--from '2024-02-30' is not a date: use YYYY-MM-DD"),
        ("20240501", None, "--from '20240501' is not a date"),
        (None, "yesterday", "--to 'yesterday' is not a date"),
        ("2024-06-02", "2024-06-01", "--from 2024-06-02 is after --to 2024-06-01"),
    ],
)
def test_bad_periods_are_refused(first: str | None, last: str | None, message: str) -> None:
    with pytest.raises(Invalid) as exc:
        parse_period(first, last)
    assert str(exc.value).startswith(message)


# -- which accounts ---------------------------------------------------------------------


def test_selection_by_account(db: Engine, ids: dict[str, int]) -> None:
    accept(db, ids["shop"], "to")
    alone = usage_report(db, PRICE, "shop")
    assert [(x.account, x.agency, x.type) for x in alone.lines] == [
        ("shop", "agency", "sub-account")
    ]
    every = usage_report(db, PRICE)
    assert [(x.account, x.type) for x in every.lines] == [
        ("agency", "agency"),
        ("blog", "sub-account"),
        ("shop", "sub-account"),
        ("agency", "agency-total"),
        ("solo", "agency"),
        ("solo", "agency-total"),
    ]
    assert line(every, "solo", "agency-total").totals.recipients == 0
    with pytest.raises(NotFound, match="account 'nope' does not exist"):
        usage_report(db, PRICE, "nope")


# -- formats ----------------------------------------------------------------------------


@pytest.fixture
def sample(db: Engine, ids: dict[str, int]) -> Report:
    finish(db, accept(db, ids["shop"], "to cc bcc"), "delivered", fail=("bcc",))
    accept(db, ids["blog"], "to to", state="paused")
    return usage_report(db, PRICE, "agency", "2000-01-01", "2999-12-31")


def test_json_has_stable_keys_numbers_and_a_string_cost(sample: Report) -> None:
    out = json.loads(billing.render(sample, "json"))
    assert out["first_day"] == "2000-01-01" and out["last_day"] == "2999-12-31"
    assert out["price_per_1000"] == "0.675"
    shop = next(x for x in out["lines"] if x["account"] == "shop")
    assert list(shop) == [
        "account",
        "agency",
        "type",
        "messages",
        "recipients",
        "delivered",
        "dropped",
        "failed",
        "pending",
        "suppressed",
        "cost",
        "classes",
    ]
    assert shop["cost"] == "0.0020" and shop["recipients"] == 3
    assert shop["classes"]["bcc"] == {
        "recipients": 1,
        "delivered": 0,
        "dropped": 0,
        "failed": 1,
        "pending": 0,
        "suppressed": 0,
    }
    for x in out["lines"]:
        assert list(x["classes"]) == ["to", "cc", "bcc"]
        counts = [x[k] for k in ("messages", "recipients", "pending")]
        assert all(type(n) is int for n in counts)


def test_csv_has_a_fixed_header_and_one_row_a_line(sample: Report) -> None:
    text = billing.render(sample, "csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert text.splitlines()[0] == ",".join(billing.CSV_COLUMNS)
    assert [(r["account"], r["type"]) for r in rows] == [
        ("agency", "agency"),
        ("blog", "sub-account"),
        ("shop", "sub-account"),
        ("agency", "agency-total"),
    ]
    total = rows[-1]
    assert (total["recipients"], total["pending"], total["to_pending"]) == ("5", "2", "2")
    assert (total["bcc_failed"], total["cost"], total["first_day"]) == ("1", "0.0034", "2000-01-01")


def test_table_lines_up_and_says_how_cost_is_computed(sample: Report) -> None:
    text = billing.render(sample, "table")
    lines = text.splitlines()
    assert lines[0] == (
        "Usage from 2000-01-01 to 2999-12-31 (UTC days, inclusive), at 0.675 per 1000 recipients"
    )
    assert lines[1].split() == [
        "ACCOUNT",
        "MESSAGES",
        "TO",
        "CC",
        "BCC",
        "RECIPIENTS",
        "DELIVERED",
        "DROPPED",
        "FAILED",
        "PENDING",
        "COST",
        "SUPPRESSED",
    ]
    assert lines[3].startswith("  blog") and lines[5].startswith("agency total")
    assert lines[5].split()[2:] == ["2", "3", "1", "1", "5", "2", "0", "1", "2", "0.0034", "0"]
    assert len({len(x) for x in lines[1:6]}) == 1  # right-aligned to the last column
    assert "rounded half-up to 4 places" in text and "PENDING: still queued" in text


def test_unknown_format_is_invalid(sample: Report) -> None:
    with pytest.raises(Invalid, match="format must be one of table, csv, json"):
        billing.render(sample, "xml")


# -- the command line ---------------------------------------------------------------------


@pytest.fixture
def cli(any_db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Engine]:
    monkeypatch.setenv("RELAY_DATABASE_URL", any_db_url)
    monkeypatch.setenv("RELAY_SERVER_VAR_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("RELAY_BILLING_PRICE_PER_1000", "1.5")
    monkeypatch.delenv("RELAY_CONFIG", raising=False)
    engine = make_engine(any_db_url)
    migrate(engine)
    create_account(engine, "agency")
    create_account(engine, "shop", agency="agency")
    accept(engine, account_ids(engine)["shop"], "to cc bcc")
    yield engine
    engine.dispose()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_usage_in_every_format(cli: Engine, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "usage")
    assert code == 0 and not err
    assert "at 1.5 per 1000 recipients" in out  # the price comes from config
    assert any(x.split()[:2] == ["shop", "1"] for x in map(str.strip, out.splitlines()))
    code, out, _ = run(capsys, "usage", "--account", "shop", "--format", "json")
    (shop,) = json.loads(out)["lines"]
    assert code == 0 and (shop["recipients"], shop["cost"]) == (3, "0.0045")
    today = dt.datetime.now(dt.UTC).date().isoformat()
    code, out, _ = run(capsys, "usage", "--from", today, "--to", today, "--format", "csv")
    assert code == 0 and [r["recipients"] for r in csv.DictReader(io.StringIO(out))] == [
        "0",
        "3",
        "3",
    ]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--from", "2024-13-01"], "--from '2024-13-01' is not a date"),
        (["--from", "2024-06-02", "--to", "2024-06-01"], "is after --to"),
        (["--account", "nope"], "account 'nope' does not exist"),
    ],
)
def test_cli_usage_errors_exit_1(
    cli: Engine, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, out, err = run(capsys, "usage", *argv)
    assert code == 1 and not out
    assert err.startswith("relay: error: ") and message in err


def test_cli_usage_bad_format_exits_2(cli: Engine) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["usage", "--format", "xml"])
    assert exc.value.code == 2
