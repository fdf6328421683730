"""Traffic and round trips of set reconciliation, against sending the full id list.

Run from the repository root::

    python -m bench.reconcile_bench
    python -m bench.reconcile_bench --sizes 10000 100000 --differences 0 1 100
    python -m bench.reconcile_bench --smoke

For each size n and difference d, replica A has n random 32-byte ids and
replica B has A minus ceil(d/2) of them plus floor(d/2) new ids. So the
symmetric difference is d, and both sides lack some ids once d >= 2. A
initiates a ``protocol.reconcile`` session with B in memory; payloads pass
directly between the two ``Reconciler`` objects, as the node would pass them
in ``reconcile`` frames. Every row checks that both sides found exactly the
expected have and need sets, and the command exits 1 if one did not.

A round trip is one message from A plus B's reply, so a session of k
messages takes ceil(k / 2) round trips. The baseline is A sending its whole
id list once, 32 bytes per id, which does not yet tell A what it lacks.

Timings are process CPU seconds of this single-threaded process: the
session (both sides, from ``initiate()`` to the end), and once per size the
two set-up steps of one side, sorting the ids into ``SortedIds`` and building
the keyed fingerprint index. For comparison the report also times an
unkeyed prefix sum of the raw ids, which is what a fingerprint made of a
plain sum of ids would cost.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import random
import resource
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

from protocol.reconcile import DEFAULT_FRAME_BUDGET, ID_SIZE, Reconciler, SortedIds

__all__ = [
    "DEFAULT_DIFFERENCES",
    "DEFAULT_SIZES",
    "SMOKE_DIFFERENCES",
    "SMOKE_SIZES",
    "Row",
    "SetupCost",
    "main",
    "run",
    "run_smoke",
]

DEFAULT_SIZES = (10_000, 100_000, 1_000_000)
DEFAULT_DIFFERENCES = (0, 1, 100, 10_000)
SMOKE_SIZES = (1_000, 5_000)
SMOKE_DIFFERENCES = (0, 1, 100)
SESSION_KEY = bytes(range(32))
# The project's target for 10**6 ids and one difference.
TARGET_ROUND_TRIPS = 3
TARGET_BYTES = 2_000


@dataclass(frozen=True)
class Row:
    """One session: its size, its traffic, and whether both sides found the exact difference."""

    size: int
    difference: int
    messages: int
    bytes_from_initiator: int
    bytes_from_responder: int
    largest_message: int
    expected_have: int
    expected_need: int
    have: int
    need: int
    exact: bool
    session_seconds: float

    @property
    def round_trips(self) -> int:
        return math.ceil(self.messages / 2)

    @property
    def total_bytes(self) -> int:
        return self.bytes_from_initiator + self.bytes_from_responder

    @property
    def full_list_bytes(self) -> int:
        return ID_SIZE * self.size


@dataclass(frozen=True)
class SetupCost:
    """CPU seconds of one side's set-up for one size."""

    size: int
    sort_seconds: float
    keyed_index_seconds: float
    plain_sum_seconds: float


def _random_ids(generator: random.Random, count: int) -> list[bytes]:
    return [generator.randbytes(ID_SIZE) for _ in range(count)]


def _plain_prefix_sums(ids: Sequence[bytes]) -> bytearray:
    """Return prefix sums of the raw ids mod 2**256, the unkeyed fingerprint's set-up."""
    mask = (1 << 256) - 1
    prefix = bytearray(ID_SIZE * (len(ids) + 1))
    total = 0
    offset = ID_SIZE
    for item in ids:
        total = (total + int.from_bytes(item, "little")) & mask
        prefix[offset : offset + ID_SIZE] = total.to_bytes(ID_SIZE, "little")
        offset += ID_SIZE
    return prefix


def _measure_setup(ids: list[bytes], frame_budget: int) -> tuple[SortedIds, SetupCost]:
    started = time.process_time()
    storage = SortedIds(ids)
    sorted_at = time.process_time()
    Reconciler(storage, SESSION_KEY, frame_budget=frame_budget)
    indexed_at = time.process_time()
    _plain_prefix_sums(storage.ids_between(0, len(storage)))
    summed_at = time.process_time()
    cost = SetupCost(len(ids), sorted_at - started, indexed_at - sorted_at, summed_at - indexed_at)
    return storage, cost


def _run_session(
    size: int,
    difference: int,
    a_ids: list[bytes],
    a_storage: SortedIds,
    generator: random.Random,
    frame_budget: int,
) -> Row:
    removed_count = (difference + 1) // 2
    added_count = difference // 2
    if removed_count > size:
        raise ValueError(f"difference {difference} needs more than the {size} ids of replica A")
    removed = set(generator.sample(a_ids, removed_count))
    added = _random_ids(generator, added_count)
    b_ids = [item for item in a_ids if item not in removed] + added

    initiator = Reconciler(a_storage, SESSION_KEY, frame_budget=frame_budget)
    responder = Reconciler(SortedIds(b_ids), SESSION_KEY, frame_budget=frame_budget)
    started = time.process_time()
    payloads = [initiator.initiate()]
    receivers = (responder, initiator)
    while not (initiator.done and responder.done):
        reply = receivers[(len(payloads) - 1) % 2].receive(payloads[-1])
        if reply is None:
            break
        payloads.append(reply)
    elapsed = time.process_time() - started

    added_set = set(added)
    exact = (
        initiator.have_ids == removed
        and initiator.need_ids == added_set
        and responder.have_ids == added_set
        and responder.need_ids == removed
    )
    return Row(
        size=size,
        difference=difference,
        messages=len(payloads),
        bytes_from_initiator=sum(len(payload) for payload in payloads[0::2]),
        bytes_from_responder=sum(len(payload) for payload in payloads[1::2]),
        largest_message=max(len(payload) for payload in payloads),
        expected_have=removed_count,
        expected_need=added_count,
        have=len(initiator.have_ids),
        need=len(initiator.need_ids),
        exact=exact,
        session_seconds=elapsed,
    )


def run(
    sizes: Sequence[int],
    differences: Sequence[int],
    *,
    seed: int = 1,
    frame_budget: int = DEFAULT_FRAME_BUDGET,
    progress: bool = False,
) -> tuple[list[Row], list[SetupCost]]:
    """Run one session per size and difference and return the rows and set-up costs."""
    rows: list[Row] = []
    costs: list[SetupCost] = []
    for size in sizes:
        generator = random.Random(f"{seed}:{size}")
        a_ids = _random_ids(generator, size)
        a_storage, cost = _measure_setup(a_ids, frame_budget)
        costs.append(cost)
        for difference in differences:
            row = _run_session(size, difference, a_ids, a_storage, generator, frame_budget)
            rows.append(row)
            if progress:
                print(f"  done: {size:,} ids, difference {difference:,}", file=sys.stderr, flush=True)
    return rows, costs


def run_smoke() -> list[Row]:
    """Run the small configuration that the test suite checks."""
    rows, _ = run(SMOKE_SIZES, SMOKE_DIFFERENCES)
    return rows


def _machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}"


def format_report(rows: Sequence[Row], costs: Sequence[SetupCost], command: str, frame_budget: int) -> str:
    """Return the report as Markdown: set-up, machine, the session table and the set-up table."""
    lines = [
        f"Command: `{command}`",
        f"Date: {datetime.datetime.now(datetime.timezone.utc).date().isoformat()}",
        f"Machine: {_machine()}",
        f"Python: {platform.python_version()} ({platform.python_implementation()})",
        f"Frame budget: {frame_budget:,} bytes",
        f"Peak RSS of the process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024:,} MiB",
        "",
        "| ids | difference | round trips | messages | bytes A→B | bytes B→A | total bytes "
        "| largest message | full id list | total / full list | have, need at A | exact | session CPU s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|---:|",
    ]
    for row in rows:
        ratio = row.total_bytes / row.full_list_bytes
        lines.append(
            f"| {row.size:,} | {row.difference:,} | {row.round_trips} | {row.messages} "
            f"| {row.bytes_from_initiator:,} | {row.bytes_from_responder:,} | {row.total_bytes:,} "
            f"| {row.largest_message:,} | {row.full_list_bytes:,} | {ratio:.4f} "
            f"| {row.have:,}, {row.need:,} | {'yes' if row.exact else 'NO'} | {row.session_seconds:.2f} |"
        )
    lines += [
        "",
        "| ids | sort into SortedIds, CPU s | keyed fingerprint index, CPU s | µs per id | "
        "unkeyed sum of ids, CPU s | µs per id |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for cost in costs:
        lines.append(
            f"| {cost.size:,} | {cost.sort_seconds:.2f} | {cost.keyed_index_seconds:.2f} "
            f"| {1e6 * cost.keyed_index_seconds / cost.size:.2f} | {cost.plain_sum_seconds:.2f} "
            f"| {1e6 * cost.plain_sum_seconds / cost.size:.2f} |"
        )

    target_rows = [row for row in rows if row.size == 1_000_000 and row.difference == 1]
    for row in target_rows:
        met = row.round_trips <= TARGET_ROUND_TRIPS and row.total_bytes <= TARGET_BYTES
        lines += [
            "",
            f"Target at 10**6 ids and one difference: at most {TARGET_ROUND_TRIPS} round trips and "
            f"{TARGET_BYTES:,} bytes. Measured: {row.round_trips} round trips, {row.total_bytes:,} bytes "
            f"({'met' if met else 'NOT met'}).",
        ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, print the Markdown report and return 1 if any session was inexact."""
    parser = argparse.ArgumentParser(prog="python -m bench.reconcile_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES), help="ids in replica A (default: %(default)s)")
    parser.add_argument(
        "--differences", type=int, nargs="+", default=list(DEFAULT_DIFFERENCES),
        help="ids in the symmetric difference of A and B (default: %(default)s)",
    )
    parser.add_argument("--budget", type=int, default=DEFAULT_FRAME_BUDGET, help="frame budget in bytes (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the id generator (default: %(default)s)")
    parser.add_argument("--smoke", action="store_true", help=f"run sizes {SMOKE_SIZES} and differences {SMOKE_DIFFERENCES} only")
    args = parser.parse_args(argv)

    sizes = SMOKE_SIZES if args.smoke else tuple(args.sizes)
    differences = SMOKE_DIFFERENCES if args.smoke else tuple(args.differences)
    command = "python -m bench.reconcile_bench " + " ".join(argv if argv is not None else sys.argv[1:])
    rows, costs = run(sizes, differences, seed=args.seed, frame_budget=args.budget, progress=not args.smoke)
    print(format_report(rows, costs, command.strip(), args.budget))

    inexact = [row for row in rows if not row.exact]
    for row in inexact:
        print(f"error: {row.size:,} ids, difference {row.difference:,}: have/need sets differ from the expected sets", file=sys.stderr)
    return 1 if inexact else 0


if __name__ == "__main__":
    sys.exit(main())
