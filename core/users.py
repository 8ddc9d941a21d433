"""Users in Redis: one hash per user, plus the `flask users ...` commands.

    flask --app app users create NAME [--fullname "..."] [--admin]
                                      [--publish PATTERN ...] [--subscribe PATTERN ...]
    flask --app app users list | delete NAME | set-password NAME

Channel permissions are fnmatch patterns (`chat.*`, `private-jack.*`); admins
may publish and subscribe everywhere.
"""

import re
import secrets
import time
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

import click
from flask import current_app
from flask.cli import AppGroup

from core import passwords
from core.config import MIN_PASSWORD_LENGTH

USERNAME = re.compile(r"[a-z][a-z0-9_.-]{0,31}\Z")
USERNAME_RULE = "1-32 of a-z 0-9 _ . -, starting with a letter"
MIN_PASSWORD = MIN_PASSWORD_LENGTH


class UserError(ValueError):
    """Bad input for a user operation; the message is safe to show."""


@dataclass
class User:
    name: str
    fullname: str = ""
    roles: list = field(default_factory=list)
    publish: list = field(default_factory=list)
    subscribe: list = field(default_factory=list)
    secrets: dict = field(default_factory=dict, repr=False)

    @property
    def is_admin(self):
        return "admin" in self.roles

    def may(self, action, channel):
        """May this user `publish` to / `subscribe` to `channel`?"""
        if self.is_admin:
            return True
        patterns = self.publish if action == "publish" else self.subscribe
        return any(fnmatchcase(channel, pattern) for pattern in patterns)

    def public(self):
        return {"name": self.name, "fullname": self.fullname, "roles": self.roles}


def _split(value):
    return [item for item in (value or "").split(",") if item]


def check_password_rules(password):
    if not password.strip():
        raise UserError("a password cannot be only spaces")
    if len(password) < MIN_PASSWORD:
        raise UserError(f"passwords have at least {MIN_PASSWORD} characters")
    if len(password.encode("utf-8")) > passwords.MAX_PASSWORD_BYTES:
        raise UserError(f"passwords have at most {passwords.MAX_PASSWORD_BYTES} bytes")


class UserStore:
    def __init__(self, redis_client, prefix):
        self.redis = redis_client
        self.prefix = prefix

    def _key(self, name):
        return f"{self.prefix}user:{name}"

    def get(self, name):
        if not isinstance(name, str) or not USERNAME.match(name):
            return None
        data = self.redis.hgetall(self._key(name))
        if not data:
            return None
        return User(
            name=name, fullname=data.get("fullname", ""), roles=_split(data.get("roles")),
            publish=_split(data.get("publish")), subscribe=_split(data.get("subscribe")),
            secrets={k: v for k, v in data.items() if k == "password" or k.startswith("scram_")},
        )

    def names(self):
        return sorted(self.redis.smembers(f"{self.prefix}users"))

    def create(self, name, password, fullname="", admin=False, publish=(), subscribe=()):
        if not USERNAME.match(name or ""):
            raise UserError(f"invalid user name: {USERNAME_RULE}")
        check_password_rules(password)
        fields = {
            "fullname": fullname, "roles": "admin" if admin else "user",
            "publish": ",".join(publish), "subscribe": ",".join(subscribe),
            **self._secrets(password),
        }
        # HSETNX on a marker field: two creators of the same name cannot both win.
        if not self.redis.hsetnx(self._key(name), "name", name):
            raise UserError(f"user {name!r} already exists")
        self.redis.hset(self._key(name), mapping=fields)
        self.redis.sadd(f"{self.prefix}users", name)
        return self.get(name)

    def set_password(self, name, password):
        check_password_rules(password)
        if not self.redis.exists(self._key(name)):
            raise UserError(f"no user {name!r}")
        self.redis.hset(self._key(name), mapping=self._secrets(password))

    def delete(self, name):
        removed = self.redis.delete(self._key(name))
        self.redis.srem(f"{self.prefix}users", name)
        if not removed:
            raise UserError(f"no user {name!r}")

    @staticmethod
    def _secrets(password):
        return {"password": passwords.hash_password(password),
                **passwords.scram_credentials(password)}


def seed_demo_users(store, admin_password, log):
    """DEMO_USERS=1: jack/beanstalk and an admin, created once (one worker wins;
    the others wait for it, so no worker serves before the users exist)."""
    marker = f"{store.prefix}demo-users-seeded"
    if not store.redis.set(marker, "seeding", nx=True, ex=60):
        deadline = time.monotonic() + 60
        while store.redis.get(marker) == "seeding" and time.monotonic() < deadline:
            time.sleep(0.1)
        return
    if store.get("jack") is None:
        store.create("jack", "beanstalk", fullname="Jack Spratt",
                     publish=["chat.*", "private-jack.*"], subscribe=["private-jack.*"])
    if store.get("admin") is None:
        password = admin_password or secrets.token_urlsafe(12)
        try:
            store.create("admin", password, fullname="Administrator", admin=True)
        except UserError:
            store.redis.delete(marker)  # nobody waits 60 s for a seeding that failed
            raise
        if admin_password:
            log.warning("Demo users: jack/beanstalk, admin/(DEMO_ADMIN_PASSWORD)")
        else:
            log.warning("Demo users: jack/beanstalk, admin/%s (random; set "
                        "DEMO_ADMIN_PASSWORD to choose it)", password)
    store.redis.set(marker, "done")


# -- flask users ... -------------------------------------------------------------------

users_cli = AppGroup("users", help="Manage users (stored in Redis).")


def _store():
    return current_app.extensions["users"]


def _fail(exc):
    raise click.ClickException(str(exc))


@users_cli.command("create")
@click.argument("name")
@click.option("--fullname", default="", help="Full name shown on welcome pages.")
@click.option("--admin", is_flag=True, help="May publish/subscribe everywhere and see admin pages.")
@click.option("--publish", multiple=True, metavar="PATTERN", help="Channels it may publish to.")
@click.option("--subscribe", multiple=True, metavar="PATTERN",
              help="Private channels it may subscribe to.")
@click.password_option(help="Prompted for (twice) when not given.")
def create_user(name, fullname, admin, publish, subscribe, password):
    """Create user NAME."""
    try:
        user = _store().create(name, password, fullname, admin, publish, subscribe)
    except UserError as exc:
        _fail(exc)
    click.echo(f"created {user.name} ({', '.join(user.roles)})")


@users_cli.command("list")
def list_users():
    """List users."""
    for name in _store().names():
        user = _store().get(name)
        if user:
            click.echo(f"{user.name}\t{','.join(user.roles)}\t{user.fullname}")


@users_cli.command("delete")
@click.argument("name")
def delete_user(name):
    """Delete user NAME."""
    try:
        _store().delete(name)
    except UserError as exc:
        _fail(exc)
    click.echo(f"deleted {name}")


@users_cli.command("set-password")
@click.argument("name")
@click.password_option()
def set_password(name, password):
    """Set user NAME's password."""
    try:
        _store().set_password(name, password)
    except UserError as exc:
        _fail(exc)
    click.echo(f"password of {name} changed")
