"""Unit tests for market.wallet.VoucherBook: the reserve/confirm/release/resync rules, restart and threads."""

from __future__ import annotations

import random
import threading
from pathlib import Path

import pytest

from market.errors import MarketConfigError, MarketInputError
from market.wallet import InFlight, VoucherBook, WalletError

ESCROW = "0x" + "e5" * 20
OTHER_ESCROW = "0x" + "e6" * 20
CLIENT = "0x" + "c1" * 20
P = 10


def open_book(path: Path, **kw: object) -> VoucherBook:
    args: dict[str, object] = {"escrow": ESCROW, "chain_id": 31337, "client": CLIENT}
    args.update(kw)
    return VoucherBook(path, **args)  # type: ignore[arg-type]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "wallet.db"


@pytest.fixture
def book(path: Path):
    with open_book(path) as b:
        yield b


def test_reserve_confirm(book: VoucherBook) -> None:
    assert book.cumulative(1) == 0
    assert book.reserve(1, P) == 10
    assert book.in_flight() == [InFlight(1, 10, P, book.in_flight()[0].reserved_at)]
    assert book.cumulative(1) == 10 and book.settled(1) == 0
    book.confirm(1, 10)
    assert book.in_flight() == []
    assert book.cumulative(1) == book.settled(1) == 10
    assert book.reserve(1, P) == 20
    assert book.reserve(2, 7) == 7  # experts are independent
    assert book.spent_per_expert() == {1: 20, 2: 7}
    assert book.spent() == 27


def test_not_kept_rolls_back_so_the_next_call_does_not_pay_for_the_failed_one(book: VoucherBook) -> None:
    book.confirm(1, book.reserve(1, P))
    failed = book.reserve(1, P)
    assert book.release(1, failed, kept=False) is True
    assert book.cumulative(1) == 10
    assert not book.needs_resync(1)
    assert book.reserve(1, P) == failed  # same amount again


def test_not_kept_with_a_later_call_in_flight_does_not_roll_below_it(book: VoucherBook) -> None:
    c1 = book.reserve(1, P)
    c2 = book.reserve(1, P)
    assert book.release(1, c1, kept=False) is False
    assert book.cumulative(1) == c2  # c2 may already be on its way: never sign below it
    assert book.reserve(1, P) == c2 + P
    book.confirm(1, c2 + P)
    book.confirm(1, c2)
    assert book.cumulative(1) == book.settled(1) == 30


def test_a_later_failure_recovers_an_earlier_covered_one(book: VoucherBook) -> None:
    c1 = book.reserve(1, P)
    c2 = book.reserve(1, P)
    book.release(1, c1, kept=False)
    assert book.release(1, c2, kept=False) is True
    assert book.cumulative(1) == 0  # neither call was kept: nothing paid


def test_releasing_the_latest_rolls_back_only_to_what_is_still_in_flight(book: VoucherBook) -> None:
    c1 = book.reserve(1, P)
    c2 = book.reserve(1, P)
    assert book.release(1, c2, kept=False)
    assert book.cumulative(1) == c1
    c3 = book.reserve(1, P)
    assert c3 == c2 and c3 > c1


def test_unknown_outcome_keeps_the_amount_and_asks_for_resync(book: VoucherBook) -> None:
    c1 = book.reserve(1, P)
    assert book.release(1, c1, kept=True) is False
    assert book.settled(1) == c1
    assert book.needs_resync(1) and book.experts_to_resync() == [1]
    # The node never got it: resync to the node's lower figure keeps ours (at most one price lost).
    assert book.resync(1, 0) == c1
    assert not book.needs_resync(1) and book.experts_to_resync() == []
    assert book.reserve(1, P) == c1 + P


def test_resync_adopts_a_higher_node_figure(book: VoucherBook) -> None:
    book.confirm(1, book.reserve(1, P))
    assert book.resync(1, 500) == 500
    assert book.cumulative(1) == book.settled(1) == 500
    assert book.reserve(1, P) == 510  # >= node's + price: never VOUCHER_TOO_LOW again
    # A resync while a call is in flight never goes below the reservation.
    assert book.resync(1, 505) == 510
    book.release(1, 510, kept=False)
    assert book.cumulative(1) == 505


def test_release_and_confirm_of_unknown_amounts(book: VoucherBook) -> None:
    c1 = book.reserve(1, P)
    with pytest.raises(MarketInputError, match="never reserved"):
        book.confirm(1, c1 + 1)
    with pytest.raises(MarketInputError, match="not reserved"):
        book.release(1, c1 + 1, kept=True)
    book.release(1, c1, kept=False)
    assert book.release(1, c1, kept=False) is False  # twice: nothing more to undo
    assert book.cumulative(1) == 0
    with pytest.raises(MarketInputError, match="not reserved"):
        book.release(1, c1, kept=True)  # rolled back already: settling it would pay for nothing
    assert book.cumulative(1) == 0


@pytest.mark.parametrize(
    "call",
    [
        lambda b: b.reserve(1, 0),
        lambda b: b.reserve(1, -3),
        lambda b: b.reserve(-1, 3),
        lambda b: b.reserve(1, 1.5),
        lambda b: b.reserve(1, 2**256),
        lambda b: b.resync(1, -1),
        lambda b: b.release(1, "10", kept=False),
    ],
)
def test_bad_input_is_refused(book: VoucherBook, call) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(MarketInputError):
        call(book)
    assert book.in_flight() == []


def test_amounts_beyond_64_bits_and_the_uint256_ceiling(book: VoucherBook) -> None:
    top = 2**256 - 1
    assert book.reserve(2**255, top - 5) == top - 5
    assert book.reserve(2**255, 5) == top
    with pytest.raises(MarketInputError, match="2\\*\\*256"):
        book.reserve(2**255, 1)
    book.confirm(2**255, top)
    assert book.spent_per_expert() == {2**255: top}


def test_reopen_keeps_state_and_settles_calls_left_in_flight(path: Path) -> None:
    with open_book(path) as b:
        b.confirm(1, b.reserve(1, P))
        b.reserve(1, P)  # in flight when the process goes away
        b.reserve(2, 3)
        b.confirm(3, b.reserve(3, 4))
    with open_book(path) as b:
        assert b.in_flight() == []
        assert b.spent_per_expert() == {1: 20, 2: 3, 3: 4}
        assert b.settled(1) == 20  # unknown outcome: the node may hold it
        assert b.experts_to_resync() == [1, 2]
        assert b.reserve(1, P) == 30


def test_one_book_per_file(path: Path) -> None:
    b = open_book(path)
    with pytest.raises(MarketConfigError, match="another"):
        open_book(path)
    b.close()
    b.close()
    with pytest.raises(WalletError, match="closed"):
        b.reserve(1, P)
    open_book(path).close()


def test_domains_in_one_file_are_separate(path: Path) -> None:
    with open_book(path) as b:
        b.confirm(1, b.reserve(1, P))
    with open_book(path, escrow=OTHER_ESCROW) as b:
        assert b.cumulative(1) == 0
        b.confirm(1, b.reserve(1, 7))
    with open_book(path, chain_id=1) as b:
        assert b.spent() == 0
    with open_book(path.parent / "wallet.db", escrow=ESCROW.upper().replace("0X", "0x")) as b:
        assert b.cumulative(1) == P  # addresses match case-insensitively


def test_refuses_bad_configuration(tmp_path: Path) -> None:
    with pytest.raises(MarketConfigError):
        open_book(Path(":memory:"))
    with pytest.raises(MarketInputError):
        open_book(tmp_path / "w.db", escrow="not an address")
    with pytest.raises(MarketInputError):
        open_book(tmp_path / "w.db", chain_id=0)
    with pytest.raises(MarketConfigError):
        open_book(tmp_path / "missing" / "w.db")
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"not sqlite" * 200)
    with pytest.raises(MarketConfigError):
        open_book(bad)
    open_book(bad.with_name("ok.db")).close()  # a failed open frees the file lock
    open_book(tmp_path / "w.db").close()


def test_sqlite_settings(book: VoucherBook) -> None:
    conn = book._db.conn()
    assert conn is not None
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2


# ---------------------------------------------------------------- threads


def test_concurrent_reservations_get_distinct_increasing_amounts(book: VoucherBook) -> None:
    got: list[list[int]] = [[] for _ in range(8)]
    barrier = threading.Barrier(8)

    def worker(i: int) -> None:
        barrier.wait()
        for _ in range(40):
            got[i].append(book.reserve(1, P))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    everything = sorted(a for amounts in got for a in amounts)
    assert everything == [P * k for k in range(1, 321)]
    for amounts in got:
        assert amounts == sorted(amounts) and len(set(amounts)) == len(amounts)


def test_concurrent_calls_with_failures_settle_cleanly(book: VoucherBook) -> None:
    in_flight: set[int] = set()
    guard = threading.Lock()
    problems: list[str] = []

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(40):
            amount = book.reserve(1, P)
            with guard:
                if amount in in_flight:
                    problems.append(f"{amount} handed out twice while in flight")
                in_flight.add(amount)
            outcome = rng.random()
            with guard:
                in_flight.discard(amount)
                # Settle under the guard so no other thread reserves between the book's update and ours.
                if outcome < 0.6:
                    book.confirm(1, amount)
                elif outcome < 0.9:
                    book.release(1, amount, kept=False)
                else:
                    book.release(1, amount, kept=True)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert problems == []
    assert book.in_flight() == []
    assert book.cumulative(1) == book.settled(1)  # nothing in flight: nothing at risk
