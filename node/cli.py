"""The ``pith-mirror`` command line.

Exit codes: 0 success, 1 a check failed or input was rejected, 2 the input
could not be read or the command line is wrong.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

from protocol import (
    EVENT_TYPES,
    InvalidInput,
    TrustConfig,
    build_event,
    default_trust,
    format_timestamp,
    parse_json,
    read_document,
)

from .keyfile import KeyFileError, create_key_file, load_key_file
from .offline import InputError, MergeInputError, merge_items, read_items, verify_item

__all__ = ["main", "build_parser"]

logger = logging.getLogger("pith_mirror.cli")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_UNREADABLE = 2


def _load_trust(path: str | None) -> TrustConfig:
    if path is None:
        return default_trust()
    try:
        return TrustConfig.from_document(read_document(Path(path).read_bytes()))
    except OSError as error:
        raise InputError(f"{path}: cannot read trust configuration: {error.strerror}") from None
    except InvalidInput as error:
        raise InputError(f"{path}: invalid trust configuration: {error}") from None


# Upper bound of import --workers. The one process that writes limits an
# import's rate long before this many workers.
MAX_IMPORT_WORKERS = 64


def _worker_count(text: str) -> int:
    """Parse the value of ``import --workers``."""
    try:
        count = int(text)
    except ValueError:
        count = -1
    if not 0 <= count <= MAX_IMPORT_WORKERS:
        raise argparse.ArgumentTypeError(f"expected a whole number from 0 to {MAX_IMPORT_WORKERS}, got {text!r}")
    return count


def _write_json(value: Any, indent: bool) -> None:
    if indent:
        text = json.dumps(value, indent=2, ensure_ascii=False)
    else:
        # Compact, in document order: the form the registry serves.
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    sys.stdout.write(text + "\n")


def command_verify(args: argparse.Namespace) -> int:
    trust = _load_trust(args.trust)
    passed = failed = 0
    unreadable = False
    for path in args.paths:
        try:
            items = list(read_items(path))
        except InputError as error:
            print(f"ERROR {error}", file=sys.stderr)
            unreadable = True
            continue
        for item in items:
            ok, line = verify_item(item, trust)
            print(line)
            if ok:
                passed += 1
            else:
                failed += 1
    print(f"verified {passed + failed} items: {passed} passed, {failed} failed")
    if unreadable:
        return EXIT_UNREADABLE
    return EXIT_OK if failed == 0 else EXIT_FAILED


def command_merge(args: argparse.Namespace) -> int:
    trust = _load_trust(args.trust)
    items = []
    for path in args.paths:
        items.extend(read_items(path))
    try:
        states = merge_items(items, trust)
    except (MergeInputError, InvalidInput) as error:
        print(f"error: cannot merge: {error}", file=sys.stderr)
        return EXIT_FAILED
    for state in states:
        if args.hash_only:
            print(f"{state['pith_number']} {state['state_sha256']}" if len(states) > 1 else state["state_sha256"])
        else:
            _write_json(state, args.indent)
    return EXIT_OK


def command_keygen(args: argparse.Namespace) -> int:
    try:
        key_file = create_key_file(Path(args.out), args.key_id, args.signer_id, args.signer_type, overwrite=args.force)
    except KeyFileError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILED
    print(f"wrote {args.out} (mode 0600)")
    print(f"public_key_hex          {key_file.signing_key.public_key_hex}")
    print(f"public_key_fingerprint  {key_file.signing_key.fingerprint}")
    return EXIT_OK


def command_sign(args: argparse.Namespace) -> int:
    try:
        key_file = load_key_file(Path(args.key))
    except KeyFileError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_UNREADABLE
    payload_text = args.payload
    if payload_text.startswith("@"):
        try:
            payload_text = Path(payload_text[1:]).read_text(encoding="utf-8")
        except OSError as error:
            print(f"error: cannot read payload file {payload_text[1:]}: {error.strerror}", file=sys.stderr)
            return EXIT_UNREADABLE
    created_at = args.created_at or format_timestamp(time.time())
    try:
        payload = parse_json(payload_text)
        event = build_event(
            key_file.signing_key,
            event_type=args.type,
            subject=args.subject,
            payload=payload,
            created_at=created_at,
            key_id=key_file.key_id,
            signer_id=key_file.signer_id,
            signer_type=key_file.signer_type,
        )
    except InvalidInput as error:
        print(f"error: cannot sign: {error}", file=sys.stderr)
        return EXIT_FAILED
    _write_json(event, args.indent)
    return EXIT_OK


def _effective_config(args: argparse.Namespace) -> Any:
    import os

    from .config import ConfigError, load_config, overrides_from_args

    overrides, config_path = overrides_from_args(args)
    try:
        return load_config(overrides, os.environ, config_path)
    except ConfigError as error:
        raise InputError(f"invalid configuration: {error}") from None


def command_run(args: argparse.Namespace) -> int:
    import trio

    from .daemon import DaemonError, run_daemon

    config = _effective_config(args)
    logging.getLogger().setLevel(logging.DEBUG if args.verbose else config.log_level)
    try:
        trio.run(run_daemon, config)
    except DaemonError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def command_import(args: argparse.Namespace) -> int:
    import trio

    from .importer import import_sources, read_suffixes
    from .store import StoreError

    config = _effective_config(args)
    logging.getLogger().setLevel(logging.DEBUG if args.verbose else config.log_level)
    suffixes = list(args.suffix or [])
    if args.suffixes_from:
        try:
            suffixes.extend(read_suffixes(Path(args.suffixes_from).read_text(encoding="utf-8").splitlines()))
        except (OSError, UnicodeDecodeError) as error:
            raise InputError(f"cannot read {args.suffixes_from}: {error}") from None
    try:
        summary = trio.run(partial(import_sources, workers=args.workers), config, args.sources, suffixes)
    except StoreError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_UNREADABLE
    print(
        f"imported into {config.data_dir}: {summary.accepted} accepted, {summary.duplicate} duplicate, "
        f"{summary.rejected} rejected, {summary.skipped} skipped"
    )
    if summary.pending:
        print(
            f"  {summary.pending} of the accepted events wait as pending events: their records are not in the store; "
            "import the records' bundles or states to merge them"
        )
    for code, count in summary.reasons.most_common():
        print(f"  rejected {count} x {code}: {summary.examples.get(code, '')}")
    for failure in summary.failed_sources:
        print(f"  failed source {failure}")
    if summary.interrupted_by is not None:
        print(
            f"  stopped by {summary.interrupted_by.name}: the items counted above are stored; "
            "run the same import again to store the rest"
        )
        return 128 + summary.interrupted_by.value
    if summary.failed_sources:
        return EXIT_UNREADABLE
    return EXIT_OK if summary.rejected == 0 else EXIT_FAILED


def command_config(args: argparse.Namespace) -> int:
    from .config import render_config_toml

    sys.stdout.write(render_config_toml(_effective_config(args)))
    return EXIT_OK


def command_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(keep_running=args.keep_running, nodes=args.nodes)


def _daemon_json(address: str, path: str) -> Any:
    """Return the JSON document at ``path`` of the daemon whose HTTP API listens on ``address``.

    Raises:
        InputError: the daemon cannot be reached or its response is not JSON.
    """
    import httpx

    url = f"http://{address}{path}"
    try:
        response = httpx.get(url, timeout=10.0)
    except httpx.HTTPError as error:
        raise InputError(f"cannot reach the daemon at {url}: {error}; is 'pith-mirror run' listening there? (set it with --http)") from None
    if response.status_code != 200:
        raise InputError(f"{url} returned HTTP {response.status_code}; is this a pith-mirror daemon with gossip?")
    try:
        return response.json()
    except ValueError:
        raise InputError(f"{url} did not return JSON") from None


def command_status(args: argparse.Namespace) -> int:
    status = _daemon_json(args.http, "/status.json")
    if args.json:
        _write_json(status, indent=True)
        return EXIT_OK
    peers, gossip, store = status["peers"], status["gossip"], status["store"]
    profile = status["profile"]
    print(f"node {status['fingerprint']} (key {status['node_key']})")
    print(f"gossip on {status['gossip_listen']}, advertised as {status['advertised'] or 'nothing'}")
    print(f"merge profile {profile['merge_version']} with trust {profile['trust_sha256']}")
    print(f"peers: {peers['connected']} connected, {peers['handshaking']} in handshake, {peers['known']} known, {peers['banned']} banned")
    print("store: " + ", ".join(f"{value} {name}" for name, value in store.items()))
    print(
        f"items: {gossip['items_received']} received ({gossip['items_accepted']} accepted, {gossip['items_duplicate']} duplicate, "
        f"{gossip['items_rejected']} rejected), {gossip['items_sent']} sent, {gossip['ids_announced']} ids announced"
    )
    print(f"reconciliations: {gossip['reconciliations']}; bans: {gossip['bans']}; bytes sent: {gossip['bytes_sent']}")
    for result in status["recent_reconciliations"][-5:]:
        print(
            f"  session {result['session']} with {result['peer']} ({result['address']}): {result['outcome']}, "
            f"have {result['have']}, need {result['need']}, {result['bytes_sent'] + result['bytes_received']} bytes, {result['seconds']} s"
        )
    return EXIT_OK


def command_peers(args: argparse.Namespace) -> int:
    peers = _daemon_json(args.http, "/peers.json")
    if args.json:
        _write_json(peers, indent=True)
        return EXIT_OK
    print(f"connected ({len(peers['connected'])}):")
    for row in peers["connected"]:
        print(
            f"  {row['fingerprint']} {row['address']} {row['direction']}, listens on {row['listen'] or 'nothing'}, "
            f"score {row['score']}, items {row['items_received']} received and {row['items_sent']} sent"
        )
    print(f"known addresses ({len(peers['known'])}):")
    for row in peers["known"]:
        line = f"  {row['address']} from {row['source']}: {row['state']}, {row['failures']} failures"
        if row["next_attempt_in_seconds"]:
            line += f", next dial in {row['next_attempt_in_seconds']:.0f} s"
        if row["last_error"]:
            line += f"; last error: {row['last_error']}"
        print(line)
    print(f"bans ({len(peers['bans'])}):")
    for ban in peers["bans"]:
        print(f"  {ban['peer']} for {ban['seconds_left']:.0f} s more: {ban['reason']}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``pith-mirror`` command."""
    parser = argparse.ArgumentParser(
        prog="pith-mirror",
        description="Peer-to-peer mirror node for Pith Open Graph data.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages to standard error")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    verify = commands.add_parser(
        "verify",
        help="check hashes, Pith numbers, aliases, receipts and events of files",
        description="Check state and bundle documents, signed events and JSON-lines files of records or events. "
        "Prints one line per item and a summary. Exit status: 0 all passed, 1 a check failed, "
        "2 an input could not be read.",
    )
    verify.add_argument("paths", nargs="+", metavar="PATH", help="a .json document or a .jsonl file; - reads standard input")
    verify.add_argument("--trust", metavar="FILE", help="trust configuration (JSON); default: the built-in one")
    verify.set_defaults(handler=command_verify)

    merge = commands.add_parser(
        "merge",
        help="merge bundles, states and event files into state documents",
        description="Merge every input by subject and print each state document as compact JSON, "
        "in the byte order the registry serves.",
    )
    merge.add_argument("paths", nargs="+", metavar="PATH", help="bundle, state or single-event .json files, or .jsonl files of events")
    merge.add_argument("--hash-only", action="store_true", help="print only state_sha256 (with the Pith number when there are several)")
    merge.add_argument("--indent", action="store_true", help="indent the JSON output for reading")
    merge.add_argument("--trust", metavar="FILE", help="trust configuration (JSON); default: the built-in one")
    merge.set_defaults(handler=command_merge)

    keygen = commands.add_parser("keygen", help="create an Ed25519 node key file (mode 0600)")
    keygen.add_argument("--out", required=True, metavar="FILE", help="key file to create")
    keygen.add_argument("--key-id", default="node-key-1", help="key_id label written into signed events")
    keygen.add_argument("--signer-id", default="pith-mirror", help="signer_id label, such as the mirror's host name")
    keygen.add_argument("--signer-type", default="mirror", help="signer_type label (lowercase), such as mirror or author")
    keygen.add_argument("--force", action="store_true", help="replace an existing key file")
    keygen.set_defaults(handler=command_keygen)

    sign = commands.add_parser("sign", help="build and sign an event, such as a mirror hint")
    sign.add_argument("--key", required=True, metavar="FILE", help="key file made by keygen")
    sign.add_argument("--type", required=True, choices=EVENT_TYPES, help="event type")
    sign.add_argument("--subject", required=True, metavar="PITH_NUMBER", help="Pith number the event is about")
    sign.add_argument("--payload", required=True, metavar="JSON", help="payload as JSON text, or @FILE to read it from a file")
    sign.add_argument("--created-at", metavar="TIMESTAMP", help="YYYY-MM-DDTHH:MM:SSZ; default: now")
    sign.add_argument("--indent", action="store_true", help="indent the JSON output for reading")
    sign.set_defaults(handler=command_sign)

    from .config import add_config_arguments

    run = commands.add_parser(
        "run",
        help="run the mirror daemon (HTTP API on 127.0.0.1:8080 by default)",
        description="Serve the store over HTTP and gossip with peers until SIGINT or SIGTERM. Settings come from defaults, "
        "a TOML file, PITH_MIRROR_* variables and these flags, in that order (see docs/operations.md).",
    )
    add_config_arguments(run)
    run.set_defaults(handler=command_run)

    import_ = commands.add_parser(
        "import",
        help="import bundles, states, record files or HTTP mirrors into the store",
        description="Store every valid item of each source and print how many were accepted, duplicate, rejected "
        "and skipped; each document and each of its events counts as one item. A file's format follows its name: "
        ".jsonl is read as JSON lines, anything else as one JSON document. "
        "Exit status: 0 all stored, 1 some items rejected, 2 a source could not be read, the store is in use "
        "or the command line is wrong, 130 or 143 stopped by SIGINT or SIGTERM after the transaction being written.",
    )
    add_config_arguments(import_, listeners=False)
    import_.add_argument("sources", nargs="+", metavar="PATH|URL", help=".json or .jsonl file, document URL, or mirror base URL")
    import_.add_argument("--suffix", action="append", metavar="SUFFIX", help="record to fetch from a mirror URL; repeat for several")
    import_.add_argument("--suffixes-from", metavar="FILE", help="file naming records to fetch, one suffix, Pith number or record line per line")
    import_.add_argument(
        "--workers",
        type=_worker_count,
        metavar="N",
        help="processes that merge bundles while the importer checks and writes them, from a file's second batch of "
        "5,000 bundles on (default: one per CPU beyond the first, at most 4; 0 to 64)",
    )
    import_.set_defaults(handler=command_import)

    config = commands.add_parser("config", help="print the effective configuration as TOML")
    add_config_arguments(config)
    config.set_defaults(handler=command_config)

    demo = commands.add_parser(
        "demo",
        help="verify, merge and serve the published Pith records shipped with the package",
        description="Verify and merge the real published records, then serve them from a mirror daemon "
        "on a free loopback port and check the state it returns over HTTP. Exit status 0 when every step "
        "gives the expected result.",
    )
    demo.add_argument("--keep-running", action="store_true", help="leave the demo federation serving until Ctrl-C")
    demo.add_argument(
        "--nodes", type=int, choices=range(3, 9), default=3, metavar="N",
        help="number of daemons in the local federation, 3 to 8 (default: 3)",
    )
    demo.set_defaults(handler=command_demo)

    for name, handler, summary in (
        ("status", command_status, "show a running daemon's node key, profile, store counts and gossip counters"),
        ("peers", command_peers, "show a running daemon's connected peers, peer table, scores and bans"),
    ):
        client = commands.add_parser(name, help=summary, description=f"{summary[0].upper()}{summary[1:]}, read from its HTTP API.")
        client.add_argument("--http", default="127.0.0.1:8080", metavar="HOST:PORT", help="the daemon's HTTP API address (default: 127.0.0.1:8080)")
        client.add_argument("--json", action="store_true", help="print the daemon's JSON document instead of a summary")
        client.set_defaults(handler=handler)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.handler(args)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_UNREADABLE
    except BrokenPipeError:
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
