"""Users in Redis: one hash per user, plus the `flask users ...` commands.

    flask --app app users create NAME [--fullname "..."] [--admin]
                                      [--publish PATTERN ...] [--subscribe PATTERN ...]
    flask --app app users list | delete NAME | set-password NAME
    flask --app app users set-access NAME [--admin | --no-admin]
                                      [--publish PATTERN ...] [--subscribe PATTERN ...]

Channel permissions are fnmatch patterns (`chat.*`, `private-jack.*`); admins
may publish and subscribe everywhere.

Credential epoch: each user carries a random `epoch`, copied into every token
and session it is issued. Changing the password, the roles or the permissions
draws a new one, and deleting the user drops it (a re-created name draws a
fresh random one), so every token and session issued before stops working at
once: `core.security.current_user` compares them on every request.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, NoReturn, cast

import click
from flask import current_app
from flask.cli import AppGroup

from core import passwords
from core.config import MIN_PASSWORD_LENGTH
from core.stream_log import StreamLog

if TYPE_CHECKING:
    import logging

    import redis

    from core.keys import Keys

USERNAME = re.compile(r"[a-z][a-z0-9_.-]{0,31}\Z")
USERNAME_RULE = "1-32 of a-z 0-9 _ . -, starting with a letter"
MIN_PASSWORD = MIN_PASSWORD_LENGTH


class UserError(ValueError):
    """Bad input for a user operation; the message is safe to show."""


@dataclass
class User:
    name: str
    fullname: str = ""
    roles: list[str] = field(default_factory=list)
    publish: list[str] = field(default_factory=list)
    subscribe: list[str] = field(default_factory=list)
    secrets: dict[str, str] = field(default_factory=dict, repr=False)
    epoch: str = field(default="", repr=False)

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles

    def may(self, action: str, channel: str) -> bool:
        """May this user `publish` to / `subscribe` to `channel`?"""
        if self.is_admin:
            return True
        patterns = self.publish if action == "publish" else self.subscribe
        return any(fnmatchcase(channel, pattern) for pattern in patterns)

    def public(self) -> dict[str, str | list[str]]:
        return {"name": self.name, "fullname": self.fullname, "roles": self.roles}


def _split(value: str | None) -> list[str]:
    return [item for item in (value or "").split(",") if item]


def check_password_rules(password: str) -> None:
    if not password.strip():
        raise UserError("a password cannot be only spaces")
    if len(password) < MIN_PASSWORD:
        raise UserError(f"passwords have at least {MIN_PASSWORD} characters")
    if len(password.encode("utf-8")) > passwords.MAX_PASSWORD_BYTES:
        raise UserError(f"passwords have at most {passwords.MAX_PASSWORD_BYTES} bytes")


def new_epoch() -> str:
    return secrets.token_hex(16)


def _epoch(data: Mapping[str, str]) -> str:
    """The stored epoch. Users created before epochs existed have none: theirs
    is derived from the password hash (salted, so it changes with the password),
    which needs no write on a read."""
    if data.get("epoch"):
        return data["epoch"]
    return "legacy-" + hashlib.sha256(data.get("password", "").encode()).hexdigest()[:32]


# The hub channel told the name of every account whose credentials changed:
# each worker ends the streams opened with them (core/revocation.py).
ACCOUNTS_CHANNEL = "accounts:changed"


class UserStore:
    def __init__(self, redis_client: redis.Redis, prefix: str) -> None:
        self.redis_client = redis_client
        self._log = StreamLog(redis_client, prefix)
        self.keys: Keys = self._log.keys
        self._update_existing = self._log.scripts["users_update_existing"]

    def get(self, name: object) -> User | None:
        if not isinstance(name, str) or not USERNAME.match(name):
            return None
        # str replies: the app's client decodes them (decode_responses=True)
        data = cast("dict[str, str]", self.redis_client.hgetall(self.keys.user(name)))
        if not data:
            return None
        return User(
            name=name,
            fullname=data.get("fullname", ""),
            roles=_split(data.get("roles")),
            publish=_split(data.get("publish")),
            subscribe=_split(data.get("subscribe")),
            secrets={k: v for k, v in data.items() if k == "password" or k.startswith("scram_")},
            epoch=_epoch(data),
        )

    def names(self) -> list[str]:
        return sorted(cast("set[str]", self.redis_client.smembers(self.keys.users())))

    def create(
        self,
        name: str,
        password: str,
        fullname: str = "",
        admin: bool = False,
        publish: Iterable[str] = (),
        subscribe: Iterable[str] = (),
    ) -> User | None:
        if not USERNAME.match(name or ""):
            raise UserError(f"invalid user name: {USERNAME_RULE}")
        check_password_rules(password)
        fields = {
            "fullname": fullname,
            "roles": "admin" if admin else "user",
            "publish": ",".join(publish),
            "subscribe": ",".join(subscribe),
            "epoch": new_epoch(),  # random: a re-created name revives no old credential
            **self._secrets(password),
        }
        # HSETNX on a marker field: two creators of the same name cannot both win.
        if not self.redis_client.hsetnx(self.keys.user(name), "name", name):
            raise UserError(f"user {name!r} already exists")
        # (redis-py types `mapping` as Mapping[bytes | str | int | ..., ...], whose key
        # type is invariant: a dict[str, str] does not match it, though it works)
        self.redis_client.hset(self.keys.user(name), mapping=fields)  # type: ignore[arg-type]
        self.redis_client.sadd(self.keys.users(), name)
        return self.get(name)

    def set_password(self, name: str, password: str) -> None:
        """New password; every token and session of the user ends (new epoch)."""
        check_password_rules(password)
        self._update(name, self._secrets(password))

    def set_access(
        self,
        name: str,
        admin: bool | None = None,
        publish: Iterable[str] | None = None,
        subscribe: Iterable[str] | None = None,
    ) -> User | None:
        """Change what the user may do (None: unchanged); every token and
        session of the user ends (new epoch), so none keeps the old rights."""
        fields: dict[str, str] = {}
        if admin is not None:
            fields["roles"] = "admin" if admin else "user"
        if publish is not None:
            fields["publish"] = ",".join(publish)
        if subscribe is not None:
            fields["subscribe"] = ",".join(subscribe)
        self._update(name, fields)
        return self.get(name)

    def _changed(self, name: str) -> None:
        """Tell every worker: streams opened with `name`'s credentials end."""
        self._log.publish(ACCOUNTS_CHANNEL, name)

    def _update(self, name: str, fields: Mapping[str, str]) -> None:
        """Set `fields` and a new epoch in one step, on an existing user only."""
        args = [item for pair in {**fields, "epoch": new_epoch()}.items() for item in pair]
        if not USERNAME.match(name or "") or not self._update_existing(
            keys=[self.keys.user(name)], args=args
        ):
            raise UserError(f"no user {name!r}")
        self._changed(name)

    def delete(self, name: str) -> None:
        removed = self.redis_client.delete(self.keys.user(name))
        self.redis_client.srem(self.keys.users(), name)
        if not removed:
            raise UserError(f"no user {name!r}")
        self._changed(name)

    @staticmethod
    def _secrets(password: str) -> dict[str, str]:
        return {
            "password": passwords.hash_password(password),
            **passwords.scram_credentials(password),
        }


def seed_demo_users(store: UserStore, admin_password: str | None, log: logging.Logger) -> None:
    """DEMO_USERS=1: jack/beanstalk and an admin, created once (one worker wins;
    the others wait for it, so no worker serves before the users exist)."""
    marker = store.keys.demo_users_seeded()
    if not store.redis_client.set(marker, "seeding", nx=True, ex=60):
        deadline = time.monotonic() + 60
        while store.redis_client.get(marker) == "seeding" and time.monotonic() < deadline:
            time.sleep(0.1)
        return
    if store.get("jack") is None:
        store.create(
            "jack",
            "beanstalk",
            fullname="Jack Spratt",
            publish=["chat.*", "private-jack.*"],
            subscribe=["private-jack.*"],
        )
    if store.get("admin") is None:
        password = admin_password or secrets.token_urlsafe(12)
        try:
            store.create("admin", password, fullname="Administrator", admin=True)
        except UserError:
            store.redis_client.delete(marker)  # nobody waits 60 s for a seeding that failed
            raise
        if admin_password:
            log.warning("Demo users: jack/beanstalk, admin/(DEMO_ADMIN_PASSWORD)")
        else:
            log.warning(
                "Demo users: jack/beanstalk, admin/%s (random; set "
                "DEMO_ADMIN_PASSWORD to choose it)",
                password,
            )
    store.redis_client.set(marker, "done")


# -- flask users ... -------------------------------------------------------------------

users_cli = AppGroup("users", help="Manage users (stored in Redis).")


def _store() -> UserStore:
    return current_app.extensions["users"]


def _fail(exc: object) -> NoReturn:
    raise click.ClickException(str(exc))


@users_cli.command("create")
@click.argument("name")
@click.option("--fullname", default="", help="Full name shown on welcome pages.")
@click.option("--admin", is_flag=True, help="May publish/subscribe everywhere and see admin pages.")
@click.option("--publish", multiple=True, metavar="PATTERN", help="Channels it may publish to.")
@click.option(
    "--subscribe", multiple=True, metavar="PATTERN", help="Private channels it may subscribe to."
)
@click.password_option(help="Prompted for (twice) when not given.")
def create_user(
    name: str,
    fullname: str,
    admin: bool,
    publish: tuple[str, ...],
    subscribe: tuple[str, ...],
    password: str,
) -> None:
    """Create user NAME."""
    try:
        user = _store().create(name, password, fullname, admin, publish, subscribe)
    except UserError as exc:
        _fail(exc)
    if user is None:  # deleted again already
        _fail(f"no user {name!r}")
    click.echo(f"created {user.name} ({', '.join(user.roles)})")


@users_cli.command("list")
def list_users() -> None:
    """List users."""
    for name in _store().names():
        user = _store().get(name)
        if user:
            click.echo(f"{user.name}\t{','.join(user.roles)}\t{user.fullname}")


@users_cli.command("delete")
@click.argument("name")
def delete_user(name: str) -> None:
    """Delete user NAME."""
    try:
        _store().delete(name)
    except UserError as exc:
        _fail(exc)
    click.echo(f"deleted {name}; its sessions and tokens are ended")


@users_cli.command("set-password")
@click.argument("name")
@click.password_option()
def set_password(name: str, password: str) -> None:
    """Set user NAME's password."""
    try:
        _store().set_password(name, password)
    except UserError as exc:
        _fail(exc)
    click.echo(f"password of {name} changed; its sessions and tokens are ended")


@users_cli.command("set-access")
@click.argument("name")
@click.option("--admin/--no-admin", default=None, help="Make or unmake an administrator.")
@click.option(
    "--publish",
    multiple=True,
    metavar="PATTERN",
    help="Channels it may publish to (replaces the list).",
)
@click.option(
    "--subscribe",
    multiple=True,
    metavar="PATTERN",
    help="Private channels it may subscribe to (replaces the list).",
)
@click.option("--no-publish", is_flag=True, help="May publish nowhere.")
@click.option("--no-subscribe", is_flag=True, help="May subscribe to no private channel.")
def set_access(
    name: str,
    admin: bool | None,
    publish: Sequence[str] | None,
    subscribe: Sequence[str] | None,
    no_publish: bool,
    no_subscribe: bool,
) -> None:
    """Change user NAME's role and channel permissions (ends its sessions and tokens)."""
    publish = [] if no_publish else (publish or None)
    subscribe = [] if no_subscribe else (subscribe or None)
    if admin is None and publish is None and subscribe is None:
        _fail(
            "nothing to change: give --admin/--no-admin, --publish, --subscribe, "
            "--no-publish or --no-subscribe"
        )
    try:
        user = _store().set_access(name, admin, publish, subscribe)
    except UserError as exc:
        _fail(exc)
    if user is None:  # deleted meanwhile
        _fail(f"no user {name!r}")
    click.echo(
        f"access of {user.name} changed ({', '.join(user.roles)}); "
        "its sessions and tokens are ended"
    )
