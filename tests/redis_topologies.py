"""Real Redis deployments for the failover tests, built from redis-server
processes on this machine: a master with replicas, watched by Sentinels.

The binary is core.embedded_redis's choice (the system's redis-server when
there is one: Debian's 7.x in CI, which `.ci/run` installs; a Sentinel is the
same binary with `--sentinel`).
"""

import os
import signal
import time

import redis

from core.embedded_redis import EmbeddedRedis, free_port

SERVICE = "mymaster"


class SentinelSetup:
    """A master, `replicas` replicas and `sentinels` Sentinels (quorum 2),
    all with `password`; a failover starts 1 s after the master stops
    answering."""

    def __init__(self, base_dir, replicas=2, sentinels=3, password="redis-test-password", tls=None):
        self.base_dir = base_dir
        self.password = password
        # tls: {"cert", "key", "ca"} files. Every process then also listens
        # with TLS, and Sentinels, servers and replication use only that
        # port; the plain one is kept for the tests' own looking around.
        self.tls = tls
        self.tls_ports = {}  # plain port -> TLS port
        self.servers = []  # master first, then replicas (as started)
        self.sentinels = []
        self.replica_count = replicas
        self.sentinel_count = sentinels

    # -- set up and tear down ----------------------------------------------------

    def start(self):
        # (no 5 s wait for more replicas before the first full sync)
        common = [
            "--requirepass",
            self.password,
            "--masterauth",
            self.password,
            "--repl-diskless-sync-delay",
            "0",
        ]
        master = self._server("master", common)
        for i in range(self.replica_count):
            self._server(
                f"replica{i}", [*common, "--replicaof", "127.0.0.1", str(self._public_port(master))]
            )
        self._wait(self._replicas_online, "replicas did not finish their first sync")
        for i in range(self.sentinel_count):
            folder = self.base_dir / f"sentinel{i}"
            folder.mkdir(parents=True)
            config = folder / "sentinel.conf"
            tls_port = free_port() if self.tls else None
            config.write_text(
                "".join(f"{name} {value}\n" for name, value in self._tls_conf(tls_port))
                + f"sentinel monitor {SERVICE} 127.0.0.1 {self._public_port(master)} 2\n"
                f"sentinel auth-pass {SERVICE} {self.password}\n"
                f"sentinel down-after-milliseconds {SERVICE} 1000\n"
                f"sentinel failover-timeout {SERVICE} 10000\n"
                f"sentinel parallel-syncs {SERVICE} {self.replica_count}\n"
            )
            sentinel = EmbeddedRedis(folder, config_file=config, extra_args=["--sentinel"])
            self.sentinels.append(sentinel.start())
            self.tls_ports[sentinel.port] = tls_port
        self._wait(self._sentinels_agree, "the Sentinels did not find each other and the replicas")
        return self

    def stop(self):
        for process in self.sentinels + self.servers:
            process.stop()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- what the app is given --------------------------------------------------------

    def env(self):
        tls = {"REDIS_TLS": "1", "REDIS_TLS_CA_FILE": str(self.tls["ca"])} if self.tls else {}
        return {
            "REDIS_URL": "",
            "REDIS_SENTINELS": self.sentinel_list(),
            "REDIS_SENTINEL_SERVICE": SERVICE,
            "REDIS_PASSWORD": self.password,
            **tls,
        }

    def sentinel_list(self):
        return ",".join(f"127.0.0.1:{self._public_port(s)}" for s in self.sentinels)

    # -- looking and breaking ----------------------------------------------------------

    def master_port(self):
        """The master's (plain) port, as the Sentinels see it."""
        running = next(s for s in self.sentinels if s.process is not None)
        client = redis.Redis(port=running.port, decode_responses=True)
        announced = int(client.sentinel_get_master_addr_by_name(SERVICE)[1])
        return next(s.port for s in self.servers if self._public_port(s) == announced)

    def announced_master_port(self):
        """The master's port the Sentinels give out (the TLS one with TLS)."""
        return self._public_port(next(s for s in self.servers if s.port == self.master_port()))

    def client(self, port=None):
        return redis.Redis(
            port=port or self.master_port(), password=self.password, decode_responses=True
        )

    def kill_master(self):
        """SIGKILL the master's process (no shutdown, no last writes); its port."""
        port = self.master_port()
        victim = next(s for s in self.servers if s.port == port)
        os.kill(victim.process.pid, signal.SIGKILL)
        victim.process.wait()
        return port

    def wait_for_new_master(self, old_port, timeout=30):
        self._wait(
            lambda: (
                self.master_port() != old_port
                and self.client().info("replication")["role"] == "master"
            ),
            "no new master",
            timeout,
        )

    # -- helpers -------------------------------------------------------------------

    def _server(self, name, args):
        tls_args = self._tls_args() if self.tls else []
        server = EmbeddedRedis(self.base_dir / name, extra_args=[*args, *tls_args]).start()
        self.servers.append(server)
        self.tls_ports[server.port] = int(tls_args[1]) if tls_args else None
        return server

    def _public_port(self, process):
        return self.tls_ports.get(process.port) or process.port

    def _tls_args(self):
        args = []
        for name, value in self._tls_conf(free_port()):
            args += [f"--{name}", value]
        return args

    def _tls_conf(self, tls_port):
        if not self.tls:
            return []
        return [
            ("tls-port", str(tls_port)),
            ("tls-cert-file", str(self.tls["cert"])),
            ("tls-key-file", str(self.tls["key"])),
            ("tls-ca-cert-file", str(self.tls["ca"])),
            ("tls-auth-clients", "no"),
            ("tls-replication", "yes"),
        ]

    def _replicas_online(self):
        info = self.client(self.servers[0].port).info("replication")
        states = [info.get(f"slave{i}", {}).get("state") for i in range(self.replica_count)]
        return states == ["online"] * self.replica_count

    def _sentinels_agree(self):
        for sentinel in self.sentinels:
            state = redis.Redis(port=sentinel.port, decode_responses=True).sentinel_master(SERVICE)
            if (
                state["num-other-sentinels"] < self.sentinel_count - 1
                or state["num-slaves"] < self.replica_count
            ):
                return False
        return True

    @staticmethod
    def _wait(predicate, message, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if predicate():
                    return
            except (redis.RedisError, OSError):
                pass
            time.sleep(0.1)
        raise AssertionError(message)
