"""`omniserve serve | demo | models ... | keys ...`"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from typing import TYPE_CHECKING

from server.settings import Settings
from server.settings_loading import SettingsError, load_settings

if TYPE_CHECKING:
    from server.keystore import KeyStore


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _open_keystore(settings: Settings) -> KeyStore:
    """The store settings name (``store_url``): the server's and the CLI's are the same one."""
    from server.keystore import open_keystore

    return open_keystore(
        settings.store_url,
        settings.data_path,
        timeout_s=settings.store_timeout_s,
        retry_after_s=settings.store_retry_after_s,
    )


def _keys_exist(settings: Settings) -> bool:
    if settings.auth.static_keys:
        return True
    store = _open_keystore(settings)
    try:
        return store.has_active_keys()
    finally:
        store.close()


def cmd_serve(settings: Settings, models: list[str], kinds: list[str]) -> int:
    from engines.registry import CatalogError
    from engines.sizing import FootprintTooLarge
    from server.app import VERSION, build_components, create_app
    from server.data_lock import DataDirLocked
    from server.http_server import DrainingServer, listening_sockets, uvicorn_config
    from server.keystore import StoreUnavailable
    from server.startup_catalog import CatalogStartError, startup_catalog

    try:
        keys_exist = settings.is_loopback or settings.auth.allow_open or _keys_exist(settings)
    except StoreUnavailable:
        print("the key store (store_url) cannot be reached: start it first", file=sys.stderr)
        return 2
    if not keys_exist:
        print(
            f"refusing to serve on {settings.host} without API keys: create one with "
            "`omniserve keys create NAME`, or set auth.allow_open = true to serve openly",
            file=sys.stderr,
        )
        return 2
    from server.telemetry.logs import configure_logging
    from server.telemetry.tracing import configure_tracing

    configure_logging(settings.log_level, settings.log_format)
    # Hub ids are downloaded (or, with HF_HUB_OFFLINE=1, found in the cache) and every --model is
    # classified before the data lock, the port or any engine: a catalog that cannot be served
    # stops here with nothing started.
    try:
        catalog = startup_catalog(settings, models, kinds)
    except CatalogStartError as exc:
        print(exc, file=sys.stderr)
        return 2
    tracer_provider = configure_tracing(settings.telemetry, os.environ, version=VERSION)
    try:
        components = build_components(settings, catalog)
    except (FootprintTooLarge, CatalogError) as exc:  # CatalogError: what an engine refused in its entry
        print(exc, file=sys.stderr)
        return 2
    try:
        components.data_lock.acquire()
    except DataDirLocked as exc:
        print(exc, file=sys.stderr)
        return 2
    config = uvicorn_config(
        create_app(components, tracer_provider=tracer_provider),
        settings,
        loop="uvloop",
        log_level=settings.log_level,
        access_log=False,  # the app writes its own, with request and trace ids
        log_config=None,  # uvicorn's records go through the handler configure_logging set
        timeout_graceful_shutdown=30,
        lifespan="on",
    )
    try:
        DrainingServer(config, components.readiness, on_drain=components.begin_drain).run(
            sockets=listening_sockets(config, settings)
        )
    finally:
        if tracer_provider is not None:
            tracer_provider.shutdown()  # exports the spans still batched
    return 0


def cmd_demo(settings: Settings, force: bool) -> int:
    from engines.audio.demo import build_audio_demo_models
    from engines.demo import build_demo_models
    from engines.image.demo import build_image_demo_models
    from engines.video.demo import build_video_demo_models
    from engines.vision_demo import build_vision_demo_models

    started = time.monotonic()
    root = settings.data_path / "models" / "demo"
    specs = [
        *build_demo_models(root, force=force),
        *build_image_demo_models(root, force=force),
        *build_audio_demo_models(root, force=force),
        *build_video_demo_models(root, force=force),
        *build_vision_demo_models(root, force=force),
    ]
    for spec in specs:
        print(f"{spec.name:<14} {spec.kind.value:<10} {spec.path}")
    print(f"demo catalog ready in {time.monotonic() - started:.1f} s")
    return 0


def cmd_keys(settings: Settings, args: argparse.Namespace) -> int:
    from server.keystore import KeyNotFound, StoreUnavailable

    store = _open_keystore(settings)
    try:
        if args.keys_command == "create":
            info, key = store.create(args.name, admin=args.admin)
            role = "admin" if info.admin else "customer"
            print(f"id:  {info.id}\nkey: {key}\nrole: {role}\n(the key is shown once; only its hash is stored)")
        elif args.keys_command == "list":
            for info in store.list():
                state = "revoked" if info.revoked_at else "active"
                created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(info.created_at))
                account = store.account(info.id)
                if account is not None and not account.subscription_active:
                    state = "inactive"
                balance = "unmetered" if account is None or account.credits is None else f"{account.credits:g}"
                role = "admin" if info.admin else "customer"
                print(f"{info.id}  {state:<8} {role:<8} {created}  {balance:>10}  {info.name}")
        elif args.keys_command == "revoke":
            store.revoke(args.id)
            print(f"revoked {args.id}")
        elif args.keys_command == "rotate":
            key = store.rotate(args.id)
            print(f"id:  {args.id}\nkey: {key}\n(the old key no longer works)")
        else:
            _account_command(store, args)
    except KeyNotFound:
        print(f"no active key with id {args.id}", file=sys.stderr)
        return 1
    except StoreUnavailable:
        print("the key store (store_url) cannot be reached", file=sys.stderr)
        return 1
    finally:
        store.close()
    return 0


def _account_command(store: KeyStore, args: argparse.Namespace) -> None:
    """``keys credit | limits | deactivate | activate``: a key's account."""
    if args.keys_command == "credit":
        if args.unmetered:
            store.set_credits(args.id, None)
            print(f"{args.id}: unmetered")
        elif args.set is not None:
            store.set_credits(args.id, args.set)
            print(f"{args.id}: {args.set:g} credits")
        else:
            print(f"{args.id}: {store.add_credits(args.id, args.add or 0.0):g} credits")
    elif args.keys_command == "limits":
        store.set_limits(args.id, args.hour, args.day)
        print(f"{args.id}: {_limit(args.hour)} per hour, {_limit(args.day)} per day")
    else:
        store.set_subscription(args.id, args.keys_command == "activate")
        print(f"{args.id}: {args.keys_command}d")


def _limit(value: int | None) -> str:
    return "default" if value is None else "unlimited" if value == 0 else str(value)


def _config_option() -> argparse.ArgumentParser:
    """``--config``, accepted before the command and after any (sub)command. Its default is
    SUPPRESS, so a command that does not repeat it keeps the value given earlier."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--config",
        default=argparse.SUPPRESS,
        help="TOML settings file (default: $OMNISERVE_CONFIG, else built-in defaults)",
    )
    return parent


def build_parser() -> argparse.ArgumentParser:
    config = _config_option()
    parser = argparse.ArgumentParser(
        prog="omniserve", description="Serve every kind of model behind familiar APIs.", parents=[config]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve", parents=[config], help="run the server (the demo catalog when no models are configured or named)"
    )
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="[NAME=]ID_OR_PATH",
        help="serve this model (repeatable): a local folder or a Hugging Face id (org/name[@revision]), under "
        "NAME, else under the argument as given; its kind is read from its files. Added to the configured "
        "models; the demo catalog is not served",
    )
    serve.add_argument(
        "--model-kind",
        action="append",
        default=[],
        metavar="NAME=KIND",
        help="the kind of the --model served as NAME, where its files leave it open (e.g. embedding)",
    )
    demo = commands.add_parser("demo", parents=[config], help="build the demo models under the data dir")
    demo.add_argument("--force", action="store_true", help="rebuild even if present")
    models = commands.add_parser("models", parents=[config], help="models in the catalog and the Hugging Face cache")
    model_commands = models.add_subparsers(dest="models_command", required=True)
    model_commands.add_parser(
        "list", parents=[config], help="the configured models, and the models in the Hugging Face cache with sizes"
    )
    model_commands.add_parser(
        "pull", parents=[config], help="download a model into the Hugging Face cache (not with HF_HUB_OFFLINE=1)"
    ).add_argument("id", metavar="ORG/NAME[@REVISION]")
    keys = commands.add_parser("keys", parents=[config], help="manage API keys")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    create = key_commands.add_parser("create", parents=[config], help="create a key and print it once")
    create.add_argument("name")
    create.add_argument("--admin", action="store_true", help="the key may also call the operator routes (/admin)")
    key_commands.add_parser("list", parents=[config], help="list keys (never the keys themselves)")
    key_commands.add_parser("revoke", parents=[config], help="revoke a key").add_argument("id")
    key_commands.add_parser("rotate", parents=[config], help="replace a key's secret").add_argument("id")
    credit = key_commands.add_parser("credit", parents=[config], help="add to or set a key's credit balance")
    credit.add_argument("id")
    amount = credit.add_mutually_exclusive_group(required=True)
    amount.add_argument("--add", type=float, help="credits to add (negative to take away)")
    amount.add_argument("--set", type=float, help="the new balance")
    amount.add_argument("--unmetered", action="store_true", help="no balance: never charged")
    limits = key_commands.add_parser(
        "limits", parents=[config], help="a key's request windows (unset: the settings' defaults)"
    )
    limits.add_argument("id")
    limits.add_argument("--hour", type=int, help="requests per hour (0: no limit)")
    limits.add_argument("--day", type=int, help="requests per day (0: no limit)")
    key_commands.add_parser("deactivate", parents=[config], help="suspend a key's subscription (403)").add_argument(
        "id"
    )
    key_commands.add_parser("activate", parents=[config], help="restore a key's subscription").add_argument("id")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(getattr(args, "config", None))
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.command == "serve":
        if args.host:
            settings.host = args.host
        if args.port:
            settings.port = args.port
    _setup_logging(settings.log_level)
    if args.command == "serve":
        return cmd_serve(settings, args.model, args.model_kind)
    if args.command == "demo":
        return cmd_demo(settings, args.force)
    if args.command == "models":
        from server.model_commands import cmd_models_list, cmd_models_pull

        return cmd_models_list(settings) if args.models_command == "list" else cmd_models_pull(args.id)
    return cmd_keys(settings, args)


if __name__ == "__main__":
    raise SystemExit(main())
