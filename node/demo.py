"""``pith-mirror demo``: the whole pipeline on the real published records shipped with the package.

Steps: verify every published record line and the published state, merge
the state's own events and compare the hash with the published one, sign a
mirror hint with a throwaway key and merge it in, and show that a forged
copy of that hint is recorded as invalid. Then start a real mirror daemon on
a free loopback port with a temporary store, import the published data, and
fetch the state over HTTP, which must be the published file byte for byte.
"""

from __future__ import annotations

import copy
import tempfile
import time
from functools import partial
from importlib import resources
from pathlib import Path

import httpx
import trio
from rich.console import Console

from protocol import SigningKey, build_event, default_trust, merge, read_document, state_input

from .offline import read_items, verify_item

__all__ = ["FIXTURE_STATE_SHA256", "fixture_path", "run_demo"]

FIXTURE_SUBJECT_SUFFIX = "JXMVLSVZ7B4A7F3JLM5PIYYILY"
FIXTURE_STATE_SHA256 = "639b10615b1eed11474946d569750a736e62592919f04e71d6102b4d3b2b43ce"


def fixture_path(name: str) -> Path:
    """Return the path of a published Pith file shipped in ``node/data/pith``."""
    return Path(str(resources.files("node").joinpath("data", "pith", name)))


def run_demo(console: Console | None = None, keep_running: bool = False) -> int:
    """Run the demonstration; return 0 if every step gave the expected result.

    With ``keep_running`` the daemon of the last step keeps serving until
    SIGINT or SIGTERM.
    """
    console = console or Console(soft_wrap=True)
    trust = default_trust()
    ok = True

    records = fixture_path("records.jsonl")
    state_file = fixture_path(f"state-{FIXTURE_SUBJECT_SUFFIX}.json")
    results = [verify_item(item, trust) for path in (records, state_file) for item in read_items(str(path))]
    passed = sum(1 for good, _ in results if good)
    console.print(f"[bold]1.[/] verified {len(results)} published items: {passed} passed, {len(results) - passed} failed")
    ok &= passed == len(results)

    published = read_document(state_file.read_bytes())
    merge_input = state_input(published)
    state = merge(merge_input.record, merge_input.aliases, merge_input.events, trust)
    same = state["state_sha256"] == FIXTURE_STATE_SHA256
    console.print(f"[bold]2.[/] merged the published events of {state['pith_number']}")
    console.print(f"   state_sha256 {state['state_sha256']} {'[green]matches[/]' if same else '[red]DIFFERS from[/]'} the registry")
    ok &= same

    key = SigningKey.generate()
    hint = build_event(
        key,
        event_type="mirror_hint",
        subject=state["pith_number"],
        payload={"slot": "primary", "url": "https://mirror.example.org/pith/"},
        created_at="2026-06-01T00:00:00Z",
        key_id="demo-key",
        signer_id="mirror.example.org",
        signer_type="mirror",
    )
    with_hint = merge(merge_input.record, merge_input.aliases, [*merge_input.events, hint], trust)
    console.print(f"[bold]3.[/] signed a mirror hint with a new key {key.fingerprint} and merged it")
    console.print(f"   state_sha256 {with_hint['state_sha256']}, mirror_hints: {len(with_hint['current']['mirror_hints'])}")
    ok &= len(with_hint["current"]["mirror_hints"]) == 1

    forged = copy.deepcopy(hint)
    forged["payload"]["url"] = "https://attacker.example.net/pith/"
    with_forgery = merge(merge_input.record, merge_input.aliases, [*merge_input.events, hint, forged], trust)
    reasons = [entry["reason"] for entry in with_forgery["invalid_events"]]
    console.print(f"[bold]4.[/] a copy of the hint with another URL and the old signature is invalid: {reasons}")
    ok &= reasons == ["event_id_mismatch"] and with_forgery["current"]["mirror_hints"] == with_hint["current"]["mirror_hints"]

    ok &= trio.run(_serve_published, console, state_file.read_bytes(), keep_running)
    console.print("[green]demo passed[/]" if ok else "[red]demo FAILED[/]")
    return 0 if ok else 1


async def _serve_published(console: Console, published: bytes, keep_running: bool) -> bool:
    """Serve the published data from a real daemon and check what HTTP returns."""
    from .config import load_config
    from .daemon import run_daemon
    from .importer import import_sources

    with tempfile.TemporaryDirectory(prefix="pith-mirror-demo-") as data_dir:
        config = load_config(
            {"data_dir": data_dir, "http_listen": "127.0.0.1:0", "gossip_listen": "127.0.0.1:0", "log_level": "WARNING"},
            {},
            None,
        )
        sources = [str(fixture_path(f"state-{FIXTURE_SUBJECT_SUFFIX}.json")), str(fixture_path("records.jsonl"))]
        summary = await import_sources(config, sources, [], show_progress=False)
        console.print(
            f"[bold]5.[/] imported the published files into a new store: {summary.accepted} accepted, "
            f"{summary.rejected} rejected, {summary.skipped} record lines without a record skipped"
        )

        bound: list[str] = []
        ready = trio.Event()
        shutdown = trio.Event()

        def on_ready(service: object, urls: list[str]) -> None:
            bound.extend(urls)
            ready.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(run_daemon, config, shutdown=shutdown, on_ready=on_ready))
            with trio.fail_after(30):
                await ready.wait()
            url = f"{bound[0]}/pith/{FIXTURE_SUBJECT_SUFFIX}/state.json"
            async with httpx.AsyncClient(timeout=10) as client:
                started = time.perf_counter()
                response = await client.get(url)
                elapsed_ms = (time.perf_counter() - started) * 1000
            same = response.status_code == 200 and response.content == published
            console.print(f"[bold]6.[/] started a mirror daemon and fetched {url}")
            console.print(
                f"   HTTP {response.status_code}, ETag {response.headers.get('etag')}, {len(response.content)} bytes in "
                f"{elapsed_ms:.1f} ms: {'[green]the published file byte for byte[/]' if same else '[red]NOT the published file[/]'}"
            )
            if keep_running and same:
                console.print(f"   serving at {bound[0]} until Ctrl-C (data in {data_dir}, deleted on exit)")
                await shutdown.wait()
            else:
                shutdown.set()
    return same
