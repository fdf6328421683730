"""``pith-mirror run``: the mirror daemon.

The daemon opens the store, loads (or creates) the node key, starts the
gossip node (``node.gossip``), serves the HTTP API with Hypercorn's trio
worker, expires pending events once an hour, and stops cleanly on SIGINT or
SIGTERM: gossip sends ``bye`` to its peers, Hypercorn stops accepting
connections, finishes requests in flight for up to
``SHUTDOWN_GRACE_SECONDS``, and then the store is closed. Every
acknowledged write was committed before its answer was sent, so a SIGKILL
loses nothing that a client received an acknowledgement for.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import AsyncIterator, Callable
from functools import partial
from pathlib import Path

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

from protocol import InvalidInput, TrustConfig, default_trust, read_document

from .config import Config
from .gossip import GossipNode, GossipRoutes, GossipSettings, load_node_key
from .http_api import MirrorApp
from .keyfile import KeyFileError
from .service import MirrorService
from .store import Store, StoreError

__all__ = ["DaemonError", "load_trust", "run_daemon", "SHUTDOWN_GRACE_SECONDS"]

logger = logging.getLogger("pith_mirror.daemon")

SHUTDOWN_GRACE_SECONDS = 5.0
PENDING_EXPIRY_INTERVAL_SECONDS = 3600.0


class DaemonError(Exception):
    """The daemon cannot start: bad trust file, unusable store or address in use."""


def load_trust(path: Path | None) -> TrustConfig:
    """Return the trust configuration in ``path``, or the built-in one when None.

    Raises:
        DaemonError: the file cannot be read or is not a valid trust configuration.
    """
    if path is None:
        return default_trust()
    try:
        return TrustConfig.from_document(read_document(path.read_bytes()))
    except OSError as error:
        raise DaemonError(f"cannot read trust file {path}: {error.strerror}") from None
    except InvalidInput as error:
        raise DaemonError(f"trust file {path} is invalid: {error}") from None


def public_url_for(config: Config, bound: list[str]) -> str:
    """Return the URL to advertise: the configured one, else the first bound address."""
    if config.public_url:
        return config.public_url
    return bound[0] if bound else f"http://{config.http_listen}"


def _hypercorn_config(config: Config) -> HypercornConfig:
    settings = HypercornConfig()
    settings.bind = [config.http_listen]
    settings.accesslog = None
    settings.errorlog = logging.getLogger("pith_mirror.http.server")
    settings.graceful_timeout = SHUTDOWN_GRACE_SECONDS
    settings.keep_alive_timeout = 30
    # Hypercorn's own cap; the API applies max_request_body_bytes itself and
    # returns 413 with a JSON body, so this only stops a body far beyond it.
    settings.h11_max_incomplete_size = 64 * 1024
    return settings


async def _watch_signals(signals: AsyncIterator[int], shutdown: trio.Event) -> None:
    async for number in signals:
        logger.info("received %s, shutting down", signal.Signals(number).name)
        shutdown.set()
        return


def _os_error_in(error: BaseException) -> OSError | None:
    """Return the first OSError in ``error`` or in its nested exception groups, or None."""
    if isinstance(error, OSError):
        return error
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            found = _os_error_in(inner)
            if found is not None:
                return found
    return None


async def _expire_pending(service: MirrorService) -> None:
    while True:
        await trio.sleep(PENDING_EXPIRY_INTERVAL_SECONDS)
        try:
            expired = await trio.to_thread.run_sync(service.store.expire_pending, time.time())
        except StoreError:
            logger.exception("expiring pending events failed; retrying in an hour")
            continue
        if expired:
            logger.info("expired %d pending events whose record never arrived", expired)


async def run_daemon(
    config: Config,
    *,
    shutdown: trio.Event | None = None,
    on_ready: Callable[[MirrorService, list[str]], None] | None = None,
    gossip_settings: GossipSettings | None = None,
    prepare_gossip: Callable[[GossipNode], None] | None = None,
) -> None:
    """Run the mirror until SIGINT, SIGTERM or ``shutdown`` is set.

    Args:
        config: the effective configuration.
        shutdown: an event that stops the daemon when set (for tests and the
            local federation); signals stop it too.
        on_ready: called with the service and the bound URLs once the HTTP
            server accepts connections. ``service.gossip.listen_address``
            is then the bound gossip address.
        gossip_settings: timings and limits of gossip; the defaults when None.
        prepare_gossip: called with the gossip node before it starts, for
            tests that replace its ``connect`` or ``resolve``.

    Raises:
        DaemonError: the daemon could not start.
    """
    # A trio.Event cannot be tested for truth, so compare with None.
    if shutdown is None:
        shutdown = trio.Event()
    # Signals are caught from here on, so that one arriving while the store
    # opens or the server binds still stops the daemon cleanly instead of
    # killing it with the default action.
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        trust = load_trust(config.trust_file)
        logger.info("opening store in %s (merge profile trust %s)", config.data_dir, trust.digest)
        try:
            store = await trio.to_thread.run_sync(partial(Store, config.data_dir, trust))
        except StoreError as error:
            raise DaemonError(str(error)) from None

        try:
            try:
                signing_key = await trio.to_thread.run_sync(load_node_key, config.data_dir)
            except KeyFileError as error:
                raise DaemonError(f"cannot use the node key: {error}") from None
            service = MirrorService(store, trust, config.public_url or f"http://{config.http_listen}")
            gossip = GossipNode(service, config, signing_key, settings=gossip_settings)
            service.gossip = gossip
            service.stored_listeners.append(gossip.stored_locally)
            if prepare_gossip is not None:
                prepare_gossip(gossip)
            await _serve(config, service, signals, shutdown, on_ready, gossip)
        finally:
            await trio.to_thread.run_sync(store.close)
            logger.info("store closed; stopped")


async def _serve(
    config: Config,
    service: MirrorService,
    signals: AsyncIterator[int],
    shutdown: trio.Event,
    on_ready: Callable[[MirrorService, list[str]], None] | None,
    gossip: GossipNode,
) -> None:
    app = GossipRoutes(MirrorApp(service, config.max_request_body_bytes), service, gossip)
    listen_error: OSError | None = None
    failed_listen, flag = config.http_listen, "--http"
    async with trio.open_nursery() as nursery:
        try:
            await nursery.start(gossip.run)
        except (OSError, BaseExceptionGroup) as error:
            # The listener binds inside the gossip node's nursery, so a bind
            # failure may arrive wrapped in an exception group.
            listen_error = _os_error_in(error)
            if listen_error is None:
                raise
            failed_listen, flag = config.gossip_listen, "--gossip"
        else:
            listen_error = await _serve_http(nursery, app, config, service, signals, shutdown, on_ready, gossip)
            if listen_error is not None:
                nursery.cancel_scope.cancel()
    # Raised outside the nursery, so that callers get a DaemonError and not
    # an exception group.
    if listen_error is not None:
        _raise_listen_error(listen_error, failed_listen, flag)


async def _serve_http(
    nursery: trio.Nursery,
    app: GossipRoutes,
    config: Config,
    service: MirrorService,
    signals: AsyncIterator[int],
    shutdown: trio.Event,
    on_ready: Callable[[MirrorService, list[str]], None] | None,
    gossip: GossipNode,
) -> OSError | None:
    """Serve HTTP until ``shutdown``; return the bind error instead when the address is unusable."""
    try:
        bound = await nursery.start(partial(serve, app, _hypercorn_config(config), shutdown_trigger=shutdown.wait))
    except (OSError, BaseExceptionGroup) as error:
        # Hypercorn binds inside nested nurseries, so a bind failure
        # arrives wrapped in exception groups.
        listen_error = _os_error_in(error)
        if listen_error is None:
            raise
        return listen_error

    service.public_url = public_url_for(config, bound).rstrip("/")
    logger.info("serving HTTP on %s; advertised as %s", ", ".join(bound), service.public_url)
    if on_ready is not None:
        on_ready(service, bound)

    async with trio.open_nursery() as background:
        background.start_soon(_watch_signals, signals, shutdown)
        background.start_soon(_expire_pending, service)
        await shutdown.wait()
        background.cancel_scope.cancel()
    await gossip.stop()
    logger.info("stopping: no new connections; finishing requests in flight")
    # Hypercorn ends serve() itself after its graceful timeout; this
    # deadline only guards against a request that ignores cancellation.
    nursery.cancel_scope.deadline = trio.current_time() + SHUTDOWN_GRACE_SECONDS + 1
    return None


def _raise_listen_error(error: OSError, address: str, flag: str) -> None:
    raise DaemonError(
        f"cannot listen on {address}: {error.strerror or error}; "
        f"stop the process using that address or choose another with {flag}"
    )
